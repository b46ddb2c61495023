// Internal: one float32 vector type and the few operations the kernels need, chosen at compile
// time: AVX-512 (16 lanes), AVX2+FMA+F16C (8 lanes), or plain C++ (8 lanes, for any CPU).
// Kernels are written once against this header; only the instruction-specific fast paths
// (bf16 dot products, int8 dot products) live in their own files behind FAIRKV_AVX512_BF16 /
// FAIRKV_AVX512_VNNI.
#pragma once

#include <cmath>
#include <cstdint>

#include "kernels/types.h"

// GCC 12's AVX-512 headers trip -Wuninitialized on their own `__Y = __Y` placeholders (GCC bug
// 105593, fixed in 13); silence it for the header only. Kernel files include immintrin.h through
// this header so that this is its first inclusion.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif
#if defined(__AVX2__) || defined(__AVX512F__) || defined(__F16C__)
#include <immintrin.h>
#endif
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic pop
#endif

#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VL__) && \
    defined(__AVX512DQ__) && defined(__FMA__) && defined(__F16C__)
#define FAIRKV_AVX512 1
#if defined(__AVX512BF16__)
#define FAIRKV_AVX512_BF16 1
#endif
#if defined(__AVX512VNNI__)
#define FAIRKV_AVX512_VNNI 1
#endif
#elif defined(__AVX2__) && defined(__FMA__) && defined(__F16C__)
#define FAIRKV_AVX2 1
#endif

// Fully unrolls a loop over a tile's rows / tokens / vectors so that its accumulators live in
// registers (GCC at -O2 keeps such arrays in memory otherwise).
#define FAIRKV_UNROLL _Pragma("GCC unroll 32")

namespace fairkv::kernels::simd {

// fp16 -> fp32 inline where F16C exists (a block scale per 32 weights is on the hot path).
inline float half_to_float(uint16_t h) {
#if defined(__F16C__)
  return _cvtsh_ss(h);
#else
  return fp16_to_fp32(h);
#endif
}

#if defined(FAIRKV_AVX512)

inline constexpr int kLanes = 16;
inline constexpr const char* kIsa = "avx512";
using V = __m512;
inline V zero() {
  return _mm512_setzero_ps();
}
inline V set1(float f) {
  return _mm512_set1_ps(f);
}
inline V load(const float* p) {
  return _mm512_loadu_ps(p);
}
inline void store(float* p, V v) {
  _mm512_storeu_ps(p, v);
}
inline V load_f16(const uint16_t* p) {
  return _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
}
inline V load_bf16(const uint16_t* p) {
  const __m512i w = _mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
  return _mm512_castsi512_ps(_mm512_slli_epi32(w, 16));
}
// kLanes int8 values.
inline V load_i8(const int8_t* p) {
  return _mm512_cvtepi32_ps(
      _mm512_cvtepi8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))));
}
// kLanes Q4_0 values: the low (or high) nibbles of kLanes bytes, minus 8.
inline V load_q4(const uint8_t* p, bool high) {
  __m512i b = _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
  b = high ? _mm512_srli_epi32(b, 4) : _mm512_and_si512(b, _mm512_set1_epi32(0x0f));
  return _mm512_cvtepi32_ps(_mm512_sub_epi32(b, _mm512_set1_epi32(8)));
}
inline V fma(V a, V b, V c) {
  return _mm512_fmadd_ps(a, b, c);
}
inline V mul(V a, V b) {
  return _mm512_mul_ps(a, b);
}
inline V add(V a, V b) {
  return _mm512_add_ps(a, b);
}
inline float reduce(V v) {
  return _mm512_reduce_add_ps(v);
}
inline V sub(V a, V b) {
  return _mm512_sub_ps(a, b);
}
inline V div(V a, V b) {
  return _mm512_div_ps(a, b);
}
inline V max(V a, V b) {
  return _mm512_max_ps(a, b);
}
inline float reduce_max(V v) {
  return _mm512_reduce_max_ps(v);
}
// exp(x): x = n ln2 + r with |r| <= ln2/2 (Cody-Waite, two-part ln2), e^r by its degree-7 Taylor
// polynomial (truncation error 5e-9), 2^n applied by vscalefps, which also gives 0 and inf
// at the ends of the range. Error about 2 ulp.
inline V exp(V x) {
  x = _mm512_max_ps(_mm512_min_ps(x, _mm512_set1_ps(89.0f)), _mm512_set1_ps(-104.0f));
  const V n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                   _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  V r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693145751953125f), x);
  r = _mm512_fnmadd_ps(n, _mm512_set1_ps(1.428606765330187045e-06f), r);
  V p = _mm512_set1_ps(1.0f / 5040);
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 720));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 120));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 24));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 6));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(0.5f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
  return _mm512_scalef_ps(p, n);
}

#elif defined(FAIRKV_AVX2)

inline constexpr int kLanes = 8;
inline constexpr const char* kIsa = "avx2";
using V = __m256;
inline V zero() {
  return _mm256_setzero_ps();
}
inline V set1(float f) {
  return _mm256_set1_ps(f);
}
inline V load(const float* p) {
  return _mm256_loadu_ps(p);
}
inline void store(float* p, V v) {
  _mm256_storeu_ps(p, v);
}
inline V load_f16(const uint16_t* p) {
  return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
}
inline V load_bf16(const uint16_t* p) {
  const __m256i w = _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
  return _mm256_castsi256_ps(_mm256_slli_epi32(w, 16));
}
inline V load_i8(const int8_t* p) {
  return _mm256_cvtepi32_ps(
      _mm256_cvtepi8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p))));
}
inline V load_q4(const uint8_t* p, bool high) {
  __m256i b = _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p)));
  b = high ? _mm256_srli_epi32(b, 4) : _mm256_and_si256(b, _mm256_set1_epi32(0x0f));
  return _mm256_cvtepi32_ps(_mm256_sub_epi32(b, _mm256_set1_epi32(8)));
}
inline V fma(V a, V b, V c) {
  return _mm256_fmadd_ps(a, b, c);
}
inline V mul(V a, V b) {
  return _mm256_mul_ps(a, b);
}
inline V add(V a, V b) {
  return _mm256_add_ps(a, b);
}
inline float reduce(V v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}
inline V sub(V a, V b) {
  return _mm256_sub_ps(a, b);
}
inline V div(V a, V b) {
  return _mm256_div_ps(a, b);
}
inline V max(V a, V b) {
  return _mm256_max_ps(a, b);
}
inline float reduce_max(V v) {
  __m128 s = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_max_ps(s, _mm_movehl_ps(s, s));
  s = _mm_max_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}
// exp(x) as the AVX-512 version, with 2^n built in the exponent field: results below FLT_MIN
// flush to 0 and above FLT_MAX give inf.
inline V exp(V x) {
  const V lo = _mm256_set1_ps(-87.33654f), hi = _mm256_set1_ps(88.72283f);
  const V under = _mm256_cmp_ps(x, lo, _CMP_LT_OQ), over = _mm256_cmp_ps(x, hi, _CMP_GT_OQ);
  const V xc = _mm256_max_ps(_mm256_min_ps(x, hi), lo);
  const V n = _mm256_round_ps(_mm256_mul_ps(xc, _mm256_set1_ps(1.44269504088896341f)),
                              _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  V r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693145751953125f), xc);
  r = _mm256_fnmadd_ps(n, _mm256_set1_ps(1.428606765330187045e-06f), r);
  V p = _mm256_set1_ps(1.0f / 5040);
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 720));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 120));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 24));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 6));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(0.5f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f));
  // n in [-126, 128]: split 2^n = 2^(n - n/2) * 2^(n/2) so that both factors are normal.
  const __m256i ni = _mm256_cvtps_epi32(n);
  const __m256i h = _mm256_srai_epi32(ni, 1);
  const __m256i e1 = _mm256_slli_epi32(_mm256_add_epi32(h, _mm256_set1_epi32(127)), 23);
  const __m256i e2 =
      _mm256_slli_epi32(_mm256_add_epi32(_mm256_sub_epi32(ni, h), _mm256_set1_epi32(127)), 23);
  V res = _mm256_mul_ps(_mm256_mul_ps(p, _mm256_castsi256_ps(e1)), _mm256_castsi256_ps(e2));
  res = _mm256_blendv_ps(res, _mm256_setzero_ps(), under);
  return _mm256_blendv_ps(res, _mm256_set1_ps(__builtin_huge_valf()), over);
}

#else

// Portable: an 8-float struct; the compiler vectorises what it can.
inline constexpr int kLanes = 8;
inline constexpr const char* kIsa = "scalar";
struct V {
  float e[kLanes];
};
inline V zero() {
  return V{};
}
inline V set1(float f) {
  V r;
  for (float& x : r.e) x = f;
  return r;
}
inline V load(const float* p) {
  V r;
  for (int i = 0; i < kLanes; ++i) r.e[i] = p[i];
  return r;
}
inline void store(float* p, V v) {
  for (int i = 0; i < kLanes; ++i) p[i] = v.e[i];
}
inline V load_f16(const uint16_t* p) {
  V r;
  for (int i = 0; i < kLanes; ++i) r.e[i] = half_to_float(p[i]);
  return r;
}
inline V load_bf16(const uint16_t* p) {
  V r;
  for (int i = 0; i < kLanes; ++i) r.e[i] = bf16_to_fp32(p[i]);
  return r;
}
inline V load_i8(const int8_t* p) {
  V r;
  for (int i = 0; i < kLanes; ++i) r.e[i] = float(p[i]);
  return r;
}
inline V load_q4(const uint8_t* p, bool high) {
  V r;
  for (int i = 0; i < kLanes; ++i) r.e[i] = float((high ? p[i] >> 4 : p[i] & 0x0f) - 8);
  return r;
}
inline V fma(V a, V b, V c) {
  for (int i = 0; i < kLanes; ++i) c.e[i] += a.e[i] * b.e[i];
  return c;
}
inline V mul(V a, V b) {
  for (int i = 0; i < kLanes; ++i) a.e[i] *= b.e[i];
  return a;
}
inline V add(V a, V b) {
  for (int i = 0; i < kLanes; ++i) a.e[i] += b.e[i];
  return a;
}
inline float reduce(V v) {
  float s = 0.0f;
  for (float x : v.e) s += x;
  return s;
}
inline V sub(V a, V b) {
  for (int i = 0; i < kLanes; ++i) a.e[i] -= b.e[i];
  return a;
}
inline V div(V a, V b) {
  for (int i = 0; i < kLanes; ++i) a.e[i] /= b.e[i];
  return a;
}
inline V max(V a, V b) {
  for (int i = 0; i < kLanes; ++i) a.e[i] = a.e[i] > b.e[i] ? a.e[i] : b.e[i];
  return a;
}
inline float reduce_max(V v) {
  float m = v.e[0];
  for (float x : v.e) m = x > m ? x : m;
  return m;
}
inline V exp(V x) {
  for (float& e : x.e) e = std::exp(e);
  return x;
}

#endif

static_assert(kQK % kLanes == 0, "a quantized block must hold whole vectors");

// kLanes weights of a row of type T starting at column k (k a multiple of kLanes), as float32.
template <DType T>
inline V load_weights(const uint8_t* row, int64_t k) {
  if constexpr (T == DType::F32) {
    return load(reinterpret_cast<const float*>(row) + k);
  } else if constexpr (T == DType::F16) {
    return load_f16(reinterpret_cast<const uint16_t*>(row) + k);
  } else if constexpr (T == DType::BF16) {
    return load_bf16(reinterpret_cast<const uint16_t*>(row) + k);
  } else if constexpr (T == DType::Q8_0) {
    const auto* b = reinterpret_cast<const BlockQ8_0*>(row) + k / kQK;
    return mul(load_i8(b->qs + k % kQK), set1(half_to_float(b->d)));
  } else {
    const auto* b = reinterpret_cast<const BlockQ4_0*>(row) + k / kQK;
    const int j = int(k % kQK);
    const bool high = j >= kQK / 2;
    return mul(load_q4(b->qs + (high ? j - kQK / 2 : j), high), set1(half_to_float(b->d)));
  }
}

// One weight of a row of a float type (the scalar tail of rows whose length is not a multiple
// of kLanes; quantized rows are whole blocks and never need it).
template <DType T>
inline float weight_at(const uint8_t* row, int64_t k) {
  if constexpr (T == DType::F32) {
    return reinterpret_cast<const float*>(row)[k];
  } else if constexpr (T == DType::F16) {
    return half_to_float(reinterpret_cast<const uint16_t*>(row)[k]);
  } else {
    static_assert(T == DType::BF16, "quantized rows have no scalar tail");
    return bf16_to_fp32(reinterpret_cast<const uint16_t*>(row)[k]);
  }
}

}  // namespace fairkv::kernels::simd
