// Element-wise and row-wise operations of the transformer, in float32.
#pragma once

#include <cstdint>

namespace fairkv::kernels {

// out = x / rms(x) * w, rms over n elements with epsilon eps. out may alias x.
void rmsnorm(float* out, const float* x, const float* w, int64_t n, float eps);
// Rotary position embedding of one head vector of size head_dim at position pos, in place.
// GGUF llama layout rotates interleaved pairs (x[2i], x[2i+1]); NEOX (qwen2) rotates
// (x[i], x[i + head_dim/2]). theta_i = pos * base^(-2i/head_dim).
enum class RopeStyle { Interleaved, Neox };
void rope(float* x, int64_t head_dim, int64_t pos, float base, RopeStyle style);
// In-place softmax over n values; returns log(sum(exp(x - max))) + max (the log-sum-exp).
float softmax(float* x, int64_t n);
// gate[i] = silu(gate[i]) * up[i]
void silu_mul(float* gate, const float* up, int64_t n);
// y[i] += x[i]
void add(float* y, const float* x, int64_t n);

}  // namespace fairkv::kernels
