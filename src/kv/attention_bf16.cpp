// The kernels of a bf16 store (attention_kernels.h), whose keys and values are held as AMX tile
// rows (cache.h): keys in pairs of dimensions per 16-key panel, values in pairs of keys per
// 16-column tile of a 32-key panel. On FMAs a pair row gives two rows of 16 elements from one
// load (a shift and a mask), so the layout costs the FMA kernel nothing against row-major bf16.
#include <algorithm>
#include <cstring>
#include <utility>
#include <vector>

#include "kv/attention_kernels.h"

namespace fairkv::kv::detail {

namespace {

int64_t round_up(int64_t x, int64_t m) {
  return (x + m - 1) / m * m;
}

// score_panels over bf16 panels (cache.h: dimension pairs of 16 keys): each pair row of a panel
// gives two rows of kKeyPanel elements, each serving one FMA per query row.
template <int NR, int NP>
void score_pair_panels(const float* q, int64_t qs, const uint16_t* P, int64_t d, float scale,
                       float* s, Prefetch ahead) {
  constexpr int kW = NP * kPanelVecs;
  constexpr int kChains = NR * kW >= kScoreAccs ? 1 : kScoreAccs / (NR * kW);
  const int64_t pstride = d * kKeyPanel, pairs = d / 2;
  const uint16_t* base = P;
  simd::V acc[kChains][NR][kW];
  FAIRKV_UNROLL
  for (int c = 0; c < kChains; ++c) {
    FAIRKV_UNROLL
    for (int r = 0; r < NR; ++r) {
      FAIRKV_UNROLL
      for (int v = 0; v < kW; ++v) acc[c][r][v] = simd::zero();
    }
  }
  auto step = [&](int c, int64_t m) {
    simd::V ke[kW], ko[kW];
    FAIRKV_UNROLL
    for (int v = 0; v < kW; ++v) {
      const uint16_t* src =
          base + (v / kPanelVecs) * pstride + m * 2 * kKeyPanel + (v % kPanelVecs) * 2 * kLanes;
      prefetch_near(src, 2 * kNearDims * kKeyPanel);  // kNearDims / 2 pair rows on
      load_bf16_pairs(src, ke[v], ko[v]);
    }
    FAIRKV_UNROLL
    for (int r = 0; r < NR; ++r) {
      const simd::V qe = simd::set1(q[r * qs + 2 * m]), qo = simd::set1(q[r * qs + 2 * m + 1]);
      FAIRKV_UNROLL
      for (int v = 0; v < kW; ++v)
        acc[c][r][v] = simd::fma(qo, ko[v], simd::fma(qe, ke[v], acc[c][r][v]));
    }
  };
  ahead.steps = std::max<int64_t>(1, pairs / kChains);
  int64_t m = 0;
  for (; m + kChains <= pairs; m += kChains) {
    ahead.tick();
    FAIRKV_UNROLL
    for (int c = 0; c < kChains; ++c) step(c, m + c);
  }
  for (; m < pairs; ++m) step(0, m);
  if (d % 2 != 0) {  // an odd last dimension: a plain row of kKeyPanel elements
    FAIRKV_UNROLL
    for (int v = 0; v < kW; ++v) {
      const simd::V k = simd::load_bf16(base + (v / kPanelVecs) * pstride + (d - 1) * kKeyPanel +
                                        (v % kPanelVecs) * kLanes);
      FAIRKV_UNROLL
      for (int r = 0; r < NR; ++r)
        acc[0][r][v] = simd::fma(simd::set1(q[r * qs + d - 1]), k, acc[0][r][v]);
    }
  }
  ahead.finish();
  const simd::V sc = simd::set1(scale);
  FAIRKV_UNROLL
  for (int r = 0; r < NR; ++r) {
    FAIRKV_UNROLL
    for (int v = 0; v < kW; ++v) {
      simd::V t = acc[0][r][v];
      FAIRKV_UNROLL
      for (int c = 1; c < kChains; ++c) t = simd::add(t, acc[c][r][v]);
      simd::store(s + r * kBlock + v * kLanes, simd::mul(t, sc));
    }
  }
}

// score_pair_panels for n rows, as many calls as the accumulators need.
template <int NP, int... N>
void score_pair_rows(std::integer_sequence<int, N...>, int n, const float* q, int64_t qs,
                     const uint16_t* P, int64_t d, float scale, float* s, Prefetch ahead) {
  constexpr int kRows = kScoreAccs / (NP * kPanelVecs);
  using Fn = void (*)(const float*, int64_t, const uint16_t*, int64_t, float, float*, Prefetch);
  static constexpr Fn table[] = {&score_pair_panels<N + 1, NP>...};
  for (int r = 0; r < n; r += kRows, ahead = {})
    table[std::min(n - r, kRows) - 1](q + r * qs, qs, P, d, scale, s + r * kBlock, ahead);
}

#if defined(FAIRKV_AVX512)
// pv_tile over a bf16 store's value panels (cache.h): the values of keys r0 + j, j < nb (r0
// even, every pair of keys up to nb in panels), for NR rows and CW column tiles of 16 from tile
// ct0. A pair row of a tile gives the two keys' 16 columns in one load and two operations.
template <int NR, int CW>
inline void pv_pair_tile(float* const* o, int64_t ct0, const uint16_t* V, int64_t d, int64_t r0,
                         int64_t nb, const float* prob, const float* corr, Prefetch& ahead) {
  Prefetch pf = ahead;
  __m512 acc[NR][CW];
  FAIRKV_UNROLL
  for (int r = 0; r < NR; ++r) {
    const __m512 cr = _mm512_set1_ps(corr[r]);
    FAIRKV_UNROLL
    for (int c = 0; c < CW; ++c)
      acc[r][c] = _mm512_mul_ps(_mm512_loadu_ps(o[r] + 16 * (ct0 + c)), cr);
  }
  const __m512i upper = _mm512_set1_epi32(int(0xFFFF0000u));
  for (int64_t j = 0; j < nb; j += 2) {
    pf.tick();
    pf.tick();
    const int64_t key = r0 + j, t2 = key % kValuePanel;
    const uint16_t* src = V + (key - t2) * d + ct0 * 16 * kValuePanel + t2 * 16;
    const int64_t near = key + kNearRows, n2 = near % kValuePanel;
    const int64_t at = 2 * ((near - n2 - key + t2) * d + (n2 - t2) * 16);  // bytes from src
    FAIRKV_UNROLL
    for (int c = 0; c < CW; ++c) prefetch_near(src, at + 2 * c * 16 * kValuePanel);
    __m512 ve[CW], vo[CW];
    FAIRKV_UNROLL
    for (int c = 0; c < CW; ++c) {
      const __m512i w = _mm512_loadu_si512(src + c * 16 * kValuePanel);
      ve[c] = _mm512_castsi512_ps(_mm512_slli_epi32(w, 16));
      vo[c] = _mm512_castsi512_ps(_mm512_and_si512(w, upper));
    }
    FAIRKV_UNROLL
    for (int r = 0; r < NR; ++r) {
      // An odd last key's partner (past nb) weighs nothing.
      __m512 pe = _mm512_set1_ps(prob[r * kBlock + j]),
             po = _mm512_set1_ps(j + 1 < nb ? prob[r * kBlock + j + 1] : 0.0f);
      if constexpr (CW > 1) asm("" : "+v"(pe), "+v"(po));
      FAIRKV_UNROLL
      for (int c = 0; c < CW; ++c)
        acc[r][c] = _mm512_fmadd_ps(po, vo[c], _mm512_fmadd_ps(pe, ve[c], acc[r][c]));
    }
  }
  FAIRKV_UNROLL
  for (int r = 0; r < NR; ++r) {
    FAIRKV_UNROLL
    for (int c = 0; c < CW; ++c) _mm512_storeu_ps(o[r] + 16 * (ct0 + c), acc[r][c]);
  }
  ahead = pf;
}

template <int NR, int CW>
void pv_pair_rows(float* const* o, const uint16_t* V, int64_t d, int64_t r0, int64_t nb,
                  const float* prob, const float* corr, Prefetch& ahead) {
  const int64_t tiles = d / 16;
  int64_t ct = 0;
  for (; ct + CW <= tiles; ct += CW) pv_pair_tile<NR, CW>(o, ct, V, d, r0, nb, prob, corr, ahead);
  for (; ct < tiles; ++ct) pv_pair_tile<NR, 1>(o, ct, V, d, r0, nb, prob, corr, ahead);
}

// pv_fast over a bf16 store's value panels (head_dim a multiple of 16).
void pv_pairs_fast(float* const* o_rows, int n, const uint16_t* V, int64_t d, int64_t r0,
                   int64_t nb, const float* prob, const float* corr, Prefetch& ahead) {
  PvTile tiles[kMaxRows];
  const int n_tiles = pv_tiles(n, tiles);
  int64_t steps = 0;
  for (int i = 0; i < n_tiles; ++i) steps += nb * (d / 16 / tiles[i].vecs + d / 16 % tiles[i].vecs);
  ahead.steps = std::max<int64_t>(1, steps);
  for_each_pv_tile(n, [&](auto rows, auto vecs, int r) {
    pv_pair_rows<rows(), vecs()>(o_rows + r, V, d, r0, nb, prob + r * kBlock, corr + r, ahead);
  });
}
#endif

}  // namespace

void score_bf16_panels(int np, int n, const float* q, int64_t qs, const uint16_t* P, int64_t d,
                       float scale, float* s, Prefetch ahead) {
  if (np == 2)
    score_pair_rows<2>(std::make_integer_sequence<int, kScoreAccs / (2 * kPanelVecs)>{}, n, q, qs,
                       P, d, scale, s, ahead);
  else
    score_pair_rows<1>(std::make_integer_sequence<int, kScoreAccs / kPanelVecs>{}, n, q, qs, P, d,
                       scale, s, ahead);
}

int64_t bf16_value_rows(const HeadStore& st, int64_t r0, int64_t n, int64_t dp, float* buf) {
  const int64_t d = st.head_dim();
  const void* base = st.v_data();
  // bf16 values in panels (cache.h): two rows from each pair of keys, a column tile at a time.
  int64_t j = 0;
  const int64_t in_panels = st.panel_values();
  for (; j + 2 <= n && r0 + j + 2 <= in_panels; j += 2) {
    const int64_t key = r0 + j, t2 = key % kValuePanel;  // r0 is even: so is t2
    const uint16_t* panel = static_cast<const uint16_t*>(base) + (key - t2) * d;
    float *even = buf + j * dp, *odd = even + dp;
    int64_t c = 0;
    for (; c + 16 <= d; c += 16)
      for (int64_t i = 0; i < 16; i += kLanes) {
        simd::V e, o;
        load_bf16_pairs(panel + c * kValuePanel + t2 * 16 + 2 * i, e, o);
        simd::store(even + c + i, e);
        simd::store(odd + c + i, o);
      }
    for (; c < d; ++c) {
      even[c] = kernels::bf16_to_fp32(panel[bf16_value_index(t2, c, d)]);
      odd[c] = kernels::bf16_to_fp32(panel[bf16_value_index(t2 + 1, c, d)]);
    }
    std::fill(even + d, even + dp, 0.0f);
    std::fill(odd + d, odd + dp, 0.0f);
  }
  return j;
}

bool pv_bf16(const HeadStore& st, float* const* o, int n, int64_t r0, int64_t nb, const float* prob,
             const float* corr, Prefetch& ahead) {
#if defined(FAIRKV_AVX512)
  const int64_t d = st.head_dim();
  if (d % 16 != 0 || r0 % 2 != 0 || r0 + round_up(nb, 2) > st.panel_values()) return false;
  pv_pairs_fast(o, n, static_cast<const uint16_t*>(st.v_data()), d, r0, nb, prob, corr, ahead);
  return true;
#else
  (void)st, (void)o, (void)n, (void)r0, (void)nb, (void)prob, (void)corr, (void)ahead;
  return false;
#endif
}

// The values of a bf16 store's block [r0, r0 + nb) (r0 a multiple of kValuePanel) on AMX:
// amx::values_pairs reads whole value panels, the store's own where they are whole (the panels
// up to nb rounded up to a panel; past nb their probabilities are zero); the store's row-major
// tail (under a panel) goes through scratch, laid out as a panel with zeros after it.
void values_amx_bf16(const HeadStore& st, const amx::Rows& rows, int64_t r0, int64_t nb,
                     const float* prob, int64_t p_stride, const float* corr, float* const* o,
                     amx::Ahead ahead, std::vector<uint16_t>& scratch) {
  const int64_t d = st.head_dim();
  const int64_t in_place =
      std::clamp<int64_t>(st.panel_values() - r0, 0, round_up(nb, kValuePanel));
  const auto* V = static_cast<const uint16_t*>(st.v_data()) + r0 * d;
  if (in_place >= nb) {
    amx::values_pairs(rows, V, nb, prob, p_stride, corr, o, ahead);
    return;
  }
  if (in_place > 0) amx::values_pairs(rows, V, in_place, prob, p_stride, corr, o);
  scratch.assign(size_t(kValuePanel * d), 0);
  for (int64_t j = in_place; j < nb; ++j)
    for (int64_t c = 0; c < d; ++c)
      scratch[size_t(bf16_value_index(j - in_place, c, d))] = V[j * d + c];
  float ones[kMaxRows];
  std::fill(ones, ones + kMaxRows, 1.0f);
  amx::values_pairs(rows, scratch.data(), nb - in_place, prob + in_place, p_stride,
                    in_place > 0 ? ones : corr, o);
}

}  // namespace fairkv::kv::detail
