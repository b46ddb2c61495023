#include "runtime/calibration.h"

#include <algorithm>
#include <cmath>
#include <map>
#include <stdexcept>
#include <utility>

#include "placement/planners.h"
#include "runtime/solo_rank.h"

namespace fairkv::runtime {

namespace {

// Solves the 3x3 (or 2x2) normal equations by Cramer's rule; false when singular.
bool solve(const double m[3][3], const double r[3], int n, double out[3]) {
  auto det3 = [](const double a[3][3]) {
    return a[0][0] * (a[1][1] * a[2][2] - a[1][2] * a[2][1]) -
           a[0][1] * (a[1][0] * a[2][2] - a[1][2] * a[2][0]) +
           a[0][2] * (a[1][0] * a[2][1] - a[1][1] * a[2][0]);
  };
  if (n == 2) {
    const double d = m[0][0] * m[1][1] - m[0][1] * m[1][0];
    if (!(std::abs(d) > 1e-12 * std::abs(m[0][0] * m[1][1]))) return false;
    out[0] = (r[0] * m[1][1] - m[0][1] * r[1]) / d;
    out[1] = (m[0][0] * r[1] - r[0] * m[1][0]) / d;
    out[2] = 0;
    return true;
  }
  const double d = det3(m);
  if (!(std::abs(d) > 1e-12 * std::abs(m[0][0] * m[1][1] * m[2][2]))) return false;
  for (int k = 0; k < 3; ++k) {
    double a[3][3];
    for (int i = 0; i < 3; ++i)
      for (int j = 0; j < 3; ++j) a[i][j] = j == k ? r[i] : m[i][j];
    out[k] = det3(a) / d;
  }
  return true;
}

// Every rank-layer attention segment of placement p, timed alone.
void time_placement(const model::ModelConfig& c, const model::Weights& w,
                    const placement::Profile& prof, const placement::Placement& p, int index,
                    int batch, kv::KvTypes kt, int steps, const placement::CostModel& bytes,
                    kernels::ThreadPool& pool, std::vector<SegmentSample>& out) {
  const int L = c.n_layers;
  for (int r = 0; r < p.devices; ++r) {
    SoloRank k(c, w, p, prof, r, batch, kt, pool);
    std::vector<double> best(size_t(L), 1e300);
    SegmentTimes t;
    k.fwd.timing = &t;
    for (int s = 0; s < steps; ++s) {
      t.clear(L);
      k.step();
      for (int l = 0; l < L; ++l)
        best[size_t(l)] = std::min(best[size_t(l)], t.attention_ms[size_t(l)]);
    }
    for (int l = 0; l < L; ++l) {
      const auto tail = placement::tail_devices(p.layers[size_t(l)], p.kv_heads);
      SegmentSample x{index, l, r, 0, 0, 0, best[size_t(l)]};
      for (const placement::Share& sh : p.layers[size_t(l)].devices[size_t(r)]) {
        const double t_u = prof.tokens[size_t(l)][size_t(sh.head)];
        x.parts += 1;
        if (sh.kind == placement::ShareKind::Query) {
          x.kv += t_u;
          x.weights += bytes.kv_weight_load() + sh.share * bytes.qo_weight_load();
        } else {
          x.kv += sh.share * t_u;
          if (sh.kind != placement::ShareKind::Tokens || tail[size_t(sh.head)] == r)
            x.weights += bytes.unit_weight_load();
        }
      }
      out.push_back(x);
    }
  }
}

}  // namespace

SegmentFit fit_segments(std::span<const SegmentSample> samples, bool with_parts) {
  double m[3][3] = {}, r[3] = {};
  for (const SegmentSample& s : samples) {
    const double x[3] = {s.kv, s.weights, s.parts};
    for (int i = 0; i < 3; ++i) {
      r[i] += x[i] * s.ms;
      for (int j = 0; j < 3; ++j) m[i][j] += x[i] * x[j];
    }
  }
  SegmentFit f;
  double sol[3];
  if (with_parts && solve(m, r, 3, sol) && sol[2] >= 0) {
    f = {sol[0], sol[1], sol[2], false};
  } else if (solve(m, r, 2, sol)) {
    f = {sol[0], sol[1], 0, false};
  } else {
    return f;
  }
  f.ok = f.a > 0 && f.b > 0;
  return f;
}

double step_error(std::span<const SegmentSample> samples, const SegmentFit& fit) {
  // [placement][layer] -> slowest rank, measured and predicted.
  std::map<std::pair<int, int>, std::pair<double, double>> layer;
  for (const SegmentSample& s : samples) {
    auto& [meas, pred] = layer[{s.placement, s.layer}];
    meas = std::max(meas, s.ms);
    pred = std::max(pred, fit.a * s.kv + fit.b * s.weights + fit.c * s.parts);
  }
  std::map<int, std::pair<double, double>> step;
  for (const auto& [key, v] : layer) {
    step[key.first].first += v.first;
    step[key.first].second += v.second;
  }
  double err = 0;
  for (const auto& [p, v] : step)
    if (v.first > 0) err = std::max(err, std::abs(v.second / v.first - 1.0));
  return err;
}

Calibration calibrate(const model::ModelConfig& c, const model::Weights& w,
                      const placement::Profile& prof, int devices, int batch, kv::KvTypes kt,
                      int steps, int replicas, kernels::ThreadPool& pool) {
  const kernels::DType wt = w.layers[0].wq.type;
  const placement::CostModel bytes = run_cost_model(c, wt, kt, batch);
  std::vector<SegmentSample> samples;
  placement::PlanOptions o;
  o.planner = placement::PlannerKind::Tp;
  o.devices = devices;
  Calibration cal;
  SegmentFit fit;
  placement::Placement tp;
  bool have_tp = true;
  try {
    tp = placement::plan(prof, bytes, o);
  } catch (const std::invalid_argument&) {
    // tp cannot place these KV heads on these devices (3 heads on 4): the split layout, planned
    // in bytes, is timed alone; its ranks differ in weights, KV and parts, so the fit holds.
    have_tp = false;
  }
  if (have_tp) {
    // tp's ranks all serve as many parts and weights: only KV against weights can be told apart.
    // On a small model the KV's share of a segment is a few microseconds, which another process's
    // interruption can swamp (a slope at or below zero): timed again, with twice the steps (the
    // best of more), up to twice before the calibration is given up.
    for (int attempt = 0, n = steps; attempt < 3 && !fit.ok; ++attempt, n *= 2) {
      samples.clear();
      time_placement(c, w, prof, tp, 0, batch, kt, n, bytes, pool, samples);
      fit = fit_segments(samples, false);
    }
    if (!fit.ok) return cal;
    cal.kv_time_factor = fit.a / fit.b;
  }
  // A split layout, planned with tp's factor, adds ranks whose weights, KV and parts differ: the
  // fit over both tells the three apart.
  o.planner = placement::PlannerKind::Split;
  o.replicas = replicas;
  o.tp_unless_faster = false;  // the layout is timed, not used
  time_placement(c, w, prof, placement::plan(prof, run_cost_model(c, wt, kt, batch, cal), o), 1,
                 batch, kt, steps, bytes, pool, samples);
  const SegmentFit all = fit_segments(samples, true);
  if (all.ok) fit = all;
  if (!fit.ok) return cal;
  cal.kv_time_factor = fit.a / fit.b;
  cal.ms_per_load = fit.a;
  cal.part_load = fit.c / fit.a;
  cal.error = step_error(samples, fit);
  // The collectives that merge token slices, per layer that has them, with every unit sliced.
  if (devices > 1) {
    const size_t heads = size_t(c.n_kv_heads) * size_t(batch) * size_t(c.group());
    const double base = collectives_ms(devices, batch, c, 0, 0, 0);
    const double split = collectives_ms(devices, batch, c, c.n_layers, heads * size_t(c.head_dim),
                                        heads * sizeof(float));
    cal.split_layer_load = std::max(0.0, split - base) / c.n_layers / fit.a;
  }
  return cal;
}

}  // namespace fairkv::runtime
