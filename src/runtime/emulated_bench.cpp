#include "runtime/emulated_bench.h"

#include <fmt/format.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstring>
#include <memory>
#include <mutex>
#include <stdexcept>

#include "comm/comm.h"
#include "kernels/clock.h"
#include "kernels/matmul.h"
#include "kernels/threadpool.h"
#include "kernels/types.h"
#include "kv/attention.h"
#include "placement/cost.h"
#include "placement/planners.h"
#include "runtime/calibration.h"
#include "runtime/model_placement.h"
#include "runtime/rank_forward.h"
#include "runtime/shard.h"
#include "runtime/solo_rank.h"

namespace fairkv::runtime {

namespace {

using kernels::Clock;
using kernels::ms_between;

}  // namespace

RandomModel random_model(const placement::Profile& p, int64_t ffn, int vocab, uint64_t seed) {
  RandomModel m;
  model::ModelConfig& c = m.config;
  c.arch = "llama";
  c.name = p.model + " (random weights)";
  c.n_layers = p.layers;
  c.n_kv_heads = p.kv_heads;
  c.n_heads = p.query_heads;
  c.head_dim = p.head_dim;
  c.n_embd = int(p.embedding());
  c.n_ff = int(ffn);
  c.n_vocab = vocab;
  c.n_ctx_train = 1 << 20;
  Noise noise{seed * 0x9E3779B97F4A7C15ull + 1};
  auto matrix = [&](int64_t rows, int64_t cols) {
    m.buffers.emplace_back(size_t(rows * cols));
    for (uint16_t& x : m.buffers.back()) x = kernels::fp32_to_fp16(noise.next(0.0346f));
    return kernels::WeightMatrix{kernels::DType::F16, rows, cols, m.buffers.back().data(), 0};
  };
  auto ones = [&](int64_t n) {
    m.buffers.emplace_back(size_t(n * 2));  // float32 ones kept in a uint16 buffer
    float* f = reinterpret_cast<float*>(m.buffers.back().data());
    std::fill(f, f + n, 1.0f);
    return static_cast<const float*>(f);
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

std::vector<BenchRow> bench_placements(
    const model::ModelConfig& c, const model::Weights& w, const placement::Profile& prof,
    const BenchSpec& spec, const std::function<void(int, int, const std::string&)>& progress) {
  check_profile_shape(prof, c, fmt::format("bench: profile '{}'", prof.model));
  const int R = spec.devices, B = spec.batch, L = c.n_layers;
  if (R < 1 || B < 1 || spec.steps < 1)
    throw std::invalid_argument("bench: devices, batch and steps must be at least 1");
  // Planned in bytes first: the calibration times tp's layout, then weighs weights by time.
  const kernels::DType wt = w.layers[0].wq.type;
  Calibration cal;
  if (spec.calibrate) {
    if (progress) progress(0, 1, "calibrating: ranks timed to weigh KV, weights and parts");
    kernels::ThreadPool pool(std::max(1, spec.threads));
    cal = calibrate(c, w, prof, R, B, spec.kv_type, std::max(2, spec.steps), spec.replicas, pool);
  }
  const placement::CostModel cost = run_cost_model(c, wt, spec.kv_type, B, cal);
  // The collectives every placement has (two all-reduces per layer), apart from a split's.
  const double base_collectives_ms = collectives_ms(R, B, c, 0, 0, 0);
  const int P = int(spec.planners.size()), rounds = std::max(1, spec.rounds);

  std::vector<BenchRow> rows;
  for (const std::string& name : spec.planners) {
    placement::PlanOptions o;
    o.planner = placement::planner_from_name(name);
    o.devices = R;
    o.replicas = spec.replicas;
    BenchRow row;
    row.planner = name;
    row.devices = R;
    row.batch = B;
    row.calibration = cal;
    try {
      row.placement = placement::plan(prof, cost, o);
    } catch (const std::invalid_argument& e) {
      row.refused = e.what();
      rows.push_back(std::move(row));
      continue;
    }
    const placement::Placement& p = row.placement;
    for (size_t l = 0; l < p.layers.size(); ++l) {
      row.replicas += p.replicas[l];
      row.planned_imbalance +=
          p.lower_bound[l] > 0 ? p.max_load[l] / p.lower_bound[l] / double(L) : 1.0 / double(L);
    }
    rows.push_back(std::move(row));
  }
  const int placed = int(
      std::count_if(rows.begin(), rows.end(), [](const BenchRow& r) { return r.refused.empty(); }));
  const int total = placed * (rounds * R + (spec.wall ? 1 : 0));
  int done = 0;
  auto tick = [&](const std::string& what) {
    if (progress) progress(done, total, what);
  };

  // Emulated: one rank at a time on all threads, segment times per layer. The placements are
  // measured in turn, `rounds` times over, and within a placement the ranks take turns step by
  // step, so that load from elsewhere on a shared machine hits all of them alike; each segment
  // keeps its fastest time, since noise only ever adds time.
  struct Emulated {
    std::vector<std::vector<double>> att, mlp;  // [rank][layer]
    std::vector<double> whole;                  // [rank]
  };
  std::vector<Emulated> em(static_cast<size_t>(P));
  for (Emulated& e : em) {
    e.att.assign(size_t(R), std::vector<double>(size_t(L), 1e300));
    e.mlp.assign(size_t(R), std::vector<double>(size_t(L), 1e300));
    e.whole.assign(size_t(R), 1e300);
  }
  kernels::ThreadPool pool(std::max(1, spec.threads));
  for (int round = 0; round < rounds; ++round)
    for (int i = 0; i < P; ++i) {
      BenchRow& row = rows[size_t(i)];
      if (!row.refused.empty()) continue;
      const placement::Placement& p = row.placement;
      Emulated& e = em[size_t(i)];
      const std::string what = rounds > 1
                                   ? fmt::format("{} (round {}/{})", row.planner, round + 1, rounds)
                                   : row.planner;
      std::vector<std::unique_ptr<SoloRank>> ranks;
      std::vector<SegmentTimes> times(static_cast<size_t>(R));
      for (int r = 0; r < R; ++r) {
        tick(fmt::format("{}: rank {}/{} loads (emulated)", what, r + 1, R));
        ranks.push_back(std::make_unique<SoloRank>(c, w, p, prof, r, B, spec.kv_type, pool));
        SoloRank& k = *ranks.back();
        row.max_kv_bytes = std::max(row.max_kv_bytes, kv_bytes(k.seqs));
        row.max_weight_bytes = std::max(row.max_weight_bytes, k.shard.bytes);
        k.fwd.timing = &times[size_t(r)];
      }
      done += R / 2;
      for (int s = 0; s < spec.steps; ++s) {
        tick(fmt::format("{}: step {}/{} of every rank (emulated)", what, s + 1, spec.steps));
        // The rank that goes first changes every step: a rank that always goes first measures
        // 5-10% above the others at R = 8 whatever its load.
        for (int rr = 0; rr < R; ++rr) {
          const int r = (rr + s + round) % R;
          SegmentTimes& t = times[size_t(r)];
          t.clear(L);
          const auto t0 = Clock::now();
          ranks[size_t(r)]->step();
          e.whole[size_t(r)] = std::min(e.whole[size_t(r)], ms_between(t0, Clock::now()));
          for (int l = 0; l < L; ++l) {
            double& a = e.att[size_t(r)][size_t(l)];
            double& m = e.mlp[size_t(r)][size_t(l)];
            a = std::min(a, t.attention_ms[size_t(l)]);
            m = std::min(m, t.mlp_ms[size_t(l)]);
          }
        }
      }
      done += R - R / 2;
    }

  for (int i = 0; i < P; ++i) {
    BenchRow& row = rows[size_t(i)];
    if (!row.refused.empty()) continue;
    const placement::Placement& p = row.placement;
    const Emulated& e = em[size_t(i)];
    std::vector<double> other(size_t(R), 0.0);
    for (int r = 0; r < R; ++r) {
      double seg = 0;
      for (int l = 0; l < L; ++l) seg += e.att[size_t(r)][size_t(l)] + e.mlp[size_t(r)][size_t(l)];
      other[size_t(r)] = std::max(0.0, e.whole[size_t(r)] - seg);  // embedding, logits
    }
    int gathers = 0;
    size_t q_floats = 0, lse_bytes = 0;
    for (int l = 0; l < L; ++l) {
      int splits = 0;
      for (int h = 0; h < c.n_kv_heads; ++h) {
        bool split = false;
        for (const auto& dev : p.layers[size_t(l)].devices)
          for (const auto& sh : dev)
            split = split || (sh.head == h && sh.kind == placement::ShareKind::Tokens);
        splits += split ? 1 : 0;
      }
      if (splits > 0) {
        ++gathers;
        const size_t heads = size_t(splits) * size_t(B) * size_t(c.group());
        q_floats = std::max(q_floats, heads * size_t(c.head_dim));
        lse_bytes = std::max(lse_bytes, heads * sizeof(float));
      }
    }
    row.collective_ms = collectives_ms(R, B, c, gathers, q_floats, lse_bytes);
    const double split_collectives_ms = std::max(0.0, row.collective_ms - base_collectives_ms);
    row.layer_rank_ms.assign(size_t(L), std::vector<double>(size_t(R), 0.0));
    const double fixed = row.collective_ms + *std::max_element(other.begin(), other.end());
    double step = fixed, bound = fixed, attention = split_collectives_ms;
    for (int l = 0; l < L; ++l) {
      double amax = 0, asum = 0, mmax = 0;
      for (int r = 0; r < R; ++r) {
        const double a = e.att[size_t(r)][size_t(l)];
        row.layer_rank_ms[size_t(l)][size_t(r)] = a;
        amax = std::max(amax, a);
        asum += a;
        mmax = std::max(mmax, e.mlp[size_t(r)][size_t(l)]);
      }
      step += amax + mmax;
      attention += amax;
      // Perfect balance: the layer's attention at its mean rank time (the MLP is even anyway).
      bound += asum / R + mmax;
      row.imbalance += (asum > 0 ? amax / (asum / R) : 1.0) / L;
    }
    row.step_ms_emulated = step;
    // The model predicts what the placement changes: each layer's slowest rank's attention and
    // the collectives that merge token slices. The rest of the step (MLP, base collectives,
    // embedding and logits) is the same for every placement and taken as measured.
    if (cal.ms_per_load > 0) {
      double loads = 0;
      for (double m : p.max_load) loads += m;
      row.predicted_ms = step - attention + cal.ms_per_load * loads;
    }
    row.tok_s_emulated = 1000.0 * B / step;
    row.lower_bound_ms = bound;
    row.ideal_ms = bound;

    if (spec.wall) {
      tick(fmt::format("{}: {} ranks in parallel (wall)", row.planner, R));
      std::mutex mu;
      const int per_rank = std::max(1, spec.threads / R);
      row.step_ms_wall = 1e300;
      comm::run_ranks(R, [&](comm::Communicator& comm) {
        kernels::ThreadPool rank_pool(per_rank);
        const ShardedWeights shard = shard_weights(c, w, p, comm.rank());
        auto seqs = fill_caches(c, p, prof, comm.rank(), B, spec.kv_type);
        RankForward fwd(c, w, shard, p, comm, rank_pool);
        std::vector<int32_t> tokens;
        auto items = decode_items(seqs, tokens);
        fwd.run(items, B);
        for (int s = 0; s < spec.steps; ++s) {
          comm.barrier();
          const auto t0 = Clock::now();
          fwd.run(items, B);
          comm.barrier();
          if (comm.rank() == 0) {
            std::lock_guard lock(mu);
            row.step_ms_wall = std::min(row.step_ms_wall, ms_between(t0, Clock::now()));
          }
        }
      });
      row.tok_s_wall = 1000.0 * B / row.step_ms_wall;
      ++done;
    }
  }
  if (progress) progress(total, total, "done");

  // tp's mean rank time per layer reads every unit once: the ideal every placement is held to.
  const BenchRow* tp = nullptr;
  for (const BenchRow& r : rows)
    if (r.planner == "tp" && r.refused.empty()) tp = &r;
  for (BenchRow& r : rows) {
    if (!r.refused.empty()) continue;
    if (tp && tp != &r) r.ideal_ms = std::min(r.ideal_ms, tp->ideal_ms);
    if (tp) {
      r.speedup_vs_tp = tp->step_ms_emulated / r.step_ms_emulated;
      if (spec.wall && r.step_ms_wall > 0) r.speedup_wall_vs_tp = tp->step_ms_wall / r.step_ms_wall;
    }
  }
  return rows;
}

}  // namespace fairkv::runtime
