#include "kernels/finite.h"

#include <cmath>
#include <cstring>

#include "kernels/quant_blocks.h"

namespace fairkv::kernels {

namespace {

// fp16 and bf16 are not finite when their exponent bits are all ones.
bool fp16_finite(uint16_t h) {
  return (h & 0x7c00u) != 0x7c00u;
}
bool bf16_finite(uint16_t h) {
  return (h & 0x7f80u) != 0x7f80u;
}

// Blocks of type B: `scales(b)` lists the fp16 scale fields of block b.
template <class B, class F>
int64_t first_bad_block(const void* data, int64_t n, int64_t per_block, F&& scales_finite) {
  const auto* blocks = static_cast<const B*>(data);
  for (int64_t b = 0; b < n / per_block; ++b)
    if (!scales_finite(blocks[b])) return b * per_block;
  return -1;
}

}  // namespace

int64_t first_non_finite(DType t, const void* data, int64_t n) {
  const auto d_only = [](const auto& b) { return fp16_finite(b.d); };
  const auto d_and_m = [](const auto& b) { return fp16_finite(b.d) && fp16_finite(b.m); };
  const auto d_and_dmin = [](const auto& b) { return fp16_finite(b.d) && fp16_finite(b.dmin); };
  switch (t) {
    case DType::F32: {
      const auto* x = static_cast<const float*>(data);
      for (int64_t i = 0; i < n; ++i)
        if (!std::isfinite(x[i])) return i;
      return -1;
    }
    case DType::F16:
    case DType::BF16: {
      const auto* x = static_cast<const uint16_t*>(data);
      for (int64_t i = 0; i < n; ++i)
        if (!(t == DType::F16 ? fp16_finite(x[i]) : bf16_finite(x[i]))) return i;
      return -1;
    }
    case DType::Q8_0:
      return first_bad_block<BlockQ8_0>(data, n, kQK, d_only);
    case DType::Q4_0:
      return first_bad_block<BlockQ4_0>(data, n, kQK, d_only);
    case DType::Q4_1:
      return first_bad_block<BlockQ4_1>(data, n, 32, d_and_m);
    case DType::Q5_0:
      return first_bad_block<BlockQ5_0>(data, n, 32, d_only);
    case DType::Q5_1:
      return first_bad_block<BlockQ5_1>(data, n, 32, d_and_m);
    case DType::Q2_K:
      return first_bad_block<BlockQ2_K>(data, n, 256, d_and_dmin);
    case DType::Q3_K:
      return first_bad_block<BlockQ3_K>(data, n, 256, d_only);
    case DType::Q4_K:
      return first_bad_block<BlockQ4_K>(data, n, 256, d_and_dmin);
    case DType::Q5_K:
      return first_bad_block<BlockQ5_K>(data, n, 256, d_and_dmin);
    case DType::Q6_K:
      return first_bad_block<BlockQ6_K>(data, n, 256, d_only);
  }
  return -1;
}

}  // namespace fairkv::kernels
