#include "placement/placement.h"

#include <algorithm>
#include <cmath>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "placement/json_check.h"

namespace fairkv::placement {

namespace {

constexpr double kShareTolerance = 1e-9;

// The load a device reads for one share of a unit with t tokens per sequence. `tail`: the share
// is its unit's last part in device order; a token slice that is not reads only its KV (its
// queries arrive from the tail, which alone projects and applies Wo).
double share_load(const Share& s, double t, const CostModel& cost, bool tail) {
  if (s.kind == ShareKind::Query)
    return t + cost.kv_weight_load() + s.share * cost.qo_weight_load() + cost.part_load;
  if (s.kind == ShareKind::Tokens && !tail) return s.share * t + cost.part_load;
  return s.share * t + cost.unit_weight_load() + cost.part_load;
}

double share_weight_bytes(const Share& s, const CostModel& cost) {
  if (s.kind == ShareKind::Query) return cost.kv_weight_bytes() + s.share * cost.qo_weight_bytes();
  return cost.unit_weight_bytes();
}

ShareKind kind_from_name(const std::string& name, const std::string& where,
                         const std::string& path) {
  if (name == "whole") return ShareKind::Whole;
  if (name == "batch") return ShareKind::Batch;
  if (name == "tokens") return ShareKind::Tokens;
  if (name == "query") return ShareKind::Query;
  throw FormatError(
      fmt::format("{}: {}: expected \"whole\", \"batch\", \"tokens\" or \"query\", got \"{}\"",
                  where, path, name));
}

}  // namespace

const char* share_kind_name(ShareKind k) {
  switch (k) {
    case ShareKind::Whole:
      return "whole";
    case ShareKind::Batch:
      return "batch";
    case ShareKind::Tokens:
      return "tokens";
    case ShareKind::Query:
      return "query";
  }
  return "?";
}

std::vector<double> device_loads(const LayerPlacement& layer, std::span<const double> tokens,
                                 const CostModel& cost, int devices) {
  std::vector<double> load(size_t(devices), 0.0);
  const auto tail = tail_devices(layer, int(tokens.size()));
  for (size_t d = 0; d < layer.devices.size() && d < load.size(); ++d)
    for (const Share& s : layer.devices[d])
      load[d] += share_load(s, tokens[size_t(s.head)], cost, tail[size_t(s.head)] == int(d));
  if (has_token_slices(layer))
    for (double& x : load) x += cost.split_layer_load;
  return load;
}

double max_device_load(const LayerPlacement& layer, std::span<const double> tokens,
                       const CostModel& cost, int devices) {
  const auto load = device_loads(layer, tokens, cost, devices);
  return load.empty() ? 0.0 : *std::max_element(load.begin(), load.end());
}

double lower_bound(std::span<const double> tokens, const CostModel& cost, int devices) {
  double sum = 0;
  for (double t : tokens) sum += t + cost.unit_weight_load() + cost.part_load;
  return sum / double(devices);
}

std::vector<int> tail_devices(const LayerPlacement& layer, int kv_heads) {
  std::vector<int> tail(size_t(kv_heads), -1);
  for (size_t d = 0; d < layer.devices.size(); ++d)
    for (const Share& s : layer.devices[d])
      if (s.head >= 0 && s.head < kv_heads) tail[size_t(s.head)] = int(d);
  return tail;
}

bool has_token_slices(const LayerPlacement& layer) {
  for (const auto& dev : layer.devices)
    for (const Share& s : dev)
      if (s.kind == ShareKind::Tokens) return true;
  return false;
}

int replica_count(const LayerPlacement& layer, int kv_heads) {
  int pairs = 0;
  for (const auto& dev : layer.devices) pairs += int(dev.size());
  return pairs - kv_heads;
}

void normalize(LayerPlacement& layer) {
  for (auto& dev : layer.devices)
    std::sort(dev.begin(), dev.end(),
              [](const Share& a, const Share& b) { return a.head < b.head; });
  int heads = 0;
  for (const auto& dev : layer.devices)
    for (const Share& s : dev) heads = std::max(heads, s.head + 1);
  std::vector<double> next(size_t(heads), 0.0);
  for (auto& dev : layer.devices)
    for (Share& s : dev) {
      s.offset = next[size_t(s.head)];
      next[size_t(s.head)] += s.share;
    }
}

void check_layer(const LayerPlacement& layer, int kv_heads, int devices, const std::string& where) {
  if (int(layer.devices.size()) != devices)
    throw FormatError(
        fmt::format("{}: expected {} device lists, got {}", where, devices, layer.devices.size()));
  std::vector<double> total(size_t(kv_heads), 0.0);
  std::vector<int> parts(size_t(kv_heads), 0);
  std::vector<int> kinds(size_t(kv_heads), -1);
  std::vector<std::pair<int, int>> empty_parts;  // (head, device)
  for (int d = 0; d < devices; ++d) {
    std::vector<bool> seen(size_t(kv_heads), false);
    for (const Share& s : layer.devices[size_t(d)]) {
      const std::string at = fmt::format("{}: device {}: head {}", where, d, s.head);
      if (s.head < 0 || s.head >= kv_heads)
        throw FormatError(
            fmt::format("{}: out of range (the model has {} KV heads)", at, kv_heads));
      if (seen[size_t(s.head)]) throw FormatError(at + ": listed twice on the device");
      seen[size_t(s.head)] = true;
      // A token slice may be empty only as its unit's tail (checked below): it still projects
      // the queries and appends the new rows.
      const bool empty_ok = s.kind == ShareKind::Tokens && s.share == 0;
      if (!(s.share > 0 || empty_ok) || s.share > 1 + kShareTolerance)
        throw FormatError(fmt::format("{}: share {} is not in (0, 1]", at, s.share));
      if (s.share == 0) empty_parts.push_back({s.head, d});
      if (s.kind == ShareKind::Whole && std::abs(s.share - 1) > kShareTolerance)
        throw FormatError(fmt::format("{}: a whole share must be 1, got {}", at, s.share));
      const int k = int(s.kind);
      if (kinds[size_t(s.head)] >= 0 && kinds[size_t(s.head)] != k)
        throw FormatError(at + ": the parts of a unit must all be of one kind");
      kinds[size_t(s.head)] = k;
      total[size_t(s.head)] += s.share;
      parts[size_t(s.head)] += 1;
    }
  }
  for (int h = 0; h < kv_heads; ++h) {
    if (parts[size_t(h)] == 0)
      throw FormatError(fmt::format("{}: head {} is served by no device", where, h));
    if (std::abs(total[size_t(h)] - 1) > kShareTolerance)
      throw FormatError(
          fmt::format("{}: head {}: shares sum to {}, not 1", where, h, total[size_t(h)]));
    if (parts[size_t(h)] > 1 && kinds[size_t(h)] == int(ShareKind::Whole))
      throw FormatError(
          fmt::format("{}: head {}: a whole unit on {} devices", where, h, parts[size_t(h)]));
  }
  const auto tail = tail_devices(layer, kv_heads);
  for (const auto& [h, d] : empty_parts)
    if (tail[size_t(h)] != d)
      throw FormatError(
          fmt::format("{}: device {}: head {}: an empty token slice must be the unit's last part",
                      where, d, h));
}

std::pair<int, int> query_heads(const Share& s, int group) {
  return {int(std::lround(s.offset * group)), int(std::lround((s.offset + s.share) * group))};
}

void check_query_shares(const Placement& p, int group, const std::string& where) {
  for (size_t l = 0; l < p.layers.size(); ++l)
    for (size_t d = 0; d < p.layers[l].devices.size(); ++d)
      for (const Share& s : p.layers[l].devices[d]) {
        if (s.kind != ShareKind::Query) continue;
        const auto [q0, q1] = query_heads(s, group);
        if (q1 <= q0)
          throw FormatError(fmt::format(
              "{}: layers[{}]: device {}: head {}: query share {} holds none of the unit's {} "
              "query heads (its part [{:.9g}, {:.9g}) of them rounds to no whole head): a query "
              "share must hold at least one",
              where, l, d, s.head, s.share, group, s.offset * group, (s.offset + s.share) * group));
      }
}

void summarize(Placement& p, const UnitTable& tokens, const CostModel& cost) {
  const size_t n = p.layers.size();
  p.max_load.assign(n, 0.0);
  p.lower_bound.assign(n, 0.0);
  p.replicas.assign(n, 0);
  p.proven.resize(n, false);
  for (size_t l = 0; l < n; ++l) {
    p.max_load[l] = max_device_load(p.layers[l], tokens[l], cost, p.devices);
    p.lower_bound[l] = lower_bound(tokens[l], cost, p.devices);
    p.replicas[l] = replica_count(p.layers[l], p.kv_heads);
  }
}

std::vector<double> max_loads(const Placement& p, const UnitTable& tokens, const CostModel& cost) {
  std::vector<double> out(p.layers.size());
  for (size_t l = 0; l < p.layers.size(); ++l)
    out[l] = max_device_load(p.layers[l], tokens[l], cost, p.devices);
  return out;
}

std::vector<double> layer_weight_bytes(const LayerPlacement& layer, const CostModel& cost,
                                       int devices) {
  std::vector<double> w(size_t(devices), 0.0);
  int heads = 0;
  for (const auto& dev : layer.devices)
    for (const Share& s : dev) heads = std::max(heads, s.head + 1);
  const auto tail = tail_devices(layer, heads);
  for (size_t d = 0; d < layer.devices.size() && d < w.size(); ++d)
    for (const Share& s : layer.devices[d])
      // A token slice other than the tail holds no weights (the tail projects for it).
      if (s.kind != ShareKind::Tokens || tail[size_t(s.head)] == int(d))
        w[d] += share_weight_bytes(s, cost);
  return w;
}

std::vector<DeviceMemory> device_memory(const Placement& p, const UnitTable& tokens,
                                        const CostModel& cost) {
  std::vector<DeviceMemory> mem(size_t(p.devices));
  const double seq_token_bytes = double(cost.batch) * cost.token_bytes();
  for (size_t l = 0; l < p.layers.size(); ++l) {
    const auto w = layer_weight_bytes(p.layers[l], cost, p.devices);
    for (int d = 0; d < p.devices; ++d) {
      mem[size_t(d)].weight_bytes += w[size_t(d)] + cost.mlp_weight_bytes() / p.devices;
      for (const Share& s : p.layers[l].devices[size_t(d)]) {
        // A query slice attends over the whole KV of its unit, so it keeps a full copy.
        const double part = s.kind == ShareKind::Query ? 1.0 : s.share;
        mem[size_t(d)].kv_bytes += part * tokens[l][size_t(s.head)] * seq_token_bytes;
      }
    }
  }
  return mem;
}

nlohmann::json placement_to_json(const Placement& p) {
  nlohmann::json j;
  j["devices"] = p.devices;
  j["kv_heads"] = p.kv_heads;
  j["planner"] = p.planner;
  j["batch"] = p.batch;
  if (!p.note.empty()) j["note"] = p.note;
  nlohmann::json layers = nlohmann::json::array();
  for (const auto& layer : p.layers) {
    nlohmann::json devs = nlohmann::json::array();
    for (const auto& dev : layer.devices) {
      nlohmann::json list = nlohmann::json::array();
      for (const Share& s : dev)
        list.push_back({{"head", s.head},
                        {"share", s.share},
                        {"kind", share_kind_name(s.kind)},
                        {"offset", s.offset}});
      devs.push_back(std::move(list));
    }
    layers.push_back(std::move(devs));
  }
  j["layers"] = std::move(layers);
  j["max_load"] = p.max_load;
  j["lower_bound"] = p.lower_bound;
  j["replicas"] = p.replicas;
  return j;
}

Placement placement_from_json(const nlohmann::json& j, const std::string& where) {
  const JsonCheck check{where};
  check.object(j, "placement");
  Placement p;
  p.devices = check.positive_int(check.field(j, "devices"), "devices");
  if (j.contains("planner")) p.planner = check.string(j["planner"], "planner");
  if (j.contains("batch")) p.batch = check.positive_int(j["batch"], "batch");
  if (j.contains("note")) p.note = check.string(j["note"], "note");
  const auto& layers = check.field(j, "layers");
  if (!layers.is_array() || layers.empty())
    throw FormatError(fmt::format("{}: layers: expected a non-empty array of layers, got {}", where,
                                  brief(layers)));
  int max_head = -1;
  std::vector<std::vector<bool>> has_offset(layers.size());
  for (size_t l = 0; l < layers.size(); ++l) {
    const std::string lp = fmt::format("layers[{}]", l);
    check.array_of_size(layers[l], lp, p.devices);
    LayerPlacement layer;
    layer.devices.resize(size_t(p.devices));
    for (int d = 0; d < p.devices; ++d) {
      const std::string dp = fmt::format("{}[{}]", lp, d);
      const auto& list = layers[l][size_t(d)];
      if (!list.is_array())
        throw FormatError(
            fmt::format("{}: {}: expected an array of shares, got {}", where, dp, brief(list)));
      for (size_t i = 0; i < list.size(); ++i) {
        const std::string sp = fmt::format("{}[{}]", dp, i);
        const auto& e = list[i];
        check.object(e, sp);
        Share s;
        s.head = check.non_negative_int(check.field(e, "head"), sp + ".head");
        s.share = check.non_negative(check.field(e, "share"), sp + ".share");
        s.kind =
            kind_from_name(check.string(check.field(e, "kind"), sp + ".kind"), where, sp + ".kind");
        if (e.contains("offset")) s.offset = check.non_negative(e["offset"], sp + ".offset");
        has_offset[l].push_back(e.contains("offset"));
        max_head = std::max(max_head, s.head);
        layer.devices[size_t(d)].push_back(s);
      }
    }
    p.layers.push_back(std::move(layer));
  }
  p.kv_heads =
      j.contains("kv_heads") ? check.positive_int(j["kv_heads"], "kv_heads") : max_head + 1;
  for (size_t l = 0; l < p.layers.size(); ++l) {
    const std::string lp = fmt::format("{}: layers[{}]", where, l);
    check_layer(p.layers[l], p.kv_heads, p.devices, lp);
    LayerPlacement laid = p.layers[l];
    normalize(laid);
    // Offsets are part of the contract with the runtime: when given they must be the layout that
    // normalize() produces (parts contiguous, in device order).
    size_t k = 0;
    for (int d = 0; d < p.devices; ++d) {
      const auto& given = p.layers[l].devices[size_t(d)];
      for (const Share& s : given) {
        const bool present = has_offset[l][k++];
        auto it = std::find_if(laid.devices[size_t(d)].begin(), laid.devices[size_t(d)].end(),
                               [&](const Share& x) { return x.head == s.head; });
        if (present && std::abs(it->offset - s.offset) > kShareTolerance)
          throw FormatError(fmt::format(
              "{}: device {}: head {}: offset {} is not where the previous devices' parts end "
              "({})",
              lp, d, s.head, s.offset, it->offset));
      }
    }
    p.layers[l] = std::move(laid);
  }
  auto per_layer = [&](const char* name, auto& out) {
    if (!j.contains(name)) return;
    const auto& a = j[name];
    check.array_of_size(a, name, int(p.layers.size()));
    out.clear();
    for (size_t l = 0; l < a.size(); ++l)
      out.push_back(check.non_negative(a[l], fmt::format("{}[{}]", name, l)));
  };
  per_layer("max_load", p.max_load);
  per_layer("lower_bound", p.lower_bound);
  if (j.contains("replicas")) {
    check.array_of_size(j["replicas"], "replicas", int(p.layers.size()));
    for (size_t l = 0; l < p.layers.size(); ++l)
      p.replicas.push_back(
          check.non_negative_int(j["replicas"][l], fmt::format("replicas[{}]", l)));
  }
  return p;
}

Placement read_placement(const std::string& path) {
  return placement_from_json(read_json_file(path), path);
}

void write_placement(const Placement& p, const std::string& path) {
  write_json_file(placement_to_json(p), path);
}

}  // namespace fairkv::placement
