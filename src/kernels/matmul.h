// Matrix products of weights (any DType) with float32 activations: the work of every linear layer.
// Each fast kernel has a scalar reference beside it; tests compare the two for every type.
#pragma once

#include <cstdint>

#include "kernels/threadpool.h"
#include "kernels/types.h"

namespace fairkv::kernels {

// A weight matrix as GGUF stores it: `rows` output rows of `cols` inputs, row r starting at
// data + r * row_stride bytes. row_stride defaults to row_bytes(type, cols); a larger stride
// views a block of columns of a bigger matrix (a unit's slice of Wo).
struct WeightMatrix {
  DType type = DType::F32;
  int64_t rows = 0;
  int64_t cols = 0;
  const void* data = nullptr;
  size_t row_stride = 0;  // 0 means row_bytes(type, cols)
  size_t stride() const { return row_stride ? row_stride : row_bytes(type, cols); }
  const uint8_t* row(int64_t r) const { return static_cast<const uint8_t*>(data) + r * stride(); }
};

// y[t * w.rows + r] = sum_c W[r][c] * x[t * w.cols + c] for t in [0, n_tokens).
// Multi-threaded over rows (decode) or over row and token tiles (prefill).
void matmul(const WeightMatrix& w, const float* x, int64_t n_tokens, float* y, ThreadPool& pool);
// Scalar reference: dequantize each row, accumulate in double.
void matmul_ref(const WeightMatrix& w, const float* x, int64_t n_tokens, float* y);

// Dot product of one weight row (n elements of type t) with float32 x.
float dot_row(DType t, const void* w_row, const float* x, int64_t n);

}  // namespace fairkv::kernels
