// Placements: for every layer and device, the units the device serves and its share of each.
//
// The JSON file (`fairkv plan --json`, read by the runtime):
//   {"devices": R, "kv_heads": H, "planner": NAME, "batch": B,
//    "layers": [ [ [ {"head": h, "share": s, "kind": K, "offset": o}, ... ]  one list per device
//                ]  one entry per layer ],
//    "max_load": [per layer], "lower_bound": [per layer], "replicas": [per layer]}
// Loads are in the profile's unit, tokens per sequence, with weight reads converted (cost.h).
// Kinds: "whole" (share 1), "batch" (a slice of the sequences), "tokens" (a slice of every
// sequence's cached tokens, merged by log-sum-exp; only the last slice in device order, the tail,
// reads the unit's weights, and it alone may have share 0), "query" (a slice of the unit's query
// heads over the whole KV, what tp does with more devices than KV heads; the KV is then
// duplicated). The parts of a unit are contiguous and follow device order: the part on a device
// covers [offset, offset + share) of the unit's sequences (batch), tokens (tokens) or query heads
// (query).
#pragma once

#include <span>
#include <string>
#include <utility>
#include <vector>

#include <nlohmann/json_fwd.hpp>

#include "placement/cost.h"
#include "placement/profile.h"

namespace fairkv::placement {

enum class ShareKind { Whole, Batch, Tokens, Query };
const char* share_kind_name(ShareKind k);

struct Share {
  int head = 0;
  double share = 1;
  ShareKind kind = ShareKind::Whole;
  double offset = 0;
};

// One layer: devices[d] lists what device d serves, sorted by head.
struct LayerPlacement {
  std::vector<std::vector<Share>> devices;
};

struct Placement {
  std::string planner;
  int devices = 0;
  int kv_heads = 0;
  int batch = 1;
  std::vector<LayerPlacement> layers;
  // Per layer, filled by summarize():
  std::vector<double> max_load;     // heaviest device
  std::vector<double> lower_bound;  // mean device load without replicas: no placement does better
  std::vector<int> replicas;        // (unit, device) pairs beyond one per unit
  std::vector<bool> proven;  // the planner proved max_load optimal among the plans it may make
  // Set when the planner asked for was not predicted faster than tp by more than the cost
  // model's error, so tp's layout stands in its place: says which planner and by how much.
  std::string note;
};

// Loads of every device of one layer, given the layer's unit loads (tokens per sequence).
std::vector<double> device_loads(const LayerPlacement& layer, std::span<const double> tokens,
                                 const CostModel& cost, int devices);
double max_device_load(const LayerPlacement& layer, std::span<const double> tokens,
                       const CostModel& cost, int devices);
// The mean device load when every unit is read once: a lower bound for any placement.
double lower_bound(std::span<const double> tokens, const CostModel& cost, int devices);
int replica_count(const LayerPlacement& layer, int kv_heads);
bool has_token_slices(const LayerPlacement& layer);
// Per unit, the last device in device order that serves it (-1: none). For token slices that
// device is the unit's tail: it appends the new rows, projects the queries for every part and
// applies Wo; the other slices hold only KV.
std::vector<int> tail_devices(const LayerPlacement& layer, int kv_heads);

// Sorts each device's list by head and lays every unit's parts out in device order (offsets).
void normalize(LayerPlacement& layer);

// Checks that every unit of the layer is covered exactly once (shares sum to 1 within 1e-9), that
// heads are in range and appear once per device, and that kinds are consistent. Throws
// FormatError naming `where`.
void check_layer(const LayerPlacement& layer, int kv_heads, int devices, const std::string& where);

// The query heads [first, second) of a unit's `group` that a query share holds: its offsets
// rounded to whole heads (the runtime's shards hold exactly these).
std::pair<int, int> query_heads(const Share& s, int group);

// Checks that every query share of a normalized placement holds at least one of its unit's
// `group` query heads: a thinner one would serve the unit with no weights to serve it with. The
// group is the model's, which a placement file does not carry, so this runs once the model is
// known. Throws FormatError naming `where`, the layer, device, head and share.
void check_query_shares(const Placement& p, int group, const std::string& where);

// Fills max_load, lower_bound and replicas from the profile's tokens.
void summarize(Placement& p, const UnitTable& tokens, const CostModel& cost);

// Per-request evaluation: each layer's heaviest device for one request's lengths (L x H).
std::vector<double> max_loads(const Placement& p, const UnitTable& tokens, const CostModel& cost);

// Memory of every device over all layers: weights (its units' slices plus 1/R of every MLP) and
// the KV of the batch at the given lengths. Embedding and output matrices are not counted.
struct DeviceMemory {
  double weight_bytes = 0;
  double kv_bytes = 0;
  double total() const { return weight_bytes + kv_bytes; }
};
std::vector<DeviceMemory> device_memory(const Placement& p, const UnitTable& tokens,
                                        const CostModel& cost);
// Attention weight bytes of every device in one layer.
std::vector<double> layer_weight_bytes(const LayerPlacement& layer, const CostModel& cost,
                                       int devices);

nlohmann::json placement_to_json(const Placement& p);
// Reads and checks a placement (every layer as check_layer does). Offsets are recomputed when
// absent and checked when present.
Placement placement_from_json(const nlohmann::json& j, const std::string& where);
Placement read_placement(const std::string& path);
void write_placement(const Placement& p, const std::string& path);

}  // namespace fairkv::placement
