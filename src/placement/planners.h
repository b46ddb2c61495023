// The planners of FAIRKV.md, from the baseline up, per layer and for a whole model.
//
//   tp         contiguous heads, H/R units per device (the first H mod R devices take one more);
//              with R > H every KV head sits on R/H devices, each serving a slice of its query
//              heads over the whole KV (vLLM's replication; R must be a multiple of H and the group
//              a multiple of R/H).
//   balanced   FairKV's best-effort assignment: tp's unit count per device, units permuted by load.
//              Exact branch and bound (partition.h) within a node budget, else the best found.
//              With R >= H every device serves one unit (or one query slice): nothing to permute,
//              so it is tp.
//   fair-copy  FairKV's Fair-Copying: from balanced, up to K extra replicas per layer, greedily:
//              take the heaviest device, and among its units and the devices not holding them pick
//              the replica whose best division of the batch (whole sequences, at least one per
//              replica) lowers the layer the most; stop when no replica helps. B = 1 cannot divide
//              a batch, so it is balanced.
//   split      token slices, exact shares: for every candidate set of holders, rebalance()
//              (rebalance.h) sets the shares that minimise the layer's maximum. Candidates:
//              McNaughton's wrap-around (K >= R-1): devices in turn take units, heaviest first, up
//              to a target T, and the unit crossing T is cut, so at most R-1 units get one extra
//              part; T is the smallest target the fill reaches. Without weight reads this is the
//              lower bound itself. With weight reads every part pays its unit's weights, so cutting
//              at every device boundary costs; best fit with splitting (cut only units that fit
//              nowhere) is a second candidate, fair-copy's greedy replicas (continuous shares) a
//              third, and fair-copy's own replicas with exact shares a fourth (so split is never
//              worse than fair-copy).
// fair-copy and split return the best of their candidates and balanced, so they never do worse
// than balanced; ties keep the plan with fewer replicas.
#pragma once

#include <cstdint>
#include <span>
#include <stdexcept>
#include <string>

#include "placement/cost.h"
#include "placement/placement.h"
#include "placement/profile.h"

namespace fairkv::placement {

enum class PlannerKind { Tp, Balanced, FairCopy, Split };
const char* planner_name(PlannerKind k);
// "tp", "balanced", "fair-copy", "split"; throws std::invalid_argument on others.
PlannerKind planner_from_name(const std::string& name);
bool is_planner_name(const std::string& name);

struct LayerPlan {
  LayerPlacement layer;
  bool proven = false;  // optimal among the plans this planner may make
};

// Units per device under tp (R <= H), or {1, ..., 1} when every device serves one query slice.
std::vector<int> tp_counts(int kv_heads, int devices);

LayerPlacement tp_layer(int kv_heads, int devices, int group);
LayerPlan balanced_layer(std::span<const double> tokens, const CostModel& cost, int devices,
                         int64_t node_limit);
LayerPlan fair_copy_layer(std::span<const double> tokens, const CostModel& cost, int devices,
                          int replicas, int64_t node_limit);
LayerPlan split_layer(std::span<const double> tokens, const CostModel& cost, int devices,
                      int replicas, int64_t node_limit);
// The wrap-around rule alone (holders from the fill, shares from the exact rebalance).
LayerPlacement wrap_around_layer(std::span<const double> tokens, const CostModel& cost,
                                 int devices);

// More devices than this are refused up front: the planners' searches grow with R, and no
// tensor-parallel group comes near it.
inline constexpr int kMaxDevices = 1024;

struct PlanOptions {
  PlannerKind planner = PlannerKind::Tp;
  int devices = 1;
  int replicas =
      -1;  // extra replicas per layer; -1: devices - 1 (fair-copy), 2 (devices - 1) (split)
  double device_memory = 0;    // bytes per device; 0: no limit
  int64_t node_limit = 20000;  // balanced: branch-and-bound nodes per layer (see partition.h)
  // Keep tp's layout unless the plan is predicted faster than tp by more than cost.error (off:
  // the planner's own plan whatever its prediction, to study the planners themselves).
  bool tp_unless_faster = true;
};

// The extra replicas per layer that fair-copy and split may add (0 for the others): the option's
// or the default budget, at most every unit on every other device, beyond which none could be
// placed (a larger budget only made the searches loop longer).
int replica_budget(const PlanOptions& options, int kv_heads);

// A plan does not fit the devices' memory; the message says which device needs what.
struct DoesNotFit : std::runtime_error {
  using std::runtime_error::runtime_error;
};

// Plans every layer of the profile. Devices are relabelled per layer (except for tp) so that the
// layers' heaviest devices differ, which spreads memory. With a memory limit, fair-copy and split
// give up replicas (K, K-1, ..., 0) until the plan fits; a plan that cannot fit throws DoesNotFit.
// A plan that is not predicted faster than tp by more than the cost model's error gives way to
// tp (Placement::note says so), when tp fits.
Placement plan(const Profile& profile, const CostModel& cost, const PlanOptions& options);

}  // namespace fairkv::placement
