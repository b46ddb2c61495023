// Values read in place from q8_0 / q4_0 rows (attention_quant.h): P x V with the values' scales
// folded into the probabilities, and rows widened to float32.
#include <algorithm>
#include <cstdint>
#include <vector>

#include "kernels/simd.h"
#include "kernels/types.h"
#include "kv/attention_kernels.h"
#include "kv/attention_quant.h"

#if defined(__x86_64__)
#include <immintrin.h>
#endif

namespace fairkv::kv::detail {

namespace {

using kernels::BlockQ4_0;
using kernels::BlockQ8_0;
using kernels::kQK;

#if defined(FAIRKV_QUANT_VNNI)
// Values as float32: each block's bytes widened to 16 floats at a time and scaled.
template <KvType T>
FAIRKV_TARGET_VNNI void dequantize_avx512(const uint8_t* row, int64_t nb, float* out) {
  constexpr size_t kB = T == KvType::Q8_0 ? sizeof(BlockQ8_0) : sizeof(BlockQ4_0);
  for (int64_t b = 0; b < nb; ++b, row += kB, out += kQK) {
    const __m512 d = _mm512_set1_ps(_cvtsh_ss(*reinterpret_cast<const uint16_t*>(row)));
    __m128i lo, hi;
    if constexpr (T == KvType::Q8_0) {
      lo = _mm_loadu_si128(reinterpret_cast<const __m128i*>(row + 2));
      hi = _mm_loadu_si128(reinterpret_cast<const __m128i*>(row + 18));
    } else {
      const __m128i v = _mm_loadu_si128(reinterpret_cast<const __m128i*>(row + 2));
      const __m128i m = _mm_set1_epi8(15), e = _mm_set1_epi8(8);
      lo = _mm_sub_epi8(_mm_and_si128(v, m), e);
      hi = _mm_sub_epi8(_mm_and_si128(_mm_srli_epi16(v, 4), m), e);
    }
    _mm512_storeu_ps(out, _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(lo)), d));
    _mm512_storeu_ps(out + 16, _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(hi)), d));
  }
}

// A value block's 32 quants as two float vectors (not scaled).
template <KvType T>
FAIRKV_TARGET_VNNI inline void widen(const uint8_t* blk, __m512& x0, __m512& x1) {
  __m128i lo, hi;
  if constexpr (T == KvType::Q8_0) {
    lo = _mm_loadu_si128(reinterpret_cast<const __m128i*>(blk + 2));
    hi = _mm_loadu_si128(reinterpret_cast<const __m128i*>(blk + 18));
  } else {
    const __m128i v = _mm_loadu_si128(reinterpret_cast<const __m128i*>(blk + 2));
    const __m128i m = _mm_set1_epi8(15), e = _mm_set1_epi8(8);
    lo = _mm_sub_epi8(_mm_and_si128(v, m), e);
    hi = _mm_sub_epi8(_mm_and_si128(_mm_srli_epi16(v, 4), m), e);
  }
  x0 = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(lo));
  x1 = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(hi));
}

// Keys per step of pv_quant_rows for NR rows (its U).
constexpr int keys_per_step(int nr) {
  return nr == 1 ? 4 : nr <= 3 ? 2 : 1;
}

// pv_quant for NR (1..8) rows, with the value scales folded into the probabilities beforehand
// (w: row r, block b, key j at r * ws + b * wb + j holds p_rj x d_jb): a block of 32 values is
// two vectors, converted once, then one FMA per row and vector. Rows this few leave too few
// accumulator chains for the FMA latency, so U sets of keys accumulate apart and add up at the
// end (float sums in another order; the tests' tolerances hold them).
template <KvType T, int NR>
FAIRKV_TARGET_VNNI void pv_quant_rows(float* const* o, const uint8_t* V, size_t vr, int64_t nb,
                                      int64_t blocks, const float* w, int64_t ws, int64_t wb,
                                      const float* corr, Prefetch& ahead) {
  constexpr size_t kB = T == KvType::Q8_0 ? sizeof(BlockQ8_0) : sizeof(BlockQ4_0);
  constexpr int U = keys_per_step(NR);
  Prefetch pf = ahead;  // in registers for the loop
  for (int64_t b = 0; b < blocks; ++b) {
    __m512 acc[U][NR][2];
    FAIRKV_UNROLL
    for (int r = 0; r < NR; ++r) {
      const __m512 c = _mm512_set1_ps(corr[r]);
      acc[0][r][0] = _mm512_mul_ps(_mm512_loadu_ps(o[r] + b * kQK), c);
      acc[0][r][1] = _mm512_mul_ps(_mm512_loadu_ps(o[r] + b * kQK + 16), c);
      FAIRKV_UNROLL
      for (int u = 1; u < U; ++u) acc[u][r][0] = acc[u][r][1] = _mm512_setzero_ps();
    }
    const uint8_t* blk = V + size_t(b) * kB;
    const float* wr = w + b * wb;
    int64_t j = 0;
    for (; j + U <= nb; j += U) {
      pf.tick();
      FAIRKV_UNROLL
      for (int u = 0; u < U; ++u) {
        // The block's value kNearRows keys on into L1, both lines it may straddle.
        const int64_t near = int64_t(size_t(j + u + kNearRows) * vr);
        prefetch_near(blk, near);
        prefetch_near(blk, near + int64_t(kB) - 1);
        __m512 x0, x1;
        widen<T>(blk + size_t(j + u) * vr, x0, x1);
        FAIRKV_UNROLL
        for (int r = 0; r < NR; ++r) {
          const __m512 p = _mm512_set1_ps(wr[r * ws + j + u]);
          acc[u][r][0] = _mm512_fmadd_ps(p, x0, acc[u][r][0]);
          acc[u][r][1] = _mm512_fmadd_ps(p, x1, acc[u][r][1]);
        }
      }
    }
    for (; j < nb; ++j) {
      pf.tick();
      __m512 x0, x1;
      widen<T>(blk + size_t(j) * vr, x0, x1);
      FAIRKV_UNROLL
      for (int r = 0; r < NR; ++r) {
        const __m512 p = _mm512_set1_ps(wr[r * ws + j]);
        acc[0][r][0] = _mm512_fmadd_ps(p, x0, acc[0][r][0]);
        acc[0][r][1] = _mm512_fmadd_ps(p, x1, acc[0][r][1]);
      }
    }
    FAIRKV_UNROLL
    for (int r = 0; r < NR; ++r) {
      FAIRKV_UNROLL
      for (int u = 1; u < U; ++u) {
        acc[0][r][0] = _mm512_add_ps(acc[0][r][0], acc[u][r][0]);
        acc[0][r][1] = _mm512_add_ps(acc[0][r][1], acc[u][r][1]);
      }
      _mm512_storeu_ps(o[r] + b * kQK, acc[0][r][0]);
      _mm512_storeu_ps(o[r] + b * kQK + 16, acc[0][r][1]);
    }
  }
  ahead = pf;
}

// The probabilities times the value scales, 16 keys at a time: the keys' scales of block b are
// gathered (one dword per key, its low half the fp16 scale), converted, and multiply every row.
template <KvType T>
FAIRKV_TARGET_VNNI void fold_scales(int n, const uint8_t* V, size_t vr, int64_t nb, int64_t blocks,
                                    const float* prob, int64_t ps, float* w, int64_t ws,
                                    int64_t wb) {
  constexpr size_t kB = T == KvType::Q8_0 ? sizeof(BlockQ8_0) : sizeof(BlockQ4_0);
  const __m512i idx =
      _mm512_mullo_epi32(_mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15),
                         _mm512_set1_epi32(int(vr)));
  for (int64_t j0 = 0; j0 < nb; j0 += 16) {
    const __mmask16 m = nb - j0 >= 16 ? __mmask16(0xFFFF) : __mmask16((1u << (nb - j0)) - 1);
    for (int64_t b = 0; b < blocks; ++b) {
      const uint8_t* at = V + size_t(j0) * vr + size_t(b) * kB;
      const __m512i raw = _mm512_mask_i32gather_epi32(_mm512_setzero_si512(), m, idx, at, 1);
      const __m512 d = _mm512_cvtph_ps(_mm512_cvtepi32_epi16(raw));
      for (int r = 0; r < n; ++r)
        _mm512_storeu_ps(w + r * ws + b * wb + j0,
                         _mm512_mul_ps(_mm512_maskz_loadu_ps(m, prob + r * ps + j0), d));
    }
  }
}

template <KvType T>
FAIRKV_TARGET_VNNI void pv_quant_all(float* const* o, int n, const uint8_t* V, size_t vr,
                                     int64_t nb, int64_t blocks, const float* prob, int64_t ps,
                                     const float* corr, Prefetch& ahead) {
  using Fn = void (*)(float* const*, const uint8_t*, size_t, int64_t, int64_t, const float*,
                      int64_t, int64_t, const float*, Prefetch&);
  static constexpr Fn table[] = {&pv_quant_rows<T, 1>, &pv_quant_rows<T, 2>, &pv_quant_rows<T, 3>,
                                 &pv_quant_rows<T, 4>, &pv_quant_rows<T, 5>, &pv_quant_rows<T, 6>,
                                 &pv_quant_rows<T, 7>, &pv_quant_rows<T, 8>};
  thread_local std::vector<float> w;
  const int64_t wb = (nb + 15) / 16 * 16, ws = blocks * wb;
  w.resize(size_t(n * ws));
  fold_scales<T>(n, V, vr, nb, blocks, prob, ps, w.data(), ws, wb);
  // The next block's values are prefetched a few lines per step of the first eight rows' loops
  // (as pv_fast does), not in a burst after them.
  const int64_t u = keys_per_step(std::min(n, 8));
  ahead.steps = std::max<int64_t>(1, blocks * (nb / u + nb % u));
  Prefetch none;
  for (int r = 0; r < n; r += 8)
    table[std::min(n - r, 8) - 1](o + r, V, vr, nb, blocks, w.data() + r * ws, ws, wb, corr + r,
                                  r == 0 ? ahead : none);
}
#endif

}  // namespace

bool pv_quant(const HeadStore& st, float* const* o, int n, int64_t r0, int64_t nb,
              const float* prob, int64_t prob_stride, const float* corr, Prefetch& ahead) {
#if defined(FAIRKV_QUANT_VNNI)
  if (!quant_scores_vnni()) return false;
  const size_t vr = st.v_row_bytes();
  const auto* V = static_cast<const uint8_t*>(st.v_data()) + size_t(r0) * vr;
  const int64_t blocks = st.head_dim() / kQK;
  if (st.types().v == KvType::Q8_0)
    pv_quant_all<KvType::Q8_0>(o, n, V, vr, nb, blocks, prob, prob_stride, corr, ahead);
  else
    pv_quant_all<KvType::Q4_0>(o, n, V, vr, nb, blocks, prob, prob_stride, corr, ahead);
  return true;
#else
  (void)st, (void)o, (void)n, (void)r0, (void)nb, (void)prob, (void)prob_stride, (void)corr;
  (void)ahead;
  return false;
#endif
}

void dequantize_values(const HeadStore& st, int64_t r0, int64_t n, int64_t dp, float* out) {
  const int64_t d = st.head_dim();
  const size_t vr = st.v_row_bytes();
  const KvType t = st.types().v;
  const auto* V = static_cast<const uint8_t*>(st.v_data());
  for (int64_t j = 0; j < n; ++j) {
    float* dst = out + j * dp;
    const uint8_t* row = V + size_t(r0 + j) * vr;
#if defined(FAIRKV_QUANT_VNNI)
    if (quant_scores_vnni() && t == KvType::Q8_0)
      dequantize_avx512<KvType::Q8_0>(row, d / kQK, dst);
    else if (quant_scores_vnni() && t == KvType::Q4_0)
      dequantize_avx512<KvType::Q4_0>(row, d / kQK, dst);
    else
      st.v_row(r0 + j, dst);
#else
    (void)row;
    (void)t;
    st.v_row(r0 + j, dst);
#endif
    std::fill(dst + d, dst + dp, 0.0f);
  }
}

}  // namespace fairkv::kv::detail
