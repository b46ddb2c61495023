#include "runtime/model_placement.h"

#include <fmt/format.h>

#include <cmath>
#include <stdexcept>

#include "placement/planners.h"

namespace fairkv::runtime {

placement::Profile model_profile(const model::ModelConfig& c, double tokens) {
  return placement::uniform_profile(
      {c.name, c.n_layers, c.n_kv_heads, c.n_heads, c.head_dim, c.n_embd, c.n_ff}, tokens);
}

void check_profile_shape(const placement::Profile& prof, const model::ModelConfig& c,
                         const std::string& where) {
  if (prof.layers != c.n_layers || prof.kv_heads != c.n_kv_heads || prof.query_heads != c.n_heads ||
      prof.head_dim != c.head_dim)
    throw std::invalid_argument(fmt::format(
        "{}: the profile is for {} layers, {} / {} heads, head size {}; the model has {} "
        "layers, {} / {} heads, head size {}",
        where, prof.layers, prof.query_heads, prof.kv_heads, prof.head_dim, c.n_layers, c.n_heads,
        c.n_kv_heads, c.head_dim));
}

placement::CostModel run_cost_model(const model::ModelConfig& c, kernels::DType weight_type,
                                    kv::KvTypes kv_type, int batch, const Calibration& cal) {
  if (batch < 1) throw std::invalid_argument(fmt::format("batch must be >= 1, got {}", batch));
  kv::check_kv_types(kv_type, c.head_dim);
  if (!(cal.kv_time_factor > 0) || !std::isfinite(cal.kv_time_factor))
    throw std::invalid_argument(
        fmt::format("the KV time factor must be positive, got {}", cal.kv_time_factor));
  for (double x : {cal.part_load, cal.split_layer_load, cal.error})
    if (!(x >= 0) || !std::isfinite(x))
      throw std::invalid_argument(
          fmt::format("calibration: part and split-layer loads and the error must be finite and "
                      ">= 0, got {}",
                      x));
  // Quantized types hold a scale per block: their bytes per element are the block's over its size.
  const int block = kernels::block_size(weight_type);
  placement::CostModel cost;
  cost.batch = batch;
  cost.head_dim = c.head_dim;
  cost.group = c.group();
  cost.embd = c.n_embd;
  cost.ffn = c.n_ff;
  cost.weight_bytes = double(kernels::row_bytes(weight_type, block)) / double(block);
  cost.weight_bytes /= cal.kv_time_factor;
  // Per element of K and V alike: the mean of the two rows' bytes (q8_0: 34 / 32).
  cost.kv_bytes = double(kv_type.token_bytes(c.head_dim)) / (2.0 * double(c.head_dim));
  cost.part_load = cal.part_load;
  cost.split_layer_load = cal.split_layer_load;
  cost.error = cal.error;
  return cost;
}

placement::Placement resolve_placement(const std::string& what, const std::string& profile_path,
                                       const model::ModelConfig& c, int devices,
                                       const placement::CostModel& cost) {
  placement::Placement p;
  std::string where = what;
  if (placement::is_planner_name(what)) {
    placement::Profile prof;
    if (!profile_path.empty()) {
      prof = placement::read_profile(profile_path);
      where = profile_path;
    } else {
      prof = model_profile(c);
      prof.source = "uniform (no --profile)";
    }
    check_profile_shape(prof, c, where);
    placement::PlanOptions o;
    o.planner = placement::planner_from_name(what);
    o.devices = devices;
    p = placement::plan(prof, cost, o);
  } else {
    p = placement::read_placement(what);
  }
  if (int(p.layers.size()) != c.n_layers || p.kv_heads != c.n_kv_heads)
    throw std::invalid_argument(
        fmt::format("{}: the placement is for {} layers and {} KV heads; the model has {} layers "
                    "and {} KV heads",
                    where, p.layers.size(), p.kv_heads, c.n_layers, c.n_kv_heads));
  if (devices > 0 && p.devices != devices)
    throw std::invalid_argument(
        fmt::format("{}: the placement is for {} devices, not {}", where, p.devices, devices));
  placement::check_query_shares(p, c.group(), where);
  return p;
}

}  // namespace fairkv::runtime
