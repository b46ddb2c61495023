// Scores against sealed q8_0 / q4_0 key panels on AMX-INT8 (attention_quant.h).
//
// A q8_0 panel block (cache.h, kQ8PanelBlockBytes: 8 rows of 64 bytes, row g holding dimensions
// 4g..4g+3 of the 16 keys as k + 128) is a tdpbsud B tile as stored: K = 32 bytes (one block),
// N = 16 keys, unsigned. The A tile is the query rows' bytes of that block (QuantQueries, signed,
// n rows of 32 bytes at a stride of the row's blocks), and C starts from -offset x sum(q) in every
// lane of its row, so one tdpbsud leaves the n x 16 exact integer dots the VNNI kernel's eight
// vpdpbusd per row leave. The epilogue is the VNNI kernel's, operation for operation (convert,
// d_k x d_q, one FMA per row and block in block order, times `scale` at the end), so the scores
// are bit-identical to it. A q4_0 panel block's 4 rows of nibbles are first split into the 8
// rows of bytes (k + 8) a B tile wants: 12 vector operations per block and 16 keys, once for all
// rows, where the VNNI kernel pays 8 vpdpbusd per row.
//
// Tiles (configured per call, so that other kernels may configure them their own way between
// calls: ldtilecfg and tilerelease cost ~1 ns per key of a 64-key call): 0-3 C (n rows x 16
// int32, four blocks in flight), 4-5 A (n rows x 32 bytes), 6-7 B (8 rows x 64 bytes).
//
// Slower than the VNNI kernel on this project's machine at every row count measured (kv_bench hot
// q8_0, ns per key: group 4 26-28 against 19, group 8 40 against 33; prefill, 16 rows, 1.2x the
// time; docs/benchmarks.md): each product covers one block (K = 32 of a tile's 64 bytes, since
// every block has its own scales) for n <= 16 rows, and costs a C load and a tile store besides,
// so quant_scores uses it only when asked (FAIRKV_AMX_INT8=1).
#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "kernels/simd.h"
#include "kernels/types.h"
#include "kv/attention_amx_util.h"
#include "kv/attention_quant.h"

#if defined(FAIRKV_AMX_BUILD) && defined(FAIRKV_QUANT_VNNI)
#include <cpuid.h>
#define FAIRKV_QUANT_AMX 1
#define FAIRKV_TARGET_AMX_INT8                                                  \
  __attribute__((                                                               \
      target("avx512f,avx512bw,avx512vl,avx512dq,avx512vnni,f16c,fma,amx-tile," \
             "amx-int8")))
#endif

namespace fairkv::kv::detail {

namespace {

using kernels::kQK;

// FAIRKV_AMX_INT8 in the environment (other than "0") turns the kernel on for the process.
bool allowed_by_env() {
  const char* env = std::getenv("FAIRKV_AMX_INT8");
  return env && *env && std::strcmp(env, "0") != 0;
}

#if defined(FAIRKV_QUANT_AMX)

bool cpu_has_amx_int8() {
  unsigned a, b, c, d;
  if (!__get_cpuid_count(7, 0, &a, &b, &c, &d)) return false;
  const bool int8 = d & (1u << 25), vnni = c & (1u << 11);
  // amx::available(): AMX-TILE, AVX-512, the OS's state and Linux's grant of the tile data.
  return int8 && vnni && amx::available();
}

struct alignas(64) TileConfig {
  uint8_t palette = 1, start_row = 0;
  uint8_t reserved[14] = {};
  uint16_t colsb[16] = {};
  uint8_t rows[16] = {};
};

FAIRKV_TARGET_AMX_INT8 void configure(int n) {
  TileConfig cfg;
  for (int t = 0; t < 4; ++t) cfg.rows[t] = uint8_t(n), cfg.colsb[t] = 64;             // C
  for (int t = 4; t < 6; ++t) cfg.rows[t] = uint8_t(n), cfg.colsb[t] = uint16_t(kQK);  // A
  for (int t = 6; t < 8; ++t) cfg.rows[t] = 8, cfg.colsb[t] = 64;                      // B
  asm volatile("ldtilecfg %0" ::"m"(cfg));  // (not _tile_loadconfig: see attention_amx_util.h)
}

// One block's tile product: C tile `c` from the offsets at `corr`, A from the query bytes at
// `qa` (row stride qs), B from the panel rows at `kb`.
#define FAIRKV_QUANT_TILE(c, a, b, corr, qa, qs, kb) \
  do {                                               \
    _tile_loadd(c, corr, 64);                        \
    _tile_loadd(a, qa, qs);                          \
    _tile_loadd(b, kb, 64);                          \
    _tile_dpbsud(c, a, b);                           \
  } while (0)

// Blocks b0..b0 + G - 1 of one panel into C tiles 0..G-1, stored to out (block i's n rows of
// 16 dots at out + i * cs). kb(i) gives block i's B rows.
template <int G, class KB>
FAIRKV_TARGET_AMX_INT8 inline void tile_blocks(const int32_t* corr, const int8_t* qa, size_t qs,
                                               KB kb, int32_t* out, size_t cs) {
  FAIRKV_AMX_BARRIER();  // corr, and a q4_0 block's unpacked rows, were written by stores
  FAIRKV_QUANT_TILE(0, 4, 6, corr, qa, qs, kb(0));
  if constexpr (G > 1) FAIRKV_QUANT_TILE(1, 5, 7, corr + cs, qa + kQK, qs, kb(1));
  if constexpr (G > 2) FAIRKV_QUANT_TILE(2, 4, 6, corr + 2 * cs, qa + 2 * kQK, qs, kb(2));
  if constexpr (G > 3) FAIRKV_QUANT_TILE(3, 5, 7, corr + 3 * cs, qa + 3 * kQK, qs, kb(3));
  _tile_stored(0, out, 64);
  if constexpr (G > 1) _tile_stored(1, out + cs, 64);
  if constexpr (G > 2) _tile_stored(2, out + 2 * cs, 64);
  if constexpr (G > 3) _tile_stored(3, out + 3 * cs, 64);
  FAIRKV_AMX_BARRIER();  // the tile loads read memory that later stores overwrite (q4_0's rows)
}

// A q4_0 panel block's 4 rows (key t's 4 bytes in row g: dimensions 8g + i low, 8g + 4 + i high)
// as the 8 rows of k + 8 bytes a B tile wants (row 2g: the low nibbles, 2g + 1: the high).
FAIRKV_TARGET_AMX_INT8 inline void unpack_q4(const uint8_t* P, uint8_t* out) {
  const __m512i m = _mm512_set1_epi8(15);
  for (int g = 0; g < 4; ++g) {
    const __m512i x = _mm512_loadu_si512(P + g * kQ8PanelRow);
    _mm512_store_si512(out + 2 * g * kQ8PanelRow, _mm512_and_si512(x, m));
    _mm512_store_si512(out + (2 * g + 1) * kQ8PanelRow,
                       _mm512_and_si512(_mm512_srli_epi16(x, 4), m));
  }
}

// Rows 0..M-1 of q against np whole panels at P: s[r * ss + p * 16 + t] = scale x score. A
// chunk of up to kChunkPanels panels has all its tile products issued and stored first, each
// (panel, block) to its own place, and only then does the epilogue read them: vector loads
// interleaved with the tile stores they depend on made the kernel 1.5x slower than VNNI at group
// 8 (kv_bench hot: ~50 against ~35 ns per key); this is attention_amx_pairs.cpp's order too.
template <KvType T, int M>
FAIRKV_TARGET_AMX_INT8 void panels_amx_rows(const uint8_t* P, int64_t np, const QuantQueries& q,
                                            const int32_t* corr, float scale, float* s, int64_t ss,
                                            int64_t ahead) {
  constexpr bool kQ8 = T == KvType::Q8_0;
  constexpr size_t kRows = kQ8 ? 8 : 4, kBytes = kQ8 ? kQ8PanelBlockBytes : kQ4PanelBlockBytes;
  constexpr int64_t kChunkPanels = 4;
  const int64_t nb = q.blocks;
  const size_t qs = size_t(nb) * kQK, cs = size_t(M) * 16, panel = size_t(nb) * kBytes;
  // Block b of chunk panel p: M rows of 16 dots at dots + (p * nb + b) * cs.
  alignas(64) int32_t dots[kChunkPanels * 16 * M * 16];
  alignas(64) uint8_t unpacked[4][8 * kQ8PanelRow];
  const __m512 sc = _mm512_set1_ps(scale);
  for (int64_t p0 = 0; p0 < np; p0 += kChunkPanels) {
    const int64_t cp = std::min(kChunkPanels, np - p0);
    for (int64_t p = 0; p < cp; ++p)
      for (int64_t b0 = 0; b0 < nb; b0 += 4) {
        const int g = int(std::min<int64_t>(4, nb - b0));
        const uint8_t* Pb = P + size_t(p0 + p) * panel + size_t(b0) * kBytes;
        const int32_t* cb = corr + size_t(b0) * cs;
        const int8_t* qa = q.q.data() + b0 * kQK;
        int32_t* out = dots + size_t(p * nb + b0) * cs;
        auto run = [&](auto kb) {
          switch (g) {
            case 4:
              return tile_blocks<4>(cb, qa, qs, kb, out, cs);
            case 3:
              return tile_blocks<3>(cb, qa, qs, kb, out, cs);
            case 2:
              return tile_blocks<2>(cb, qa, qs, kb, out, cs);
            default:
              return tile_blocks<1>(cb, qa, qs, kb, out, cs);
          }
        };
        if constexpr (kQ8) {
          run([Pb](int i) { return Pb + size_t(i) * kQ8PanelBlockBytes; });
        } else {
          for (int i = 0; i < g; ++i) unpack_q4(Pb + size_t(i) * kBytes, unpacked[i]);
          run([&unpacked](int i) -> const uint8_t* { return unpacked[i]; });
        }
      }
    FAIRKV_AMX_BARRIER();  // the epilogue's loads read what the tile stores wrote
    for (int64_t p = 0; p < cp; ++p) {
      __m512 acc[M];
      FAIRKV_UNROLL
      for (int r = 0; r < M; ++r) acc[r] = _mm512_setzero_ps();
      const uint8_t* blk = P + size_t(p0 + p) * panel;
      for (int64_t b = 0; b < nb; ++b, blk += kBytes) {
        if (ahead) prefetch_block<kBytes>(blk, ahead);
        const __m512 dk = _mm512_cvtph_ps(
            _mm256_loadu_si256(reinterpret_cast<const __m256i*>(blk + kRows * kQ8PanelRow)));
        const int32_t* c = dots + size_t(p * nb + b) * cs;
        FAIRKV_UNROLL
        for (int r = 0; r < M; ++r) {
          const __m512i dot = _mm512_load_si512(c + r * 16);
          acc[r] =
              _mm512_fmadd_ps(_mm512_cvtepi32_ps(dot),
                              _mm512_mul_ps(dk, _mm512_set1_ps(q.d[size_t(r * nb + b)])), acc[r]);
        }
      }
      FAIRKV_UNROLL
      for (int r = 0; r < M; ++r)
        _mm512_storeu_ps(s + r * ss + (p0 + p) * kKeyPanel, _mm512_mul_ps(acc[r], sc));
    }
  }
}

template <KvType T>
FAIRKV_TARGET_AMX_INT8 void panels_amx(const uint8_t* P, int64_t np, const QuantQueries& q, int n,
                                       float scale, float* s, int64_t ss, int64_t ahead) {
  constexpr int kOffset = T == KvType::Q8_0 ? 128 : 8;
  // C's starting values: block b's n rows of 16 lanes of -offset x sum(q).
  thread_local std::vector<int32_t> corr;
  const int64_t nb = q.blocks;
  corr.resize(size_t(nb * n * 16));
  for (int64_t b = 0; b < nb; ++b)
    for (int r = 0; r < n; ++r)
      _mm512_storeu_si512(corr.data() + (b * n + r) * 16,
                          _mm512_set1_epi32(-kOffset * q.sum[size_t(r * nb + b)]));
  using Fn = void (*)(const uint8_t*, int64_t, const QuantQueries&, const int32_t*, float, float*,
                      int64_t, int64_t);
  static constexpr Fn table[] = {
      &panels_amx_rows<T, 1>,  &panels_amx_rows<T, 2>,  &panels_amx_rows<T, 3>,
      &panels_amx_rows<T, 4>,  &panels_amx_rows<T, 5>,  &panels_amx_rows<T, 6>,
      &panels_amx_rows<T, 7>,  &panels_amx_rows<T, 8>,  &panels_amx_rows<T, 9>,
      &panels_amx_rows<T, 10>, &panels_amx_rows<T, 11>, &panels_amx_rows<T, 12>,
      &panels_amx_rows<T, 13>, &panels_amx_rows<T, 14>, &panels_amx_rows<T, 15>,
      &panels_amx_rows<T, 16>};
  configure(n);
  table[n - 1](P, np, q, corr.data(), scale, s, ss, ahead);
  _tile_release();
}

#endif  // FAIRKV_QUANT_AMX

}  // namespace

bool quant_amx_int8_available() {
#if defined(FAIRKV_QUANT_AMX)
  static const bool ok = cpu_has_amx_int8();
  return ok;
#else
  return false;
#endif
}

bool quant_amx_int8_allowed() {
  static const bool ok = allowed_by_env() && quant_amx_int8_available();
  return ok;
}

void quant_panels_amx(KvType t, const uint8_t* P, int64_t np, const QuantQueries& q, int n,
                      float scale, float* s, int64_t ss, int64_t ahead) {
#if defined(FAIRKV_QUANT_AMX)
  if (t == KvType::Q8_0)
    panels_amx<KvType::Q8_0>(P, np, q, n, scale, s, ss, ahead);
  else
    panels_amx<KvType::Q4_0>(P, np, q, n, scale, s, ss, ahead);
#else
  (void)t, (void)P, (void)np, (void)q, (void)n, (void)scale, (void)s, (void)ss, (void)ahead;
#endif
}

}  // namespace fairkv::kv::detail
