// Internal to attention's kernels (attention.cpp, and attention_bf16.cpp for bf16 stores): the
// pass sizes, the spread prefetches and the value tiles they share, and the bf16 kernels that
// read a bf16 store's tile-row panels (cache.h) on FMAs, and on AMX (attention_amx.h).
#pragma once

#include <algorithm>
#include <cstdint>
#include <type_traits>
#include <vector>

#include "kernels/simd.h"
#include "kv/attention_amx.h"
#include "kv/cache.h"

namespace fairkv::kv::detail {

namespace simd = kernels::simd;

inline constexpr int kLanes = simd::kLanes;
inline constexpr int kMaxRows = 16;  // query rows per pass: their PV accumulators stay in registers
inline constexpr int64_t kBlock = 64;  // keys per online-softmax step
inline constexpr int kPvRows = 8;      // query rows per value tile (8 x 2 vectors)

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

// L1 prefetches a little ahead of each loop's loads, beside the L2 ones a block ahead (Prefetch):
// with only the far ones every load still misses L1 and waits on L2, and a core that computes
// between its loads reads well under the memory's rate (kv_bench's overlap loop, 16 FMAs per
// line: 0.84 of the streaming read with L2 prefetches 256 lines ahead, 0.97 with L1 ones 32
// lines ahead added; L1 ones alone, far ahead, were worse, as Prefetch says).
// Score loops prefetch the panel row kNearDims dimensions on, value loops the row kNearRows keys
// on, each load's own column; past a panel or block they reach into the next, which is read next.
// The address is computed as an integer: past the store's end it is no pointer, and a prefetch
// never faults.
inline constexpr int64_t kNearDims = 32, kNearRows = 16;
inline void prefetch_near(const void* p, int64_t bytes) {
  __builtin_prefetch(
      reinterpret_cast<const void*>(reinterpret_cast<uintptr_t>(p) + uintptr_t(bytes)), 0, 3);
}

// Vectors of score accumulators per kernel call: 16 of the 32 registers on AVX-512, 8 of 16.
inline constexpr int kScoreAccs = kLanes >= 16 ? 16 : 8;
inline constexpr int kPanelVecs = int(kKeyPanel) / kLanes;  // vectors per panel row

// A tile of value rows: `rows` query rows x `vecs` vectors of head_dim at a time.
struct PvTile {
  int rows, vecs;
};

// How pv_fast covers n rows: tiles of eight rows x two vectors, each value vector loaded (and
// converted) once for the eight; fewer rows take wider tiles. (Up to four f32 rows used to go a
// pair at a time, whole value rows in address order; with the prefetches that no longer gains:
// f32 group 4, 2 threads, 0.87-0.90 of the streaming read either way.)
inline int pv_tiles(int n, PvTile* out) {
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

// Calls f(rows, vecs, r) for each tile of pv_tiles(n), rows and vecs as std::integral_constant
// (so that a kernel is instantiated for the tiles' shapes only) and r the tile's first row.
template <class F>
inline void for_each_pv_tile(int n, F&& f) {
  PvTile tiles[kMaxRows];
  const int n_tiles = pv_tiles(n, tiles);
  using std::integral_constant;
  for (int i = 0, r = 0; i < n_tiles; r += tiles[i++].rows) {
    switch (tiles[i].rows * 16 + tiles[i].vecs) {
      case 8 * 16 + 2:
        f(integral_constant<int, 8>{}, integral_constant<int, 2>{}, r);
        break;
      case 4 * 16 + 4:
        f(integral_constant<int, 4>{}, integral_constant<int, 4>{}, r);
        break;
      case 3 * 16 + 4:
        f(integral_constant<int, 3>{}, integral_constant<int, 4>{}, r);
        break;
      case 2 * 16 + 8:
        f(integral_constant<int, 2>{}, integral_constant<int, 8>{}, r);
        break;
      default:
        f(integral_constant<int, 1>{}, integral_constant<int, 8>{}, r);
        break;
    }
  }
}

// kLanes pairs of bf16 elements at p (a bf16 store's panel rows, cache.h) as float32: the first
// element of each pair into even, the second into odd.
inline void load_bf16_pairs(const uint16_t* p, simd::V& even, simd::V& odd) {
#if defined(FAIRKV_AVX512)
  const __m512i w = _mm512_loadu_si512(p);
  even = _mm512_castsi512_ps(_mm512_slli_epi32(w, 16));
  odd = _mm512_castsi512_ps(_mm512_and_si512(w, _mm512_set1_epi32(int(0xFFFF0000u))));
#elif defined(FAIRKV_AVX2)
  const __m256i w = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
  even = _mm256_castsi256_ps(_mm256_slli_epi32(w, 16));
  odd = _mm256_castsi256_ps(_mm256_and_si256(w, _mm256_set1_epi32(int(0xFFFF0000u))));
#else
  for (int i = 0; i < kLanes; ++i) {
    even.e[i] = kernels::bf16_to_fp32(p[2 * i]);
    odd.e[i] = kernels::bf16_to_fp32(p[2 * i + 1]);
  }
#endif
}

// bf16 stores (attention_bf16.cpp).

// Scores of n query rows (row r at q + r * qs) against the keys of np (1 or 2) whole bf16 key
// panels at P: row r's go to s[r * kBlock ...], scaled.
void score_bf16_panels(int np, int n, const float* q, int64_t qs, const uint16_t* P, int64_t d,
                       float scale, float* s, Prefetch ahead);

// Values [r0, r0 + j) of a bf16 store as float32 rows of stride dp (zero padded) into buf, for
// the largest even j <= n whose values lie in whole pairs of the store's panels; returns j.
int64_t bf16_value_rows(const HeadStore& st, int64_t r0, int64_t n, int64_t dp, float* buf);

// o[r] = o[r] * corr[r] + sum_{j < nb} prob[r * kBlock + j] V[r0 + j] for n rows from a bf16
// store's value panels, on AVX-512 where head_dim is a multiple of 16 and every pair of values up
// to nb lies in the panels (r0 even); false (nothing done) elsewhere.
bool pv_bf16(const HeadStore& st, float* const* o, int n, int64_t r0, int64_t nb, const float* prob,
             const float* corr, Prefetch& ahead);

// The values of a bf16 store's block [r0, r0 + nb) (r0 a multiple of kValuePanel) on AMX
// (amx::values_pairs with the tiles begun), probabilities prob[r * p_stride + j]; `scratch`
// holds the store's row-major tail laid out as a panel.
void values_amx_bf16(const HeadStore& st, const amx::Rows& rows, int64_t r0, int64_t nb,
                     const float* prob, int64_t p_stride, const float* corr, float* const* o,
                     amx::Ahead ahead, std::vector<uint16_t>& scratch);

}  // namespace fairkv::kv::detail
