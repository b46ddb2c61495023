// Helpers shared by the planners (internal to the placement module).
#pragma once

#include <span>
#include <vector>

#include "placement/cost.h"
#include "placement/placement.h"

namespace fairkv::placement {

// Where a unit's parts are: part is a fraction of the unit (its shares sum to 1).
struct Holding {
  int device = 0;
  double part = 1;
};
using Holdings = std::vector<std::vector<Holding>>;  // [unit]

// Every unit whole on the given device.
Holdings whole_holdings(std::span<const int> device_of_unit);
// Device loads of a holding: each part reads its unit's weights, or with token_slices only the
// part on the unit's last device (its tail, cost.h).
std::vector<double> holding_loads(const Holdings& h, std::span<const double> tokens,
                                  const CostModel& cost, int devices, bool token_slices = false);
int holding_replicas(const Holdings& h);
// The layer with kind `split_kind` for units in several parts (whole otherwise), normalized.
LayerPlacement to_layer(const Holdings& h, int devices, ShareKind split_kind);

// How good a layer's loads are: the maximum first, then how many devices sit at it (lowering one
// of several equal maxima is progress that the maximum alone does not show).
struct Score {
  double max = 0;
  int at_max = 0;
};
Score score(std::span<const double> loads, double tol);
bool better(const Score& a, const Score& b, double tol);

// Tolerance for comparing loads of one layer: relative to its total.
double load_tolerance(std::span<const double> tokens, const CostModel& cost);

}  // namespace fairkv::placement
