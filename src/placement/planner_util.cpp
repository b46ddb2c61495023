#include "placement/planner_util.h"

#include <algorithm>

namespace fairkv::placement {

Holdings whole_holdings(std::span<const int> device_of_unit) {
  Holdings h(device_of_unit.size());
  for (size_t u = 0; u < device_of_unit.size(); ++u) h[u] = {{device_of_unit[u], 1.0}};
  return h;
}

std::vector<double> holding_loads(const Holdings& h, std::span<const double> tokens,
                                  const CostModel& cost, int devices, bool token_slices) {
  std::vector<double> load(size_t(devices), 0.0);
  for (size_t u = 0; u < h.size(); ++u) {
    int tail = -1;
    for (const Holding& x : h[u]) tail = std::max(tail, x.device);
    for (const Holding& x : h[u]) {
      const bool reads_weights = !token_slices || h[u].size() == 1 || x.device == tail;
      load[size_t(x.device)] +=
          x.part * tokens[u] + (reads_weights ? cost.unit_weight_load() : 0) + cost.part_load;
    }
  }
  const bool sliced = token_slices && std::any_of(h.begin(), h.end(), [](const auto& parts) {
                        return parts.size() > 1;
                      });
  if (sliced)
    for (double& x : load) x += cost.split_layer_load;
  return load;
}

int holding_replicas(const Holdings& h) {
  int r = 0;
  for (const auto& parts : h) r += int(parts.size()) - 1;
  return r;
}

LayerPlacement to_layer(const Holdings& h, int devices, ShareKind split_kind) {
  LayerPlacement layer;
  layer.devices.resize(size_t(devices));
  for (size_t u = 0; u < h.size(); ++u)
    for (const Holding& x : h[u]) {
      Share s;
      s.head = int(u);
      s.share = h[u].size() == 1 ? 1.0 : x.part;
      s.kind = h[u].size() == 1 ? ShareKind::Whole : split_kind;
      layer.devices[size_t(x.device)].push_back(s);
    }
  normalize(layer);
  return layer;
}

Score score(std::span<const double> loads, double tol) {
  Score s;
  for (double x : loads) s.max = std::max(s.max, x);
  for (double x : loads) s.at_max += x >= s.max - tol ? 1 : 0;
  return s;
}

bool better(const Score& a, const Score& b, double tol) {
  if (a.max < b.max - tol) return true;
  return a.max <= b.max + tol && a.at_max < b.at_max;
}

double load_tolerance(std::span<const double> tokens, const CostModel& cost) {
  double total = 0;
  for (double t : tokens) total += t + cost.unit_weight_load() + cost.part_load;
  return 1e-12 * std::max(total, 1e-300);
}

}  // namespace fairkv::placement
