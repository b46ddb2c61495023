// Test helper shared by the attention tests.
#pragma once

#include <cstdint>
#include <random>
#include <vector>

#include "kernels/types.h"

namespace fairkv::kv::test {

// n floats (n a multiple of 32) that quantize to q8_0 exactly: every block is d * q with d an
// fp16 value and some |q| = 127, so a quantized-key kernel scores with the query itself and only
// float rounding tells it from the reference.
inline std::vector<float> q8_exact(int64_t n, std::mt19937& rng) {
  std::uniform_int_distribution<int> qd(-127, 127);
  std::uniform_real_distribution<float> dd(0.005f, 0.03f);
  std::vector<float> x(static_cast<size_t>(n));
  for (int64_t b = 0; b < n; b += 32) {
    const float d = kernels::fp16_to_fp32(kernels::fp32_to_fp16(dd(rng)));
    for (int64_t i = b; i < b + 32; ++i) x[static_cast<size_t>(i)] = d * float(qd(rng));
    x[static_cast<size_t>(b + (qd(rng) + 127) % 32)] = d * 127.0f;
  }
  return x;
}

}  // namespace fairkv::kv::test
