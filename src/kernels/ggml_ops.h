// llama.cpp's CPU arithmetic for the steps around the matmuls, operation for operation, for
// Activations::GgmlOrder (kernels/matmul.h): with them a forward pass is bitwise llama.cpp's
// where ggml's x86 AVX-512 build computes the same graph (f32 K/V cache, no flash attention).
// Each function names the ggml routine it follows. Without AVX-512 they fall back to plain
// loops that are close to, but not bitwise, ggml's.
#pragma once

#include <cstdint>

#include "kernels/ops.h"

namespace fairkv::kernels {

// ggml_compute_forward_rms_norm_f32 then the weight: the sum of squares in double in element
// order, scale = 1 / sqrtf(float(sum / n) + eps), out = x * scale * w.
void rmsnorm_ggml(float* out, const float* x, const float* w, int64_t n, float eps);

// ggml's rope (ggml_rope_cache_init, rotate_pairs) without scaling: theta starts at float(pos)
// and is multiplied by powf(base, -2 / head_dim) in float from pair to pair, cos / sin of it by
// the C library, and the rotation as its build contracts it:
// fma(x0, c, -(x1 * s)), fma(x0, s, x1 * c) (found against its results: its vectorised loop
// pairs the products so).
void rope_ggml(float* x, int64_t head_dim, int64_t pos, float base, RopeStyle style);

// ggml_vec_swiglu_f32: gate[i] = gate[i] / (1 + ggml_v_expf(-gate[i])) * up[i] sixteen at a
// time, the tail with expf.
void silu_mul_ggml(float* gate, const float* up, int64_t n);

// ggml_vec_dot_f32 (AVX-512): four 16-lane FMA accumulators over steps of 64, summed
// (0 + 2, 1 + 3, then 0 + 1) and reduced, the tail in float.
float dot_f32_ggml(const float* x, const float* y, int64_t n);
// llamafile's tinyBLAS<16> (f32, AVX-512): one 16-lane FMA accumulator over steps of 16,
// reduced. n must be a multiple of 16.
float dot_f32_tinyblas(const float* x, const float* y, int64_t n);

// ggml_compute_forward_soft_max_f32 after the scale and mask: max, then ggml_vec_soft_max_f32
// (ggml_v_expf sixteen at a time, each group's sum reduced and added in double, the tail with
// expf), then every value times float(1 / sum). x holds -inf where masked.
void softmax_ggml(float* x, int64_t n);

}  // namespace fairkv::kernels
