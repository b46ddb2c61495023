// Internal to qmatmul.cpp, qdot_legacy.cpp and qdot_k.cpp: the packed activations and the
// per-type row kernels behind matmul's LikeGgml path for Q4_1, Q5_0, Q5_1 and the K-quants.
#pragma once

#include <cstddef>
#include <cstdint>

#include "kernels/matmul.h"

namespace fairkv::kernels::detail {

// One 32-element block of Q8_0 / Q8_1 activations as the legacy kernels read it: the scale d
// already float32 (from fp16), s = ggml's fp16 s (d * sum q) as float32 (Q8_1 only).
struct ActBlock32 {
  int8_t qs[32];
  float d;
  float s;
};
static_assert(sizeof(ActBlock32) == 40);
// K-quant activations are ggml's BlockQ8_K as is (d is float32 there).

// Dot products of weight rows [r_begin, r_end) with nt (1..8) tokens of packed activations
// (token t's blocks at x + t * xstride bytes), written to y[t * w.rows + r].
using QRowsFn = void (*)(const WeightMatrix& w, int64_t r_begin, int64_t r_end, const uint8_t* x,
                         size_t xstride, float* y);
inline constexpr int kQTokens = 8;
QRowsFn qdot_legacy_rows(DType t, int nt);  // Q4_1, Q5_0, Q5_1
QRowsFn qdot_k_rows(DType t, int nt);       // Q2_K .. Q6_K

}  // namespace fairkv::kernels::detail
