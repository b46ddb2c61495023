// AMX kernels of attention_amx.h over f16 elements (the bf16 store's kernels, which need no
// conversion: attention_amx_pairs.cpp). Target attributes instead of -mamx-*:
// attention_amx_util.h.
//
// Tiles (every one 16 rows x 64 bytes; rows past the pieces are zero):
//   scores: tmm0, tmm1 accumulate piece rows [0, 16) and [16, 3n) (tmm1 only for n > 5) of a
//           panel; tmm2/tmm3 and tmm5/tmm6 the query pieces' A tiles, tmm4/tmm7 the keys' B
//           tiles, in two sets by the parity of the dimension tile
//   values: tmm0..tmm3 accumulate two column tiles (x two row tiles for n > 5), tmm4/tmm5 the
//           probabilities' A tiles, tmm6/tmm7 the values' B tiles
// Piece rows are [piece 1 of rows 0..n)[piece 2][piece 3].
//
// Measured (docs/benchmarks.md, "Issue 19, item 1 on AMX"): slower than the AVX-512 kernel on this
// project's machine. A tile load of data still in the store buffer waits for it to reach the
// cache, so converting a block and multiplying it do not overlap; converting the next panel
// between the current panel's products was tried and was slower still.
#include "kv/attention_amx.h"

#include <cstring>

#include "kv/attention_amx_util.h"

#if defined(FAIRKV_AMX_BUILD)
#include <cpuid.h>
#include <sys/syscall.h>
#include <unistd.h>
#endif

namespace fairkv::kv::amx {

namespace {

#if defined(FAIRKV_AMX_BUILD)
using namespace detail;  // NOLINT(google-build-using-namespace): the kernels' own helpers
#else
constexpr int64_t kTile = 16, kTileFloats = 256;
#endif

// Scratch layout (floats), for head_dim d (d16 = d / 16 tiles of dimensions or columns):
//   qa: d16 x 32 rows x 16   the query pieces, tile 0 then tile 1 of each dimension tile
//   kb: d16 x 256            one panel's keys as (hi, lo) lanes, per dimension tile
//   pa: 4 x 2 x 256          the probabilities' pieces, per 16 keys (two tiles)
//   vb: d16 x 64 x 16        a block's values as (hi, lo) lanes, per column tile
//   cb: max(4, d16) x 512    tiles stored for the epilogues (two per panel or column tile)
struct Layout {
  float *qa, *kb, *pa, *vb, *cb;
};

Layout layout(const Rows& r) {
  const int64_t d16 = r.d / kTile;
  Layout l;
  l.qa = r.scratch;
  l.kb = l.qa + d16 * 2 * kTileFloats;
  l.pa = l.kb + d16 * kTileFloats;
  l.vb = l.pa + 4 * 2 * kTileFloats;
  l.cb = l.vb + d16 * kBlock * 16;
  return l;
}

#if defined(FAIRKV_AMX_BUILD)

// A bf16 value (a float32 with a zero lower half) in both halves of a float's bits.
float both_halves(float x) {
  const uint32_t b = bits_of(x);
  return float_of(b | b >> 16);
}

// Word indices for _mm512_permutex2var_epi16(x, ., lo): x's upper halves stay, lo's upper halves
// move into the lower halves.
struct alignas(64) PickHalves {
  uint16_t w[32];
  constexpr PickHalves() : w() {
    for (int t = 0; t < 16; ++t) {
      w[2 * t] = uint16_t(32 + 2 * t + 1);
      w[2 * t + 1] = uint16_t(2 * t + 1);
    }
  }
};
constexpr PickHalves kPickHalves;

// 16 f16 elements at p as tile lanes: the element x converted to float32 has hi in its upper
// half; the lower half becomes lo = x - hi (exact, at most 3 significant bits, so its bf16 is its
// float32's upper half).
FAIRKV_AMX_FN inline __m512i lanes(const uint16_t* p, __m512i pick) {
  const __m256i h = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
  const __m512 x = _mm512_cvtph_ps(h);
  const __m512i hi = _mm512_and_si512(_mm512_castps_si512(x), _mm512_set1_epi32(int(0xFFFF0000u)));
  const __m512 lo = _mm512_sub_ps(x, _mm512_castsi512_ps(hi));
  return _mm512_permutex2var_epi16(_mm512_castps_si512(x), pick, _mm512_castps_si512(lo));
}

// A bf16 value (a float32 with a zero lower half) in both halves of its lane: it multiplies both
// of an element's pieces.
FAIRKV_AMX_FN inline __m512i both_halves(__m512 x) {
  const __m512i b = _mm512_castps_si512(x);
  return _mm512_or_si512(b, _mm512_srli_epi32(b, 16));
}

// D16: d / 16 where it is a compile-time constant (0: read it from rows), so that the loops
// over a row's tiles unroll.
template <int D16>
FAIRKV_AMX_FN void scores_impl(const Rows& rows, const uint16_t* K, int n_panels, float* s,
                               int64_t s_stride, Ahead ahead) {
  const Layout l = layout(rows);
  const int64_t d16 = D16 ? D16 : rows.d / kTile, d = d16 * kTile;
  const int n = rows.n;
  const bool two = 3 * n > 16;
  const __m512i pick = _mm512_load_si512(kPickHalves.w);
  auto pf = spread(ahead, int64_t(n_panels) * d16);
  for (int p = 0; p < n_panels; ++p) {
    // The whole panel is converted before its first tile load: a tile load waits for the
    // stores before it, so loads interleaved with the stores would wait once per tile.
    const uint16_t* P = K + int64_t(p) * d * kTile;
    for (int64_t c = 0; c < d16; ++c) {
      pf.tick();
      FAIRKV_AMX_UNROLL
      for (int64_t i = 0; i < kTile; ++i)
        _mm512_store_si512(l.kb + (c * kTile + i) * 16, lanes(P + (c * kTile + i) * kTile, pick));
    }
    FAIRKV_AMX_BARRIER();
    // Two sets of tile registers, alternating: a tile load into a register that a product
    // still reads waits for it (tiles are not renamed), which serialised loads and products.
    _tile_zero(0);
    if (two) _tile_zero(1);
    for (int64_t c = 0; c < d16; c += 2) {
      const float* qa = l.qa + c * 2 * kTileFloats;
      _tile_loadd(4, l.kb + c * kTileFloats, 64);
      _tile_loadd(2, qa, 64);
      _tile_dpbf16ps(0, 2, 4);
      if (two) {
        _tile_loadd(3, qa + kTileFloats, 64);
        _tile_dpbf16ps(1, 3, 4);
      }
      _tile_loadd(7, l.kb + (c + 1) * kTileFloats, 64);
      _tile_loadd(5, qa + 2 * kTileFloats, 64);
      _tile_dpbf16ps(0, 5, 7);
      if (two) {
        _tile_loadd(6, qa + 3 * kTileFloats, 64);
        _tile_dpbf16ps(1, 6, 7);
      }
    }
    // The sums wait until every panel's tiles are issued, so that a panel's conversion runs
    // while the previous panel's products are computed.
    float* cb = l.cb + p * 2 * kTileFloats;
    _tile_stored(0, cb, 64);
    if (two) _tile_stored(1, cb + kTileFloats, 64);
  }
  for (int p = 0; p < n_panels; ++p) {
    const float* cb = l.cb + p * 2 * kTileFloats;
    for (int r = 0; r < n; ++r) {
      const __m512 sum = _mm512_add_ps(
          _mm512_add_ps(_mm512_load_ps(cb + r * 16), _mm512_load_ps(cb + (n + r) * 16)),
          _mm512_load_ps(cb + (2 * n + r) * 16));
      _mm512_storeu_ps(s + r * s_stride + p * kTile, sum);
    }
  }
}

template <int D16>
FAIRKV_AMX_FN void values_impl(const Rows& rows, const uint16_t* V, int64_t nb, const float* prob,
                               int64_t p_stride, const float* corr, float* const* o, Ahead ahead) {
  const Layout l = layout(rows);
  const int64_t d16 = D16 ? D16 : rows.d / kTile, d = d16 * kTile;
  const int n = rows.n;
  const int64_t chunks = (nb + kTile - 1) / kTile;
  const __m512i pick = _mm512_load_si512(kPickHalves.w);
  // The probabilities' three pieces, rows [first pieces of rows 0..n)[second][third] over two
  // tiles (as the queries'), keys >= nb zero.
  for (int64_t kc = 0; kc < chunks; ++kc) {
    const int64_t left = nb - kc * kTile;
    const __mmask16 m = left >= 16 ? __mmask16(0xFFFF) : __mmask16((1u << left) - 1);
    float* pa = l.pa + kc * 2 * kTileFloats;
    for (int r = 0; r < n; ++r) {
      const __m512 x = _mm512_maskz_loadu_ps(m, prob + r * p_stride + kc * kTile);
      const __m512 p1 = round_bf16(x), p2 = round_bf16(_mm512_sub_ps(x, p1));
      const __m512 p3 = round_bf16(_mm512_sub_ps(_mm512_sub_ps(x, p1), p2));
      _mm512_store_si512(pa + r * 16, both_halves(p1));
      _mm512_store_si512(pa + (n + r) * 16, both_halves(p2));
      _mm512_store_si512(pa + (2 * n + r) * 16, both_halves(p3));
    }
    for (int r = 3 * n; r < 32; ++r) _mm512_store_si512(pa + r * 16, _mm512_setzero_si512());
  }
  // The block's values as lanes, row-major like V (rows past the block zero, never stale NaNs),
  // all before the first tile load (see scores_impl).
  auto pf = spread(ahead, nb);
  for (int64_t j = 0; j < nb; ++j) {
    pf.tick();
    FAIRKV_AMX_UNROLL
    for (int64_t cc = 0; cc < d16; ++cc)
      _mm512_store_si512(l.vb + (j * d16 + cc) * 16, lanes(V + j * d + cc * kTile, pick));
  }
  for (int64_t j = nb; j < chunks * kTile; ++j)
    for (int64_t cc = 0; cc < d16; ++cc)
      _mm512_store_si512(l.vb + (j * d16 + cc) * 16, _mm512_setzero_si512());
  FAIRKV_AMX_BARRIER();
  // Two column tiles at a time: tmm0, tmm1 take the first 16 piece rows of column tiles cc and
  // cc + 1, tmm2, tmm3 the rest (n > 5).
  const bool two = 3 * n > 16;
  const int64_t vstride = d16 * 64;
  for (int64_t cc = 0; cc < d16; cc += 2) {
    _tile_zero(0);
    _tile_zero(1);
    if (two) {
      _tile_zero(2);
      _tile_zero(3);
    }
    const float* vb = l.vb + cc * 16;
    for (int64_t kc = 0; kc < chunks; ++kc) {
      const float* b = vb + kc * kTile * d16 * 16;
      const float* pa = l.pa + kc * 2 * kTileFloats;
      _tile_loadd(4, pa, 64);
      _tile_loadd(6, b, vstride);
      _tile_loadd(7, b + 16, vstride);
      _tile_dpbf16ps(0, 4, 6);
      _tile_dpbf16ps(1, 4, 7);
      if (two) {
        _tile_loadd(5, pa + kTileFloats, 64);
        _tile_dpbf16ps(2, 5, 6);
        _tile_dpbf16ps(3, 5, 7);
      }
    }
    float* cb = l.cb + cc * 2 * kTileFloats;
    _tile_stored(0, cb, 64);
    _tile_stored(1, cb + 2 * kTileFloats, 64);
    if (two) {
      _tile_stored(2, cb + kTileFloats, 64);
      _tile_stored(3, cb + 3 * kTileFloats, 64);
    }
  }
  for (int64_t cc = 0; cc < d16; ++cc) {
    const float* cb = l.cb + cc * 2 * kTileFloats;
    for (int r = 0; r < n; ++r) {
      float* dst = o[r] + cc * kTile;
      const __m512 acc = _mm512_mul_ps(_mm512_loadu_ps(dst), _mm512_set1_ps(corr[r]));
      const __m512 add = _mm512_add_ps(
          _mm512_add_ps(_mm512_load_ps(cb + r * 16), _mm512_load_ps(cb + (n + r) * 16)),
          _mm512_load_ps(cb + (2 * n + r) * 16));
      _mm512_storeu_ps(dst, _mm512_add_ps(acc, add));
    }
  }
}

FAIRKV_AMX_FN void release() {
  _tile_release();
}

bool detect() {
  unsigned a, b, c, d;
  if (!__get_cpuid(1, &a, &b, &c, &d)) return false;
  const bool fma = c & (1u << 12), osxsave = c & (1u << 27), f16c = c & (1u << 29);
  if (!fma || !osxsave || !f16c) return false;
  if (!__get_cpuid_count(7, 0, &a, &b, &c, &d)) return false;
  const bool avx512 = (b & (1u << 16)) && (b & (1u << 17)) && (b & (1u << 30)) && (b & (1u << 31));
  const bool amx = (d & (1u << 22)) && (d & (1u << 24));  // AMX-BF16, AMX-TILE
  if (!avx512 || !amx) return false;
  if (!__get_cpuid_count(7, 1, &a, &b, &c, &d) || !(a & (1u << 5))) return false;  // AVX512_BF16
  uint32_t xcr0_lo, xcr0_hi;
  asm volatile("xgetbv" : "=a"(xcr0_lo), "=d"(xcr0_hi) : "c"(0));
  if ((xcr0_lo & 0xE6) != 0xE6) return false;  // SSE, AVX, opmask and ZMM state saved by the OS
  // Linux hands out the tile data (XFEATURE_XTILEDATA, 18) only on request
  // (ARCH_REQ_XCOMP_PERM): without it the first tile instruction raises SIGILL.
  constexpr int kReqXcompPerm = 0x1023, kXtileData = 18;
  return syscall(SYS_arch_prctl, kReqXcompPerm, kXtileData) == 0;
}

#endif  // FAIRKV_AMX_BUILD

}  // namespace

size_t scratch_floats(int64_t d) {
  const int64_t d16 = d / kTile;
  return size_t(d16 * 3 * kTileFloats + 8 * kTileFloats + d16 * kBlock * 16 +
                (d16 > 4 ? d16 : 4) * 2 * kTileFloats);
}

#if defined(FAIRKV_AMX_BUILD)

bool available() {
  static const bool ok = detect();
  return ok;
}

void begin(const Rows& rows, const float* const* q, float scale) {
  const Layout l = layout(rows);
  const int n = rows.n;
  for (int64_t c = 0; c < rows.d / kTile; ++c) {
    float* qa = l.qa + c * 2 * kTileFloats;
    std::memset(qa, 0, sizeof(float) * 2 * kTileFloats);
    for (int r = 0; r < n; ++r)
      for (int64_t k = 0; k < kTile; ++k) {
        const float x = scale * q[r][c * kTile + k];
        const float p1 = round_bf16(x), p2 = round_bf16(x - p1), p3 = round_bf16(x - p1 - p2);
        qa[r * 16 + k] = both_halves(p1);
        qa[(n + r) * 16 + k] = both_halves(p2);
        qa[(2 * n + r) * 16 + k] = both_halves(p3);
      }
  }
  configure();
}

void end() {
  release();
}

void scores(const Rows& rows, const uint16_t* K, int n_panels, float* s, int64_t s_stride,
            Ahead ahead) {
  using Fn = void (*)(const Rows&, const uint16_t*, int, float*, int64_t, Ahead);
  const Fn fn = rows.d == 128 ? scores_impl<8> : rows.d == 64 ? scores_impl<4> : scores_impl<0>;
  fn(rows, K, n_panels, s, s_stride, ahead);
}

void values(const Rows& rows, const uint16_t* V, int64_t nb, const float* prob, int64_t p_stride,
            const float* corr, float* const* o, Ahead ahead) {
  using Fn = void (*)(const Rows&, const uint16_t*, int64_t, const float*, int64_t, const float*,
                      float* const*, Ahead);
  const Fn fn = rows.d == 128 ? values_impl<8> : rows.d == 64 ? values_impl<4> : values_impl<0>;
  fn(rows, V, nb, prob, p_stride, corr, o, ahead);
}

#else  // no AMX in this build: available() is false and nothing else is called

bool available() {
  return false;
}
void begin(const Rows&, const float* const*, float) {}
void end() {}
void scores(const Rows&, const uint16_t*, int, float*, int64_t, Ahead) {}
void values(const Rows&, const uint16_t*, int64_t, const float*, int64_t, const float*,
            float* const*, Ahead) {}

#endif

}  // namespace fairkv::kv::amx
