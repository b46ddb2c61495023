// Values read in place from q8_0 / q4_0 rows (attention_quant.h): P x V as integer products of
// 16-bit weights (the probabilities times the values' scales) and the quants, and rows widened
// to float32.
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

// GCC 12 reports the AVX-512 intrinsics' deliberately undefined operands (immintrin.h's
// `__Y = __Y`) as maybe uninitialized when they are inlined into a function of another target
// than the build's, as the VNNI kernels are without -march=native; GCC 13 does not.
#if defined(FAIRKV_QUANT_VNNI) && !defined(__clang__) && __GNUC__ < 13
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif

namespace fairkv::kv::detail {

namespace {

using kernels::BlockQ4_0;
using kernels::BlockQ8_0;
using kernels::kQK;

#if defined(FAIRKV_QUANT_VNNI)
template <KvType T>
constexpr size_t kBlockBytes = T == KvType::Q8_0 ? sizeof(BlockQ8_0) : sizeof(BlockQ4_0);

// A value block's 32 quants as signed bytes, in dimension order.
template <KvType T>
FAIRKV_TARGET_VNNI inline __m256i quants(const uint8_t* blk) {
  if constexpr (T == KvType::Q8_0) {
    return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(blk + 2));
  } else {
    const __m128i v = _mm_loadu_si128(reinterpret_cast<const __m128i*>(blk + 2));
    const __m128i m = _mm_set1_epi8(15), e = _mm_set1_epi8(8);
    return _mm256_set_m128i(_mm_sub_epi8(_mm_and_si128(_mm_srli_epi16(v, 4), m), e),
                            _mm_sub_epi8(_mm_and_si128(v, m), e));
  }
}

// Values as float32: each block's quants widened to 16 floats at a time and scaled.
template <KvType T>
FAIRKV_TARGET_VNNI void dequantize_avx512(const uint8_t* row, int64_t nb, float* out) {
  constexpr size_t kB = kBlockBytes<T>;
  for (int64_t b = 0; b < nb; ++b, row += kB, out += kQK) {
    const __m512 d = _mm512_set1_ps(_cvtsh_ss(*reinterpret_cast<const uint16_t*>(row)));
    const __m256i q = quants<T>(row);
    _mm512_storeu_ps(
        out, _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm256_castsi256_si128(q))), d));
    _mm512_storeu_ps(
        out + 16,
        _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm256_extracti128_si256(q, 1))), d));
  }
}

// Pairs of keys per step of pv_quant_rows for NR rows (its U): rows this few leave too few
// accumulator chains for vpdpwssd's latency. Integer sums, so the split changes no result.
constexpr int pairs_per_step(int nr) {
  return nr == 1 ? 4 : nr <= 3 ? 2 : 1;
}

// acc += pairwise products of a and b (vpdpwssd). As an asm statement: GCC 12 moves the
// intrinsic's accumulators between registers, and some to the stack, on every call in a loop
// of 16, doubling the loop's instructions.
FAIRKV_TARGET_VNNI inline void dpwssd(__m512i& acc, __m512i a, __m512i b) {
  asm("vpdpwssd %2, %1, %0" : "+v"(acc) : "v"(a), "v"(b));
}

// Keys k and k + 1 (a zero row if !pair; its weight, past nb, is zero too) of a value block at
// blk into NR rows' accumulators, the block kNearRows keys on prefetched into L1. (Prefetching
// whole rows in the first block's pass only, the later passes finding them in L1, was no faster.)
template <KvType T, int NR>
FAIRKV_TARGET_VNNI __attribute__((always_inline)) inline void pair_products(
    __m512i (&acc)[NR][2], const uint8_t* blk, size_t vr, const int16_t* wr, int64_t k, bool pair) {
  constexpr size_t kB = kBlockBytes<T>;
  const uint8_t* at = blk + size_t(k) * vr;
  const int64_t ahead = int64_t(size_t(kNearRows) * vr);
  prefetch_near(at, ahead);  // both keys' blocks, both lines each may straddle
  prefetch_near(at, ahead + int64_t(kB) - 1);
  prefetch_near(at, ahead + int64_t(vr));
  prefetch_near(at, ahead + int64_t(vr + kB) - 1);
  const __m512i x0 = _mm512_cvtepi8_epi16(quants<T>(at));
  const __m512i x1 = pair ? _mm512_cvtepi8_epi16(quants<T>(at + vr)) : _mm512_setzero_si512();
  const __m512i lo = _mm512_unpacklo_epi16(x0, x1), hi = _mm512_unpackhi_epi16(x0, x1);
  FAIRKV_UNROLL
  for (int r = 0; r < NR; ++r) {
    int32_t two;  // keys k and k + 1's weights
    __builtin_memcpy(&two, wr + r * kBlock + k, sizeof(two));
    const __m512i p = _mm512_set1_epi32(two);
    dpwssd(acc[r][0], lo, p);
    dpwssd(acc[r][1], hi, p);
  }
}

// pv_quant for NR (1..8) rows from integer weights (weights_i16: row r, block b, key j at
// b * bs + r * kBlock + j, in units of unit[r * blocks + b]): two keys' blocks are widened to
// 16-bit lanes and interleaved key by key, so that one vpdpwssd adds both keys' products for 16
// dimensions of a row, 32 multiply-adds where an FMA does 16, and the block's products are
// exact int32 sums, scaled once per block. The interleave is vpunpck's, within 128-bit lanes
// (non-destructive, unlike a two-table permute, which costs a register copy each): the low
// accumulator holds dimensions 0-3, 8-11, 16-19, 24-27, the high one the rest, put back in order
// once per block.
template <KvType T, int NR>
FAIRKV_TARGET_VNNI void pv_quant_rows(float* const* o, const uint8_t* V, size_t vr, int64_t nb,
                                      int64_t blocks, const int16_t* w, int64_t bs,
                                      const float* unit, const float* corr, Prefetch& ahead) {
  constexpr size_t kB = kBlockBytes<T>;
  constexpr int U = pairs_per_step(NR);
  // Dimension i of the block from the low (index < 16) or high accumulator's lanes.
  const __m512i order0 = _mm512_setr_epi32(0, 1, 2, 3, 16, 17, 18, 19, 4, 5, 6, 7, 20, 21, 22, 23);
  const __m512i order1 =
      _mm512_setr_epi32(8, 9, 10, 11, 24, 25, 26, 27, 12, 13, 14, 15, 28, 29, 30, 31);
  Prefetch pf = ahead;  // in registers for the loop
  for (int64_t b = 0; b < blocks; ++b) {
    __m512i acc[U][NR][2];
    FAIRKV_UNROLL
    for (int u = 0; u < U; ++u) {
      FAIRKV_UNROLL
      for (int r = 0; r < NR; ++r) acc[u][r][0] = acc[u][r][1] = _mm512_setzero_si512();
    }
    const uint8_t* blk = V + size_t(b) * kB;
    const int16_t* wr = w + b * bs;
    int64_t j = 0;
    for (; j + 2 * U <= nb; j += 2 * U) {
      pf.tick();
      FAIRKV_UNROLL
      for (int u = 0; u < U; ++u) pair_products<T, NR>(acc[u], blk, vr, wr, j + 2 * u, true);
    }
    for (; j < nb; j += 2) {
      pf.tick();
      pair_products<T, NR>(acc[0], blk, vr, wr, j, j + 1 < nb);
    }
    FAIRKV_UNROLL
    for (int r = 0; r < NR; ++r) {
      FAIRKV_UNROLL
      for (int u = 1; u < U; ++u) {
        acc[0][r][0] = _mm512_add_epi32(acc[0][r][0], acc[u][r][0]);
        acc[0][r][1] = _mm512_add_epi32(acc[0][r][1], acc[u][r][1]);
      }
      const __m512i d0 = _mm512_permutex2var_epi32(acc[0][r][0], order0, acc[0][r][1]);
      const __m512i d1 = _mm512_permutex2var_epi32(acc[0][r][0], order1, acc[0][r][1]);
      const __m512 c = _mm512_set1_ps(corr[r]), s = _mm512_set1_ps(unit[r * blocks + b]);
      float* out = o[r] + b * kQK;
      _mm512_storeu_ps(
          out, _mm512_fmadd_ps(_mm512_cvtepi32_ps(d0), s, _mm512_mul_ps(_mm512_loadu_ps(out), c)));
      _mm512_storeu_ps(out + 16, _mm512_fmadd_ps(_mm512_cvtepi32_ps(d1), s,
                                                 _mm512_mul_ps(_mm512_loadu_ps(out + 16), c)));
    }
  }
  ahead = pf;
}

// The weights pv_quant_rows takes: row r's probability of key j times the key's scale of block
// b, as a 16-bit integer in units of unit[r * blocks + b] = (row's largest probability) x
// (block's largest scale) / kWeightSteps, rounded to nearest: within unit / 2 of the product.
// Both factors are brought to their own largest first (a row's probabilities to [0, 1], a
// block's scales to [-kWeightSteps, kWeightSteps]), so that each weight is one multiply, one
// conversion and half a pack. The scales are gathered 16 keys at a time (one dword per key, its
// low half the fp16 scale), once for all rows, and the factors' inverses are taken together, in
// one vector division. A factor too small for float32 to invert (under ~1e-34, nothing beside a
// probability of one) counts as zero. Weight (r, b, j) at w[b * bs + r * kBlock + j], for j < wb
// (nb rounded up to 32, <= kBlock): rows a constant apart, so that the value kernel addresses
// them from one register (with a row stride in a register GCC ran out of them at four rows,
// spilling the loop's strides to the stack and vector registers).
template <KvType T>
FAIRKV_TARGET_VNNI void weights_i16(int n, const uint8_t* V, size_t vr, int64_t nb, int64_t blocks,
                                    const float* prob, int64_t ps, int16_t* w, int64_t bs,
                                    int64_t wb, float* unit) {
  constexpr size_t kB = kBlockBytes<T>;
  constexpr int kChunks = int(kBlock / 16);
  static_assert(kBlock % 32 == 0);
  thread_local std::vector<float> scale, top, inv;
  scale.resize(size_t(blocks * wb));
  top.resize(size_t(blocks + n));
  inv.resize(size_t(blocks + n));
  __mmask16 masks[kChunks];
  FAIRKV_UNROLL
  for (int c = 0; c < kChunks; ++c) {
    const int64_t j0 = 16 * c;
    masks[c] = nb - j0 >= 16 ? __mmask16(0xFFFF)
               : nb <= j0    ? __mmask16(0)
                             : __mmask16((1u << (nb - j0)) - 1);
  }
  const int chunks = int(wb / 16);
  const __m512i idx =
      _mm512_mullo_epi32(_mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15),
                         _mm512_set1_epi32(int(vr)));
  // The gathers and maxima of every block and row first, then every inverse in one vector
  // division: no block's or row's chain (reduction, division, rescale) holds up the next one's
  // loads, as it did with a chain per block and per row.
  for (int64_t b = 0; b < blocks; ++b) {
    float* sb = scale.data() + b * wb;
    const uint8_t* at = V + size_t(b) * kB;
    __m512 mx = _mm512_setzero_ps();
    FAIRKV_UNROLL
    for (int c = 0; c < kChunks; ++c) {
      if (c >= chunks) break;
      const __m512i raw = _mm512_mask_i32gather_epi32(_mm512_setzero_si512(), masks[c], idx,
                                                      at + size_t(16 * c) * vr, 1);
      const __m512 d = _mm512_cvtph_ps(_mm512_cvtepi32_epi16(raw));  // q4_0's may be negative
      _mm512_storeu_ps(sb + 16 * c, d);
      mx = _mm512_max_ps(mx, _mm512_abs_ps(d));
    }
    top[size_t(b)] = _mm512_reduce_max_ps(mx);
  }
  // The rows' largest probabilities, beside the blocks' largest scales.
  for (int r = 0; r < n; ++r) {
    const float* p = prob + r * ps;
    __m512 mx = _mm512_setzero_ps();
    FAIRKV_UNROLL
    for (int c = 0; c < kChunks; ++c)
      mx = _mm512_max_ps(mx, _mm512_maskz_loadu_ps(masks[c], p + 16 * c));
    top[size_t(blocks + r)] = _mm512_reduce_max_ps(mx);
  }
  // Their inverses (to kWeightSteps for a scale, to 1 for a probability), 16 at a time: zero
  // where a factor has none in float32 (under ~1e-34, nothing beside a probability of one).
  auto invert = [&](int64_t from, int64_t count, float to) {
    for (int64_t i = from; i < from + count; i += 16) {
      const int64_t left = from + count - i;
      const __mmask16 m = left >= 16 ? __mmask16(0xFFFF) : __mmask16((1u << left) - 1);
      const __m512 x = _mm512_maskz_loadu_ps(m, top.data() + i);
      const __m512 q = _mm512_maskz_div_ps(_mm512_cmp_ps_mask(x, _mm512_setzero_ps(), _CMP_GT_OQ),
                                           _mm512_set1_ps(to), x);
      _mm512_mask_storeu_ps(
          inv.data() + i, m,
          _mm512_maskz_mov_ps(_mm512_cmp_ps_mask(q, _mm512_set1_ps(3.0e38f), _CMP_LE_OQ), q));
    }
  };
  invert(0, blocks, float(kWeightSteps));
  invert(blocks, n, 1.0f);
  for (int64_t b = 0; b < blocks; ++b) {
    float* sb = scale.data() + b * wb;
    const __m512 k = _mm512_set1_ps(inv[size_t(b)]);
    FAIRKV_UNROLL
    for (int c = 0; c < kChunks; ++c) {
      if (c >= chunks) break;
      _mm512_storeu_ps(sb + 16 * c, _mm512_mul_ps(_mm512_loadu_ps(sb + 16 * c), k));
    }
  }
  // vpackssdw interleaves its sources' quarters; this puts the keys back in order.
  const __m512i order = _mm512_setr_epi64(0, 2, 4, 6, 1, 3, 5, 7);
  for (int r = 0; r < n; ++r) {
    const float* p = prob + r * ps;
    const float pmax = top[size_t(blocks + r)];
    const __m512 k = _mm512_set1_ps(inv[size_t(blocks + r)]);
    __m512 p1[kChunks];  // the row's probabilities over its largest, in registers
    FAIRKV_UNROLL
    for (int c = 0; c < kChunks; ++c)
      p1[c] = _mm512_mul_ps(_mm512_maskz_loadu_ps(masks[c], p + 16 * c), k);
    for (int64_t b = 0; b < blocks; ++b) {
      unit[r * blocks + b] = pmax * top[size_t(b)] / float(kWeightSteps);
      const float* sb = scale.data() + b * wb;
      int16_t* wr = w + b * bs + r * kBlock;
      FAIRKV_UNROLL
      for (int c = 0; c < kChunks; c += 2) {
        if (c >= chunks) break;
        const __m512i x0 = _mm512_cvtps_epi32(_mm512_mul_ps(p1[c], _mm512_loadu_ps(sb + 16 * c)));
        const __m512i x1 =
            _mm512_cvtps_epi32(_mm512_mul_ps(p1[c + 1], _mm512_loadu_ps(sb + 16 * c + 16)));
        _mm512_storeu_si512(wr + 16 * c,
                            _mm512_permutexvar_epi64(order, _mm512_packs_epi32(x0, x1)));
      }
    }
  }
}

template <KvType T>
FAIRKV_TARGET_VNNI void pv_quant_all(float* const* o, int n, const uint8_t* V, size_t vr,
                                     int64_t nb, int64_t blocks, const float* prob, int64_t ps,
                                     const float* corr, Prefetch& ahead) {
  using Fn = void (*)(float* const*, const uint8_t*, size_t, int64_t, int64_t, const int16_t*,
                      int64_t, const float*, const float*, Prefetch&);
  static constexpr Fn table[] = {&pv_quant_rows<T, 1>, &pv_quant_rows<T, 2>, &pv_quant_rows<T, 3>,
                                 &pv_quant_rows<T, 4>, &pv_quant_rows<T, 5>, &pv_quant_rows<T, 6>,
                                 &pv_quant_rows<T, 7>, &pv_quant_rows<T, 8>};
  // A call's int32 sums (up to kBlock keys of |weight| <= kWeightSteps, |quant| <= 128) fit.
  static_assert(int64_t(kBlock) * kWeightSteps * 128 < (int64_t(1) << 31));
  thread_local std::vector<float> unit;
  thread_local std::vector<int16_t> w;
  // Padded with zeros to 32 keys: an odd last key's pair partner reads a zero weight.
  const int64_t wb = (nb + 31) / 32 * 32, bs = n * kBlock;
  w.resize(size_t(blocks * bs));
  unit.resize(size_t(n * blocks));
  weights_i16<T>(n, V, vr, nb, blocks, prob, ps, w.data(), bs, wb, unit.data());
  Prefetch none;
  for (int r = 0; r < n; r += 8)
    table[std::min(n - r, 8) - 1](o + r, V, vr, nb, blocks, w.data() + r * kBlock, bs,
                                  unit.data() + r * blocks, corr + r, r == 0 ? ahead : none);
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
  // The next block's values are prefetched a few lines per step of the first eight rows' loops
  // (as pv_fast does), not in a burst after them: steps counted over every call.
  const int64_t u = 2 * pairs_per_step(std::min(n, 8));
  ahead.steps = 0;
  for (int64_t j0 = 0; j0 < nb; j0 += kBlock) {
    const int64_t m = std::min(kBlock, nb - j0);
    ahead.steps += blocks * (m / u + (m % u + 1) / 2);
  }
  ahead.steps = std::max<int64_t>(1, ahead.steps);
  // Calls of kBlock keys, each with its own weights' units; corr applies once, before the first.
  static constexpr float kOnes[kMaxRows] = {1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1};
  for (int64_t j0 = 0; j0 < nb; j0 += kBlock) {
    const int64_t m = std::min(kBlock, nb - j0);
    const float* c = j0 == 0 ? corr : kOnes;
    if (st.types().v == KvType::Q8_0)
      pv_quant_all<KvType::Q8_0>(o, n, V + size_t(j0) * vr, vr, m, blocks, prob + j0, prob_stride,
                                 c, ahead);
    else
      pv_quant_all<KvType::Q4_0>(o, n, V + size_t(j0) * vr, vr, m, blocks, prob + j0, prob_stride,
                                 c, ahead);
  }
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
