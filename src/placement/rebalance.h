// Rebalancing: the weights of every unit sit on a fixed set of devices (its holders); given the
// actual loads, choose how much of each unit every holder does so that the heaviest device is as
// light as possible. The runtime calls this after each prefill, when the compression has fixed the
// lengths of the batch; the `split` planner uses it to set its shares.
//
// The problem is the linear program
//   minimise T  subject to  base[d] + sum_u x[u][d] * load[u] <= T  for every device d,
//                           sum_{d holds u} x[u][d] = 1, x >= 0,
// and its optimum is the largest "Hall ratio" over device sets S:
//   T* = max_S (sum of the loads of the units held only inside S + sum of base over S) / |S|.
// rebalance() finds T* exactly without enumerating sets: it starts from the ratios of all devices
// and of single devices, checks T with a max flow (units -> holders -> sink with capacity
// T - base[d]) and, when the flow falls short, raises T to the ratio of the min cut's device set,
// which is violated at T. The ratio only grows and is always that of some set, so when the flow
// succeeds T is optimal: the shares achieve it and the set proves no shares do better.
#pragma once

#include <span>
#include <utility>
#include <vector>

#include "placement/cost.h"
#include "placement/placement.h"

namespace fairkv::placement {

struct RebalanceProblem {
  std::vector<double> load;               // per unit: the work to divide among its holders
  std::vector<std::vector<int>> holders;  // per unit: the devices that hold its weights, distinct
  std::vector<double> base;               // per device: load that does not move (weight reads)
};

struct RebalanceResult {
  double max_load = 0;                     // T*
  std::vector<std::vector<double>> share;  // share[u][i]: part of unit u done by holders[u][i]
  std::vector<int> critical;               // a device set whose Hall ratio is T*
  int flows = 0;                           // max flows computed
};

// Throws std::invalid_argument on malformed problems (no holder, holder out of range or repeated,
// negative or non-finite values).
RebalanceResult rebalance(const RebalanceProblem& problem);

// The Hall ratio of one device set (a lower bound on the optimum for any set).
double hall_ratio(const RebalanceProblem& problem, std::span<const int> devices);

// Token slices of units among fixed holders: sorts each unit's holders by device and adds the
// unit's weight read to the base of its last holder, the tail, the fixed cost of a part to every
// holder, and when some unit has several holders the merge's collectives to every device
// (cost.h). base must have one entry per device.
void add_token_slice_units(RebalanceProblem& prob, std::span<const double> tokens,
                           std::vector<std::vector<int>> holders, const CostModel& cost);
// The parts of unit u in a solved problem built by add_token_slice_units: (device, share) in
// device order, without empty parts except the tail, which stays even when empty (it projects
// and appends for the others). Shares renormalised to sum to 1.
std::vector<std::pair<int, double>> token_slice_parts(const RebalanceProblem& prob,
                                                      const RebalanceResult& r, size_t u);

// Recomputes a layer's shares from actual unit loads `tokens` (tokens per sequence, the mean over
// the batch), keeping which devices hold which units. Units split among holders become token
// slices (they work at any batch size); query slices (tp replication) are left as they are.
// Holders whose optimal part is empty are dropped from the unit, except its tail.
LayerPlacement rebalance_layer(const LayerPlacement& layer, std::span<const double> tokens,
                               const CostModel& cost, int devices);

}  // namespace fairkv::placement
