// Internal: the legacy (Q4_1, Q5_0, Q5_1) and K-quant formats' row conversions, called by
// types.cpp's dequantize_row / quantize_row for those types.
#pragma once

#include <cstdint>

#include "kernels/types.h"

namespace fairkv::kernels::detail {

void dequantize_ggml_quant(DType t, const void* src, float* dst, int64_t n);
// Q4_1, Q5_0, Q5_1: ggml's reference quantizers; K-quants: throws std::invalid_argument.
void quantize_ggml_quant(DType t, const float* src, void* dst, int64_t n);

// The value of largest magnitude among x[0..n), sign kept (the first of equal magnitudes): what
// ggml's reference quantizers of the symmetric types (Q4_0, Q5_0) scale by.
float largest_magnitude(const float* x, int n);

}  // namespace fairkv::kernels::detail
