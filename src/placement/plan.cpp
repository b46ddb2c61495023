// Planning a whole model: every layer, then the memory check.
#include <algorithm>

#include <fmt/format.h>

#include "placement/planners.h"

namespace fairkv::placement {

namespace {

Placement plan_with(const Profile& profile, const CostModel& cost, const PlanOptions& o,
                    int replicas) {
  Placement p;
  p.planner = planner_name(o.planner);
  p.devices = o.devices;
  p.kv_heads = profile.kv_heads;
  p.batch = cost.batch;
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

}  // namespace

Placement plan(const Profile& profile, const CostModel& cost, const PlanOptions& o) {
  if (o.devices < 1) throw std::invalid_argument("plan: need at least one device");
  const int k = o.replicas < 0 ? o.devices - 1 : o.replicas;
  const bool replicating = o.planner == PlannerKind::FairCopy || o.planner == PlannerKind::Split;
  for (int r = k;; --r) {
    Placement p = plan_with(profile, cost, o, r);
    if (o.device_memory <= 0) return p;
    const auto mem = device_memory(p, profile.tokens, cost);
    const int d = over_limit(mem, o.device_memory);
    if (d < 0) return p;
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
