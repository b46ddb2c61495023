// Activation rounding as llama.cpp's CPU backend does it before each product (matmul's
// Activations::LikeGgml): fp16 for F16 weights, bf16 for BF16, Q8_0 blocks for Q8_0, Q4_0 and
// Q5_0, Q8_1 blocks for Q4_1 and Q5_1, Q8_K blocks for the K-quants.
#include <algorithm>
#include <cmath>
#include <stdexcept>
#include <string>
#include <vector>

#include "kernels/matmul_kernels.h"
#include "kernels/simd.h"

namespace fairkv::kernels {

namespace detail {

void quantize_act_q8_0(const float* x, BlockQ8_0* out, int64_t n) {
  for (int64_t b = 0; b < n / kQK; ++b, x += kQK) {
#if defined(FAIRKV_AVX512)
    const __m512 v0 = _mm512_loadu_ps(x);
    const __m512 v1 = _mm512_loadu_ps(x + 16);
    const float amax = _mm512_reduce_max_ps(_mm512_max_ps(_mm512_abs_ps(v0), _mm512_abs_ps(v1)));
#else
    float amax = 0.0f;
    for (int j = 0; j < kQK; ++j) amax = std::fmax(amax, std::fabs(x[j]));
#endif
    out[b].d = fp32_to_fp16(amax / 127.0f);
    const float id = amax != 0.0f ? 127.0f / amax : 0.0f;
#if defined(FAIRKV_AVX512)
    // cvtps_epi32 rounds half to even under the default MXCSR, as ggml's _mm256_round_ps does.
    const __m512 m = _mm512_set1_ps(id);
    _mm_storeu_si128(reinterpret_cast<__m128i*>(out[b].qs),
                     _mm512_cvtsepi32_epi8(_mm512_cvtps_epi32(_mm512_mul_ps(v0, m))));
    _mm_storeu_si128(reinterpret_cast<__m128i*>(out[b].qs + 16),
                     _mm512_cvtsepi32_epi8(_mm512_cvtps_epi32(_mm512_mul_ps(v1, m))));
#else
    for (int j = 0; j < kQK; ++j) out[b].qs[j] = int8_t(std::nearbyint(x[j] * id));
#endif
  }
}

void quantize_act_q8_1(const float* x, BlockQ8_1* out, int64_t n) {
  for (int64_t b = 0; b < n / kQK; ++b, x += kQK) {
#if defined(FAIRKV_AVX512)
    // As quantize_act_q8_0's vector path; the scalar loop cost prefill of Q4_1 / Q5_1 weights
    // more than their products.
    const __m512 v0 = _mm512_loadu_ps(x);
    const __m512 v1 = _mm512_loadu_ps(x + 16);
    const float amax = _mm512_reduce_max_ps(_mm512_max_ps(_mm512_abs_ps(v0), _mm512_abs_ps(v1)));
    const float d = amax / 127.0f;
    const float id = amax != 0.0f ? 127.0f / amax : 0.0f;
    const __m512 m = _mm512_set1_ps(id);
    const __m512i q0 = _mm512_cvtps_epi32(_mm512_mul_ps(v0, m));
    const __m512i q1 = _mm512_cvtps_epi32(_mm512_mul_ps(v1, m));
    _mm_storeu_si128(reinterpret_cast<__m128i*>(out[b].qs), _mm512_cvtsepi32_epi8(q0));
    _mm_storeu_si128(reinterpret_cast<__m128i*>(out[b].qs + 16), _mm512_cvtsepi32_epi8(q1));
    const int32_t sum = _mm512_reduce_add_epi32(_mm512_add_epi32(q0, q1));
#else
    float amax = 0.0f;
    for (int j = 0; j < kQK; ++j) amax = std::fmax(amax, std::fabs(x[j]));
    const float d = amax / 127.0f;
    const float id = amax != 0.0f ? 127.0f / amax : 0.0f;
    int32_t sum = 0;
    for (int j = 0; j < kQK; ++j) {
      out[b].qs[j] = int8_t(std::nearbyint(x[j] * id));
      sum += out[b].qs[j];
    }
#endif
    out[b].d = fp32_to_fp16(d);
    out[b].s = fp32_to_fp16(d * float(sum));  // the unrounded d, as ggml
  }
}

void quantize_act_q8_k(const float* x, BlockQ8_K* out, int64_t n) {
  for (int64_t b = 0; b < n / kQK_K; ++b, x += kQK_K) {
    BlockQ8_K& y = out[b];
    float amax = 0.0f, max = 0.0f;
    for (int j = 0; j < kQK_K; ++j) {
      if (std::fabs(x[j]) > amax) {
        amax = std::fabs(x[j]);
        max = x[j];
      }
    }
    if (amax == 0.0f) {
      y = BlockQ8_K{};
      continue;
    }
    // The value of largest magnitude maps to -127; the other end may reach 128, kept at 127.
    const float iscale = -127.0f / max;
    for (int j = 0; j < kQK_K; ++j) {
      y.qs[j] = int8_t(std::min(127.0f, std::nearbyint(iscale * x[j])));
    }
    for (int g = 0; g < kQK_K / 16; ++g) {
      int sum = 0;
      for (int l = 0; l < 16; ++l) sum += y.qs[16 * g + l];
      y.bsums[g] = int16_t(sum);
    }
    y.d = 1.0f / iscale;
  }
}

}  // namespace detail

namespace {

void check_whole_blocks(int64_t cols, int64_t block, const char* what) {
  if (cols % block != 0) {
    throw std::invalid_argument("round_activations: " + std::to_string(cols) +
                                " columns is not a whole number of " + what + " blocks");
  }
}

}  // namespace

void round_activations(DType t, const float* x, int64_t n_tokens, int64_t cols, float* out) {
  const int64_t n = n_tokens * cols;
  switch (t) {
    case DType::F32:
      std::memcpy(out, x, size_t(n) * sizeof(float));
      return;
    case DType::F16: {
      int64_t i = 0;
#if defined(__F16C__) && defined(__AVX__)
      for (; i + 8 <= n; i += 8) {  // round trip through the conversion instructions
        const __m128i h = _mm256_cvtps_ph(_mm256_loadu_ps(x + i), _MM_FROUND_TO_NEAREST_INT);
        _mm256_storeu_ps(out + i, _mm256_cvtph_ps(h));
      }
#endif
      for (; i < n; ++i) out[i] = fp16_to_fp32(fp32_to_fp16(x[i]));
      return;
    }
    case DType::BF16:
      for (int64_t i = 0; i < n; ++i) out[i] = bf16_to_fp32(fp32_to_bf16(x[i]));
      return;
    case DType::Q8_0:
    case DType::Q4_0:
    case DType::Q5_0: {
      check_whole_blocks(cols, kQK, "Q8_0");
      std::vector<BlockQ8_0> q(size_t(cols / kQK));
      for (int64_t tok = 0; tok < n_tokens; ++tok) {
        detail::quantize_act_q8_0(x + tok * cols, q.data(), cols);
        dequantize_row(DType::Q8_0, q.data(), out + tok * cols, cols);
      }
      return;
    }
    case DType::Q4_1:
    case DType::Q5_1: {
      check_whole_blocks(cols, kQK, "Q8_1");
      std::vector<BlockQ8_1> q(size_t(cols / kQK));
      for (int64_t tok = 0; tok < n_tokens; ++tok) {
        detail::quantize_act_q8_1(x + tok * cols, q.data(), cols);
        for (size_t b = 0; b < q.size(); ++b) {
          const float d = fp16_to_fp32(q[b].d);
          for (int j = 0; j < kQK; ++j) out[tok * cols + int64_t(b) * kQK + j] = q[b].qs[j] * d;
        }
      }
      return;
    }
    case DType::Q2_K:
    case DType::Q3_K:
    case DType::Q4_K:
    case DType::Q5_K:
    case DType::Q6_K: {
      check_whole_blocks(cols, kQK_K, "Q8_K");
      std::vector<BlockQ8_K> q(size_t(cols / kQK_K));
      for (int64_t tok = 0; tok < n_tokens; ++tok) {
        detail::quantize_act_q8_k(x + tok * cols, q.data(), cols);
        for (size_t b = 0; b < q.size(); ++b) {
          for (int j = 0; j < kQK_K; ++j) {
            out[tok * cols + int64_t(b) * kQK_K + j] = float(q[b].qs[j]) * q[b].d;
          }
        }
      }
      return;
    }
  }
}

}  // namespace fairkv::kernels
