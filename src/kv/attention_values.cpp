// The values of a block of keys for the fast attention kernel (attention_values.h): AVX-512
// tiles of up to eight query rows x two vectors of head_dim, a portable form one vector of
// head_dim at a time, and quantized values in place (attention_quant.h) or through a float32
// copy.
#include "kv/attention_values.h"

#include <algorithm>
#include <stdexcept>
#include <type_traits>
#include <utility>
#include <vector>

#include "kernels/simd.h"
#include "kv/attention_quant.h"

namespace fairkv::kv::detail {

namespace {

// Values [r0, r0 + n) as float32 rows of stride dp (a multiple of kLanes, zero padded): an f32
// store whose rows are whole vectors is read in place.
const float* value_rows(const HeadStore& st, int64_t r0, int64_t n, int64_t dp,
                        std::vector<float>& buf) {
  const int64_t d = st.head_dim();
  const void* base = st.v_data();
  const KvType t = st.types().v;
  if (t == KvType::F32 && dp == d) return static_cast<const float*>(base) + r0 * d;
  buf.resize(size_t(n * dp));
  if (kv_type_quantized(t)) {
    dequantize_values(st, r0, n, dp, buf.data());
    return buf.data();
  }
  int64_t j = t == KvType::BF16 ? bf16_value_rows(st, r0, n, dp, buf.data()) : 0;
  for (; j < n; ++j) {
    float* dst = buf.data() + j * dp;
    if (r0 + j < st.panel_values()) {  // a bf16 value in a panel, without its pair
      st.v_row(r0 + j, dst);
    } else if (t == KvType::F32) {
      std::copy_n(static_cast<const float*>(base) + (r0 + j) * d, d, dst);
    } else {
      const uint16_t* src = static_cast<const uint16_t*>(base) + (r0 + j) * d;
      const bool bf16 = t == KvType::BF16;
      int64_t i = 0;
      for (; i + kLanes <= d; i += kLanes)
        simd::store(dst + i, bf16 ? simd::load_bf16(src + i) : simd::load_f16(src + i));
      for (; i < d; ++i)
        dst[i] = bf16 ? kernels::bf16_to_fp32(src[i]) : simd::half_to_float(src[i]);
    }
    std::fill(dst + d, dst + dp, 0.0f);
  }
  return buf.data();
}

#if defined(FAIRKV_AVX512)
// 16 float32 elements from p (converted from f16 in registers).
template <class T>
inline __m512 load16(const T* p) {
  if constexpr (std::is_same_v<T, uint16_t>)
    return _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
  else
    return _mm512_loadu_ps(p);
}
#endif

#if defined(FAIRKV_AVX512)
// o[r][c0, c0 + 16 CW) = o * corr[r] + sum_j prob[r][j] V[j][c0, c0 + 16 CW) for NR rows: each
// value vector loaded (and converted, for f16) serves NR FMAs and each broadcast probability
// CW, with the NR x CW accumulators in registers for the whole block.
template <int NR, int CW, class T>
inline void pv_tile(float* const* o, int64_t c0, const T* V, int64_t stride, int64_t nb,
                    const float* prob, const float* corr, Prefetch& ahead) {
  Prefetch pf = ahead;  // in registers for the loop, not through memory
  __m512 acc[NR][CW];
  FAIRKV_UNROLL
  for (int r = 0; r < NR; ++r) {
    const __m512 cr = _mm512_set1_ps(corr[r]);
    FAIRKV_UNROLL
    for (int c = 0; c < CW; ++c) acc[r][c] = _mm512_mul_ps(_mm512_loadu_ps(o[r] + c0 + 16 * c), cr);
  }
  for (int64_t j = 0; j < nb; ++j) {
    pf.tick();
    const T* vr = V + j * stride + c0;
    constexpr int kLines = (CW * 16 * int(sizeof(T)) + 63) / 64;  // of the tile's row
    FAIRKV_UNROLL
    for (int l = 0; l < kLines; ++l)
      prefetch_near(vr, int64_t(sizeof(T)) * kNearRows * stride + 64 * l);
    __m512 v[CW];
    FAIRKV_UNROLL
    for (int c = 0; c < CW; ++c) v[c] = load16(vr + 16 * c);
    FAIRKV_UNROLL
    for (int r = 0; r < NR; ++r) {
      __m512 pr = _mm512_set1_ps(prob[r * kBlock + j]);
      if constexpr (CW > 1) asm("" : "+v"(pr));  // one broadcast, not one per FMA
      FAIRKV_UNROLL
      for (int c = 0; c < CW; ++c) acc[r][c] = _mm512_fmadd_ps(pr, v[c], acc[r][c]);
    }
  }
  FAIRKV_UNROLL
  for (int r = 0; r < NR; ++r) {
    FAIRKV_UNROLL
    for (int c = 0; c < CW; ++c) _mm512_storeu_ps(o[r] + c0 + 16 * c, acc[r][c]);
  }
  ahead = pf;
}

// pv_tile over the whole of head_dim (dp a multiple of 16) for NR rows.
template <int NR, int CW, class T>
void pv_rows(float* const* o, const T* V, int64_t stride, int64_t nb, int64_t dp, const float* prob,
             const float* corr, Prefetch& ahead) {
  int64_t c0 = 0;
  for (; c0 + 16 * CW <= dp; c0 += 16 * CW)
    pv_tile<NR, CW>(o, c0, V, stride, nb, prob, corr, ahead);
  for (; c0 < dp; c0 += 16) pv_tile<NR, 1>(o, c0, V, stride, nb, prob, corr, ahead);
}

// The values of a block for every row of the pass, in the tiles of pv_tiles; the prefetches of
// `ahead` spread over every token of every tile.
template <class T>
void pv_fast(float* const* po, int pn, const T* V, int64_t stride, int64_t nb, int64_t dp,
             const float* prob, const float* corr, Prefetch& ahead) {
  PvTile tiles[kMaxRows];
  const int n_tiles = pv_tiles(pn, tiles);
  int64_t steps = 0;  // pv_tile calls (as pv_rows makes them) x nb tokens
  for (int i = 0; i < n_tiles; ++i) {
    const int64_t w = 16 * tiles[i].vecs;
    steps += nb * (dp / w + dp % w / 16);
  }
  ahead.steps = std::max<int64_t>(1, steps);
  for_each_pv_tile(pn, [&](auto rows, auto vecs, int r) {
    pv_rows<rows(), vecs()>(po + r, V, stride, nb, dp, prob + r * kBlock, corr + r, ahead);
  });
}
#endif

// o[r] = o[r] * corr[r] + sum_j prob[r][j] V[j] for the NR rows of a pass, one vector of
// head_dim at a time: each value vector is loaded (and converted, for f16) once for all rows,
// whose accumulators stay in registers (NR is a template argument so that the compiler unrolls
// over the rows). V rows have `stride` elements.
template <int NR, bool F16>
void pv_block(float* const* o, const void* V, int64_t stride, int64_t nb, int64_t dp,
              const float* prob, const float* corr, Prefetch& ahead) {
  for (int64_t c = 0; c < dp; c += kLanes) {
    simd::V acc[NR];
    FAIRKV_UNROLL
    for (int r = 0; r < NR; ++r) acc[r] = simd::mul(simd::load(o[r] + c), simd::set1(corr[r]));
    for (int64_t j = 0; j < nb; ++j) {
      ahead.tick();
      prefetch_near(V, (F16 ? 2 : 4) * ((j + kNearRows) * stride + c));
      const simd::V v = F16 ? simd::load_f16(static_cast<const uint16_t*>(V) + j * stride + c)
                            : simd::load(static_cast<const float*>(V) + j * stride + c);
      FAIRKV_UNROLL
      for (int r = 0; r < NR; ++r) acc[r] = simd::fma(simd::set1(prob[r * kBlock + j]), v, acc[r]);
    }
    FAIRKV_UNROLL
    for (int r = 0; r < NR; ++r) simd::store(o[r] + c, acc[r]);
  }
}

template <bool F16, int... N>
void pv_dispatch_impl(std::integer_sequence<int, N...>, float* const* o, int n, const void* V,
                      int64_t stride, int64_t nb, int64_t dp, const float* prob, const float* corr,
                      Prefetch& ahead) {
  using Fn = void (*)(float* const*, const void*, int64_t, int64_t, int64_t, const float*,
                      const float*, Prefetch&);
  static constexpr Fn table[] = {&pv_block<N + 1, F16>...};
  table[n - 1](o, V, stride, nb, dp, prob, corr, ahead);
}

}  // namespace

bool quant_block_values(const HeadStore& st) {
  return kv_type_quantized(st.types().v) && quant_scores_vnni();
}

void block_values(const HeadStore& st, float* const* o, int n, int64_t r0, int64_t nb, int64_t dp,
                  const float* prob, int64_t prob_stride, const float* corr,
                  std::vector<float>& vbuf, Prefetch& ahead) {
  const int64_t d = st.head_dim();
  constexpr auto rows = std::make_integer_sequence<int, kMaxRows>{};
  const KvType vt = st.types().v;
  if (kv_type_quantized(vt) && pv_quant(st, o, n, r0, nb, prob, prob_stride, corr, ahead)) {
    ahead.finish();
    return;
  }
  if (nb > kBlock || prob_stride != kBlock)
    throw std::logic_error("block_values: blocks of more than kBlock keys need pv_quant");
#if defined(FAIRKV_AVX512)
  if (dp == d) {
    if (vt == KvType::F16)
      pv_fast(o, n, static_cast<const uint16_t*>(st.v_data()) + r0 * d, d, nb, dp, prob, corr,
              ahead);
    else if (vt == KvType::F32)
      pv_fast(o, n, static_cast<const float*>(st.v_data()) + r0 * d, d, nb, dp, prob, corr, ahead);
    else if (vt == KvType::BF16 && pv_bf16(st, o, n, r0, nb, prob, corr, ahead))
      ;
    else  // bf16 (the store's last block), q8_0, q4_0: converted a block at a time, then as f32
      pv_fast(o, n, value_rows(st, r0, nb, dp, vbuf), d, nb, dp, prob, corr, ahead);
    ahead.finish();
    return;
  }
#endif
  ahead.steps = std::max<int64_t>(1, nb * (dp / kLanes));
  if (dp == d && vt == KvType::F16) {
    pv_dispatch_impl<true>(rows, o, n, static_cast<const uint16_t*>(st.v_data()) + r0 * d, d, nb,
                           dp, prob, corr, ahead);
  } else {
    const float* V = value_rows(st, r0, nb, dp, vbuf);
    pv_dispatch_impl<false>(rows, o, n, V, dp, nb, dp, prob, corr, ahead);
  }
  ahead.finish();
}

}  // namespace fairkv::kv::detail
