#include "serve/ranks_backend.h"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <map>
#include <stdexcept>

#include "kv/attention_merge.h"
#include "placement/rebalance.h"
#include "runtime/unit_parts.h"
#include "serve/rank_worker.h"
#include "serve/ranks_wire.h"

namespace fairkv::serve {

namespace {

// What the ranks of an MPI job take from rank 0, so that they cannot disagree on it: the
// placement and the KV options, and the model's shape, which each rank checks against its own
// copy of the model.
std::vector<uint8_t> setup_message(const model::ModelConfig& c, const placement::Placement& p,
                                   const RanksOptions& o) {
  wire::Writer w;
  for (int v : {c.n_layers, c.n_embd, c.n_heads, c.n_kv_heads, c.head_dim, c.n_ff, c.n_vocab})
    w.put(v);
  wire::put_placement(w, p);
  w.put(o.kv_type);
  w.put(o.activations);
  w.put(o.batching);
  w.put(o.reduction);
  w.put(o.n_slots);
  w.put(uint8_t(o.reserve_address_space));
  w.put(o.host_swap_bytes);
  w.put_string(o.swap_dir);
  w.put(o.file_swap_bytes);
  w.put(o.comm_timeout);
  return std::move(w.bytes());
}

placement::Placement read_setup(const std::vector<uint8_t>& bytes, const model::ModelConfig& c,
                                RanksOptions& o) {
  wire::Reader r(bytes);
  for (int v : {c.n_layers, c.n_embd, c.n_heads, c.n_kv_heads, c.head_dim, c.n_ff, c.n_vocab})
    if (r.get<int>() != v)
      throw std::invalid_argument(
          "this rank's model differs from rank 0's (layers, heads or sizes): every rank must load "
          "the same model");
  placement::Placement p = wire::get_placement(r);
  o.kv_type = r.get<kv::KvTypes>();
  o.activations = r.get<kernels::Activations>();
  o.batching = r.get<kernels::Batching>();
  o.reduction = r.get<runtime::Reduction>();
  o.n_slots = r.get<int>();
  o.reserve_address_space = r.get<uint8_t>() != 0;
  o.host_swap_bytes = r.get<size_t>();
  o.swap_dir = r.get_string();
  o.file_swap_bytes = r.get<size_t>();
  o.comm_timeout = r.get<double>();
  return p;
}

// Rank 0 sends the setup; the others wait for it as long as rank 0 takes to load and plan.
void exchange_setup(comm::Communicator& comm, std::vector<uint8_t>& bytes) {
  uint64_t n = bytes.size();
  const double timeout = comm.collective_timeout();
  comm.set_collective_timeout(std::numeric_limits<double>::infinity());
  comm.broadcast(&n, sizeof(n), 0);
  comm.set_collective_timeout(timeout);
  bytes.resize(size_t(n));
  comm.broadcast(bytes.data(), size_t(n), 0);
}

}  // namespace

RanksBackend::RanksBackend(const model::Model& m, const placement::Placement& p,
                           const RanksOptions& o)
    : m_(m), o_(o), R_(p.devices) {
  if (o.n_slots < 1)
    throw std::invalid_argument(fmt::format("ranks: n_slots {}: expected >= 1", o.n_slots));
  if (o.threads < 1)
    throw std::invalid_argument(fmt::format("ranks: threads {}: expected >= 1", o.threads));
  if (o.comm == "mpi") {
    mpi_ = comm::make_communicator("mpi");
    comm::Communicator& comm = *mpi_;
    comm.set_collective_timeout(o.comm_timeout);
    if (comm.rank() != 0)
      comm.abort(
          fmt::format("rank {} constructed RanksBackend: only rank 0 runs the engine, the "
                      "other ranks call serve::follow_rank0",
                      comm.rank()));
    if (comm.size() != p.devices)
      comm.abort(fmt::format("placement '{}' is for {} devices, the mpirun job has {} ranks",
                             p.planner, p.devices, comm.size()));
    std::vector<uint8_t> setup = setup_message(m.config, p, o);
    exchange_setup(comm, setup);
    try {
      pool_ = std::make_unique<kernels::ThreadPool>(o.threads);
      worker_ = std::make_unique<RankWorker>(comm, m, p, o_, *pool_);
    } catch (const std::exception& e) {
      comm.abort(fmt::format("rank 0 failed: {}", e.what()));
    }
    comm.barrier();
    return;
  }
  if (o.comm != "threads")
    throw std::invalid_argument(
        fmt::format("ranks: communicator '{}': expected 'threads' or 'mpi'", o.comm));
  if (R_ < 1) throw std::invalid_argument("ranks: the placement has no devices");
  group_ = std::make_unique<comm::ThreadGroup>(R_);
  auto follower = [this, p](int r) {
    comm::Communicator& comm = group_->comm(r);
    try {
      kernels::ThreadPool pool(o_.threads);
      RankWorker worker(comm, m_, p, o_, pool);
      comm.barrier();
      while (worker.step(nullptr)) {
      }
      group_->leave(r);
    } catch (const std::exception& e) {
      group_->fail(r, fmt::format("rank {} failed: {}", r, e.what()));
    }
  };
  try {
    for (int r = 1; r < R_; ++r) followers_.emplace_back(follower, r);
    pool_ = std::make_unique<kernels::ThreadPool>(o.threads);
    worker_ = std::make_unique<RankWorker>(group_->comm(0), m, p, o_, *pool_);
    group_->comm(0).barrier();  // every rank has its shard, or one failed
  } catch (const std::exception& e) {
    group_->fail(0, fmt::format("rank 0 failed: {}", e.what()));
    for (std::thread& t : followers_) t.join();
    throw;
  }
}

RanksBackend::~RanksBackend() {
  if (broken_.empty() && worker_) {
    try {
      command(shutdown_command());
    } catch (const std::exception&) {  // the ranks are stopped either way
    }
  } else if (group_) {
    group_->fail(0, "rank 0 shut down");
  }
  for (std::thread& t : followers_) t.join();
}

void RanksBackend::check_usable() const {
  if (!broken_.empty())
    throw std::runtime_error("ranks: the ranks stopped after a failure: " + broken_);
}

void RanksBackend::command(std::vector<uint8_t> msg) const {
  check_usable();
  try {
    worker_->step(&msg);
  } catch (const std::exception& e) {
    // The other ranks may wait in a collective that rank 0 will never reach: stop them.
    broken_ = e.what();
    if (mpi_) mpi_->abort("rank 0 failed: " + broken_);
    group_->fail(0, "rank 0 failed: " + broken_);
    throw;
  }
}

const placement::Placement& RanksBackend::placement() const {
  return worker_->forward().placement();
}

int64_t RanksBackend::n_vocab() const {
  return m_.config.n_vocab;
}

size_t RanksBackend::row_bytes() const {
  const model::ModelConfig& c = m_.config;
  return o_.kv_type.token_bytes(c.head_dim) * size_t(c.n_layers) * size_t(c.n_kv_heads);
}

size_t RanksBackend::store_bytes(int64_t rows, int64_t max_rows) const {
  const int64_t hd = m_.config.head_dim;
  if (!o_.reserve_address_space || max_rows <= 0) return size_t(rows) * o_.kv_type.token_bytes(hd);
  return kv::HeadStore::reserved_bytes(std::min(rows, max_rows), max_rows, hd, o_.kv_type);
}

size_t RanksBackend::bytes_for(int64_t rows, int64_t max_rows) const {
  const auto parts = runtime::unit_parts(placement());
  const int64_t granule = o_.reduction == runtime::Reduction::Canonical ? kv::kCanonicalRows : 1;
  size_t most = 0;
  for (int d = 0; d < R_; ++d) {
    size_t b = 0;
    for (const auto& layer : parts)
      for (const auto& unit : layer) {
        const runtime::UnitPart* part = runtime::part_of(unit, d);
        if (!part) continue;
        int64_t held = rows;
        // Its share of the rows, its ends rounded to the canonical order's blocks.
        if (part->share.kind == placement::ShareKind::Tokens && !runtime::is_tail(unit, d))
          held = std::min(rows, int64_t(std::ceil(part->share.share * double(rows))) + granule);
        b += store_bytes(held, max_rows);
      }
    most = std::max(most, b);
  }
  return most;
}

size_t RanksBackend::growth_bytes(SeqId seq, int64_t new_rows, bool prompt_done) const {
  const std::vector<size_t> b = growth_by_rank(seq, new_rows, prompt_done);
  return *std::max_element(b.begin(), b.end());
}

std::vector<size_t> RanksBackend::growth_by_rank(SeqId seq, int64_t new_rows,
                                                 bool prompt_done) const {
  const RankWorker::Seq* s = worker_->find(seq);
  const std::vector<SeqId>& ids = worker_->reported();
  const auto at = std::find(ids.begin(), ids.end(), seq);
  if (!s || at == ids.end())  // not running: nothing reported
    return std::vector<size_t>(size_t(R_), bytes_for(new_rows, 0));
  const int H = m_.config.n_kv_heads;
  const size_t U = size_t(m_.config.n_layers) * size_t(H);
  const size_t first = size_t(at - ids.begin()) * U;
  const auto& reports = worker_->reports();
  std::vector<size_t> b(size_t(R_), 0);
  for (int r = 0; r < R_; ++r)
    for (size_t u = 0; u < U; ++u) {
      const double rows = reports[size_t(r)].append_rows[first + u];
      if (rows < 0) continue;
      b[size_t(r)] += store_bytes(int64_t(rows) + new_rows, s->max_rows) -
                      store_bytes(int64_t(rows), s->max_rows);
    }
  if (!prompt_done) return b;
  // Until its prompt ends a sequence's rows stay whole on each token-sliced unit's tail; the
  // other parts hold none of them and get their slices right after the step.
  const int64_t granule = o_.reduction == runtime::Reduction::Canonical ? kv::kCanonicalRows : 1;
  const auto parts = runtime::unit_parts(placement());
  for (size_t u = 0; u < U; ++u) {
    const auto& unit = parts[u / size_t(H)][u % size_t(H)];
    if (unit.size() < 2 || unit.front().share.kind != placement::ShareKind::Tokens) continue;
    const double held = reports[size_t(unit.back().device)].append_rows[first + u];
    if (held < 0) continue;
    const int64_t total = int64_t(held) + new_rows;
    for (size_t i = 0; i + 1 < unit.size(); ++i) {
      const auto [r0, r1] =
          runtime::rows_kept(unit, unit[i].device, s->rs->slot, o_.n_slots, total, granule);
      b[size_t(unit[i].device)] += store_bytes(r1 - r0, s->max_rows);
    }
  }
  return b;
}

void RanksBackend::open(SeqId seq, int64_t max_rows) {
  check_usable();
  if (worker_->find(seq)) throw std::invalid_argument(fmt::format("ranks: {} is open", seq));
  if (!worker_->slot_free())
    throw std::invalid_argument(fmt::format(
        "ranks: cannot open {}: all {} slots are taken (RanksOptions::n_slots)", seq, o_.n_slots));
  if (max_rows < 0)
    throw std::invalid_argument(
        fmt::format("ranks: open {}: max_rows {}: expected >= 0", seq, max_rows));
  command(open_command(seq, max_rows));
}

void RanksBackend::close(SeqId seq) {
  check_usable();
  if (!worker_->find(seq)) throw std::invalid_argument(fmt::format("ranks: {} is not open", seq));
  command(seq_command(Op::Close, seq));
}

std::span<const float> RanksBackend::run(std::span<const StepItem> items) {
  check_usable();
  if (items.empty()) return {};
  // Everything the ranks could refuse is refused here, before they start.
  std::map<SeqId, int> seen;
  for (const StepItem& it : items) {
    const RankWorker::Seq* s = worker_->find(it.seq);
    if (!s) throw std::invalid_argument(fmt::format("ranks: run: {} is not open", it.seq));
    if (s->swapped)
      throw std::invalid_argument(fmt::format("ranks: run: {} is swapped out", it.seq));
    if (seen[it.seq]++) throw std::invalid_argument(fmt::format("ranks: run: {} twice", it.seq));
    if (it.tokens.empty())
      throw std::invalid_argument(fmt::format("ranks: run: {} has no tokens", it.seq));
    for (int32_t t : it.tokens)
      if (t < 0 || t >= m_.config.n_vocab)
        throw std::invalid_argument(
            fmt::format("ranks: run: token {} of {} is outside the vocabulary of {}", t, it.seq,
                        m_.config.n_vocab));
    const int64_t after = s->rs->cache.n_past + int64_t(it.tokens.size());
    if (!it.compress) continue;
    if (!s->prompt_open)
      throw std::invalid_argument(
          fmt::format("ranks: run: {} compresses a prompt that has ended already", it.seq));
    kv::CompressionConfig c = *it.compress;
    c.resolve();
    if (c.needs_scores() && int64_t(it.tokens.size()) < std::min(c.window, after))
      throw std::invalid_argument(
          fmt::format("ranks: run: {}'s last chunk has {} tokens, fewer than the window of {}",
                      it.seq, it.tokens.size(), std::min(c.window, after)));
  }
  command(run_command(items));
  return worker_->logits();
}

int64_t RanksBackend::rows(SeqId seq) const {
  check_usable();
  if (!worker_->find(seq)) throw std::invalid_argument(fmt::format("ranks: {} is not open", seq));
  command(seq_command(Op::Rows, seq));
  return worker_->rows_result();
}

std::vector<RankLoad> RanksBackend::loads() const {
  const std::vector<RankReport>& reps = worker_->reports();
  std::vector<RankLoad> out(static_cast<size_t>(R_));
  for (int r = 0; r < R_; ++r) {
    out[size_t(r)].kv_bytes = size_t(reps[size_t(r)].kv_bytes);
    out[size_t(r)].step_ms = reps[size_t(r)].step_ms;
  }
  const int running = worker_->running();
  if (!o_.cost || running == 0) return out;
  // FAIRKV.md's model on the running batch: each unit's mean kept length, every rank's bytes
  // per layer (its shares' KV and weights, plus its part of the MLP), at the calibrated rate.
  const model::ModelConfig& c = m_.config;
  const int L = c.n_layers, H = c.n_kv_heads;
  placement::CostModel cost = *o_.cost;
  cost.batch = running;
  const double ms_per_byte =
      o_.ms_per_load > 0 ? o_.ms_per_load / o_.cost->load_bytes() : 1.0 / (o_.bandwidth_gbs * 1e6);
  const placement::Placement& p = placement();
  std::vector<double> tokens(static_cast<size_t>(H));
  for (int l = 0; l < L; ++l) {
    for (int h = 0; h < H; ++h) {
      double rows = 0;
      for (const RankReport& rep : reps) rows += rep.unit_rows[size_t(l * H + h)];
      tokens[size_t(h)] = rows / running;
    }
    const auto d = placement::device_loads(p.layers[size_t(l)], tokens, cost, R_);
    for (int r = 0; r < R_; ++r)
      out[size_t(r)].predicted_ms +=
          (d[size_t(r)] + cost.mlp_load() / R_) * cost.load_bytes() * ms_per_byte;
  }
  return out;
}

ReplanEstimate RanksBackend::estimate_replan(const placement::CostModel& base) const {
  ReplanEstimate e;
  const int running = worker_->running();
  if (running == 0) return e;
  const std::vector<RankReport>& reps = worker_->reports();
  const model::ModelConfig& c = m_.config;
  const int L = c.n_layers, H = c.n_kv_heads;
  placement::CostModel cost = base;
  cost.batch = running;
  const double ms_per_byte =
      o_.ms_per_load > 0 ? o_.ms_per_load / cost.load_bytes() : 1.0 / (o_.bandwidth_gbs * 1e6);
  const placement::Placement& p = placement();
  std::vector<double> tokens(static_cast<size_t>(H));
  for (int l = 0; l < L; ++l) {
    for (int h = 0; h < H; ++h) {
      double rows = 0;
      for (const RankReport& rep : reps) rows += rep.unit_rows[size_t(l * H + h)];
      tokens[size_t(h)] = rows / running;
    }
    const placement::LayerPlacement& now = p.layers[size_t(l)];
    const placement::LayerPlacement next = placement::rebalance_layer(now, tokens, cost, R_);
    e.step_ms_now +=
        placement::max_device_load(now, tokens, cost, R_) * cost.load_bytes() * ms_per_byte;
    e.step_ms_after +=
        placement::max_device_load(next, tokens, cost, R_) * cost.load_bytes() * ms_per_byte;
    // Rows move to a device by as much as its share of the unit grows.
    for (int d = 0; d < R_; ++d)
      for (const placement::Share& s : next.devices[size_t(d)]) {
        double before = 0;
        for (const placement::Share& o : now.devices[size_t(d)])
          if (o.head == s.head) before += o.share;
        if (s.share > before)
          e.move_bytes +=
              (s.share - before) * tokens[size_t(s.head)] * running * cost.token_bytes();
      }
  }
  return e;
}

SwapPlace RanksBackend::swap_out(SeqId seq) {
  check_usable();
  const RankWorker::Seq* s = worker_->find(seq);
  if (!s) throw std::invalid_argument(fmt::format("ranks: {} is not open", seq));
  if (s->swapped) throw std::invalid_argument(fmt::format("ranks: {} is swapped out", seq));
  command(seq_command(Op::SwapOut, seq));
  return worker_->swap_result();
}

void RanksBackend::swap_in(SeqId seq) {
  check_usable();
  const RankWorker::Seq* s = worker_->find(seq);
  if (!s || !s->swapped)
    throw std::invalid_argument(fmt::format("ranks: {} is not swapped out", seq));
  command(seq_command(Op::SwapIn, seq));
}

size_t RanksBackend::swap_bytes_host() const {
  double b = 0;
  for (const RankReport& rep : worker_->reports()) b += rep.host_bytes;
  return size_t(b);
}

size_t RanksBackend::swap_bytes_file() const {
  size_t b = 0;
  for (const RankReport& rep : worker_->reports()) b += size_t(rep.file_bytes);
  return b;
}

bool RanksBackend::replan(const placement::CostModel& cost) {
  check_usable();
  command(replan_command(cost));
  replans_ += worker_->replanned() ? 1 : 0;
  return worker_->replanned();
}

std::string RanksBackend::describe() const {
  const placement::Placement& p = placement();
  std::map<placement::ShareKind, int> kinds;
  int replicas = 0;
  for (const auto& layer : p.layers) {
    replicas += placement::replica_count(layer, p.kv_heads);
    for (const auto& dev : layer.devices)
      for (const placement::Share& s : dev) kinds[s.kind]++;
  }
  std::string shares;
  for (const auto& [kind, n] : kinds)
    shares +=
        fmt::format("{}{} {}", shares.empty() ? "" : ", ", n, placement::share_kind_name(kind));
  return fmt::format("{} on {} ranks ({}): {} replicas; shares {}{}", p.planner, R_, o_.comm,
                     replicas, shares,
                     replans_ > 0 ? fmt::format("; rebalanced {} times", replans_) : "");
}

void follow_rank0(const model::Model& m, int threads) {
  const auto comm = comm::make_communicator("mpi");
  if (comm->rank() == 0)
    throw std::invalid_argument("follow_rank0: rank 0 runs the engine (RanksBackend)");
  try {
    std::vector<uint8_t> setup;
    exchange_setup(*comm, setup);
    RanksOptions o;
    o.comm = "mpi";
    o.threads = std::max(1, threads);
    const placement::Placement p = read_setup(setup, m.config, o);
    comm->set_collective_timeout(o.comm_timeout);
    kernels::ThreadPool pool(o.threads);
    RankWorker worker(*comm, m, p, o, pool);
    comm->barrier();
    while (worker.step(nullptr)) {
    }
  } catch (const std::exception& e) {
    comm->abort(fmt::format("rank {} failed: {}", comm->rank(), e.what()));
  }
}

}  // namespace fairkv::serve
