// Balanced partition with fixed bin sizes: put n items into bins so that bin b receives exactly
// count[b] items and the heaviest bin is as light as possible. This is the `balanced` planner's
// problem for one layer (items: units, bins: devices, counts: tp's units per device).
#pragma once

#include <cstdint>
#include <span>
#include <vector>

namespace fairkv::placement {

struct PartitionResult {
  std::vector<int> bin;  // bin of every item
  double max_load = 0;   // heaviest bin
  bool proven = false;   // max_load is optimal (within 1e-12 relative)
  int64_t nodes = 0;     // search nodes visited
};

// Instances up to this many items are always solved exactly: when branch and bound runs out of
// nodes, a dynamic program over subsets of items settles them (2^n states).
constexpr int kSubsetSearchItems = 16;

// Exact branch and bound (items by decreasing load; each bin's bound counts the smallest items it
// must still take; bins in the same state are tried once), started from the better of `initial`
// (if given, e.g. tp's layout) and a longest-first greedy improved by swaps, so that a result is
// always available. Stops after node_limit nodes: the result is then the best found, with
// proven = false, except up to kSubsetSearchItems items, which the subset program finishes.
// Ties keep the earlier candidate, so `initial` wins when it is optimal.
PartitionResult partition_balanced(std::span<const double> load, std::span<const int> count,
                                   int64_t node_limit, std::span<const int> initial = {});

// The heuristic alone: longest-first greedy into bins with free slots, then swaps between the
// heaviest bin and the others while they lower it.
std::vector<int> partition_greedy(std::span<const double> load, std::span<const int> count);
void improve_by_swaps(std::span<const double> load, std::vector<int>& bin, int bins);

}  // namespace fairkv::placement
