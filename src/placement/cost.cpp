#include "placement/cost.h"

#include <stdexcept>

#include <fmt/format.h>

#include "placement/profile.h"

namespace fairkv::placement {

double type_bytes(const std::string& name) {
  if (name == "f32") return 4;
  if (name == "f16" || name == "bf16") return 2;
  if (name == "q8_0") return 34.0 / 32.0;  // 32 int8 + one f16 scale per block
  if (name == "q4_0") return 18.0 / 32.0;  // 32 nibbles + one f16 scale per block
  if (name == "none") return 0;
  throw std::invalid_argument(
      fmt::format("unknown type \"{}\" (expected f32, f16, bf16, q8_0, q4_0 or none)", name));
}

CostModel cost_model_for(const Profile& p, int batch, const std::string& weight_type,
                         const std::string& kv_type) {
  if (batch < 1) throw std::invalid_argument(fmt::format("batch must be >= 1, got {}", batch));
  CostModel c;
  c.batch = batch;
  c.head_dim = p.head_dim;
  c.group = p.group();
  c.embd = p.embedding();
  c.ffn = p.ffn;
  c.weight_bytes = type_bytes(weight_type);
  c.kv_bytes = type_bytes(kv_type);
  if (c.kv_bytes <= 0) throw std::invalid_argument("the KV type cannot be \"none\"");
  return c;
}

}  // namespace fairkv::placement
