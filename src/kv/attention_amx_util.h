// Internal to the AMX kernels (attention_amx.cpp, attention_amx_pairs.cpp): whether the build
// knows AMX, the target attribute their functions carry, the tile configuration, bf16 rounding
// and the spread prefetches. The functions carry a target attribute instead of the files being
// compiled with -mavx512f/-mamx-*: a build for any x86-64 (without -march=native) then still
// compiles them, and nothing here runs before available() (attention_amx.h) has checked the CPU.
#pragma once

#include <cstdint>
#include <cstring>

#include "kv/attention_amx.h"
#include "kv/attention_kernels.h"

#if defined(__x86_64__) && defined(__linux__) && \
    ((defined(__GNUC__) && __GNUC__ >= 11) || (defined(__clang__) && __clang_major__ >= 12))
#define FAIRKV_AMX_BUILD 1
#endif

#if defined(FAIRKV_AMX_BUILD)
// GCC 12's AVX-512 headers trip -Wuninitialized (see kernels/simd.h).
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif
#include <immintrin.h>
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic pop
#endif

#define FAIRKV_AMX_FN \
  __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,fma,f16c,amx-tile,amx-bf16")))
// GCC's _tile_loadd is an asm that does not tell the compiler it reads memory: without this
// barrier the stores that fill a tile's source could be moved past the load.
#define FAIRKV_AMX_BARRIER() asm volatile("" ::: "memory")
#define FAIRKV_AMX_UNROLL _Pragma("GCC unroll 16")

namespace fairkv::kv::amx::detail {

inline constexpr int64_t kTile = 16;                // keys, dimension pairs or columns per tile
inline constexpr int64_t kTileFloats = kTile * 16;  // a 16-row tile of 64-byte rows

struct alignas(64) TileConfig {
  uint8_t palette = 1, start_row = 0;
  uint8_t reserved[14] = {};
  uint16_t colsb[16] = {};
  uint8_t rows[16] = {};
};

// Every tile 16 rows of 64 bytes (rows past the pieces are zero), so that any register can take
// any role.
FAIRKV_AMX_FN inline void configure() {
  TileConfig cfg;
  for (int t = 0; t < 8; ++t) {
    cfg.rows[t] = 16;
    cfg.colsb[t] = 64;
  }
  // Not _tile_loadconfig: its asm tells GCC it reads 8 bytes, so the rest of cfg could go
  // unwritten.
  asm volatile("ldtilecfg %0" ::"m"(cfg));
}

inline uint32_t bits_of(float x) {
  uint32_t b;
  std::memcpy(&b, &x, 4);
  return b;
}

inline float float_of(uint32_t b) {
  float x;
  std::memcpy(&x, &b, 4);
  return x;
}

// x rounded to bf16 (to nearest, ties to even), as a float32.
inline float round_bf16(float x) {
  uint32_t b = bits_of(x);
  b += 0x7FFF + ((b >> 16) & 1);
  return float_of(b & 0xFFFF0000u);
}

FAIRKV_AMX_FN inline __m512 round_bf16(__m512 x) {
  const __m512i b = _mm512_castps_si512(x);
  const __m512i odd = _mm512_and_si512(_mm512_srli_epi32(b, 16), _mm512_set1_epi32(1));
  const __m512i r = _mm512_add_epi32(b, _mm512_add_epi32(odd, _mm512_set1_epi32(0x7FFF)));
  return _mm512_castsi512_ps(_mm512_and_si512(r, _mm512_set1_epi32(int(0xFFFF0000u))));
}

// A tile's 16 lines (1 KiB, as the store's panels hold them) `bytes` past p into L1 a little
// before its load: attention_kernels.h's prefetch_near for the AMX kernels, two tiles on.
inline void prefetch_near_tile(const void* p, int64_t bytes) {
  for (int64_t i = 0; i < 16; ++i) kv::detail::prefetch_near(p, bytes + 64 * i);
}

// The prefetches of `ahead` spread over `steps` calls of tick() (into L2): attention_kernels.h's
// Prefetch, as the other kernels issue theirs.
inline kv::detail::Prefetch spread(Ahead a, int64_t steps) {
  kv::detail::Prefetch pf;
  pf.at = static_cast<const char*>(a.at);
  pf.lines = a.at ? a.bytes / 64 : 0;
  pf.steps = steps > 0 ? steps : 1;
  return pf;
}

}  // namespace fairkv::kv::amx::detail

#endif  // FAIRKV_AMX_BUILD
