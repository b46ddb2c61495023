#include "serve/ranks_wire.h"

#include <optional>
#include <utility>

namespace fairkv::serve::wire {

namespace {

template <class T>
void put_optional(Writer& w, const std::optional<T>& v) {
  w.put(uint8_t(v.has_value()));
  if (v) w.put(*v);
}

template <class T>
std::optional<T> get_optional(Reader& r) {
  if (!r.get<uint8_t>()) return std::nullopt;
  return r.get<T>();
}

}  // namespace

void put_config(Writer& w, const kv::CompressionConfig& c) {
  w.put(c.policy);
  w.put(c.budget);
  w.put(c.ratio);
  w.put(c.window);
  put_optional(w, c.pool_kernel);
  put_optional(w, c.pooling);
  put_optional(w, c.alpha);
  w.put(c.pyramid_beta);
  w.put(c.gqa);
  w.put(c.sinks);
  w.put(uint8_t(c.head_importance.has_value()));
  if (c.head_importance) {
    w.put(c.head_importance->layers);
    w.put(c.head_importance->kv_heads);
    w.put_vector(c.head_importance->importance);
  }
  w.put(c.headkv_beta);
  w.put(c.cake_tau1);
  w.put(c.cake_tau2);
  w.put(c.cake_gamma);
  w.put(c.critical);
  w.put(c.critical_mass);
  put_optional(w, c.critical_share);
  w.put(c.zipvl_tau);
  w.put(c.compresskv_heads);
  w.put(c.taskkv_share);
  w.put(c.taskkv_middle);
  w.put(c.epicache_block);
  w.put(c.epicache_power);
  w.put(uint8_t(c.layer_sensitivity.has_value()));
  if (c.layer_sensitivity) w.put_vector(*c.layer_sensitivity);
}

kv::CompressionConfig get_config(Reader& r) {
  kv::CompressionConfig c;
  c.policy = r.get<kv::Policy>();
  c.budget = r.get<int64_t>();
  c.ratio = r.get<double>();
  c.window = r.get<int64_t>();
  c.pool_kernel = get_optional<int>(r);
  c.pooling = get_optional<kv::Pooling>(r);
  c.alpha = get_optional<double>(r);
  c.pyramid_beta = r.get<double>();
  c.gqa = r.get<kv::GqaCombine>();
  c.sinks = r.get<int64_t>();
  if (r.get<uint8_t>()) {
    kv::HeadImportance h;
    h.layers = r.get<int>();
    h.kv_heads = r.get<int>();
    h.importance = r.get_vector<double>();
    c.head_importance = std::move(h);
  }
  c.headkv_beta = r.get<double>();
  c.cake_tau1 = r.get<double>();
  c.cake_tau2 = r.get<double>();
  c.cake_gamma = r.get<double>();
  c.critical = r.get<bool>();
  c.critical_mass = r.get<double>();
  c.critical_share = get_optional<double>(r);
  c.zipvl_tau = r.get<double>();
  c.compresskv_heads = r.get<int>();
  c.taskkv_share = r.get<double>();
  c.taskkv_middle = r.get<int64_t>();
  c.epicache_block = r.get<int64_t>();
  c.epicache_power = r.get<double>();
  if (r.get<uint8_t>()) c.layer_sensitivity = r.get_vector<double>();
  return c;
}

void put_cost(Writer& w, const placement::CostModel& c) {
  w.put(c.batch);
  w.put(c.head_dim);
  w.put(c.group);
  w.put(c.embd);
  w.put(c.ffn);
  w.put(c.weight_bytes);
  w.put(c.kv_bytes);
  w.put(c.part_load);
  w.put(c.split_layer_load);
  w.put(c.error);
}

placement::CostModel get_cost(Reader& r) {
  placement::CostModel c;
  c.batch = r.get<int>();
  c.head_dim = r.get<int>();
  c.group = r.get<int>();
  c.embd = r.get<int64_t>();
  c.ffn = r.get<int64_t>();
  c.weight_bytes = r.get<double>();
  c.kv_bytes = r.get<double>();
  c.part_load = r.get<double>();
  c.split_layer_load = r.get<double>();
  c.error = r.get<double>();
  return c;
}

void put_placement(Writer& w, const placement::Placement& p) {
  w.put_string(p.planner);
  w.put(p.devices);
  w.put(p.kv_heads);
  w.put(p.batch);
  w.put(uint64_t(p.layers.size()));
  for (const placement::LayerPlacement& l : p.layers) {
    w.put(uint64_t(l.devices.size()));
    for (const auto& d : l.devices) w.put_vector(d);
  }
  w.put_vector(p.max_load);
  w.put_vector(p.lower_bound);
  w.put_vector(p.replicas);
  w.put_vector(std::vector<uint8_t>(p.proven.begin(), p.proven.end()));
  w.put_string(p.note);
}

placement::Placement get_placement(Reader& r) {
  placement::Placement p;
  p.planner = r.get_string();
  p.devices = r.get<int>();
  p.kv_heads = r.get<int>();
  p.batch = r.get<int>();
  p.layers.resize(size_t(r.get<uint64_t>()));
  for (placement::LayerPlacement& l : p.layers) {
    l.devices.resize(size_t(r.get<uint64_t>()));
    for (auto& d : l.devices) d = r.get_vector<placement::Share>();
  }
  p.max_load = r.get_vector<double>();
  p.lower_bound = r.get_vector<double>();
  p.replicas = r.get_vector<int>();
  const auto proven = r.get_vector<uint8_t>();
  p.proven.assign(proven.begin(), proven.end());
  p.note = r.get_string();
  return p;
}

}  // namespace fairkv::serve::wire
