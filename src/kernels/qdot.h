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

// The row driver of every per-type kernel: the rows one at a time, so that a thread's rows are
// one sequential stream (as gemv.cpp), and the table of the token-count instances.
// Kernel<T, NT>::row(row, blocks, x, xstride, y, ystride) is the type's dot product of one row
// with NT tokens; kBlock, the elements of its blocks.
template <template <DType, int> class Kernel, DType T, int64_t kBlock>
struct QRows {
  template <int NT>
  static void rows(const WeightMatrix& w, int64_t r_begin, int64_t r_end, const uint8_t* x,
                   size_t xstride, float* y) {
    const size_t stride = w.stride();
    const uint8_t* row = w.row(r_begin);
    for (int64_t r = r_begin; r < r_end; ++r, row += stride)
      Kernel<T, NT>::row(row, w.cols / kBlock, x, xstride, y + r, w.rows);
  }
  static QRowsFn pick(int nt) {
    static constexpr QRowsFn fns[kQTokens] = {&rows<1>, &rows<2>, &rows<3>, &rows<4>,
                                              &rows<5>, &rows<6>, &rows<7>, &rows<8>};
    return fns[nt - 1];
  }
};

QRowsFn qdot_legacy_rows(DType t, int nt);  // Q4_1, Q5_0, Q5_1
QRowsFn qdot_k_rows(DType t, int nt);       // Q2_K .. Q6_K

}  // namespace fairkv::kernels::detail
