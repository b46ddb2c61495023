#include "runtime/side_by_side.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstring>
#include <stdexcept>

#include "kernels/types.h"
#include "placement/cost.h"
#include "placement/planners.h"
#include "runtime/placed_forward.h"

namespace fairkv::runtime {

namespace {

using Clock = std::chrono::steady_clock;
double ms(Clock::time_point a, Clock::time_point b) {
  return std::chrono::duration<double, std::milli>(b - a).count();
}

// Rank r of R whose collectives do nothing: the emulated mode times one rank's own work alone.
class SoloComm : public Communicator {
 public:
  SoloComm(int rank, int size) : rank_(rank), size_(size) {}
  int rank() const override { return rank_; }
  int size() const override { return size_; }
  std::string name() const override { return "solo"; }
  void all_reduce_sum(float*, size_t) override {}
  void all_gather(const void* send, size_t bytes, void* recv) override {
    for (int r = 0; r < size_; ++r)
      std::memcpy(static_cast<char*>(recv) + size_t(r) * bytes, send, bytes);
  }
  void broadcast(void*, size_t, int) override {}
  void barrier() override {}
  [[noreturn]] void abort(const std::string& why) override { throw CommError(why, rank_); }

 private:
  int rank_, size_;
};

// Cache contents only need to be finite numbers: a cheap generator fills gigabytes quickly.
struct Filler {
  uint64_t state = 0x9E3779B97F4A7C15ull;
  std::vector<float> k, v;
  float next() {
    state ^= state << 13, state ^= state >> 7, state ^= state << 17;
    return float(int32_t(state >> 40) - (1 << 23)) * (1.0f / float(1 << 23));
  }
  void fill(kv::HeadStore& s, int64_t n) {
    const int64_t d = s.head_dim();
    k.resize(size_t(n * d));
    v.resize(size_t(n * d));
    for (auto& x : k) x = next();
    for (auto& x : v) x = next();
    s.append(k.data(), v.data(), n);
  }
};

int64_t part(double f, int64_t n) {
  return int64_t(std::llround(f * double(n)));
}

// A rank's caches as if the profile's lengths had been prefilled: its share of every unit.
std::vector<PlacedSequence> fill_caches(const model::ModelConfig& c, const placement::Placement& p,
                                        const placement::Profile& prof, int rank, int batch) {
  std::vector<PlacedSequence> seqs;
  Filler f;
  int64_t n_past = 0;
  for (const auto& row : prof.tokens)
    for (double t : row) n_past = std::max(n_past, int64_t(std::llround(t)));
  for (int b = 0; b < batch; ++b) {
    seqs.emplace_back(c, kv::KvType::F16);
    seqs.back().cache.n_past = n_past;
  }
  for (int l = 0; l < c.n_layers; ++l)
    for (const auto& s : p.layers[size_t(l)].devices[size_t(rank)]) {
      const int64_t n = int64_t(std::llround(prof.tokens[size_t(l)][size_t(s.head)]));
      int64_t sb = 0, se = batch, tb = 0, te = n;
      if (s.kind == placement::ShareKind::Batch)
        sb = part(s.offset, batch), se = part(s.offset + s.share, batch);
      if (s.kind == placement::ShareKind::Tokens)
        tb = part(s.offset, n), te = part(s.offset + s.share, n);
      for (int64_t b = sb; b < se; ++b) {
        // Positions of a unit's rows end at n_past - 1, as after a compressed prefill.
        seqs[size_t(b)].slice_begin[size_t(l * c.n_kv_heads + s.head)] = n_past - n + tb;
        f.fill(seqs[size_t(b)].cache.head(l, s.head), te - tb);
      }
    }
  return seqs;
}

}  // namespace

SyntheticModel synthetic_model(const placement::Profile& p, int64_t ffn, uint64_t seed) {
  SyntheticModel m;
  auto& c = m.config;
  c.arch = "llama";
  c.name = p.model + " (synthetic weights)";
  c.n_layers = p.layers;
  c.n_kv_heads = p.kv_heads;
  c.n_heads = p.query_heads;
  c.head_dim = p.head_dim;
  c.n_embd = int(p.embd > 0 ? p.embd : int64_t(p.query_heads) * p.head_dim);
  c.n_ff = int(ffn);
  c.n_vocab = 256;
  // Uniform weights with the standard deviation (0.02) of an initialised transformer's.
  uint64_t state = seed * 0x9E3779B97F4A7C15ull + 1;
  auto next = [&] {
    state ^= state << 13, state ^= state >> 7, state ^= state << 17;
    return float(int32_t(state >> 40) - (1 << 23)) * (0.0346f / float(1 << 23));
  };
  auto matrix = [&](int64_t rows, int64_t cols) {
    m.buffers.emplace_back(size_t(rows * cols));
    for (auto& x : m.buffers.back()) x = kernels::fp32_to_fp16(next());
    return kernels::WeightMatrix{kernels::DType::F16, rows, cols, m.buffers.back().data(), 0};
  };
  auto ones = [&](int64_t n) {
    m.buffers.emplace_back(size_t(n * 2), 0);  // float32 ones, stored in the uint16 buffers
    float* f = reinterpret_cast<float*>(m.buffers.back().data());
    std::fill(f, f + n, 1.0f);
    return f;
  };
  m.weights.tok_embd = matrix(c.n_vocab, c.n_embd);
  m.weights.output = m.weights.tok_embd;
  m.weights.output_norm = ones(c.n_embd);
  for (int l = 0; l < c.n_layers; ++l) {
    model::LayerWeights L;
    L.attn_norm = ones(c.n_embd);
    L.ffn_norm = ones(c.n_embd);
    L.wq = matrix(c.q_dim(), c.n_embd);
    L.wk = matrix(c.kv_dim(), c.n_embd);
    L.wv = matrix(c.kv_dim(), c.n_embd);
    L.wo = matrix(c.n_embd, c.q_dim());
    L.w_gate = matrix(c.n_ff, c.n_embd);
    L.w_up = matrix(c.n_ff, c.n_embd);
    L.w_down = matrix(c.n_embd, c.n_ff);
    m.weights.layers.push_back(L);
  }
  return m;
}

std::vector<BenchResult> run_bench(
    const model::ModelConfig& c, const model::Weights& w, const placement::Profile& prof,
    const BenchOptions& o, const std::function<void(int, int, const std::string&)>& progress) {
  if (prof.layers != c.n_layers || prof.kv_heads != c.n_kv_heads)
    throw std::invalid_argument("--profile: its shape (" + std::to_string(prof.layers) + " x " +
                                std::to_string(prof.kv_heads) + ") is not the model's");
  const int R = o.devices;
  const int total = int(o.placements.size()) * (R + (o.wall ? 1 : 0)) + 1;
  int done = 0;
  auto tick = [&](const std::string& what) {
    if (progress) progress(++done, total, what);
  };
  // The all-reduce of one layer's output (batch rows of embd floats), measured on R threads.
  double allreduce_ms = 0;
  {
    const int reps = 200;
    std::vector<double> t(static_cast<size_t>(R));
    run_ranks(R, [&](Communicator& comm) {
      std::vector<float> buf(size_t(o.batch) * size_t(c.n_embd), 1.0f);
      comm.barrier();
      const auto t0 = Clock::now();
      for (int i = 0; i < reps; ++i) comm.all_reduce_sum(buf.data(), buf.size());
      t[size_t(comm.rank())] = ms(t0, Clock::now()) / reps;
    });
    allreduce_ms = *std::max_element(t.begin(), t.end());
    tick("all-reduce");
  }
  std::vector<BenchResult> out;
  const auto cost = placement::cost_model_for(prof, o.batch);
  std::vector<int32_t> tokens(size_t(o.batch), 1);
  for (const auto& name : o.placements) {
    placement::PlanOptions po;
    po.planner = placement::planner_from_name(name);
    po.devices = R;
    const placement::Placement p = placement::plan(prof, cost, po);
    BenchResult r;
    r.planner = name;
    r.devices = R;
    r.allreduce_ms = allreduce_ms;
    for (int x : p.replicas) r.replicas += x;
    r.layer_rank_ms.assign(size_t(c.n_layers), std::vector<double>(size_t(R), 0.0));
    // Emulated: each rank alone on the whole machine.
    for (int rank = 0; rank < R; ++rank) {
      kernels::ThreadPool pool(o.threads);
      SoloComm comm(rank, R);
      PlacedForward fwd(c, w, p, comm, pool);
      auto seqs = fill_caches(c, p, prof, rank, o.batch);
      size_t kv_bytes = 0;
      for (const auto& s : seqs) kv_bytes += s.cache.bytes();
      r.max_kv_bytes = std::max(r.max_kv_bytes, kv_bytes);
      std::vector<PlacedItem> items;
      for (int b = 0; b < o.batch; ++b)
        items.push_back({&seqs[size_t(b)], {&tokens[size_t(b)], 1}});
      std::vector<double> layer_ms(size_t(c.n_layers), 0.0);
      fwd.run(items);  // warm-up
      fwd.time_layers(&layer_ms);
      for (int s = 0; s < o.steps; ++s) fwd.run(items);
      for (int l = 0; l < c.n_layers; ++l)
        r.layer_rank_ms[size_t(l)][size_t(rank)] = layer_ms[size_t(l)] / o.steps;
      tick(name + ": rank " + std::to_string(rank) + " alone");
    }
    double imb = 0;
    for (const auto& lr : r.layer_rank_ms) {
      const double mx = *std::max_element(lr.begin(), lr.end());
      double mean = 0;
      for (double x : lr) mean += x / R;
      r.step_ms_emulated += mx + 2 * allreduce_ms;
      r.lower_bound_ms += mean + 2 * allreduce_ms;
      imb += mean > 0 ? mx / mean : 1;
    }
    r.imbalance = imb / c.n_layers;
    // Wall: the ranks truly in parallel, one thread each; only honest while R <= cores.
    if (o.wall) {
      std::vector<double> t(static_cast<size_t>(R));
      run_ranks(R, [&](Communicator& comm) {
        kernels::ThreadPool pool(1);
        PlacedForward fwd(c, w, p, comm, pool);
        auto seqs = fill_caches(c, p, prof, comm.rank(), o.batch);
        std::vector<PlacedItem> items;
        for (int b = 0; b < o.batch; ++b)
          items.push_back({&seqs[size_t(b)], {&tokens[size_t(b)], 1}});
        fwd.run(items);
        comm.barrier();
        const auto t0 = Clock::now();
        for (int s = 0; s < o.steps; ++s) fwd.run(items);
        t[size_t(comm.rank())] = ms(t0, Clock::now()) / o.steps;
      });
      r.step_ms_wall = *std::max_element(t.begin(), t.end());
      tick(name + ": wall");
    }
    r.tok_s_emulated = 1000.0 * o.batch / r.step_ms_emulated;
    r.tok_s_wall = r.step_ms_wall > 0 ? 1000.0 * o.batch / r.step_ms_wall : 0;
    out.push_back(std::move(r));
  }
  const auto tp =
      std::find_if(out.begin(), out.end(), [](const auto& r) { return r.planner == "tp"; });
  for (auto& r : out)
    r.speedup_vs_tp = tp != out.end() ? tp->step_ms_emulated / r.step_ms_emulated : 0;
  return out;
}

}  // namespace fairkv::runtime
