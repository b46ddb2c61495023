// matmul's Activations::GgmlOrder path for Q8_0, Q4_0 and Q4_1 weights: llama.cpp's x86
// ggml_vec_dot_q8_0_q8_0 / q4_0_q8_0 / q4_1_q8_1 operation for operation, so that every output
// is bitwise llama.cpp's (its CPU backend runs these per row and token for decode and, for
// Q4_1, prefill too; Q8_0 / Q4_0 prefill goes through llamafile's tinyBLAS there instead).
// Per 32-element block b of a row and a token, 8 int32 lanes each hold the exact sum of 4
// consecutive products (vpdpbusd), and
//   acc[lane] = fma(d_w(b) * d_x(b), float(lane), acc[lane])      (8 float lanes, b in order)
//   Q4_1 only: summs = fma(m_w(b), s_x(b), summs)                    (one float, b in order)
//   y = hsum(acc) (+ summs), hsum as ggml's hsum_float_8: halves, then pairs, then the last two.
// One chain of FMAs per row and token: slower than the q8_vnni.cpp kernels, which sum in
// another order.
#include "kernels/matmul_kernels.h"
#include "kernels/simd.h"

#if defined(FAIRKV_HAVE_VNNI_KERNELS)

#include <cstring>

namespace fairkv::kernels::detail {

namespace {

__m256i load32(const void* p) {
  return _mm256_loadu_si256(static_cast<const __m256i*>(p));
}

// ggml's bytes_from_nibbles_32: the low nibbles of the 16 bytes are elements 0..15, the high
// nibbles 16..31.
__m256i nibbles(const uint8_t* qs) {
  const __m128i b = _mm_loadu_si128(reinterpret_cast<const __m128i*>(qs));
  const __m256i both = _mm256_inserti128_si256(_mm256_castsi128_si256(b), _mm_srli_epi16(b, 4), 1);
  return _mm256_and_si256(both, _mm256_set1_epi8(0x0f));
}

// ggml's mul_sum_i8_pairs_float on AVX512-VNNI: |x| times y with x's sign, vpdpbusd.
__m256 dot_i8(__m256i x, __m256i y) {
  const __m256i ax = _mm256_sign_epi8(x, x);
  const __m256i sy = _mm256_sign_epi8(y, x);
  return _mm256_cvtepi32_ps(_mm256_dpbusd_epi32(_mm256_setzero_si256(), ax, sy));
}

float hsum_float_8(__m256 x) {
  __m128 r = _mm_add_ps(_mm256_extractf128_ps(x, 1), _mm256_castps256_ps128(x));
  r = _mm_add_ps(r, _mm_movehl_ps(r, r));
  r = _mm_add_ss(r, _mm_movehdup_ps(r));
  return _mm_cvtss_f32(r);
}

float dot_q8_0(const BlockQ8_0* w, const BlockQ8_0* x, int64_t nb) {
  __m256 acc = _mm256_setzero_ps();
  for (int64_t b = 0; b < nb; ++b) {
    const __m256 d = _mm256_set1_ps(simd::half_to_float(w[b].d) * simd::half_to_float(x[b].d));
    acc = _mm256_fmadd_ps(d, dot_i8(load32(w[b].qs), load32(x[b].qs)), acc);
  }
  return hsum_float_8(acc);
}

float dot_q4_0(const BlockQ4_0* w, const BlockQ8_0* x, int64_t nb) {
  __m256 acc = _mm256_setzero_ps();
  for (int64_t b = 0; b < nb; ++b) {
    const __m256 d = _mm256_set1_ps(simd::half_to_float(w[b].d) * simd::half_to_float(x[b].d));
    const __m256i q = _mm256_sub_epi8(nibbles(w[b].qs), _mm256_set1_epi8(8));
    acc = _mm256_fmadd_ps(d, dot_i8(q, load32(x[b].qs)), acc);
  }
  return hsum_float_8(acc);
}

float dot_q4_1(const BlockQ4_1* w, const BlockQ8_1* x, int64_t nb) {
  __m256 acc = _mm256_setzero_ps();
  float summs = 0.0f;
  for (int64_t b = 0; b < nb; ++b) {
    const float d0 = simd::half_to_float(w[b].d), d1 = simd::half_to_float(x[b].d);
    // ggml's summs += m * s, which its build contracts to one FMA.
    summs = std::fma(simd::half_to_float(w[b].m), simd::half_to_float(x[b].s), summs);
    const __m256i xy =
        _mm256_dpbusd_epi32(_mm256_setzero_si256(), nibbles(w[b].qs), load32(x[b].qs));
    acc = _mm256_fmadd_ps(_mm256_set1_ps(d0 * d1), _mm256_cvtepi32_ps(xy), acc);
  }
  return hsum_float_8(acc) + summs;
}

}  // namespace

bool ggml_order_handles(DType t) {
  return t == DType::Q8_0 || t == DType::Q4_0 || t == DType::Q4_1;
}

size_t ggml_order_token_bytes(DType t, int64_t cols) {
  return size_t(cols / kQK) * (t == DType::Q4_1 ? sizeof(BlockQ8_1) : sizeof(BlockQ8_0));
}

void ggml_order_pack(DType t, const float* x, int64_t cols, uint8_t* out, int64_t t_begin,
                     int64_t t_end) {
  const size_t bytes = ggml_order_token_bytes(t, cols);
  for (int64_t tok = t_begin; tok < t_end; ++tok) {
    uint8_t* dst = out + size_t(tok) * bytes;
    if (t == DType::Q4_1)
      quantize_act_q8_1(x + tok * cols, reinterpret_cast<BlockQ8_1*>(dst), cols);
    else
      quantize_act_q8_0(x + tok * cols, reinterpret_cast<BlockQ8_0*>(dst), cols);
  }
}

void ggml_order_matmul(const WeightMatrix& w, const uint8_t* xpacked, int64_t n_tokens, float* y,
                       int64_t r_begin, int64_t r_end) {
  const int64_t nb = w.cols / kQK;
  const size_t bytes = ggml_order_token_bytes(w.type, w.cols);
  for (int64_t r = r_begin; r < r_end; ++r) {
    const uint8_t* row = w.row(r);
    for (int64_t t = 0; t < n_tokens; ++t) {
      const uint8_t* xt = xpacked + size_t(t) * bytes;
      float v;
      if (w.type == DType::Q8_0)
        v = dot_q8_0(reinterpret_cast<const BlockQ8_0*>(row),
                     reinterpret_cast<const BlockQ8_0*>(xt), nb);
      else if (w.type == DType::Q4_0)
        v = dot_q4_0(reinterpret_cast<const BlockQ4_0*>(row),
                     reinterpret_cast<const BlockQ8_0*>(xt), nb);
      else
        v = dot_q4_1(reinterpret_cast<const BlockQ4_1*>(row),
                     reinterpret_cast<const BlockQ8_1*>(xt), nb);
      y[t * w.rows + r] = v;
    }
  }
}

}  // namespace fairkv::kernels::detail

#endif  // FAIRKV_HAVE_VNNI_KERNELS
