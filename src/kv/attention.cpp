// Fast attention over one head store: up to kMaxRows query rows (tokens x GQA heads) share every
// block of keys and values, so a decode step streams the store once for the whole group.
//
// Per block of kBlock keys: the keys are scored one or two panels of kKeyPanel keys at a time
// (the store keeps them dimension-major, cache.h): for every dimension, each panel's row of
// kKeyPanel elements is loaded and converted once and serves one FMA per query row, against that
// row's element broadcast once for the panels, so scores need no horizontal sums and f16 keys one
// conversion per element for the whole group. The rows' online softmax then advances once per
// block, and the values (row-major, attention_values.cpp) are accumulated for up to eight rows x
// two vectors of head_dim at a time (each value vector loaded and converted once per eight rows). A
// partial panel at the end of the store goes through a float32 copy. A bf16 store's keys and
// values are panels of AMX tile rows (cache.h): read the same way by attention_bf16.cpp's FMA
// kernels, or on AMX (run_pass_amx, attention_amx.h), where the CPU has it.
//
// The online softmax runs within each block of kCanonicalRows rows at multiples of it
// (attention_merge.h): at a block's end its partial (maximum, sum, unnormalised output) is folded
// into the row's by merge_block and the accumulators start again empty, so the pass is the fold
// of the blocks' partials in row order, which token slices cut at those multiples reproduce bit
// for bit (AttentionArgs::blocks). The online softmax steps in blocks of kBlock (64) keys within
// a canonical block of 256 rows (the bf16 AMX kernel and quantized stores in one step of 256);
// folding costs a rescale of head_dim floats and one exp per query row and canonical block.
//
// The arithmetic of a group of 8 on an f16 cache (2 x 1024 FMAs and 16 conversions per key of 512
// bytes) takes a core about as long as its share of the memory read, and the hardware
// prefetchers alone keep too few lines in flight while a core computes that densely: the read and
// the arithmetic then add up instead of overlapping (0.45 of the streaming read). So the kernels
// prefetch K two panels ahead of the scores and V one block ahead of the values into L2, a few
// lines per loop iteration (Prefetch), and each load's line a little ahead into L1
// (prefetch_near): about 0.75 of the read for that case, 0.9 at group 4 (docs/benchmarks.md).
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
#include "kv/attention_kernels.h"
#include "kv/attention_quant.h"
#include "kv/attention_values.h"

namespace fairkv::kv {

namespace {

using namespace detail;  // NOLINT(google-build-using-namespace): attention's own kernels
// Keys ahead of the scores whose K a pass prefetches (two panels: the distance measured best
// in kv_bench, from 1 to 16 panels); V is prefetched one block ahead, while a block's values
// are accumulated.
constexpr int64_t kPrefetchKeys = 2 * kKeyPanel;
constexpr float kNegInf = -std::numeric_limits<float>::infinity();

int64_t round_up(int64_t x, int64_t m) {
  return (x + m - 1) / m * m;
}

// A thread's buffers (t_scratch). s and amx are on cache lines (StoreAllocator), as the AMX
// kernels' tiles need and so that no vector load of a score row straddles two (decode within
// this machine's noise either way: kv_bench bf16 and f16 group 8, one thread, four rounds).
struct Scratch {
  using Lines = std::vector<float, StoreAllocator<float>>;
  std::vector<float> kbuf, vbuf, qbuf, obuf, tbuf, krow;
  Lines s;                       // kMaxRows x a pass's block: scores, then probabilities
  Lines amx;                     // amx::Rows::scratch
  std::vector<uint16_t> vpairs;  // a bf16 store's last block of values, in pairs for AMX
  detail::QuantQueries qq;       // a pass's query rows as q8_0 blocks, for quantized keys
};

// The environment variable `name` as a switch: unset (or empty) gives `otherwise`, "0" off.
bool switch_from_env(const char* name, bool otherwise) {
  const char* env = std::getenv(name);
  if (!env || !*env) return otherwise;
  return std::strcmp(env, "0") != 0;
}
// f16 on AMX: off unless asked for, slower than AVX-512 on this project's machine
// (docs/benchmarks.md, "Issue 19, item 1 on AMX"). bf16 on AMX: on unless turned off, faster.
std::atomic<bool> g_allow_amx{switch_from_env("FAIRKV_AMX", false)};
std::atomic<bool> g_allow_amx_bf16{switch_from_env("FAIRKV_AMX_BF16", true)};
// Query rows from which a bf16 call runs on AMX: a tile product costs the same for 3 piece rows
// as for 16, so one row (a decode step of group 1) is faster on FMAs (kv_bench hot: 10.6 against
// 12.4 ns per key; group 4: 19.7 against 16.3).
std::atomic<int> g_amx_bf16_min_rows{2};

// The AMX kernel for this store where allowed and the CPU has it: f16 or bf16 elements (keys and
// values alike), head_dim in pairs of 16-dimension tiles.
bool use_amx(const HeadStore& st) {
  const KvTypes t = st.types();
  if (t.k != t.v || st.head_dim() % 32 != 0) return false;
  const bool allowed = t.k == KvType::F16    ? g_allow_amx.load(std::memory_order_relaxed)
                       : t.k == KvType::BF16 ? g_allow_amx_bf16.load(std::memory_order_relaxed)
                                             : false;
  return allowed && amx::available();
}

thread_local Scratch t_scratch;  // per thread, kept between calls

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
      prefetch_near(src, int64_t(sizeof(T)) * kNearDims * kKeyPanel);
      if constexpr (std::is_same_v<T, uint16_t>)
        k[v] = simd::load_f16(src);
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
      score_bf16_panels(np(), n, q, qs, static_cast<const uint16_t*>(st.k_data()) + at, d, scale, s,
                        ahead);
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
  int64_t lim[kMaxRows];     // keys [begin, lim) visible
  // The online softmax over the current canonical block (attention_merge.h): padded
  // accumulators, running maximum and sum.
  float* o[kMaxRows];
  float m[kMaxRows], l[kMaxRows];
  // The fold of the finished canonical blocks (to: head_dim floats), and, where blk[r] is set,
  // where row r writes each block's partial too.
  float* to[kMaxRows];
  float tm[kMaxRows], tl[kMaxRows];
  float* blk[kMaxRows];
  int64_t d = 0, dp = 0;
  int64_t first_block = 0;  // the canonical block of the first key row
};

// Ends the canonical block of key row `row`: each row's partial over it is folded into the
// pass's (and written out where asked), and its accumulators start again empty, so that the next
// block's partial is the block's alone wherever the store's rows start.
void end_block(Pass& p, int64_t row) {
  const int64_t k = row / kCanonicalRows - p.first_block;
  for (int r = 0; r < p.n; ++r) {
    if (p.l[r] != 0.0f) {
      if (p.blk[r]) {
        float* b = p.blk[r] + k * (kPartialHeader + p.d);
        b[0] = p.m[r];
        b[1] = p.l[r];
        std::copy_n(p.o[r], p.d, b + kPartialHeader);
      }
      merge_block(p.tm[r], p.tl[r], p.to[r], p.m[r], p.l[r], p.o[r], p.d);
    }
    p.m[r] = kNegInf;
    p.l[r] = 0.0f;
    std::fill(p.o[r], p.o[r] + p.dp, 0.0f);
  }
}

// The end of the key block that starts at r0 (of at most `block` keys, within one canonical
// block, below hi). Passes from a canonical bound then cut each canonical block alike, into whole
// blocks of the kernel's.
static_assert(kCanonicalRows % kBlock == 0 && kCanonicalRows % amx::kPairsBlock == 0,
              "the kernels' softmax blocks tile a canonical block");
int64_t block_end(int64_t r0, int64_t hi, int64_t block = kBlock) {
  return std::min({r0 + block, hi, (r0 / kCanonicalRows + 1) * kCanonicalRows});
}

// The online softmax over a block of keys, a row's scores s[0, nb) of which [lo, hi) are real.
// block_max: the block's maximum with the row's running one m (masked lanes made -inf).
float block_max(float* s, int64_t lo, int64_t hi, float m) {
  const int64_t nv = (hi + kLanes - 1) / kLanes;
  if (lo > 0 || hi != nv * kLanes) {
    std::fill(s, s + lo, kNegInf);
    std::fill(s + hi, s + nv * kLanes, kNegInf);
  }
  simd::V vmax = simd::set1(m);
  for (int64_t v = 0; v < nv; ++v) vmax = simd::max(vmax, simd::load(s + v * kLanes));
  return simd::reduce_max(vmax);
}

// block_exps: s becomes exp(s - bm), exactly zero outside [lo, hi) (not exp(-huge)); returns
// the sum, in the order of a pass over the stored values.
float block_exps(float* s, int64_t lo, int64_t hi, int64_t nb, float bm) {
  const int64_t nv = (hi + kLanes - 1) / kLanes;
  const bool masked = lo > 0 || hi != nv * kLanes;
  const simd::V vbm = simd::set1(bm);
  simd::V sum = simd::zero();
  for (int64_t v = 0; v < nv; ++v) {
    const simd::V e = simd::exp(simd::sub(simd::load(s + v * kLanes), vbm));
    simd::store(s + v * kLanes, e);
    if (!masked) sum = simd::add(sum, e);
  }
  if (masked) {
    std::fill(s, s + lo, 0.0f);
    std::fill(s + hi, s + std::max(nb, nv * kLanes), 0.0f);
    for (int64_t v = 0; v < nv; ++v) sum = simd::add(sum, simd::load(s + v * kLanes));
  } else {
    std::fill(s + nv * kLanes, s + nb, 0.0f);
  }
  return simd::reduce(sum);
}

// The next block's first values for block_softmax to prefetch, taken off `ahead` (which the
// value kernel then issues): the softmax's share of a block's time, about an eighth at group 8
// (perf, kv_bench hot), so that the read goes on through it as through the loops around it
// (bf16 group 8 on AMX, one thread: 0.81-0.83 of the read without, 0.83-0.85 with; a half or a
// quarter no better).
Prefetch softmax_share(Prefetch& ahead, const Pass& p) {
  Prefetch sm;
  sm.at = ahead.at;
  sm.lines = ahead.lines / 8;
  sm.steps = 2 * p.n;  // a tick per row in each of block_softmax's two passes
  if (ahead.at) ahead.at += 64 * sm.lines;
  ahead.lines -= sm.lines;
  return sm;
}

// The online softmax over the block of keys [r0, r0 + nb) for every row of the pass, scores in
// w.s (row r at r * stride): probabilities relative to the rows' new maxima, and in corr[r] the
// factor that rescales what row r accumulated before (1 for a row that sees none of the block,
// which keeps its sums). A pass at a time over all rows (maxima, exps, corrections), not one row
// at a time, so that the rows' latency chains (a horizontal reduction, the exps, another) overlap,
// and the corrections in one vector exp: 3.8 -> 3.0 ns per key for 8 rows of 64 keys. Each lane
// of that exp is its row's alone, so a row's bits do not depend on the rows beside it.
// pf: the first lines of the next block's values (softmax_share), issued a row at a time, so
// that the memory is not idle while the block's scores are turned into probabilities.
void block_softmax(Pass& p, int64_t begin, int64_t r0, int64_t nb, Scratch& w, float* corr,
                   Prefetch& pf, int64_t stride = kBlock) {
  const int64_t lo = std::clamp<int64_t>(begin - r0, 0, nb);
  alignas(64) float bm[kMaxRows], sums[kMaxRows], diff[kMaxRows + kLanes] = {};
  int64_t hi[kMaxRows];
  for (int r = 0; r < p.n; ++r) {
    pf.tick();
    hi[r] = std::clamp<int64_t>(p.lim[r] - r0, 0, nb);
    if (hi[r] > lo) bm[r] = block_max(&w.s[size_t(r * stride)], lo, hi[r], p.m[r]);
  }
  for (int r = 0; r < p.n; ++r) {
    pf.tick();
    float* s = &w.s[size_t(r * stride)];
    if (hi[r] <= lo) {
      std::fill(s, s + nb, 0.0f);
    } else {
      sums[r] = block_exps(s, lo, hi[r], nb, bm[r]);
      diff[r] = p.m[r] - bm[r];  // -inf on the first block: its correction is 0
    }
  }
  for (int r = 0; r < p.n; r += kLanes) simd::store(corr + r, simd::exp(simd::load(diff + r)));
  for (int r = 0; r < p.n; ++r) {
    if (hi[r] <= lo) {
      corr[r] = 1.0f;
      continue;
    }
    p.l[r] = p.l[r] * corr[r] + sums[r];
    p.m[r] = bm[r];
  }
}

// run_pass on AMX (attention_amx.h): whole panels scored by amx::scores (the store's last,
// partial panel by score_keys), the values by amx::values, the online softmax as below. A bf16
// store's panels go into the tiles as they are (the *_pairs kernels); an f16 store's are converted.
void run_pass_amx(const HeadStore& st, Pass& p, int64_t begin, float scale, Scratch& w) {
  const int64_t d = st.head_dim();
  const bool pairs = st.types().k == KvType::BF16;
  // Softmax blocks: a bf16 store's of amx::kPairsBlock keys, a whole canonical block, so that
  // each column tile of values accumulates a longer chain of products per epilogue (the tiles'
  // stores and reloads): at group 8 1.3-1.4x faster than blocks of 64 (docs/benchmarks.md).
  const int64_t block = pairs ? amx::kPairsBlock : kBlock;
  int64_t hi = begin;
  for (int r = 0; r < p.n; ++r) hi = std::max(hi, p.lim[r]);
  w.s.resize(size_t(kMaxRows * block));
  const size_t floats = amx::scratch_floats(d);
  if (w.amx.size() < floats) w.amx.resize(floats);
  amx::Rows rows{p.n, d, w.amx.data()};
  if (pairs)
    amx::begin_pairs(rows, p.q, scale);
  else
    amx::begin(rows, p.q, scale);
  const auto* K = static_cast<const uint16_t*>(st.k_data());
  const auto* V = static_cast<const uint16_t*>(st.v_data());
  const size_t row_bytes = size_t(d) * sizeof(uint16_t);
  float corr[kMaxRows];
  // Blocks start on a panel of keys (of values, for bf16); keys before `begin` are masked. They
  // end at the canonical blocks' bounds (block_end), as run_pass's do, so that a token slice
  // starting at one runs the whole unit's blocks.
  const int64_t align = pairs ? kValuePanel : kKeyPanel;
  for (int64_t r0 = begin / align * align, next; r0 < hi; r0 = next) {
    next = block_end(r0, hi, block);
    const int64_t nb = next - r0;
    const int64_t whole = std::clamp<int64_t>(st.panel_keys() - r0, 0, round_up(nb, kKeyPanel));
    const int64_t ahead = std::clamp<int64_t>(hi - next, 0, block);
    const amx::Ahead v_ahead{V + next * d, int64_t(ahead * row_bytes)};
    // Whole panels, at most four per call, each call prefetching the K of as many keys of the
    // next block (a whole block's over one call's few steps would come in bursts).
    for (int64_t j = 0; j < whole; j += 4 * kKeyPanel) {
      const int n_panels = int(std::min<int64_t>(4, (whole - j) / kKeyPanel));
      const int64_t ka_keys = std::clamp<int64_t>(ahead - j, 0, 4 * kKeyPanel);
      const amx::Ahead ka{K + (next + j) * d, int64_t(ka_keys * row_bytes)};
      if (pairs)
        amx::scores_pairs(rows, K + (r0 + j) * d, n_panels, &w.s[size_t(j)], block, ka);
      else
        amx::scores(rows, K + (r0 + j) * d, n_panels, &w.s[size_t(j)], block, ka);
    }
    if (whole < nb) {  // the store's last, partial panel (score_keys writes rows kBlock apart)
      float tail[kMaxRows * kBlock];
      score_keys(st, r0 + whole, 1, p.n, p.q[0], d, scale, tail, w);
      for (int r = 0; r < p.n; ++r)
        std::copy_n(tail + r * kBlock, kKeyPanel, &w.s[size_t(r * block + whole)]);
    }
    Prefetch vahead{static_cast<const char*>(v_ahead.at), v_ahead.bytes / 64};
    Prefetch sm = softmax_share(vahead, p);
    block_softmax(p, begin, r0, nb, w, corr, sm, block);
    const amx::Ahead v_rest{vahead.at, vahead.lines * 64};
    if (pairs)
      values_amx_bf16(st, rows, r0, nb, w.s.data(), block, corr, p.o, v_rest, w.vpairs);
    else
      amx::values(rows, V + r0 * d, nb, w.s.data(), block, corr, p.o, v_rest);
    if (next % kCanonicalRows == 0 || next == hi) end_block(p, r0);
  }
  amx::end();
}

void run_pass(const HeadStore& st, Pass& p, int64_t begin, float scale, int64_t dp, Scratch& w) {
  int64_t hi = begin;
  for (int r = 0; r < p.n; ++r) hi = std::max(hi, p.lim[r]);
  const size_t k_row = st.k_row_bytes(), v_row = st.v_row_bytes();
  const bool quant_keys = kv_type_quantized(st.types().k);
  // Quantized keys and values step the online softmax a whole canonical block at a time: its
  // maxima, exps and sums are chains of latency (reductions, the corrections' exp) that 64 keys
  // did not amortize (perf, kv_bench hot q8_0 group 4: the softmax 15% of the time -> 10%), and
  // both kernels take any block (quant_scores a stride, pv_quant calls of kBlock keys).
  const int64_t block = quant_keys && quant_block_values(st) ? kCanonicalRows : kBlock;
  w.s.resize(size_t(kMaxRows * block));
  float corr[kMaxRows];
  if (quant_keys) w.qq.set(p.q, p.n, st.head_dim());
  // One token's rows (a decode step) read each key once, from memory: prefetch its K ahead
  // (attention_quant.h). A prompt's passes re-read keys the pass before just read.
  const bool one_token = p.lim[0] == p.lim[p.n - 1];
  const int64_t quant_ahead = one_token ? int64_t(kQuantPrefetchKeys * k_row) : 0;
  // Blocks start on a panel boundary; keys before `begin` are masked.
  const int64_t start = begin / kKeyPanel * kKeyPanel;
  for (int64_t r0 = start, next; r0 < hi; r0 = next) {
    next = block_end(r0, hi, block);
    const int64_t nb = next - r0;
    if (quant_keys) {
      detail::quant_scores(st, r0, nb, w.qq, p.n, scale, w.s.data(), block, quant_ahead);
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
    // The next block's values, fetched while this block's softmax runs and its values are used.
    Prefetch vahead;
    if (next < hi) {
      vahead.at = static_cast<const char*>(st.v_data()) + size_t(next) * v_row;
      vahead.lines = int64_t(size_t(std::min(block, hi - next)) * v_row / 64);
    }
    Prefetch sm = softmax_share(vahead, p);
    block_softmax(p, begin, r0, nb, w, corr, sm, block);
    detail::block_values(st, p.o, p.n, r0, nb, dp, w.s.data(), block, corr, w.vbuf, vahead);
    if (next % kCanonicalRows == 0 || next == hi) end_block(p, r0);
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
  if (a.blocks && a.ggml_order) throw std::invalid_argument("attend: blocks go without ggml_order");
  if (a.ggml_order) return attend_ggml(a);
  const HeadStore& st = *a.store;
  const int64_t d = st.head_dim(), G = a.group, dp = round_up(d, kLanes);
  const int64_t end = std::min<int64_t>(a.end, st.size());
  const int64_t rows = a.n_tokens * G;
  const int64_t first_probs = a.n_tokens - (a.probs ? a.probs_tokens : 0);
  const int64_t n_blocks = a.blocks ? attend_blocks(a) : 0, partial = kPartialHeader + d;
  for (int64_t i = 0; i < rows * n_blocks; ++i) {  // empty partials where a row sees nothing
    float* b = a.blocks + i * partial;
    b[0] = kNegInf;
    std::fill(b + 1, b + partial, 0.0f);
  }
  Scratch& w = t_scratch;
  const bool amx = use_amx(st) && (st.types().k != KvType::BF16 ||
                                   rows >= g_amx_bf16_min_rows.load(std::memory_order_relaxed));
  const int64_t pass_rows = amx ? amx::kRows : kMaxRows;
  w.qbuf.assign(size_t(std::min<int64_t>(rows, pass_rows) * dp), 0.0f);
  w.obuf.resize(size_t(std::min<int64_t>(rows, pass_rows) * dp));
  w.tbuf.resize(size_t(std::min<int64_t>(rows, pass_rows) * dp));
  for (int64_t r0 = 0; r0 < rows; r0 += pass_rows) {
    Pass p;
    p.n = int(std::min<int64_t>(pass_rows, rows - r0));
    p.d = d;
    p.dp = dp;
    p.first_block = a.begin / kCanonicalRows;
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
      p.to[r] = w.tbuf.data() + r * dp;
      p.tm[r] = kNegInf;
      p.tl[r] = 0.0f;
      p.blk[r] = a.blocks ? a.blocks + row * n_blocks * partial : nullptr;
    }
    if (amx)
      run_pass_amx(st, p, a.begin, a.scale, w);
    else
      run_pass(st, p, a.begin, a.scale, dp, w);
    for (int r = 0; r < p.n; ++r) {
      const int64_t row = r0 + r, t = row / G;
      const bool empty = p.tl[r] == 0.0f;
      float lse;
      finish_partial(p.tm[r], p.tl[r], p.to[r], d, a.out + row * d, &lse);
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

int64_t attend_blocks(const AttentionArgs& a) {
  const int64_t hi = std::min({a.end, a.store->size(), a.visible + a.n_tokens});
  return hi > a.begin ? (hi - 1) / kCanonicalRows - a.begin / kCanonicalRows + 1 : 0;
}

void attend_allow_amx(bool allow) {
  g_allow_amx.store(allow, std::memory_order_relaxed);
}

void attend_allow_amx_bf16(bool allow, int min_rows) {
  g_allow_amx_bf16.store(allow, std::memory_order_relaxed);
  g_amx_bf16_min_rows.store(min_rows, std::memory_order_relaxed);
}

bool attend_uses_amx(const HeadStore& store) {
  return use_amx(store);
}

size_t attend_scratch_bytes() {
  const Scratch& w = t_scratch;
  size_t n = 0;
  for (const auto* v : {&w.kbuf, &w.vbuf, &w.qbuf, &w.obuf, &w.tbuf, &w.krow}) n += v->capacity();
  n += w.s.capacity() + w.amx.capacity();
  return n * sizeof(float) + w.vpairs.capacity() * sizeof(uint16_t);
}

}  // namespace fairkv::kv
