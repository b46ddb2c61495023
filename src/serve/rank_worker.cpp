#include "serve/rank_worker.h"

#include <fmt/format.h>

#include <algorithm>
#include <limits>
#include <stdexcept>

#include "kernels/clock.h"
#include "runtime/exec.h"
#include "runtime/rank_compression.h"

namespace fairkv::serve {

using runtime::RankSequence;
using wire::Reader;
using wire::Writer;

std::vector<uint8_t> seq_command(Op op, SeqId seq) {
  Writer w;
  w.put(op);
  w.put(seq);
  return std::move(w.bytes());
}

std::vector<uint8_t> open_command(SeqId seq, int64_t max_rows) {
  Writer w;
  w.put(Op::Open);
  w.put(seq);
  w.put(max_rows);
  return std::move(w.bytes());
}

std::vector<uint8_t> run_command(std::span<const StepItem> items) {
  // Each distinct config once, resolved (the ranks' RankCompression needs it so).
  std::vector<const kv::CompressionConfig*> distinct;
  std::vector<int32_t> config_of(items.size(), -1);
  for (size_t i = 0; i < items.size(); ++i) {
    if (!items[i].compress) continue;
    auto at = std::find(distinct.begin(), distinct.end(), items[i].compress);
    if (at == distinct.end()) at = distinct.insert(distinct.end(), items[i].compress);
    config_of[i] = int32_t(at - distinct.begin());
  }
  Writer w;
  w.put(Op::Run);
  w.put(uint32_t(distinct.size()));
  for (const kv::CompressionConfig* c : distinct) {
    kv::CompressionConfig resolved = *c;
    resolved.resolve();
    wire::put_config(w, resolved);
  }
  w.put(uint32_t(items.size()));
  for (size_t i = 0; i < items.size(); ++i) {
    const StepItem& it = items[i];
    const int32_t config = config_of[i];
    w.put(it.seq);
    w.put(uint64_t(it.tokens.size()));
    w.put(config);
    // A one-shot compression ends the prompt; a block-wise one compresses after every block.
    w.put(uint8_t(it.full_prompt_done || (it.compress && !it.compress->blockwise())));
  }
  for (const StepItem& it : items) w.put_bytes(it.tokens.data(), it.tokens.size_bytes());
  return std::move(w.bytes());
}

std::vector<uint8_t> replan_command(const placement::CostModel& cost) {
  Writer w;
  w.put(Op::Replan);
  wire::put_cost(w, cost);
  return std::move(w.bytes());
}

std::vector<uint8_t> shutdown_command() {
  Writer w;
  w.put(Op::Shutdown);
  return std::move(w.bytes());
}

namespace {

bool same_shares(const placement::Placement& a, const placement::Placement& b) {
  if (a.layers.size() != b.layers.size()) return false;
  for (size_t l = 0; l < a.layers.size(); ++l) {
    const auto& x = a.layers[l].devices;
    const auto& y = b.layers[l].devices;
    if (x.size() != y.size()) return false;
    for (size_t d = 0; d < x.size(); ++d)
      if (!std::equal(x[d].begin(), x[d].end(), y[d].begin(), y[d].end(),
                      [](const placement::Share& s, const placement::Share& t) {
                        return s.head == t.head && s.kind == t.kind && s.share == t.share &&
                               s.offset == t.offset;
                      }))
        return false;
  }
  return true;
}

}  // namespace

RankWorker::RankWorker(comm::Communicator& comm, const model::Model& m,
                       const placement::Placement& p, const RanksOptions& o,
                       kernels::ThreadPool& pool)
    : comm_(comm),
      m_(m),
      o_(o),
      shard_(runtime::shard_weights(m.config, m.weights, p, comm.rank())),
      fwd_(std::make_unique<runtime::RankForward>(m.config, m.weights, shard_, p, comm, pool,
                                                  o.activations, o.batching, o.reduction)),
      slot_used_(size_t(o.n_slots), 0),
      reports_(size_t(comm.size())) {
  parts_ = runtime::unit_parts(p);
  for (const auto& layer : p.layers) has_token_slices_ |= placement::has_token_slices(layer);
  for (RankReport& r : reports_)
    r.unit_rows.assign(size_t(m.config.n_layers) * size_t(m.config.n_kv_heads), 0.0);
}

const RankWorker::Seq* RankWorker::find(SeqId seq) const {
  const auto it = seqs_.find(seq);
  return it == seqs_.end() ? nullptr : &it->second;
}

bool RankWorker::slot_free() const {
  return std::find(slot_used_.begin(), slot_used_.end(), 0) != slot_used_.end();
}

bool RankWorker::step(std::vector<uint8_t>* msg) {
  std::vector<uint8_t> received;
  std::vector<uint8_t>& bytes = msg ? *msg : received;
  uint64_t n = bytes.size();
  if (msg) {
    comm_.broadcast(&n, sizeof(n), 0);
  } else {
    // Waiting for the engine's next call is idling, not a rank that stopped answering.
    const double timeout = comm_.collective_timeout();
    comm_.set_collective_timeout(std::numeric_limits<double>::infinity());
    comm_.broadcast(&n, sizeof(n), 0);
    comm_.set_collective_timeout(timeout);
    bytes.resize(size_t(n));
  }
  comm_.broadcast(bytes.data(), size_t(n), 0);

  Reader in(bytes);
  const Op op = in.get<Op>();
  if (op == Op::Shutdown) return false;
  if (op == Op::Run) {
    run(in);
    return true;
  }
  if (op == Op::Replan) {
    replan(wire::get_cost(in));
    return true;
  }
  const SeqId id = in.get<SeqId>();
  if (op == Op::Open) {
    open(id, in.get<int64_t>());
    return true;
  }
  Seq& s = seqs_.at(id);  // rank 0 checked that it is open
  switch (op) {
    case Op::Close:
      slot_used_[size_t(s.rs->slot)] = 0;
      seqs_.erase(id);
      publish();
      break;
    case Op::Rows:
      rows_ = s.swapped ? s.swapped_rows : kept_rows(s);
      break;
    case Op::SwapOut:
      swap_out(s);
      break;
    case Op::SwapIn:
      swap_in(s);
      break;
    default:
      throw std::logic_error(fmt::format("ranks: unknown command {}", int(op)));
  }
  return true;
}

// Dynamic FairKV: a new sequence's units split by sequences go to their least-loaded holders. A
// slot decides which holder serves the sequence in every batch-sliced unit, so of the free slots
// the one is taken that leaves the most loaded rank least loaded, counting the rank's cached bytes
// and, for each unit the slot gives it, a unit's mean cache (ties: the lowest slot). Every rank
// computes the same choice from the same gathered reports.
int RankWorker::choose_slot() const {
  const int R = comm_.size(), L = m_.config.n_layers, H = m_.config.n_kv_heads;
  double total = 0;
  for (const RankReport& r : reports_) total += r.kv_bytes;
  const double unit_bytes = running_ > 0 ? total / (double(running_) * L * H) : 1.0;
  int best = -1;
  double best_max = 0;
  std::vector<double> load(static_cast<size_t>(R), 0.0);
  for (int slot = 0; slot < o_.n_slots; ++slot) {
    if (slot_used_[size_t(slot)]) continue;
    for (int r = 0; r < R; ++r) load[size_t(r)] = reports_[size_t(r)].kv_bytes;
    for (int l = 0; l < L; ++l)
      for (int h = 0; h < H; ++h) {
        const auto& parts = parts_[size_t(l)][size_t(h)];
        if (parts.size() > 1 && parts.front().share.kind == placement::ShareKind::Batch)
          load[size_t(runtime::batch_owner(parts, slot, o_.n_slots))] += unit_bytes;
      }
    const double mx = *std::max_element(load.begin(), load.end());
    if (best < 0 || mx < best_max) {
      best = slot;
      best_max = mx;
    }
  }
  if (best < 0) throw std::logic_error("ranks: no free batch slot");
  return best;
}

void RankWorker::open(SeqId seq, int64_t max_rows) {
  const int slot = choose_slot();
  slot_used_.at(size_t(slot)) = 1;
  Seq& s = seqs_[seq];
  s.rs = std::make_unique<RankSequence>(m_.config, o_.kv_type, slot);
  s.max_rows = max_rows;
  reserve(s);
  publish();  // rank 0 learns where the new sequence's rows will go
}

void RankWorker::reserve(Seq& s) {
  if (!o_.reserve_address_space || s.max_rows <= 0) return;
  // Only the units this rank holds: re-planning changes shares, never holders, so no other
  // store of this rank ever gets a row (one that did would grow as an ordinary store).
  for (int l = 0; l < m_.config.n_layers; ++l)
    for (int h = 0; h < m_.config.n_kv_heads; ++h)
      if (runtime::part_of(parts_[size_t(l)][size_t(h)], comm_.rank()))
        s.rs->cache.head(l, h).reserve_virtual(s.max_rows);
}

void RankWorker::run(Reader& in) {
  const auto t0 = kernels::Clock::now();
  const model::ModelConfig& c = m_.config;
  std::vector<kv::CompressionConfig> configs(in.get<uint32_t>());
  for (auto& cc : configs) cc = wire::get_config(in);
  const size_t n = in.get<uint32_t>();
  struct Item {
    Seq* seq;
    uint64_t tokens;
    int32_t config;
    uint8_t done;
  };
  std::vector<Item> items(n);
  for (Item& it : items) {
    it.seq = &seqs_.at(in.get<SeqId>());
    it.tokens = in.get<uint64_t>();
    it.config = in.get<int32_t>();
    it.done = in.get<uint8_t>();
  }
  uint64_t total = 0;
  for (const Item& it : items) total += it.tokens;
  std::vector<int32_t> tokens(static_cast<size_t>(total));
  in.get_bytes(tokens.data(), tokens.size() * sizeof(int32_t));
  std::vector<runtime::RankItem> batch(n);
  for (size_t i = 0, at = 0; i < n; at += items[i].tokens, ++i)
    batch[i] = {items[i].seq->rs.get(), {tokens.data() + at, size_t(items[i].tokens)}};

  // Each prompt that ends here is compressed by its own config: one RankCompression per item (as
  // its item 0), fed by one observer that passes each item its own window's rows.
  std::vector<std::unique_ptr<runtime::RankCompression>> comp(n);
  runtime::RankWindowObserver observer;
  observer.window = 0;
  for (size_t i = 0; i < n; ++i) {
    if (items[i].config < 0) continue;
    const kv::CompressionConfig& cc = configs.at(size_t(items[i].config));
    comp[i] = std::make_unique<runtime::RankCompression>(cc, c, 1);
    if (comp[i]->observer()) observer.window = std::max(observer.window, cc.window);
  }
  observer.observe = [&](size_t item, int layer, int head, int q0, int q1, const float* probs,
                         int64_t w, int64_t rows) {
    const runtime::RankWindowObserver* own = comp[item] ? comp[item]->observer() : nullptr;
    if (!own) return;  // a chunk that does not end its prompt, or a policy without scores
    // Query rows are independent: the last `want` of the w observed are the item's window.
    const int64_t want = std::min(own->window, w), heads = q1 - q0;
    if (want == w) {
      own->observe(0, layer, head, q0, q1, probs, w, rows);
      return;
    }
    std::vector<float> last(size_t(heads * want * rows));
    for (int64_t q = 0; q < heads; ++q)
      std::copy_n(probs + (q * w + w - want) * rows, want * rows, &last[size_t(q * want * rows)]);
    own->observe(0, layer, head, q0, q1, last.data(), want, rows);
  };
  const auto& logits = fwd_->run(batch, o_.n_slots, observer.window > 0 ? &observer : nullptr);
  logits_ = {logits.data(), logits.size()};

  std::vector<RankSequence*> ended;
  for (size_t i = 0; i < n; ++i) {
    RankSequence* rs = items[i].seq->rs.get();
    if (comp[i])
      comp[i]->apply(comm_, shard_, {&rs, 1}, std::span<const int64_t>(&rs->cache.n_past, 1));
    if (!items[i].done) continue;
    items[i].seq->prompt_open = false;
    ended.push_back(rs);
  }
  // Token slices of the prompts that ended are dealt out from their tails.
  if (has_token_slices_ && !ended.empty()) fwd_->redistribute(ended, o_.n_slots, fwd_->placement());
  step_ms_ = kernels::ms_since(t0);
  publish();
}

int64_t RankWorker::kept_rows(Seq& s) {
  RankSequence* rs = s.rs.get();
  int64_t sum = 0;
  for (const auto& seq : fwd_->unit_lengths({&rs, 1}))
    for (int64_t len : seq) sum += len;
  return sum;
}

void RankWorker::swap_out(Seq& s) {
  const int64_t rows = kept_rows(s);
  // Every rank's held (host, file) and new bytes, so that all decide alike: host memory while it
  // has room, then spill files, else the cache is dropped.
  double mine[3] = {0, 0, double(kv::swapped_bytes(s.rs->cache))};
  for (const auto& [id, other] : seqs_)
    if (other.swapped) mine[other.swapped->in_file() ? 1 : 0] += double(other.swapped->bytes());
  std::vector<double> all(3 * size_t(comm_.size()));
  comm_.all_gather(mine, sizeof(mine), all.data());
  double host = 0, file = 0, add = 0;
  for (int r = 0; r < comm_.size(); ++r) {
    host += all[size_t(3 * r)];
    file += all[size_t(3 * r + 1)];
    add += all[size_t(3 * r + 2)];
  }
  if (host + add <= double(o_.host_swap_bytes)) {
    s.swapped = kv::swap_out(s.rs->cache);  // clears the cache and frees its memory
    swap_ = SwapPlace::Host;
  } else if (!o_.swap_dir.empty() && file + add <= double(o_.file_swap_bytes)) {
    s.swapped = kv::swap_out(s.rs->cache, o_.swap_dir);
    swap_ = SwapPlace::File;
  } else {
    s.rs->cache.clear();
    s.rs->cache.n_past = 0;
    reserve(s);
    s.prompt_open = true;  // recomputed from its tokens, as a new prompt
    swap_ = SwapPlace::None;
  }
  if (s.swapped) {
    s.swapped_under = fwd_->placement();
    s.swapped_rows = rows;
  }
  publish();
}

void RankWorker::swap_in(Seq& s) {
  kv::swap_in(std::move(*s.swapped), s.rs->cache);
  s.swapped.reset();
  // Shares changed while it was out (replan): its rows move as redistribute moves the others'.
  if (!same_shares(s.swapped_under, fwd_->placement())) {
    RankSequence* rs = s.rs.get();
    const char open = s.prompt_open;
    fwd_->redistribute({&rs, 1}, o_.n_slots, s.swapped_under, {&open, 1});
  }
  s.swapped_under = {};
  publish();
}

std::vector<RankSequence*> RankWorker::running_seqs(std::vector<char>* prompt_open) {
  std::vector<RankSequence*> out;
  for (auto& [id, s] : seqs_) {
    if (s.swapped) continue;
    out.push_back(s.rs.get());
    if (prompt_open) prompt_open->push_back(s.prompt_open);
  }
  return out;
}

void RankWorker::replan(const placement::CostModel& cost) {
  replanned_ = false;
  std::vector<char> prompt_open;
  const auto seqs = running_seqs(&prompt_open);
  if (seqs.empty()) return;
  // Every rank computes the same shares from the same gathered lengths.
  const auto lengths = fwd_->unit_lengths(seqs);
  const placement::Placement next =
      runtime::rebalanced(fwd_->placement(), m_.config, lengths, cost);
  if (same_shares(next, fwd_->placement())) return;
  const placement::Placement old = fwd_->placement();
  fwd_->set_placement(next);
  parts_ = runtime::unit_parts(next);
  has_token_slices_ = false;
  for (const auto& layer : next.layers) has_token_slices_ |= placement::has_token_slices(layer);
  fwd_->redistribute(seqs, o_.n_slots, old, prompt_open);
  replanned_ = true;
  publish();
}

void RankWorker::publish() {
  const int L = m_.config.n_layers, H = m_.config.n_kv_heads, rank = comm_.rank();
  const size_t U = size_t(L) * size_t(H);
  reported_.clear();
  for (const auto& [id, s] : seqs_)
    if (!s.swapped) reported_.push_back(id);
  std::vector<double> mine(4 + U + reported_.size() * U, 0.0);
  running_ = 0;
  for (const auto& [id, s] : seqs_) {
    if (s.swapped) {
      mine[s.swapped->in_file() ? 2 : 1] += double(s.swapped->bytes());
      continue;
    }
    double* append = &mine[4 + U + size_t(running_) * U];
    ++running_;
    mine[0] += double(s.rs->cache.committed_bytes());
    for (int l = 0; l < L; ++l)
      for (int h = 0; h < H; ++h) {
        const auto& parts = parts_[size_t(l)][size_t(h)];
        const kv::HeadStore& store = s.rs->cache.head(l, h);
        if (runtime::counts(parts, rank)) mine[4 + size_t(l * H + h)] += double(store.size());
        append[l * H + h] = runtime::role_of(parts, rank, s.rs->slot, o_.n_slots).append
                                ? double(store.size())
                                : -1.0;
      }
  }
  mine[3] = step_ms_;
  std::vector<double> all(mine.size() * size_t(comm_.size()));
  comm_.all_gather(mine.data(), mine.size() * sizeof(double), all.data());
  for (int r = 0; r < comm_.size(); ++r) {
    const double* p = &all[size_t(r) * mine.size()];
    RankReport& rep = reports_[size_t(r)];
    rep.kv_bytes = p[0];
    rep.host_bytes = p[1];
    rep.file_bytes = p[2];
    rep.step_ms = p[3];
    rep.unit_rows.assign(p + 4, p + 4 + U);
    rep.append_rows.assign(p + 4 + U, p + mine.size());
  }
}

}  // namespace fairkv::serve
