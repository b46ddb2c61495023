// Fast attention over one head store: up to kMaxRows query rows (tokens x GQA heads) share every
// block of keys and values, so a decode step streams the store once for the whole group.
//
// Per block of kBlock keys: the keys are scored one or two panels of kKeyPanel keys at a time
// (the store keeps them dimension-major, cache.h): for every dimension, each panel's row of
// kKeyPanel elements is loaded and converted once and serves one FMA per query row, against that
// row's element broadcast once for the panels, so scores need no horizontal sums and f16 keys one
// conversion per element for the whole group. The rows' online softmax then advances once per
// block, and the values (row-major) are accumulated for up to eight rows x two vectors of
// head_dim at a time (each value vector loaded and converted once per eight rows). A partial
// panel at the end of the store goes through a float32 copy.
//
// The arithmetic of a group of 8 on an f16 cache (2 x 1024 FMAs and 16 conversions per key of 512
// bytes) takes a core about as long as its share of the memory read, and the hardware
// prefetchers alone keep too few lines in flight while a core computes that densely: the read and
// the arithmetic then add up instead of overlapping (0.45 of the streaming read). So the kernels
// prefetch K two panels ahead of the scores and V one block ahead of the values, a few lines per
// loop iteration (Prefetch below): about 0.77 of the read for that case (README).
#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <stdexcept>
#include <type_traits>
#include <utility>
#include <vector>

#include "kernels/simd.h"
#include "kv/attention.h"
#include "kv/attention_amx.h"
#include "kv/attention_quant.h"

namespace fairkv::kv {

namespace {

namespace simd = kernels::simd;

constexpr int kLanes = simd::kLanes;
constexpr int kMaxRows = 16;    // query rows per pass: their PV accumulators stay in registers
constexpr int64_t kBlock = 64;  // keys per online-softmax step
constexpr int kPvRows = 8;      // query rows per value tile (8 x 2 vectors)
// Keys ahead of the scores whose K a pass prefetches (two panels: the distance measured best
// in kv_bench, from 1 to 16 panels); V is prefetched one block ahead, while a block's values
// are accumulated.
constexpr int64_t kPrefetchKeys = 2 * kKeyPanel;
constexpr float kNegInf = -std::numeric_limits<float>::infinity();

int64_t round_up(int64_t x, int64_t m) {
  return (x + m - 1) / m * m;
}

struct Scratch {
  std::vector<float> kbuf, vbuf, qbuf, obuf, krow;
  std::vector<float> s;     // kMaxRows x kBlock scores, then probabilities
  std::vector<float> amx;   // amx::Rows::scratch, 64-byte aligned within
  detail::QuantQueries qq;  // a pass's query rows as q8_0 blocks, for quantized keys
};

// Off unless asked for: on this project's machine the AMX kernel is slower than the AVX-512 one
// (docs/benchmarks.md, "Issue 19, item 1 on AMX").
bool amx_from_env() {
  const char* env = std::getenv("FAIRKV_AMX");
  return env && *env && std::strcmp(env, "0") != 0;
}
std::atomic<bool> g_allow_amx{amx_from_env()};

// The AMX kernel for this store where allowed and the CPU has it: f16 elements, head_dim in
// pairs of 16-dimension tiles.
bool use_amx(const HeadStore& st) {
  return st.types().k == KvType::F16 && st.types().v == KvType::F16 && st.head_dim() % 32 == 0 &&
         g_allow_amx.load(std::memory_order_relaxed) && amx::available();
}

thread_local Scratch t_scratch;  // per thread, kept between calls

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
    detail::dequantize_values(st, r0, n, dp, buf.data());
    return buf.data();
  }
  for (int64_t j = 0; j < n; ++j) {
    float* dst = buf.data() + j * dp;
    if (t == KvType::F32) {
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

// bf16 elements of a panel (the bits as stored), told apart from f16's uint16_t by type.
struct Bf16 {
  uint16_t bits;
};

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

// Prefetches `lines` cache lines from `at` into L2 spread evenly over `steps` calls of tick()
// (Bresenham): the kernels issue them between their FMAs, a few per loop iteration, because a
// burst of them, like a sweep of loads ahead, stalls the core until the line fill buffers free up
// (the sweep this replaced reached 0.48 of the read). Into L2, not L1: with an f32 cache a block
// of V alone is 32 KiB of L1's 48, and f32 group 8 read at 0.69 of the read with T0, 0.79 with T1.
struct Prefetch {
  const char* at = nullptr;
  int64_t lines = 0, steps = 1;
  int64_t due = 0, line = 0;
  void tick() {
    for (due += lines; due >= steps; due -= steps) __builtin_prefetch(at + 64 * line++, 0, 2);
  }
  void finish() {  // what an overestimated `steps` left
    for (; line < lines; ++line) __builtin_prefetch(at + 64 * line, 0, 2);
  }
};

// Vectors of score accumulators per kernel call: 16 of the 32 registers on AVX-512, 8 of 16.
constexpr int kScoreAccs = kLanes >= 16 ? 16 : 8;
constexpr int kPanelVecs = int(kKeyPanel) / kLanes;  // vectors per panel row

// Scores of NR query rows against the keys of NP consecutive panels at P (element i of key t of
// panel p at P[(p * d + i) * kKeyPanel + t]; T: float or f16 bits): row r (at q + r * qs) gets
// s[r * kBlock + p * kKeyPanel + t] = scale * q_r . K_t. Each panel row is loaded (and converted)
// once for the NR rows, and each broadcast query element serves NP panels; with few rows the
// dimensions are spread over several accumulator chains so that the FMA latency (two ports x
// four cycles want 8 in flight) stays covered.
template <int NR, int NP, class T>
void score_panels(const float* q, int64_t qs, const T* P, int64_t d, float scale, float* s,
                  Prefetch ahead) {
  constexpr int kW = NP * kPanelVecs;
  constexpr int kChains = NR * kW >= kScoreAccs ? 1 : kScoreAccs / (NR * kW);
  const int64_t pstride = d * kKeyPanel;
  simd::V acc[kChains][NR][kW];
  FAIRKV_UNROLL
  for (int c = 0; c < kChains; ++c) {
    FAIRKV_UNROLL
    for (int r = 0; r < NR; ++r) {
      FAIRKV_UNROLL
      for (int v = 0; v < kW; ++v) acc[c][r][v] = simd::zero();
    }
  }
  auto step = [&](int c, int64_t i) {
    simd::V k[kW];
    FAIRKV_UNROLL
    for (int v = 0; v < kW; ++v) {
      const T* src = P + (v / kPanelVecs) * pstride + i * kKeyPanel + (v % kPanelVecs) * kLanes;
      if constexpr (std::is_same_v<T, uint16_t>)
        k[v] = simd::load_f16(src);
      else if constexpr (std::is_same_v<T, Bf16>)
        k[v] = simd::load_bf16(reinterpret_cast<const uint16_t*>(src));
      else
        k[v] = simd::load(src);
    }
    FAIRKV_UNROLL
    for (int r = 0; r < NR; ++r) {
      const simd::V qr = simd::set1(q[r * qs + i]);
      FAIRKV_UNROLL
      for (int v = 0; v < kW; ++v) acc[c][r][v] = simd::fma(qr, k[v], acc[c][r][v]);
    }
  };
  ahead.steps = std::max<int64_t>(1, d / kChains);
  int64_t i = 0;
  for (; i + kChains <= d; i += kChains) {
    ahead.tick();
    FAIRKV_UNROLL
    for (int c = 0; c < kChains; ++c) step(c, i + c);
  }
  for (; i < d; ++i) step(0, i);
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

// score_panels for n rows, as many calls as the accumulators need.
template <int NP, class T, int... N>
void score_panel_rows(std::integer_sequence<int, N...>, int n, const float* q, int64_t qs,
                      const T* P, int64_t d, float scale, float* s, Prefetch ahead) {
  constexpr int kRows = kScoreAccs / (NP * kPanelVecs);
  using Fn = void (*)(const float*, int64_t, const T*, int64_t, float, float*, Prefetch);
  static constexpr Fn table[] = {&score_panels<N + 1, NP, T>...};
  for (int r = 0; r < n; r += kRows, ahead = {})
    table[std::min(n - r, kRows) - 1](q + r * qs, qs, P, d, scale, s + r * kBlock, ahead);
}

// Scores of n query rows (row r at q + r * qs) against the keys of n_panels (1 or 2) panels from
// key k0: in place from whole panels of the store, else (the store's last, partial panel, one
// at a time) from a float32 copy whose missing keys are zero. Row r's scores go to
// s[r * kBlock ...].
void score_keys(const HeadStore& st, int64_t k0, int n_panels, int n, const float* q, int64_t qs,
                float scale, float* s, Scratch& w, Prefetch ahead = {}) {
  const int64_t d = st.head_dim();
  const size_t at = size_t(k0 * d);  // elements: a panel starts where its first key's row would
  auto in_place = [&](auto np, auto rows) {
    if (st.types().k == KvType::F16)
      score_panel_rows<np()>(rows, n, q, qs, static_cast<const uint16_t*>(st.k_data()) + at, d,
                             scale, s, ahead);
    else if (st.types().k == KvType::BF16)
      score_panel_rows<np()>(rows, n, q, qs, static_cast<const Bf16*>(st.k_data()) + at, d, scale,
                             s, ahead);
    else
      score_panel_rows<np()>(rows, n, q, qs, static_cast<const float*>(st.k_data()) + at, d, scale,
                             s, ahead);
  };
  // q8_0 panels are scored by attention_quant.h; here (a caller's single keys) as rows.
  if (k0 + n_panels * kKeyPanel <= st.panel_keys() && !kv_type_quantized(st.types().k)) {
    if (n_panels == 2)
      in_place(std::integral_constant<int, 2>{},
               std::make_integer_sequence<int, kScoreAccs / (2 * kPanelVecs)>{});
    else
      in_place(std::integral_constant<int, 1>{},
               std::make_integer_sequence<int, kScoreAccs / kPanelVecs>{});
    return;
  }
  w.kbuf.assign(size_t(d * kKeyPanel), 0.0f);
  w.krow.resize(size_t(d));
  for (int64_t t = 0; t < kKeyPanel && k0 + t < st.size(); ++t) {
    st.k_row(k0 + t, w.krow.data());
    for (int64_t i = 0; i < d; ++i) w.kbuf[size_t(i * kKeyPanel + t)] = w.krow[size_t(i)];
  }
  score_panel_rows<1>(std::make_integer_sequence<int, kScoreAccs / kPanelVecs>{}, n, q, qs,
                      w.kbuf.data(), d, scale, s, Prefetch{});
}

// The query rows of one pass: row i is token t(i), query head g(i).
struct Pass {
  int n = 0;
  const float* q[kMaxRows];  // padded to dp
  float* o[kMaxRows];        // padded accumulators
  int64_t lim[kMaxRows];     // keys [begin, lim) visible
  float m[kMaxRows], l[kMaxRows];
};

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

// A tile of value rows: `rows` query rows x `vecs` vectors of head_dim at a time.
struct PvTile {
  int rows, vecs;
};

// How pv_fast covers n rows: tiles of eight rows x two vectors, each value vector loaded (and
// converted) once for the eight; fewer rows take wider tiles. (Up to four f32 rows used to go a
// pair at a time, whole value rows in address order; with the prefetches that no longer gains:
// f32 group 4, 2 threads, 0.87-0.90 of the streaming read either way.)
int pv_tiles(int n, PvTile* out) {
  int k = 0;
  for (int r = 0; r < n;) {
    const int left = std::min(n - r, kPvRows);
    const PvTile t = left == 8   ? PvTile{8, 2}
                     : left >= 4 ? PvTile{4, 4}
                     : left == 3 ? PvTile{3, 4}
                                 : PvTile{left, 8};
    out[k++] = t;
    r += t.rows;
  }
  return k;
}

// The values of a block for every row of the pass, in the tiles of pv_tiles; the prefetches of
// `ahead` spread over every token of every tile.
template <class T>
void pv_fast(Pass& p, const T* V, int64_t stride, int64_t nb, int64_t dp, const float* prob,
             const float* corr, Prefetch& ahead) {
  PvTile tiles[kMaxRows];
  const int n_tiles = pv_tiles(p.n, tiles);
  int64_t steps = 0;  // pv_tile calls (as pv_rows makes them) x nb tokens
  for (int i = 0; i < n_tiles; ++i) {
    const int64_t w = 16 * tiles[i].vecs;
    steps += nb * (dp / w + dp % w / 16);
  }
  ahead.steps = std::max<int64_t>(1, steps);
  for (int i = 0, r = 0; i < n_tiles; r += tiles[i++].rows) {
    float* const* o = p.o + r;
    const float* pr = prob + r * kBlock;
    const float* cr = corr + r;
    switch (tiles[i].rows * 16 + tiles[i].vecs) {
      case 8 * 16 + 2:
        pv_rows<8, 2>(o, V, stride, nb, dp, pr, cr, ahead);
        break;
      case 4 * 16 + 4:
        pv_rows<4, 4>(o, V, stride, nb, dp, pr, cr, ahead);
        break;
      case 3 * 16 + 4:
        pv_rows<3, 4>(o, V, stride, nb, dp, pr, cr, ahead);
        break;
      case 2 * 16 + 8:
        pv_rows<2, 8>(o, V, stride, nb, dp, pr, cr, ahead);
        break;
      default:
        pv_rows<1, 8>(o, V, stride, nb, dp, pr, cr, ahead);
        break;
    }
  }
}
#endif

// o[r] = o[r] * corr[r] + sum_j prob[r][j] V[j] for the NR rows of a pass, one vector of
// head_dim at a time: each value vector is loaded (and converted, for f16) once for all rows,
// whose accumulators stay in registers (NR is a template argument so that the compiler unrolls
// over the rows). V rows have `stride` elements.
template <int NR, bool F16>
void pv_block(Pass& p, const void* V, int64_t stride, int64_t nb, int64_t dp, const float* prob,
              const float* corr, Prefetch& ahead) {
  for (int64_t c = 0; c < dp; c += kLanes) {
    simd::V acc[NR];
    FAIRKV_UNROLL
    for (int r = 0; r < NR; ++r) acc[r] = simd::mul(simd::load(p.o[r] + c), simd::set1(corr[r]));
    for (int64_t j = 0; j < nb; ++j) {
      ahead.tick();
      const simd::V v = F16 ? simd::load_f16(static_cast<const uint16_t*>(V) + j * stride + c)
                            : simd::load(static_cast<const float*>(V) + j * stride + c);
      FAIRKV_UNROLL
      for (int r = 0; r < NR; ++r) acc[r] = simd::fma(simd::set1(prob[r * kBlock + j]), v, acc[r]);
    }
    FAIRKV_UNROLL
    for (int r = 0; r < NR; ++r) simd::store(p.o[r] + c, acc[r]);
  }
}

template <bool F16, int... N>
void pv_dispatch_impl(std::integer_sequence<int, N...>, Pass& p, const void* V, int64_t stride,
                      int64_t nb, int64_t dp, const float* prob, const float* corr,
                      Prefetch& ahead) {
  using Fn = void (*)(Pass&, const void*, int64_t, int64_t, int64_t, const float*, const float*,
                      Prefetch&);
  static constexpr Fn table[] = {&pv_block<N + 1, F16>...};
  table[p.n - 1](p, V, stride, nb, dp, prob, corr, ahead);
}

// Values of keys [r0, r0 + nb): read in place when rows are whole vectors (f16 converted on the
// fly), else through a float32 copy.
void pv(const HeadStore& st, Pass& p, int64_t r0, int64_t nb, int64_t dp, const float* prob,
        const float* corr, Scratch& w, Prefetch& ahead) {
  const int64_t d = st.head_dim();
  constexpr auto rows = std::make_integer_sequence<int, kMaxRows>{};
  const KvType vt = st.types().v;
  if (kv_type_quantized(vt) && detail::pv_quant(st, p.o, p.n, r0, nb, prob, kBlock, corr)) {
    ahead.finish();
    return;
  }
#if defined(FAIRKV_AVX512)
  if (dp == d) {
    if (vt == KvType::F16)
      pv_fast(p, static_cast<const uint16_t*>(st.v_data()) + r0 * d, d, nb, dp, prob, corr, ahead);
    else if (vt == KvType::F32)
      pv_fast(p, static_cast<const float*>(st.v_data()) + r0 * d, d, nb, dp, prob, corr, ahead);
    else  // bf16, q8_0, q4_0: converted a block at a time, then as f32
      pv_fast(p, value_rows(st, r0, nb, dp, w.vbuf), d, nb, dp, prob, corr, ahead);
    ahead.finish();
    return;
  }
#endif
  ahead.steps = std::max<int64_t>(1, nb * (dp / kLanes));
  if (dp == d && vt == KvType::F16) {
    pv_dispatch_impl<true>(rows, p, static_cast<const uint16_t*>(st.v_data()) + r0 * d, d, nb, dp,
                           prob, corr, ahead);
  } else {
    const float* V = value_rows(st, r0, nb, dp, w.vbuf);
    pv_dispatch_impl<false>(rows, p, V, dp, nb, dp, prob, corr, ahead);
  }
  ahead.finish();
}

// Advances row r's online softmax over the block's scores s[0, nb), of which [lo, hi) are real:
// s becomes the probabilities relative to the new maximum (zero elsewhere), and the return value
// is the factor that rescales what was accumulated before.
float softmax_step(float* s, int64_t lo, int64_t hi, int64_t nb, float& m, float& l) {
  const int64_t nv = (hi + kLanes - 1) / kLanes;
  std::fill(s, s + lo, kNegInf);
  std::fill(s + hi, s + nv * kLanes, kNegInf);
  simd::V vmax = simd::set1(m);
  for (int64_t v = 0; v < nv; ++v) vmax = simd::max(vmax, simd::load(s + v * kLanes));
  const float bm = simd::reduce_max(vmax);
  const simd::V vbm = simd::set1(bm);
  for (int64_t v = 0; v < nv; ++v)
    simd::store(s + v * kLanes, simd::exp(simd::sub(simd::load(s + v * kLanes), vbm)));
  // Exactly zero, not exp(-huge).
  std::fill(s, s + lo, 0.0f);
  std::fill(s + hi, s + std::max(nb, nv * kLanes), 0.0f);
  simd::V sum = simd::zero();
  for (int64_t v = 0; v < nv; ++v) sum = simd::add(sum, simd::load(s + v * kLanes));
  const float corr = std::exp(m - bm);  // 0 on the first block (m = -inf)
  l = l * corr + simd::reduce(sum);
  m = bm;
  return corr;
}

// softmax_step for every row of the pass over the block of keys [r0, r0 + nb) whose scores are
// in w.s (row r at r * kBlock); a row that sees none of the block keeps its sums (corr 1).
void block_softmax(Pass& p, int64_t begin, int64_t r0, int64_t nb, Scratch& w, float* corr) {
  const int64_t lo = std::clamp<int64_t>(begin - r0, 0, nb);
  for (int r = 0; r < p.n; ++r) {
    float* s = &w.s[size_t(r * kBlock)];
    const int64_t visible = std::clamp<int64_t>(p.lim[r] - r0, 0, nb);
    if (visible <= lo) {
      corr[r] = 1.0f;
      std::fill(s, s + nb, 0.0f);
    } else {
      corr[r] = softmax_step(s, lo, visible, nb, p.m[r], p.l[r]);
    }
  }
}

// run_pass on AMX (attention_amx.h): whole panels scored by amx::scores (the store's last,
// partial panel by score_keys), the values by amx::values, the online softmax as below.
void run_pass_amx(const HeadStore& st, Pass& p, int64_t begin, float scale, Scratch& w) {
  const int64_t d = st.head_dim();
  int64_t hi = begin;
  for (int r = 0; r < p.n; ++r) hi = std::max(hi, p.lim[r]);
  w.s.resize(size_t(kMaxRows * kBlock));
  const size_t floats = amx::scratch_floats(d) + 16;
  if (w.amx.size() < floats) w.amx.resize(floats);
  const uintptr_t at = reinterpret_cast<uintptr_t>(w.amx.data());
  amx::Rows rows{p.n, d, w.amx.data() + (64 - at % 64) % 64 / sizeof(float)};
  amx::begin(rows, p.q, scale);
  const auto* K = static_cast<const uint16_t*>(st.k_data());
  const auto* V = static_cast<const uint16_t*>(st.v_data());
  const size_t row_bytes = size_t(d) * sizeof(uint16_t);
  float corr[kMaxRows];
  for (int64_t r0 = begin / kKeyPanel * kKeyPanel; r0 < hi; r0 += kBlock) {
    const int64_t nb = std::min(kBlock, hi - r0);
    const int64_t whole = std::clamp<int64_t>(st.panel_keys() - r0, 0, round_up(nb, kKeyPanel));
    const int64_t next = r0 + kBlock, ahead = std::clamp<int64_t>(hi - next, 0, kBlock);
    if (whole > 0)
      amx::scores(rows, amx::Elem::F16, K + r0 * d, int(whole / kKeyPanel), w.s.data(), kBlock,
                  {K + next * d, int64_t(ahead * row_bytes)});
    if (whole < nb) score_keys(st, r0 + whole, 1, p.n, p.q[0], d, scale, &w.s[size_t(whole)], w);
    block_softmax(p, begin, r0, nb, w, corr);
    amx::values(rows, amx::Elem::F16, V + r0 * d, nb, w.s.data(), kBlock, corr, p.o,
                {V + next * d, int64_t(ahead * row_bytes)});
  }
  amx::end();
}

void run_pass(const HeadStore& st, Pass& p, int64_t begin, float scale, int64_t dp, Scratch& w) {
  int64_t hi = begin;
  for (int r = 0; r < p.n; ++r) hi = std::max(hi, p.lim[r]);
  w.s.resize(size_t(kMaxRows * kBlock));
  float corr[kMaxRows];
  const size_t k_row = st.k_row_bytes(), v_row = st.v_row_bytes();
  const bool quant_keys = kv_type_quantized(st.types().k);
  if (quant_keys) w.qq.set(p.q, p.n, st.head_dim());
  // Blocks start on a panel boundary; keys before `begin` are masked.
  const int64_t start = begin / kKeyPanel * kKeyPanel;
  for (int64_t r0 = start; r0 < hi; r0 += kBlock) {
    const int64_t nb = std::min(kBlock, hi - r0);
    if (quant_keys) {
      // Row-major blocks, read in order: the hardware prefetchers follow them.
      detail::quant_scores(st, r0, nb, w.qq, p.n, scale, w.s.data(), kBlock);
    }
    for (int64_t j0 = quant_keys ? nb : 0; j0 < nb;) {
      // Two panels at a time where both are whole; on AVX-512 also for a prefill's 16 rows, in
      // calls of eight that each convert the panels again (kv_bench prefill: 12-15% faster than
      // one panel for all 16, each broadcast serving one FMA). Narrower vectors: not measured.
      const bool whole = j0 + 2 * kKeyPanel <= kBlock && r0 + j0 + 2 * kKeyPanel <= st.panel_keys();
      const int np = whole && (kLanes >= 16 || p.n <= kScoreAccs / (2 * kPanelVecs)) ? 2 : 1;
      Prefetch ahead;
      const int64_t next = r0 + j0 + kPrefetchKeys;
      if (next + np * kKeyPanel <= hi) {
        ahead.at = static_cast<const char*>(st.k_data()) + size_t(next) * k_row;
        ahead.lines = int64_t(size_t(np * kKeyPanel) * k_row / 64);
      }
      score_keys(st, r0 + j0, np, p.n, p.q[0], dp, scale, &w.s[size_t(j0)], w, ahead);
      j0 += np * kKeyPanel;
    }
    block_softmax(p, begin, r0, nb, w, corr);
    // The next block's values, fetched while this block's are used.
    Prefetch vahead;
    if (r0 + kBlock < hi) {
      vahead.at = static_cast<const char*>(st.v_data()) + size_t(r0 + kBlock) * v_row;
      vahead.lines = int64_t(size_t(std::min(kBlock, hi - r0 - kBlock)) * v_row / 64);
    }
    pv(st, p, r0, nb, dp, w.s.data(), corr, w, vahead);
  }
}

// probs rows of the window: exp(q . k * scale - lse) over the visible keys [begin, lim), zero
// elsewhere.
void write_probs(const HeadStore& st, const float* q, int64_t begin, int64_t lim, float lse,
                 float scale, Scratch& w, float* out) {
  std::fill(out, out + st.size(), 0.0f);
  float s[kKeyPanel];
  for (int64_t k0 = begin / kKeyPanel * kKeyPanel; k0 < lim; k0 += kKeyPanel) {
    score_keys(st, k0, 1, 1, q, 0, scale, s, w);
    for (int64_t k = std::max(k0, begin); k < std::min(k0 + kKeyPanel, lim); ++k)
      out[k] = std::exp(s[k - k0] - lse);
  }
}

}  // namespace

void attend(const AttentionArgs& a) {
  if (!a.store || !a.q || !a.out || a.group < 1 || a.n_tokens < 0 || a.begin < 0)
    throw std::invalid_argument("attend: store, q and out are required, group >= 1, begin >= 0");
  if (a.ggml_order) return attend_ggml(a);
  const HeadStore& st = *a.store;
  const int64_t d = st.head_dim(), G = a.group, dp = round_up(d, kLanes);
  const int64_t end = std::min<int64_t>(a.end, st.size());
  const int64_t rows = a.n_tokens * G;
  const int64_t first_probs = a.n_tokens - (a.probs ? a.probs_tokens : 0);
  Scratch& w = t_scratch;
  const bool amx = use_amx(st);
  const int64_t pass_rows = amx ? amx::kRows : kMaxRows;
  w.qbuf.assign(size_t(std::min<int64_t>(rows, pass_rows) * dp), 0.0f);
  w.obuf.resize(size_t(std::min<int64_t>(rows, pass_rows) * dp));
  for (int64_t r0 = 0; r0 < rows; r0 += pass_rows) {
    Pass p;
    p.n = int(std::min<int64_t>(pass_rows, rows - r0));
    for (int r = 0; r < p.n; ++r) {
      const int64_t row = r0 + r, t = row / G;
      float* qp = w.qbuf.data() + r * dp;
      std::copy_n(a.q + row * d, d, qp);
      p.q[r] = qp;
      p.o[r] = w.obuf.data() + r * dp;
      std::fill(p.o[r], p.o[r] + dp, 0.0f);
      p.lim[r] = std::min(end, a.visible + t + 1);
      p.m[r] = kNegInf;
      p.l[r] = 0.0f;
    }
    if (amx)
      run_pass_amx(st, p, a.begin, a.scale, w);
    else
      run_pass(st, p, a.begin, a.scale, dp, w);
    for (int r = 0; r < p.n; ++r) {
      const int64_t row = r0 + r, t = row / G;
      const bool empty = p.l[r] == 0.0f;
      const float inv = empty ? 0.0f : 1.0f / p.l[r];
      for (int64_t i = 0; i < d; ++i) a.out[row * d + i] = p.o[r][i] * inv;
      const float lse = empty ? kNegInf : p.m[r] + std::log(p.l[r]);
      if (a.lse) a.lse[row] = lse;
      if (a.probs && t >= first_probs) {
        float* dst = a.probs + (row - first_probs * G) * st.size();
        if (empty)
          std::fill(dst, dst + st.size(), 0.0f);
        else if (kv_type_quantized(st.types().k))
          // Eviction scores come from the keys as computed, not as quantized: a quantized cache
          // should keep the tokens an f32 cache would keep, so that compression and quantization
          // err independently. The prompt's rows are at hand in float32 (fresh_keys); rows of
          // earlier chunks are dequantized, the best left of them.
          detail::window_probs_f32(st, p.q[r], a.begin, p.lim[r], a.scale, a.fresh_keys,
                                   st.size() - a.n_tokens, dst);
        else
          write_probs(st, p.q[r], a.begin, p.lim[r], lse, a.scale, w, dst);
      }
    }
  }
}

void attend_allow_amx(bool allow) {
  g_allow_amx.store(allow, std::memory_order_relaxed);
}

bool attend_uses_amx(const HeadStore& store) {
  return use_amx(store);
}

size_t attend_scratch_bytes() {
  const Scratch& w = t_scratch;
  size_t n = 0;
  for (const auto* v : {&w.kbuf, &w.vbuf, &w.qbuf, &w.obuf, &w.krow, &w.s, &w.amx})
    n += v->capacity();
  return n * sizeof(float);
}

}  // namespace fairkv::kv
