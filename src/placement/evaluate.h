// Predicted speed-ups of a placement over tp, from the cost model: on the profile's expected
// lengths, and on its per-request samples with the plan's shares kept or rebalanced per request.
#pragma once

#include <vector>

#include "placement/cost.h"
#include "placement/placement.h"
#include "placement/profile.h"

namespace fairkv::placement {

// Attention time of a step in loads: the sum over layers of the heaviest device.
double attention_time(std::span<const double> max_load);
// Step time: attention plus the MLP, which TP divides evenly (1/R of its weights per device and
// layer); equal to attention_time when the MLP size is unknown (ffn = 0).
double step_time(std::span<const double> max_load, const CostModel& cost, int devices);

struct PlanSummary {
  double attention = 0;          // attention_time
  double step = 0;               // step_time
  double attention_speedup = 0;  // tp's attention time / this one
  double step_speedup = 0;       // tp's step time / this one
  double mean_imbalance = 0;     // mean over layers of max load / lower bound
  double worst_gap = 0;          // max over layers of max load / lower bound - 1
  double mean_replicas = 0;
  int max_replicas = 0;
  int proven_layers = 0;   // layers the planner proved optimal (Placement::proven)
  int bound_layers = 0;    // layers at the lower bound (within 1e-9)
  double peak_memory = 0;  // bytes of the fullest device
};
// `tp` may be null (tp cannot place the heads, e.g. R > H not allowed by vLLM's rule): the
// speed-ups are then NaN.
PlanSummary summarize_plan(const Placement& p, const Placement* tp, const Profile& profile,
                           const CostModel& cost);

// Over the profile's samples, each treated as a batch of requests of its lengths: speed-ups of the
// total times over all samples against tp, with the plan's own shares and with shares rebalanced
// to each sample (rebalance_layer).
struct SampleSummary {
  int samples = 0;
  double static_speedup = 0;      // attention, plan's shares
  double rebalanced_speedup = 0;  // attention, shares rebalanced per sample
  double static_imbalance = 0;    // mean over samples and layers of max / lower bound
  double rebalanced_imbalance = 0;
};
SampleSummary evaluate_samples(const Placement& p, const Placement* tp, const Profile& profile,
                               const CostModel& cost);

}  // namespace fairkv::placement
