// Q4_1, Q5_0 and Q5_1 weights times Q8_1 / Q8_0 / Q8_1 activations in the arithmetic of ggml's
// ggml_vec_dot_q4_1_q8_1, _q5_0_q8_0 and _q5_1_q8_1: per 32-element block the integer dot product
// of the levels is exact; it is scaled by d_w * d_x (float32 product of the two fp16 scales) and
// summed in float32; Q4_1 / Q5_1 add m_w * s_x per block, s_x being the activations' fp16
// d * sum(q) (so the offset term carries ggml's fp16 rounding of s, as it must to match).
//
// Builds with AVX512-VNNI send these types to q8_vnni.cpp instead (512-bit dot products and a
// packed panel kernel for prefill); this file serves the AVX2 and portable builds.
//
// x86: a block's 32 levels are one 256-bit vector of bytes; the products go through vpdpbusd
// (AVX512-VNNI or AVX-VNNI) or vpmaddubsw + vpmaddwd. Q4_1 / Q5_1 levels are unsigned (0..31);
// Q5_0's are signed (-16..15) and take ggml's sign trick |w| . (x * sign(w)).
#include <algorithm>

#include "kernels/qdot.h"
#include "kernels/simd.h"

namespace fairkv::kernels::detail {

namespace {

constexpr bool has_min(DType t) {
  return t != DType::Q5_0;
}

#if defined(FAIRKV_AVX512) || defined(FAIRKV_AVX2)

// 4 KiB ahead: the prefetchers stop at page boundaries (see q8_vnni.cpp).
constexpr int kPrefetchBytes = 4096;

float hsum(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

// The 16 bytes of nibbles as 32 bytes 0..15 in element order (low nibbles first).
__m256i nibbles(const uint8_t* qs) {
  const __m128i b = _mm_loadu_si128(reinterpret_cast<const __m128i*>(qs));
  const __m256i both = _mm256_inserti128_si256(_mm256_castsi128_si256(b), _mm_srli_epi16(b, 4), 1);
  return _mm256_and_si256(both, _mm256_set1_epi8(0x0f));
}

// 0x10 in byte j where bit j of the 32-bit qh is set.
__m256i high_bits(const uint8_t* qh) {
  uint32_t bits;
  std::memcpy(&bits, qh, 4);
#if defined(__AVX512BW__) && defined(__AVX512VL__)
  return _mm256_maskz_set1_epi8(__mmask32(bits), 0x10);
#else
  // Byte j gets byte j / 8 of qh, then tests its bit j % 8.
  const __m256i idx = _mm256_set_epi64x(0x0303030303030303, 0x0202020202020202, 0x0101010101010101,
                                        0x0000000000000000);
  const __m256i spread = _mm256_shuffle_epi8(_mm256_set1_epi32(int(bits)), idx);
  const __m256i bit = _mm256_set1_epi64x(int64_t(0x8040201008040201));
  const __m256i set = _mm256_cmpeq_epi8(_mm256_and_si256(spread, bit), bit);
  return _mm256_and_si256(set, _mm256_set1_epi8(0x10));
#endif
}

template <DType T>
__m256i levels(const typename BlockOf<T>::type& b) {
  if constexpr (T == DType::Q4_1) {
    return nibbles(b.qs);
  } else {
    return _mm256_or_si256(nibbles(b.qs), high_bits(b.qh));
  }
}

// Sums of four u8 x s8 products per int32 lane.
__m256i dot_u8s8(__m256i u, __m256i s) {
#if defined(__AVX512VNNI__) && defined(__AVX512VL__)
  return _mm256_dpbusd_epi32(_mm256_setzero_si256(), u, s);
#elif defined(__AVXVNNI__)
  return _mm256_dpbusd_avx_epi32(_mm256_setzero_si256(), u, s);
#else
  return _mm256_madd_epi16(_mm256_maddubs_epi16(u, s), _mm256_set1_epi16(1));
#endif
}

template <DType T, int NT>
void row_dot(const uint8_t* row, int64_t nb, const uint8_t* x, size_t xstride, float* y,
             int64_t ystride) {
  using Block = typename BlockOf<T>::type;
  const auto* blk = reinterpret_cast<const Block*>(row);
  __m256 acc[NT];
  float summs[NT];
  FAIRKV_UNROLL
  for (int t = 0; t < NT; ++t) {
    acc[t] = _mm256_setzero_ps();
    summs[t] = 0.0f;
  }
  for (int64_t b = 0; b < nb; ++b) {
    _mm_prefetch(reinterpret_cast<const char*>(blk + b) + kPrefetchBytes, _MM_HINT_T0);
    const __m256i u = levels<T>(blk[b]);
    const float dw = simd::half_to_float(blk[b].d);
    __m256i w = u, aw = u;
    if constexpr (T == DType::Q5_0) {
      w = _mm256_sub_epi8(u, _mm256_set1_epi8(16));
      aw = _mm256_sign_epi8(w, w);
    }
    FAIRKV_UNROLL
    for (int t = 0; t < NT; ++t) {
      const ActBlock32& a = reinterpret_cast<const ActBlock32*>(x + t * xstride)[b];
      __m256i xv = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(a.qs));
      if constexpr (T == DType::Q5_0) xv = _mm256_sign_epi8(xv, w);
      const __m256i p = dot_u8s8(aw, xv);
      acc[t] = _mm256_fmadd_ps(_mm256_set1_ps(dw * a.d), _mm256_cvtepi32_ps(p), acc[t]);
      if constexpr (has_min(T)) summs[t] += simd::half_to_float(blk[b].m) * a.s;
    }
  }
  FAIRKV_UNROLL
  for (int t = 0; t < NT; ++t) y[t * ystride] = hsum(acc[t]) + summs[t];
}

#else  // portable

template <DType T>
void levels(const typename BlockOf<T>::type& b, int q[kQK]) {
  uint32_t qh = 0;
  if constexpr (T != DType::Q4_1) std::memcpy(&qh, b.qh, 4);
  for (int j = 0; j < 16; ++j) {
    q[j] = (b.qs[j] & 0x0f) | int(((qh >> j) & 1) << 4);
    q[j + 16] = (b.qs[j] >> 4) | int(((qh >> (j + 16)) & 1) << 4);
    if constexpr (T == DType::Q5_0) {
      q[j] -= 16;
      q[j + 16] -= 16;
    }
  }
}

template <DType T, int NT>
void row_dot(const uint8_t* row, int64_t nb, const uint8_t* x, size_t xstride, float* y,
             int64_t ystride) {
  using Block = typename BlockOf<T>::type;
  const auto* blk = reinterpret_cast<const Block*>(row);
  float sum[NT] = {};
  int q[kQK];
  for (int64_t b = 0; b < nb; ++b) {
    levels<T>(blk[b], q);
    const float dw = simd::half_to_float(blk[b].d);
    for (int t = 0; t < NT; ++t) {
      const ActBlock32& a = reinterpret_cast<const ActBlock32*>(x + t * xstride)[b];
      int32_t isum = 0;
      for (int j = 0; j < kQK; ++j) isum += q[j] * a.qs[j];
      sum[t] += (dw * a.d) * float(isum);
      if constexpr (has_min(T)) sum[t] += simd::half_to_float(blk[b].m) * a.s;
    }
  }
  for (int t = 0; t < NT; ++t) y[t * ystride] = sum[t];
}

#endif

// row_dot as QRows takes its kernel.
template <DType T, int NT>
struct RowDot {
  static constexpr auto row = &row_dot<T, NT>;
};

}  // namespace

QRowsFn qdot_legacy_rows(DType t, int nt) {
  switch (t) {
    case DType::Q4_1:
      return QRows<RowDot, DType::Q4_1, kQK>::pick(nt);
    case DType::Q5_0:
      return QRows<RowDot, DType::Q5_0, kQK>::pick(nt);
    default:
      return QRows<RowDot, DType::Q5_1, kQK>::pick(nt);
  }
}

}  // namespace fairkv::kernels::detail
