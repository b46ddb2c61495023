// Element-wise and row-wise operations of the transformer, in float32.
#pragma once

#include <cstdint>

namespace fairkv::kernels {

// out = x / sqrt(mean(x^2) + eps) * w, the mean over n elements (in double). out may alias x.
void rmsnorm(float* out, const float* x, const float* w, int64_t n, float eps);
// Rotary position embedding of one head vector of size head_dim at position pos, in place.
// GGUF llama layout rotates interleaved pairs (x[2i], x[2i+1]); NEOX (qwen2) rotates
// (x[i], x[i + head_dim/2]). theta_i = pos * base^(-2i/head_dim), computed in double; the
// cos/sin table of the last (head_dim, pos, base) is kept per thread for the other heads.
enum class RopeStyle { Interleaved, Neox };
void rope(float* x, int64_t head_dim, int64_t pos, float base, RopeStyle style);
// In-place softmax over n values; returns log(sum(exp(x - max))) + max (the log-sum-exp), the
// quantity that merges partial softmaxes of token slices. -inf entries (masked) get 0; if all
// are -inf (or n == 0) every output is 0 and the result is -inf. exp is vectorised (~2 ulp),
// the normaliser summed in double.
float softmax(float* x, int64_t n);
// gate[i] = silu(gate[i]) * up[i], each element by the same (vector) formula wherever it sits.
void silu_mul(float* gate, const float* up, int64_t n);
// y[i] += x[i]
void add(float* y, const float* x, int64_t n);

}  // namespace fairkv::kernels
