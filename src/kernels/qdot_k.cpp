// K-quant weights (Q2_K .. Q6_K) times Q8_K activations in the arithmetic of ggml's
// ggml_vec_dot_q*_K_q8_K. Per 256-element super-block:
//   isum = sum over 16-element sub-blocks j of sc_j * (levels . x)_j      (exact, int32)
//   y   += (d_x * d_w) * isum - (d_x * dmin_w) * sum_j m_j * bsums_j     (float32)
// with, per type: Q2_K sc = low nibble, m = high nibble of scales[j]; Q4_K / Q5_K the 6-bit
// scale and min of each 32-element half pair; Q3_K sc = 6-bit scale - 32 and Q6_K sc = int8
// scale, no min. Q3_K's levels (-4..3) and Q6_K's (-32..31) are read offset to unsigned (0..7,
// 0..63) and the offset is taken back exactly inside isum as -off * sum_j sc_j * bsums_j, as
// ggml's AVX2 code does for Q6_K (its Q3_K subtracts 4 per element; the integer is the same).
//
// Each super-block is first unpacked into bytes (levels in element order), its sub-block scales
// spread over the int16 lanes of the products; then for each token: vpmaddubsw (u8 levels x s8
// activations, pairs: at most 2 * 63 * 127, no saturation), vpmaddwd or AVX512-VNNI vpdpwssd with
// the scales, one conversion and FMA per super-block. AVX-512 runs 64 bytes at a time, AVX2 32.
#include <algorithm>

#include "kernels/qdot.h"
#include "kernels/simd.h"

namespace fairkv::kernels::detail {

namespace {

// What the token loop needs of one weight super-block.
struct Unpacked {
  alignas(64) uint8_t u[kQK_K];  // levels as unsigned bytes, element order
  alignas(64) int16_t scv[128];  // scale of the sub-block of each product pair (lane i: i / 8)
  alignas(32) int16_t sc[16];    // per sub-block scale
  alignas(32) int16_t coef[16];  // per sub-block factor of bsums (mins, or -offset * sc)
  float d = 0.0f, dmin = 0.0f;   // fp16 d and dmin of the block (dmin: types with mins)
};

// Whether coef . bsums goes into isum (an offset, scaled by d) or apart (mins, scaled by dmin).
constexpr bool folds(DType t) {
  return t == DType::Q3_K || t == DType::Q6_K;
}

#if defined(FAIRKV_AVX512) || defined(FAIRKV_AVX2)
// The levels 32 bytes at a time: shifts within 16-bit lanes, then masks keep each byte's bits.
__m256i ld32(const uint8_t* p) {
  return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
}
// Stores chunks c and c + 1 of the levels. With AVX-512 the row kernel reads them 64 bytes at a
// time right after: a load spanning two smaller stores cannot be forwarded from them and waits
// for both to reach the cache (a dozen cycles, several times per super-block), so the pair goes
// out as one 64-byte store.
void st64(uint8_t* p, __m256i lo, __m256i hi) {
#if defined(FAIRKV_AVX512)
  _mm512_store_si512(p, _mm512_inserti64x4(_mm512_castsi256_si512(lo), hi, 1));
#else
  _mm256_store_si256(reinterpret_cast<__m256i*>(p), lo);
  _mm256_store_si256(reinterpret_cast<__m256i*>(p + 32), hi);
#endif
}
__m256i shr(__m256i v, int n, int mask) {
  return _mm256_and_si256(_mm256_srl_epi16(v, _mm_cvtsi32_si128(n)), _mm256_set1_epi8(char(mask)));
}
__m256i with_high(__m256i lo, __m256i bits, int at) {
  return _mm256_or_si256(lo, _mm256_sll_epi16(bits, _mm_cvtsi32_si128(at)));
}

// Chunk c (32 elements) of the levels.
template <DType T>
__m256i level_chunk(const typename BlockOf<T>::type& b, int c) {
  if constexpr (T == DType::Q2_K || T == DType::Q3_K) {
    __m256i v = shr(ld32(b.qs + 32 * (c / 4)), 2 * (c % 4), 3);
    if constexpr (T == DType::Q3_K) v = with_high(v, shr(ld32(b.hmask), c, 1), 2);
    return v;
  } else if constexpr (T == DType::Q4_K || T == DType::Q5_K) {
    __m256i v = shr(ld32(b.qs + 32 * (c / 2)), 4 * (c % 2), 0x0f);
    if constexpr (T == DType::Q5_K) v = with_high(v, shr(ld32(b.qh), c, 1), 4);
    return v;
  } else {
    const int g = c % 4;
    const __m256i lo = shr(ld32(b.ql + 64 * (c / 4) + 32 * (g % 2)), 4 * (g / 2), 0x0f);
    return with_high(lo, shr(ld32(b.qh + 32 * (c / 4)), 2 * g, 3), 4);
  }
}

template <DType T>
void unpack_levels(const typename BlockOf<T>::type& b, uint8_t* u) {
  FAIRKV_UNROLL
  for (int c = 0; c < 8; c += 2) st64(u + 32 * c, level_chunk<T>(b, c), level_chunk<T>(b, c + 1));
}
#else
// Plain loops, element by element.
template <DType T>
void unpack_levels(const typename BlockOf<T>::type& b, uint8_t* u) {
  for (int c = 0; c < 8; ++c) {
    for (int l = 0; l < 32; ++l) {
      int v;
      if constexpr (T == DType::Q2_K || T == DType::Q3_K) {
        v = (b.qs[32 * (c / 4) + l] >> (2 * (c % 4))) & 3;
        if constexpr (T == DType::Q3_K) v |= ((b.hmask[l] >> c) & 1) << 2;
      } else if constexpr (T == DType::Q4_K || T == DType::Q5_K) {
        v = (b.qs[32 * (c / 2) + l] >> (4 * (c % 2))) & 0x0f;
        if constexpr (T == DType::Q5_K) v |= ((b.qh[l] >> c) & 1) << 4;
      } else {
        const int g = c % 4;
        v = ((b.ql[64 * (c / 4) + 32 * (g % 2) + l] >> (4 * (g / 2))) & 0x0f) |
            (((b.qh[32 * (c / 4) + l] >> (2 * g)) & 3) << 4);
      }
      u[32 * c + l] = uint8_t(v);
    }
  }
}
#endif

// Levels as unsigned bytes in element order: Q2_K's 2 bits of group c (half c / 4, shift
// 2 * (c % 4)); Q3_K's plus 4 * hmask bit c (level + 4); Q4_K's nibble c % 2 of bytes
// 32 * (c / 2) ..; Q5_K's plus 16 * qh bit c; Q6_K's nibble and qh bits of group c (level + 32).
// Then the scales and the bsums factors.
template <DType T>
void unpack(const typename BlockOf<T>::type& b, Unpacked& k) {
  k.d = simd::half_to_float(b.d);
  unpack_levels<T>(b, k.u);
  if constexpr (T == DType::Q2_K) {
    k.dmin = simd::half_to_float(b.dmin);
    for (int j = 0; j < 16; ++j) {
      k.sc[j] = int16_t(b.scales[j] & 0x0f);
      k.coef[j] = int16_t(b.scales[j] >> 4);
    }
  } else if constexpr (T == DType::Q3_K) {
    int8_t s[16];
    q3k_scales(b.scales, s);
    for (int j = 0; j < 16; ++j) {
      k.sc[j] = s[j];
      k.coef[j] = int16_t(-4 * s[j]);
    }
  } else if constexpr (T == DType::Q4_K || T == DType::Q5_K) {
    k.dmin = simd::half_to_float(b.dmin);
#if defined(FAIRKV_AVX512) || defined(FAIRKV_AVX2)
    // scale_min_k4 for all eight sub-blocks at once, four bytes per 32-bit step (the per-j
    // scalar decode cost decode about as much as the products): scales 0..3 and mins 0..3 are
    // the low 6 bits of bytes 0..3 and 4..7; scales / mins 4..7 the low / high nibbles of bytes
    // 8..11 with the top 2 bits of bytes 0..3 / 4..7 above them. Shifts across byte borders
    // only bring in bits that the masks drop.
    uint32_t q0, q1, q2;
    std::memcpy(&q0, b.scales, 4);
    std::memcpy(&q1, b.scales + 4, 4);
    std::memcpy(&q2, b.scales + 8, 4);
    const uint64_t sc8 = uint64_t(q0 & 0x3f3f3f3fu) |
                         uint64_t((q2 & 0x0f0f0f0fu) | (((q0 >> 6) & 0x03030303u) << 4)) << 32;
    const uint64_t m8 = uint64_t(q1 & 0x3f3f3f3fu) |
                        uint64_t(((q2 >> 4) & 0x0f0f0f0fu) | (((q1 >> 6) & 0x03030303u) << 4))
                            << 32;
    // Each 32-element sub-block's value over its two 16-element halves.
    const __m128i sc16 = _mm_cvtepu8_epi16(_mm_cvtsi64_si128(int64_t(sc8)));
    const __m128i m16 = _mm_cvtepu8_epi16(_mm_cvtsi64_si128(int64_t(m8)));
    // One 32-byte store each: the row kernel loads them whole (see st64).
    _mm256_store_si256(
        reinterpret_cast<__m256i*>(k.sc),
        _mm256_set_m128i(_mm_unpackhi_epi16(sc16, sc16), _mm_unpacklo_epi16(sc16, sc16)));
    _mm256_store_si256(
        reinterpret_cast<__m256i*>(k.coef),
        _mm256_set_m128i(_mm_unpackhi_epi16(m16, m16), _mm_unpacklo_epi16(m16, m16)));
#else
    for (int c = 0; c < 8; ++c) {
      int sc, m;
      scale_min_k4(c, b.scales, sc, m);
      k.sc[2 * c] = k.sc[2 * c + 1] = int16_t(sc);
      k.coef[2 * c] = k.coef[2 * c + 1] = int16_t(m);
    }
#endif
  } else {
    static_assert(T == DType::Q6_K);
#if defined(FAIRKV_AVX512) || defined(FAIRKV_AVX2)
    // Whole-vector stores, as the loads that follow (see st64).
    const __m256i sc =
        _mm256_cvtepi8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(b.scales)));
    _mm256_store_si256(reinterpret_cast<__m256i*>(k.sc), sc);
    _mm256_store_si256(reinterpret_cast<__m256i*>(k.coef),
                       _mm256_sub_epi16(_mm256_setzero_si256(), _mm256_slli_epi16(sc, 5)));
#else
    for (int j = 0; j < 16; ++j) {
      k.sc[j] = b.scales[j];
      k.coef[j] = int16_t(-32 * b.scales[j]);
    }
#endif
  }
#if defined(FAIRKV_AVX512) || defined(FAIRKV_AVX2)
#if defined(FAIRKV_AVX512)
  // 64-byte stores, as the row kernel's loads (see st64): lane i of vector v gets sc[4v + i / 8].
  const __m512i sc =
      _mm512_castsi256_si512(_mm256_load_si256(reinterpret_cast<const __m256i*>(k.sc)));
  const __m512i lane8 =
      _mm512_srli_epi16(_mm512_set_epi16(31, 30, 29, 28, 27, 26, 25, 24, 23, 22, 21, 20, 19, 18, 17,
                                         16, 15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0),
                        3);
  for (int v = 0; v < 4; ++v) {
    const __m512i idx = _mm512_add_epi16(lane8, _mm512_set1_epi16(short(4 * v)));
    _mm512_store_si512(k.scv + 32 * v, _mm512_permutexvar_epi16(idx, sc));
  }
#else
  for (int j = 0; j < 16; ++j) {
    _mm_store_si128(reinterpret_cast<__m128i*>(k.scv + 8 * j), _mm_set1_epi16(k.sc[j]));
  }
#endif
#endif
}

#if defined(FAIRKV_AVX512) || defined(FAIRKV_AVX2)

constexpr int kPrefetchBytes = 4096;  // see q8_vnni.cpp: the prefetchers stop at 4 KiB pages

#if defined(FAIRKV_AVX512)
using IV = __m512i;
using FV = __m512;
constexpr int kW = 64;  // bytes per vector
IV load_iv(const void* p) {
  return _mm512_loadu_si512(p);
}
// acc + the scaled pair sums of u . x: sc holds one int16 scale per pair of products.
IV dot_scaled(IV acc, IV u, IV x, IV sc) {
  const IV p = _mm512_maddubs_epi16(u, x);
#if defined(__AVX512VNNI__)
  return _mm512_dpwssd_epi32(acc, p, sc);
#else
  return _mm512_add_epi32(acc, _mm512_madd_epi16(p, sc));
#endif
}
IV add_low(IV v, __m256i lo) {
  return _mm512_add_epi32(v, _mm512_zextsi256_si512(lo));
}
FV fmadd_cvt(float s, IV v, FV acc) {
  return _mm512_fmadd_ps(_mm512_set1_ps(s), _mm512_cvtepi32_ps(v), acc);
}
FV zero_fv() {
  return _mm512_setzero_ps();
}
IV zero_iv() {
  return _mm512_setzero_si512();
}
float hsum(FV v) {
  return _mm512_reduce_add_ps(v);
}
#else
using IV = __m256i;
using FV = __m256;
constexpr int kW = 32;
IV load_iv(const void* p) {
  return _mm256_loadu_si256(static_cast<const __m256i*>(p));
}
IV dot_scaled(IV acc, IV u, IV x, IV sc) {
  const IV p = _mm256_maddubs_epi16(u, x);
#if defined(__AVXVNNI__)
  return _mm256_dpwssd_avx_epi32(acc, p, sc);
#else
  return _mm256_add_epi32(acc, _mm256_madd_epi16(p, sc));
#endif
}
IV add_low(IV v, __m256i lo) {
  return _mm256_add_epi32(v, lo);
}
FV fmadd_cvt(float s, IV v, FV acc) {
  return _mm256_fmadd_ps(_mm256_set1_ps(s), _mm256_cvtepi32_ps(v), acc);
}
FV zero_fv() {
  return _mm256_setzero_ps();
}
IV zero_iv() {
  return _mm256_setzero_si256();
}
#endif

float hsum256(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}
#if !defined(FAIRKV_AVX512)
float hsum(FV v) {
  return hsum256(v);
}
#endif

template <DType T, int NT>
void row_dot(const uint8_t* row, int64_t nb, const uint8_t* x, size_t xstride, float* y,
             int64_t ystride) {
  using Block = typename BlockOf<T>::type;
  constexpr int kNv = kQK_K / kW;
  const auto* blk = reinterpret_cast<const Block*>(row);
  Unpacked k;
  FV acc[NT];
  __m256 macc[NT];
  FAIRKV_UNROLL
  for (int t = 0; t < NT; ++t) {
    acc[t] = zero_fv();
    macc[t] = _mm256_setzero_ps();
  }
  for (int64_t b = 0; b < nb; ++b) {
    _mm_prefetch(reinterpret_cast<const char*>(blk + b) + kPrefetchBytes, _MM_HINT_T0);
    unpack<T>(blk[b], k);
    const __m256i coef = _mm256_load_si256(reinterpret_cast<const __m256i*>(k.coef));
    FAIRKV_UNROLL
    for (int t = 0; t < NT; ++t) {
      const BlockQ8_K& a = reinterpret_cast<const BlockQ8_K*>(x + t * xstride)[b];
      IV isum = zero_iv();
      FAIRKV_UNROLL
      for (int v = 0; v < kNv; ++v) {
        isum = dot_scaled(isum, load_iv(k.u + v * kW), load_iv(a.qs + v * kW),
                          load_iv(k.scv + v * kW / 2));
      }
      const __m256i cs =
          _mm256_madd_epi16(coef, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(a.bsums)));
      if constexpr (folds(T)) {
        isum = add_low(isum, cs);
      } else {
        macc[t] = _mm256_fmadd_ps(_mm256_set1_ps(-(a.d * k.dmin)), _mm256_cvtepi32_ps(cs), macc[t]);
      }
      acc[t] = fmadd_cvt(a.d * k.d, isum, acc[t]);
    }
  }
  FAIRKV_UNROLL
  for (int t = 0; t < NT; ++t) {
    float s = hsum(acc[t]);
    if constexpr (!folds(T)) s += hsum256(macc[t]);
    y[t * ystride] = s;
  }
}

#else  // portable

template <DType T, int NT>
void row_dot(const uint8_t* row, int64_t nb, const uint8_t* x, size_t xstride, float* y,
             int64_t ystride) {
  using Block = typename BlockOf<T>::type;
  const auto* blk = reinterpret_cast<const Block*>(row);
  Unpacked k;
  float sum[NT] = {};
  for (int64_t b = 0; b < nb; ++b) {
    unpack<T>(blk[b], k);
    for (int t = 0; t < NT; ++t) {
      const BlockQ8_K& a = reinterpret_cast<const BlockQ8_K*>(x + t * xstride)[b];
      int32_t isum = 0, cs = 0;
      for (int j = 0; j < 16; ++j) {
        int32_t s = 0;
        for (int l = 0; l < 16; ++l) s += k.u[16 * j + l] * a.qs[16 * j + l];
        isum += k.sc[j] * s;
        cs += k.coef[j] * a.bsums[j];
      }
      if constexpr (folds(T)) {
        sum[t] += (a.d * k.d) * float(isum + cs);
      } else {
        sum[t] += (a.d * k.d) * float(isum) - (a.d * k.dmin) * float(cs);
      }
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

QRowsFn qdot_k_rows(DType t, int nt) {
  switch (t) {
    case DType::Q2_K:
      return QRows<RowDot, DType::Q2_K, kQK_K>::pick(nt);
    case DType::Q3_K:
      return QRows<RowDot, DType::Q3_K, kQK_K>::pick(nt);
    case DType::Q4_K:
      return QRows<RowDot, DType::Q4_K, kQK_K>::pick(nt);
    case DType::Q5_K:
      return QRows<RowDot, DType::Q5_K, kQK_K>::pick(nt);
    default:
      return QRows<RowDot, DType::Q6_K, kQK_K>::pick(nt);
  }
}

}  // namespace fairkv::kernels::detail
