#include "placement/evaluate.h"

#include <algorithm>
#include <limits>

#include "placement/rebalance.h"

namespace fairkv::placement {

double attention_time(std::span<const double> max_load) {
  double s = 0;
  for (double m : max_load) s += m;
  return s;
}

double step_time(std::span<const double> max_load, const CostModel& cost, int devices) {
  return attention_time(max_load) + double(max_load.size()) * cost.mlp_load() / devices;
}

PlanSummary summarize_plan(const Placement& p, const Placement* tp, const Profile& profile,
                           const CostModel& cost) {
  PlanSummary s;
  s.attention = attention_time(p.max_load);
  s.step = step_time(p.max_load, cost, p.devices);
  const double nan = std::numeric_limits<double>::quiet_NaN();
  s.attention_speedup = tp ? attention_time(tp->max_load) / s.attention : nan;
  s.step_speedup = tp ? step_time(tp->max_load, cost, tp->devices) / s.step : nan;
  const size_t n = p.layers.size();
  for (size_t l = 0; l < n; ++l) {
    const double ratio = p.lower_bound[l] > 0 ? p.max_load[l] / p.lower_bound[l] : 1.0;
    s.mean_imbalance += ratio / double(n);
    s.worst_gap = std::max(s.worst_gap, ratio - 1);
    s.mean_replicas += double(p.replicas[l]) / double(n);
    s.max_replicas = std::max(s.max_replicas, p.replicas[l]);
    s.proven_layers += l < p.proven.size() && p.proven[l] ? 1 : 0;
    s.bound_layers += p.max_load[l] <= p.lower_bound[l] * (1 + 1e-9) ? 1 : 0;
  }
  for (const auto& m : device_memory(p, profile.tokens, cost))
    s.peak_memory = std::max(s.peak_memory, m.total());
  return s;
}

SampleSummary evaluate_samples(const Placement& p, const Placement* tp, const Profile& profile,
                               const CostModel& cost) {
  SampleSummary s;
  s.samples = int(profile.samples.size());
  if (s.samples == 0) return s;
  double t_tp = 0, t_static = 0, t_rebalanced = 0;
  size_t count = 0;
  for (const auto& sample : profile.samples) {
    t_tp += tp ? attention_time(max_loads(*tp, sample, cost))
               : std::numeric_limits<double>::quiet_NaN();
    for (size_t l = 0; l < p.layers.size(); ++l) {
      const double lb = lower_bound(sample[l], cost, p.devices);
      const double fixed = max_device_load(p.layers[l], sample[l], cost, p.devices);
      const auto moved = rebalance_layer(p.layers[l], sample[l], cost, p.devices);
      const double best = max_device_load(moved, sample[l], cost, p.devices);
      t_static += fixed;
      t_rebalanced += best;
      s.static_imbalance += lb > 0 ? fixed / lb : 1.0;
      s.rebalanced_imbalance += lb > 0 ? best / lb : 1.0;
      ++count;
    }
  }
  s.static_speedup = t_tp / t_static;
  s.rebalanced_speedup = t_tp / t_rebalanced;
  s.static_imbalance /= double(count);
  s.rebalanced_imbalance /= double(count);
  return s;
}

}  // namespace fairkv::placement
