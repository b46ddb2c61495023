// Planning a whole model: every layer, then the memory check.
#include <algorithm>
#include <numeric>

#include <fmt/format.h>

#include "placement/evaluate.h"
#include "placement/planners.h"
#include "placement/rebalance.h"

namespace fairkv::placement {

namespace {

// Devices are interchangeable within a layer, so each layer's devices are relabelled: its fullest
// device goes where the layers before left the most room. A layer's loads do not change, but
// without this the heaviest part of every layer would tend to land on the same device (the
// planners break ties by device order) and that device would run out of memory first.
void spread_memory(LayerPlacement& layer, std::span<const double> tokens, const CostModel& cost,
                   int devices, std::vector<double>& held) {
  const auto weights = layer_weight_bytes(layer, cost, devices);
  std::vector<double> bytes(static_cast<size_t>(devices), 0.0);
  for (int d = 0; d < devices; ++d) {
    bytes[size_t(d)] = weights[size_t(d)];
    for (const Share& s : layer.devices[size_t(d)])
      bytes[size_t(d)] +=
          (s.kind == ShareKind::Query ? 1.0 : s.share) * tokens[size_t(s.head)] * cost.load_bytes();
  }
  std::vector<int> fullest(static_cast<size_t>(devices)), emptiest(static_cast<size_t>(devices));
  std::iota(fullest.begin(), fullest.end(), 0);
  std::iota(emptiest.begin(), emptiest.end(), 0);
  std::stable_sort(fullest.begin(), fullest.end(),
                   [&](int a, int b) { return bytes[size_t(a)] > bytes[size_t(b)]; });
  std::stable_sort(emptiest.begin(), emptiest.end(),
                   [&](int a, int b) { return held[size_t(a)] < held[size_t(b)]; });
  LayerPlacement out;
  out.devices.resize(static_cast<size_t>(devices));
  for (int i = 0; i < devices; ++i) {
    out.devices[size_t(emptiest[size_t(i)])] = layer.devices[size_t(fullest[size_t(i)])];
    held[size_t(emptiest[size_t(i)])] += bytes[size_t(fullest[size_t(i)])];
  }
  normalize(out);
  // Relabelling moves token slices' tails (the last part in device order reads the weights):
  // re-divide the shares for the new order and keep it only when the layer gets no heavier.
  const bool slices = std::any_of(layer.devices.begin(), layer.devices.end(), [](const auto& d) {
    return std::any_of(d.begin(), d.end(),
                       [](const Share& s) { return s.kind == ShareKind::Tokens; });
  });
  if (slices) {
    LayerPlacement moved = rebalance_layer(out, tokens, cost, devices);
    const double before = max_device_load(layer, tokens, cost, devices);
    if (max_device_load(moved, tokens, cost, devices) > before * (1 + 1e-12)) {
      // keep the planner's labels: undo the bookkeeping of this layer's bytes
      for (int i = 0; i < devices; ++i) {
        held[size_t(emptiest[size_t(i)])] -= bytes[size_t(fullest[size_t(i)])];
        held[size_t(i)] += bytes[size_t(i)];
      }
      return;
    }
    out = std::move(moved);
  }
  layer = std::move(out);
}

Placement plan_with(const Profile& profile, const CostModel& cost, const PlanOptions& o,
                    int replicas) {
  Placement p;
  p.planner = planner_name(o.planner);
  p.devices = o.devices;
  p.kv_heads = profile.kv_heads;
  p.batch = cost.batch;
  std::vector<double> held(static_cast<size_t>(o.devices), 0.0);
  for (int l = 0; l < profile.layers; ++l) {
    const auto& t = profile.tokens[size_t(l)];
    LayerPlan lp;
    switch (o.planner) {
      case PlannerKind::Tp:
        lp = {tp_layer(profile.kv_heads, o.devices, cost.group), true};
        break;
      case PlannerKind::Balanced:
        lp = balanced_layer(t, cost, o.devices, o.node_limit);
        break;
      case PlannerKind::FairCopy:
        lp = fair_copy_layer(t, cost, o.devices, replicas, o.node_limit);
        break;
      case PlannerKind::Split:
        lp = split_layer(t, cost, o.devices, replicas, o.node_limit);
        break;
    }
    if (o.planner != PlannerKind::Tp) spread_memory(lp.layer, t, cost, o.devices, held);
    p.layers.push_back(std::move(lp.layer));
    p.proven.push_back(lp.proven);
  }
  summarize(p, profile.tokens, cost);
  return p;
}

// The first device over the limit, or -1.
int over_limit(const std::vector<DeviceMemory>& mem, double limit) {
  for (size_t d = 0; d < mem.size(); ++d)
    if (mem[d].total() > limit) return int(d);
  return -1;
}

// tp's layout in place of p when p is not predicted faster than tp by more than the model's error
// (and tp fits the memory): balance bought with replicas must pay for them.
Placement tp_unless_faster(Placement p, const Profile& profile, const CostModel& cost,
                           const PlanOptions& o) {
  PlanOptions to = o;
  to.planner = PlannerKind::Tp;
  Placement tp;
  try {
    tp = plan_with(profile, cost, to, 0);
  } catch (const std::invalid_argument&) {
    return p;  // tp cannot place these heads on these devices: nothing to compare with
  }
  if (o.device_memory > 0 &&
      over_limit(device_memory(tp, profile.tokens, cost), o.device_memory) >= 0)
    return p;
  const double mine = step_time(p.max_load, cost, o.devices);
  const double theirs = step_time(tp.max_load, cost, o.devices);
  if (mine < theirs * (1.0 - cost.error)) return p;
  tp.note = fmt::format(
      "{}: predicted step {:.3f}x of tp's, not faster beyond the cost model's error of {:.1f}%: "
      "tp stands",
      planner_name(o.planner), theirs > 0 ? mine / theirs : 1.0, 100.0 * cost.error);
  return tp;
}

}  // namespace

int replica_budget(const PlanOptions& o, int kv_heads) {
  if (o.planner != PlannerKind::FairCopy && o.planner != PlannerKind::Split) return 0;
  // Default: R - 1 batch replicas for fair-copy (each reads and holds the unit's weights); twice
  // that for split, whose extra token slices cost neither weight reads nor weight memory.
  const int64_t k = o.replicas >= 0                   ? o.replicas
                    : o.planner == PlannerKind::Split ? 2 * (o.devices - 1)
                                                      : o.devices - 1;
  return int(std::min<int64_t>(k, int64_t(kv_heads) * (o.devices - 1)));
}

Placement plan(const Profile& profile, const CostModel& cost, const PlanOptions& o) {
  if (o.devices < 1 || o.devices > kMaxDevices)
    throw std::invalid_argument(
        fmt::format("devices: expected 1 to {}, got {}", kMaxDevices, o.devices));
  const int k = replica_budget(o, profile.kv_heads);
  const bool replicating = o.planner == PlannerKind::FairCopy || o.planner == PlannerKind::Split;
  for (int r = k;; --r) {
    Placement p = plan_with(profile, cost, o, r);
    const bool weigh = o.tp_unless_faster && o.planner != PlannerKind::Tp;
    if (o.device_memory <= 0) return weigh ? tp_unless_faster(std::move(p), profile, cost, o) : p;
    const auto mem = device_memory(p, profile.tokens, cost);
    const int d = over_limit(mem, o.device_memory);
    if (d < 0) return weigh ? tp_unless_faster(std::move(p), profile, cost, o) : p;
    if (!replicating || r <= 0) {
      const auto& m = mem[size_t(d)];
      constexpr double gib = 1024.0 * 1024.0 * 1024.0;
      throw DoesNotFit(fmt::format(
          "{} on {} devices does not fit: device {} needs {:.2f} GiB (weights {:.2f} GiB, KV "
          "{:.2f} GiB) but has {:.2f} GiB{}",
          planner_name(o.planner), o.devices, d, m.total() / gib, m.weight_bytes / gib,
          m.kv_bytes / gib, o.device_memory / gib, replicating ? ", even without replicas" : ""));
    }
  }
}

}  // namespace fairkv::placement
