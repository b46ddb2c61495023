// Scores against q8_0 / q4_0 keys with integer dot products (attention_quant.h).
//
// The AVX512-VNNI kernels: over a q8_0 or q4_0 panel, one vpdpbusd per row takes 16 keys x 4
// dimensions (the keys' bytes unsigned as stored, the query's 4 bytes broadcast), eight of them
// make a block's 16 dots, which are scaled by the 16 keys' d_k times d_q and summed in one vector
// per row: no horizontal sums. Over rows (a store's tail), two blocks of a key (64 bytes) per
// vpdpbusd, the int32 lanes scaled and summed per key, sixteen keys reduced together. Their integer
// sums are the portable loop's exactly; only the float32 sum over blocks runs in another order.
#include "kv/attention_quant.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#include "kernels/matmul_kernels.h"
#include "kernels/simd.h"
#include "kernels/types.h"
#include "kv/attention_kernels.h"

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

// Element i (0..31) of a block as the signed value it stands for, and the unsigned byte the
// kernels multiply (value + offset).
int key_value(KvType t, const uint8_t* block, int i) {
  if (t == KvType::Q8_0) return reinterpret_cast<const BlockQ8_0*>(block)->qs[i];
  const uint8_t b = reinterpret_cast<const BlockQ4_0*>(block)->qs[i % 16];
  return int(i < 16 ? b & 15 : b >> 4) - 8;
}

size_t block_bytes(KvType t) {
  return t == KvType::Q8_0 ? sizeof(BlockQ8_0) : sizeof(BlockQ4_0);
}

float block_scale(const uint8_t* block) {
  uint16_t d;
  std::memcpy(&d, block, sizeof d);
  return kernels::fp16_to_fp32(d);
}

#if defined(FAIRKV_QUANT_VNNI)
// The biggest head_dim the VNNI kernel keeps its query pairs for (larger ones: portable).
constexpr int kMaxPairs = 8;
constexpr int kMaxQueryRows = 16;

// A q4_0 block's 32 nibbles (as stored, k + 8) as bytes in element order. (A function, not a
// lambda: a lambda does not inherit its caller's target attribute.)
FAIRKV_TARGET_VNNI inline __m256i q4_nibbles(const uint8_t* block) {
  const __m128i v = _mm_loadu_si128(reinterpret_cast<const __m128i*>(block + 2));
  const __m128i m = _mm_set1_epi8(15);
  return _mm256_set_m128i(_mm_and_si128(_mm_srli_epi16(v, 4), m), _mm_and_si128(v, m));
}

// Two blocks (b, b + 1) of a key as 64 unsigned bytes, and their scales, 8 lanes each; a
// missing block b + 1 (an odd count) is zero.
template <KvType T>
FAIRKV_TARGET_VNNI inline __m512i key_pair(const uint8_t* row, int64_t b, bool two, __m512& dk) {
  constexpr size_t kB = T == KvType::Q8_0 ? sizeof(BlockQ8_0) : sizeof(BlockQ4_0);
  const uint8_t* x0 = row + size_t(b) * kB;
  const uint8_t* x1 = x0 + kB;
  const float d0 = _cvtsh_ss(*reinterpret_cast<const uint16_t*>(x0));
  const float d1 = two ? _cvtsh_ss(*reinterpret_cast<const uint16_t*>(x1)) : 0.0f;
  dk = _mm512_insertf32x8(_mm512_castps256_ps512(_mm256_set1_ps(d0)), _mm256_set1_ps(d1), 1);
  if constexpr (T == KvType::Q8_0) {
    const __m256i lo = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(x0 + 2));
    const __m256i hi =
        two ? _mm256_loadu_si256(reinterpret_cast<const __m256i*>(x1 + 2)) : _mm256_set1_epi8(-128);
    // k + 128 as an unsigned byte is k with its sign bit flipped.
    const __m512i k = _mm512_inserti64x4(_mm512_castsi256_si512(lo), hi, 1);
    return _mm512_xor_si512(k, _mm512_set1_epi8(-128));
  } else {
    const __m256i lo = q4_nibbles(x0);
    const __m256i hi = two ? q4_nibbles(x1) : _mm256_set1_epi8(8);
    return _mm512_inserti64x4(_mm512_castsi256_si512(lo), hi, 1);
  }
}

// The lane sums of sixteen vectors as one vector (element j: the sum of a[j]'s lanes): halves,
// quarters, pairs and single lanes of two vectors at a time are added side by side (45 adds and
// shuffles for sixteen sums, where one horizontal sum each takes about eight), and one permute
// puts the sums in order.
FAIRKV_TARGET_VNNI inline __m512 reduce16(const __m512* a) {
  __m512 t[8], u[4], v[2];
  FAIRKV_UNROLL
  for (int i = 0; i < 8; ++i)  // 256-bit halves: a[i] low, a[i + 8] high
    t[i] = _mm512_add_ps(_mm512_shuffle_f32x4(a[i], a[i + 8], 0x44),
                         _mm512_shuffle_f32x4(a[i], a[i + 8], 0xEE));
  FAIRKV_UNROLL
  for (int i = 0; i < 4; ++i)  // 128-bit lanes: keys i, i + 8, i + 4, i + 12
    u[i] = _mm512_add_ps(_mm512_shuffle_f32x4(t[i], t[i + 4], 0x88),
                         _mm512_shuffle_f32x4(t[i], t[i + 4], 0xDD));
  FAIRKV_UNROLL
  for (int i = 0; i < 2; ++i)  // pairs of lanes
    v[i] = _mm512_add_ps(_mm512_shuffle_ps(u[i], u[i + 2], 0x44),
                         _mm512_shuffle_ps(u[i], u[i + 2], 0xEE));
  const __m512 w =
      _mm512_add_ps(_mm512_shuffle_ps(v[0], v[1], 0x88), _mm512_shuffle_ps(v[0], v[1], 0xDD));
  // w holds keys 0 2 1 3 8 10 9 11 4 6 5 7 12 14 13 15.
  const __m512i order = _mm512_setr_epi32(0, 2, 1, 3, 8, 10, 9, 11, 4, 6, 5, 7, 12, 14, 13, 15);
  return _mm512_permutexvar_ps(order, w);
}

// Row-major keys (K: nk rows of kr bytes): q4_0 stores, and a q8_0 store's keys outside whole
// panels.
template <KvType T>
FAIRKV_TARGET_VNNI void scores_vnni(const uint8_t* K, size_t kr, int64_t nk, const QuantQueries& q,
                                    int n, float scale, float* s, int64_t ss) {
  constexpr int kOffset = T == KvType::Q8_0 ? 128 : 8;
  const int64_t nb = q.blocks, pairs = (nb + 1) / 2;
  // Per row and pair: the query's bytes, d_q in the lanes of each block, and the offset's
  // correction -offset * sum(q) in the first lane of each block's eight, so that vpdpbusd starts
  // from it.
  alignas(64) __m512i qv[kMaxQueryRows][kMaxPairs];
  alignas(64) __m512i corr[kMaxQueryRows][kMaxPairs];
  alignas(64) __m512 dq[kMaxQueryRows][kMaxPairs];
  for (int r = 0; r < n; ++r)
    for (int64_t p = 0; p < pairs; ++p) {
      const int64_t b = 2 * p;
      const bool two = b + 1 < nb;
      const int8_t* qb = q.q.data() + (r * nb + b) * kQK;
      const __m256i lo = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(qb));
      const __m256i hi = two ? _mm256_loadu_si256(reinterpret_cast<const __m256i*>(qb + kQK))
                             : _mm256_setzero_si256();
      qv[r][p] = _mm512_inserti64x4(_mm512_castsi256_si512(lo), hi, 1);
      const int32_t c0 = -kOffset * q.sum[size_t(r * nb + b)];
      const int32_t c1 = two ? -kOffset * q.sum[size_t(r * nb + b + 1)] : 0;
      corr[r][p] = _mm512_setr_epi32(c0, 0, 0, 0, 0, 0, 0, 0, c1, 0, 0, 0, 0, 0, 0, 0);
      const float d0 = q.d[size_t(r * nb + b)], d1 = two ? q.d[size_t(r * nb + b + 1)] : 0.0f;
      dq[r][p] =
          _mm512_insertf32x8(_mm512_castps256_ps512(_mm256_set1_ps(d0)), _mm256_set1_ps(d1), 1);
    }
  // Sixteen keys at a time: their bytes made unsigned and their scales spread once, for every
  // row; each row's sixteen partial-sum vectors then reduce together (reduce16).
  alignas(64) __m512i kp[16][kMaxPairs];
  alignas(64) __m512 dk[16][kMaxPairs];
  const __m512 sc = _mm512_set1_ps(scale);
  for (int64_t j0 = 0; j0 < nk; j0 += 16) {
    const int m = int(std::min<int64_t>(16, nk - j0));
    for (int j = 0; j < m; ++j)
      for (int64_t p = 0; p < pairs; ++p)
        kp[j][p] = key_pair<T>(K + size_t(j0 + j) * kr, 2 * p, 2 * p + 1 < nb, dk[j][p]);
    for (int r = 0; r < n; ++r) {
      __m512 acc[16];
      FAIRKV_UNROLL
      for (int j = 0; j < 16; ++j) {
        acc[j] = _mm512_setzero_ps();
        if (j >= m) continue;
        for (int64_t p = 0; p < pairs; ++p) {
          const __m512i dot = _mm512_dpbusd_epi32(corr[r][p], kp[j][p], qv[r][p]);
          acc[j] =
              _mm512_fmadd_ps(_mm512_cvtepi32_ps(dot), _mm512_mul_ps(dk[j][p], dq[r][p]), acc[j]);
        }
      }
      _mm512_mask_storeu_ps(s + r * ss + j0, __mmask16((1u << m) - 1),
                            _mm512_mul_ps(reduce16(acc), sc));
    }
  }
}

// Prefetches the kBytes `ahead` bytes past p into L2, a line at a time (the kernels issue one
// block's worth per block they score, so the prefetches spread over the work). The address is
// computed as an integer: past the store's end it is no pointer, and a prefetch never faults.
template <size_t kBytes>
inline void prefetch_block(const uint8_t* p, int64_t ahead) {
  const uintptr_t at = reinterpret_cast<uintptr_t>(p) + uintptr_t(ahead);
  FAIRKV_UNROLL
  for (size_t o = 0; o < kBytes; o += 64)
    __builtin_prefetch(reinterpret_cast<const void*>(at + o), 0, 2);
}

// Rows r0..r0 + M - 1 of q against np whole panels at P (cache.h: kQ8PanelBlockBytes,
// kQ4PanelBlockBytes): per block, eight vectors of 16 keys x 4 unsigned bytes (q8_0: the panel's
// rows as stored; q4_0: each row's low and high nibbles) meet the row's 4 query bytes broadcast,
// so eight vpdpbusd give the block's 16 integer dots, started from -offset x sum(q) to take back
// the keys' +128 (q8_0) or +8 (q4_0) exactly; then one convert, one product of the 16 key scales
// with d_q, one FMA. Two integer chains per row halve vpdpbusd's latency chain.
// Each block prefetches the bytes `ahead` further on into L2 and the block kNearBlocks on into
// L1 (attention_kernels.h; 0: neither).
constexpr int64_t kNearBlocks = 2;  // ~1 KiB on, as the float kernels' kNearDims
template <KvType T, int M>
FAIRKV_TARGET_VNNI void panel_rows_vnni(const uint8_t* P, int64_t np, const QuantQueries& q, int r0,
                                        float scale, float* s, int64_t ss, int64_t ahead) {
  constexpr bool kQ8 = T == KvType::Q8_0;
  constexpr size_t kRows = kQ8 ? 8 : 4, kBytes = kQ8 ? kQ8PanelBlockBytes : kQ4PanelBlockBytes;
  constexpr int kOffset = kQ8 ? 128 : 8;
  const int64_t nb = q.blocks;
  const __m512 sc = _mm512_set1_ps(scale);
  for (int64_t p = 0; p < np; ++p) {
    __m512 acc[M];
    FAIRKV_UNROLL
    for (int r = 0; r < M; ++r) acc[r] = _mm512_setzero_ps();
    for (int64_t b = 0; b < nb; ++b, P += kBytes) {
      if (ahead) {
        prefetch_block<kBytes>(P, ahead);
        FAIRKV_UNROLL
        for (size_t o = 0; o < kBytes; o += 64) prefetch_near(P, int64_t(kNearBlocks * kBytes + o));
      }
      __m512i k[8];  // k[g]: dimensions 4g..4g+3 of the block
      if constexpr (kQ8) {
        FAIRKV_UNROLL
        for (int g = 0; g < 8; ++g) k[g] = _mm512_loadu_si512(P + g * kQ8PanelRow);
      } else {
        const __m512i m = _mm512_set1_epi8(15);
        FAIRKV_UNROLL
        for (int g = 0; g < 4; ++g) {
          const __m512i x = _mm512_loadu_si512(P + g * kQ8PanelRow);
          k[2 * g] = _mm512_and_si512(x, m);
          k[2 * g + 1] = _mm512_and_si512(_mm512_srli_epi16(x, 4), m);
        }
      }
      const __m512 dk = _mm512_cvtph_ps(
          _mm256_loadu_si256(reinterpret_cast<const __m256i*>(P + kRows * kQ8PanelRow)));
      FAIRKV_UNROLL
      for (int r = 0; r < M; ++r) {
        const size_t rb = size_t((r0 + r) * nb + b);
        const int8_t* qb = q.q.data() + rb * kQK;
        __m512i i0 = _mm512_set1_epi32(-kOffset * q.sum[rb]), i1 = _mm512_setzero_si512();
        FAIRKV_UNROLL
        for (int g = 0; g < 8; g += 2) {
          int32_t q0, q1;
          std::memcpy(&q0, qb + 4 * g, 4);
          std::memcpy(&q1, qb + 4 * g + 4, 4);
          i0 = _mm512_dpbusd_epi32(i0, k[g], _mm512_set1_epi32(q0));
          i1 = _mm512_dpbusd_epi32(i1, k[g + 1], _mm512_set1_epi32(q1));
        }
        acc[r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_add_epi32(i0, i1)),
                                 _mm512_mul_ps(dk, _mm512_set1_ps(q.d[rb])), acc[r]);
      }
    }
    FAIRKV_UNROLL
    for (int r = 0; r < M; ++r)
      _mm512_storeu_ps(s + r * ss + p * kKeyPanel, _mm512_mul_ps(acc[r], sc));
  }
}

template <KvType T>
FAIRKV_TARGET_VNNI void panels_vnni(const uint8_t* P, int64_t np, const QuantQueries& q, int n,
                                    float scale, float* s, int64_t ss, int64_t ahead) {
  using Fn =
      void (*)(const uint8_t*, int64_t, const QuantQueries&, int, float, float*, int64_t, int64_t);
  static constexpr Fn table[] = {&panel_rows_vnni<T, 1>, &panel_rows_vnni<T, 2>,
                                 &panel_rows_vnni<T, 3>, &panel_rows_vnni<T, 4>,
                                 &panel_rows_vnni<T, 5>, &panel_rows_vnni<T, 6>,
                                 &panel_rows_vnni<T, 7>, &panel_rows_vnni<T, 8>};
  for (int r = 0; r < n; r += 8)  // the prefetches spread over the first eight rows' blocks
    table[std::min(n - r, 8) - 1](P, np, q, r, scale, s + r * ss, ss, r == 0 ? ahead : 0);
}

#define FAIRKV_TARGET_AVX2 __attribute__((target("avx2,fma,f16c")))

// One row of keys against one query row per block: vpmaddubsw wants an unsigned operand, so it
// takes |k| and q with k's sign (ggml's mul_sum_i8_pairs), pairs of products never overflowing
// int16 (2 x 127 x 127; q4_0's nibbles are taken as the signed -8..7 they stand for).
template <KvType T>
FAIRKV_TARGET_AVX2 void scores_avx2(const uint8_t* K, size_t kr, int64_t nk, const QuantQueries& q,
                                    int n, float scale, float* s, int64_t ss) {
  constexpr size_t kB = T == KvType::Q8_0 ? sizeof(BlockQ8_0) : sizeof(BlockQ4_0);
  const int64_t nb = q.blocks;
  const __m256i ones = _mm256_set1_epi16(1);
  for (int64_t j = 0; j < nk; ++j) {
    const uint8_t* row = K + size_t(j) * kr;
    for (int r = 0; r < n; ++r) {
      __m256 acc = _mm256_setzero_ps();
      for (int64_t b = 0; b < nb; ++b) {
        const uint8_t* blk = row + size_t(b) * kB;
        __m256i k;
        if constexpr (T == KvType::Q8_0) {
          k = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(blk + 2));
        } else {
          const __m128i v = _mm_loadu_si128(reinterpret_cast<const __m128i*>(blk + 2));
          const __m128i m = _mm_set1_epi8(15);
          k = _mm256_sub_epi8(
              _mm256_set_m128i(_mm_and_si128(_mm_srli_epi16(v, 4), m), _mm_and_si128(v, m)),
              _mm256_set1_epi8(8));
        }
        const __m256i qb =
            _mm256_loadu_si256(reinterpret_cast<const __m256i*>(q.q.data() + (r * nb + b) * kQK));
        const __m256i dot16 = _mm256_maddubs_epi16(_mm256_sign_epi8(k, k), _mm256_sign_epi8(qb, k));
        const __m256i dot = _mm256_madd_epi16(dot16, ones);
        const float d =
            _cvtsh_ss(*reinterpret_cast<const uint16_t*>(blk)) * q.d[size_t(r * nb + b)];
        acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(dot), _mm256_set1_ps(d), acc);
      }
      const __m128 h = _mm_add_ps(_mm256_castps256_ps128(acc), _mm256_extractf128_ps(acc, 1));
      const __m128 h2 = _mm_add_ps(h, _mm_movehl_ps(h, h));
      s[r * ss + j] = _mm_cvtss_f32(_mm_add_ss(h2, _mm_movehdup_ps(h2))) * scale;
    }
  }
}

bool cpu_has_avx2() {
  static const bool has = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
                          __builtin_cpu_supports("f16c");
  return has;
}

bool cpu_has_vnni() {
  static const bool has = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                          __builtin_cpu_supports("avx512vl") &&
                          __builtin_cpu_supports("avx512dq") &&
                          __builtin_cpu_supports("avx512vnni");
  return has;
}
#endif

// Walks keys [k0, k0 + nk) in runs: whole sealed q8_0 panels go to panels(P, j, np) where
// use_panels (P: the first panel's bytes, j: its first key's offset from k0); every other run, at
// most to the next panel boundary, goes to rows(K, j, m) as m row-major rows, read in place past
// the panels and copied out through k_raw_row from a panel the range only partly covers (or from
// any panel when !use_panels).
template <class Rows, class Panels>
void walk_keys(const HeadStore& st, int64_t k0, int64_t nk, bool use_panels, Rows rows,
               Panels panels) {
  thread_local std::vector<uint8_t> buf;
  const size_t kr = st.k_row_bytes();
  const auto* base = static_cast<const uint8_t*>(st.k_data());
  const int64_t sealed = st.panel_keys();
  for (int64_t j = 0; j < nk;) {
    const int64_t i = k0 + j;
    if (i >= sealed) {
      rows(base + size_t(i) * kr, j, nk - j);
      return;
    }
    if (use_panels && i % kKeyPanel == 0 && j + kKeyPanel <= nk) {
      const int64_t np = std::min(nk - j, sealed - i) / kKeyPanel;
      panels(base + size_t(i) * kr, j, np);
      j += np * kKeyPanel;
      continue;
    }
    const int64_t m = std::min(nk - j, kKeyPanel - i % kKeyPanel);
    buf.resize(size_t(m) * kr);
    for (int64_t t = 0; t < m; ++t) st.k_raw_row(i + t, buf.data() + size_t(t) * kr);
    rows(buf.data(), j, m);
    j += m;
  }
}

template <class Rows>
void walk_rows(const HeadStore& st, int64_t k0, int64_t nk, Rows rows) {
  walk_keys(st, k0, nk, false, rows, [](const uint8_t*, int64_t, int64_t) {});
}

}  // namespace

void QuantQueries::set(const float* const* rows, int n, int64_t head_dim) {
  blocks = head_dim / kQK;
  q.resize(size_t(n * blocks * kQK));
  d.resize(size_t(n * blocks));
  sum.resize(size_t(n * blocks));
  std::vector<BlockQ8_0> tmp(static_cast<size_t>(blocks));
  for (int r = 0; r < n; ++r) {
    kernels::detail::quantize_act_q8_0(rows[r], tmp.data(), head_dim);
    for (int64_t b = 0; b < blocks; ++b) {
      const size_t at = size_t(r * blocks + b);
      std::memcpy(&q[at * kQK], tmp[size_t(b)].qs, kQK);
      d[at] = kernels::fp16_to_fp32(tmp[size_t(b)].d);
      int32_t t = 0;
      for (int i = 0; i < kQK; ++i) t += tmp[size_t(b)].qs[i];
      sum[at] = t;
    }
  }
}

void quant_scores_portable(const HeadStore& st, int64_t k0, int64_t nk, const QuantQueries& q,
                           int n, float scale, float* s, int64_t s_stride) {
  const KvType t = st.types().k;
  const size_t kr = st.k_row_bytes(), bb = block_bytes(t);
  const int64_t nb = q.blocks;
  walk_rows(st, k0, nk, [&](const uint8_t* K, int64_t j0, int64_t m) {
    for (int64_t j = 0; j < m; ++j) {
      const uint8_t* row = K + size_t(j) * kr;
      for (int r = 0; r < n; ++r) {
        float acc = 0.0f;
        for (int64_t b = 0; b < nb; ++b) {
          const uint8_t* blk = row + size_t(b) * bb;
          const int8_t* qb = q.q.data() + (r * nb + b) * kQK;
          int32_t dot = 0;
          for (int i = 0; i < kQK; ++i) dot += key_value(t, blk, i) * qb[i];
          acc += block_scale(blk) * q.d[size_t(r * nb + b)] * float(dot);
        }
        s[r * s_stride + j0 + j] = acc * scale;
      }
    }
  });
}

bool quant_scores_avx2(const HeadStore& st, int64_t k0, int64_t nk, const QuantQueries& q, int n,
                       float scale, float* s, int64_t s_stride) {
#if defined(FAIRKV_QUANT_VNNI)
  if (!cpu_has_avx2()) return false;
  const size_t kr = st.k_row_bytes();
  const bool q8 = st.types().k == KvType::Q8_0;
  walk_rows(st, k0, nk, [&](const uint8_t* K, int64_t j, int64_t m) {
    if (q8)
      scores_avx2<KvType::Q8_0>(K, kr, m, q, n, scale, s + j, s_stride);
    else
      scores_avx2<KvType::Q4_0>(K, kr, m, q, n, scale, s + j, s_stride);
  });
  return true;
#else
  (void)st, (void)k0, (void)nk, (void)q, (void)n, (void)scale, (void)s, (void)s_stride;
  return false;
#endif
}

bool quant_scores_vnni() {
#if defined(FAIRKV_QUANT_VNNI)
  return cpu_has_vnni();
#else
  return false;
#endif
}

namespace {

// The VNNI kernels over [k0, k0 + nk); false where the CPU or the shape rules them out.
bool scores_vnni_all(const HeadStore& st, int64_t k0, int64_t nk, const QuantQueries& q, int n,
                     float scale, float* s, int64_t ss, int64_t ahead) {
#if defined(FAIRKV_QUANT_VNNI)
  if (!cpu_has_vnni() || (q.blocks + 1) / 2 > kMaxPairs || n > kMaxQueryRows) return false;
  const size_t kr = st.k_row_bytes();
  const KvType t = st.types().k;
  auto panels = [&](const uint8_t* P, int64_t j, int64_t np) {
    if (t == KvType::Q8_0)
      panels_vnni<KvType::Q8_0>(P, np, q, n, scale, s + j, ss, ahead);
    else
      panels_vnni<KvType::Q4_0>(P, np, q, n, scale, s + j, ss, ahead);
  };
  auto rows = [&](const uint8_t* K, int64_t j, int64_t m) {
    if (t == KvType::Q8_0)
      scores_vnni<KvType::Q8_0>(K, kr, m, q, n, scale, s + j, ss);
    else
      scores_vnni<KvType::Q4_0>(K, kr, m, q, n, scale, s + j, ss);
  };
  walk_keys(st, k0, nk, true, rows, panels);
  return true;
#else
  (void)st, (void)k0, (void)nk, (void)q, (void)n, (void)scale, (void)s, (void)ss, (void)ahead;
  return false;
#endif
}

}  // namespace

void quant_scores(const HeadStore& st, int64_t k0, int64_t nk, const QuantQueries& q, int n,
                  float scale, float* s, int64_t s_stride, int64_t ahead) {
  if (scores_vnni_all(st, k0, nk, q, n, scale, s, s_stride, ahead)) return;
  if (quant_scores_avx2(st, k0, nk, q, n, scale, s, s_stride)) return;
  quant_scores_portable(st, k0, nk, q, n, scale, s, s_stride);
}

void window_probs_f32(const HeadStore& st, const float* q, int64_t begin, int64_t lim, float scale,
                      const float* fresh, int64_t fresh_from, float* out) {
  const int64_t d = st.head_dim();
  std::fill(out, out + st.size(), 0.0f);
  if (lim <= begin) return;
  std::vector<float> k(static_cast<size_t>(d));
  float m = -INFINITY;
  for (int64_t j = begin; j < lim; ++j) {
    const float* key = k.data();
    if (fresh && j >= fresh_from)
      key = fresh + (j - fresh_from) * d;
    else
      st.k_row(j, k.data());
    float dot = 0.0f;
    for (int64_t i = 0; i < d; ++i) dot += q[i] * key[i];
    out[j] = dot * scale;
    m = std::max(m, out[j]);
  }
  double sum = 0.0;
  for (int64_t j = begin; j < lim; ++j) sum += (out[j] = std::exp(out[j] - m));
  const float inv = float(1.0 / sum);
  for (int64_t j = begin; j < lim; ++j) out[j] *= inv;
}

}  // namespace fairkv::kv::detail
