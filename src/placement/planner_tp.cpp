// tp and balanced: the planners that keep tp's unit count per device.
#include <stdexcept>

#include <fmt/format.h>

#include "placement/partition.h"
#include "placement/planner_util.h"
#include "placement/planners.h"

namespace fairkv::placement {

namespace {

struct NamedPlanner {
  const char* name;
  PlannerKind kind;
};
constexpr NamedPlanner kPlanners[] = {{"tp", PlannerKind::Tp},
                                      {"balanced", PlannerKind::Balanced},
                                      {"fair-copy", PlannerKind::FairCopy},
                                      {"split", PlannerKind::Split}};

}  // namespace

const char* planner_name(PlannerKind k) {
  for (const NamedPlanner& p : kPlanners)
    if (p.kind == k) return p.name;
  return "?";
}

bool is_planner_name(const std::string& name) {
  for (const NamedPlanner& p : kPlanners)
    if (name == p.name) return true;
  return false;
}

PlannerKind planner_from_name(const std::string& name) {
  for (const NamedPlanner& p : kPlanners)
    if (name == p.name) return p.kind;
  throw std::invalid_argument(
      fmt::format("unknown planner \"{}\" (expected tp, balanced, fair-copy or split)", name));
}

std::vector<int> tp_counts(int kv_heads, int devices) {
  if (kv_heads < 1 || devices < 1)
    throw std::invalid_argument("tp_counts: need at least one KV head and one device");
  if (devices >= kv_heads) return std::vector<int>(size_t(devices), 1);
  std::vector<int> c(size_t(devices), kv_heads / devices);
  for (int d = 0; d < kv_heads % devices; ++d) ++c[size_t(d)];
  return c;
}

LayerPlacement tp_layer(int kv_heads, int devices, int group) {
  LayerPlacement layer;
  layer.devices.resize(size_t(devices));
  if (devices <= kv_heads) {
    const auto counts = tp_counts(kv_heads, devices);
    int h = 0;
    for (int d = 0; d < devices; ++d)
      for (int i = 0; i < counts[size_t(d)]; ++i) layer.devices[size_t(d)].push_back({h++, 1.0});
  } else {
    // vLLM's rule: every KV head on R/H devices, each with an equal part of the query heads.
    if (devices % kv_heads != 0 || group % (devices / kv_heads) != 0)
      throw std::invalid_argument(fmt::format(
          "tp with {} devices and {} KV heads ({} query heads each) needs the device count to be "
          "a multiple of the KV heads and to divide the query heads",
          devices, kv_heads, group));
    const int copies = devices / kv_heads;
    for (int d = 0; d < devices; ++d)
      layer.devices[size_t(d)].push_back(
          {d / copies, 1.0 / copies, copies == 1 ? ShareKind::Whole : ShareKind::Query, 0.0});
  }
  normalize(layer);
  return layer;
}

LayerPlan balanced_layer(std::span<const double> tokens, const CostModel& cost, int devices,
                         int64_t node_limit) {
  const int heads = int(tokens.size());
  if (devices >= heads) {
    // One unit (or one query slice) per device: nothing to permute, so this is tp's layout.
    try {
      return {tp_layer(heads, devices, cost.group), true};
    } catch (const std::invalid_argument& e) {
      throw std::invalid_argument(
          fmt::format("balanced keeps tp's layout when devices >= KV heads, and {}", e.what()));
    }
  }
  const auto counts = tp_counts(heads, devices);
  std::vector<double> load(tokens.size());
  for (size_t u = 0; u < load.size(); ++u) load[u] = tokens[u] + cost.unit_weight_load();
  std::vector<int> initial;
  for (int d = 0; d < devices; ++d)
    for (int i = 0; i < counts[size_t(d)]; ++i) initial.push_back(d);
  const auto r = partition_balanced(load, counts, node_limit, initial);
  return {to_layer(whole_holdings(r.bin), devices, ShareKind::Whole), r.proven};
}

}  // namespace fairkv::placement
