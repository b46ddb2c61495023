// AMX kernels of attention_amx.h over a bf16 store, whose panels are tile rows already
// (kv/cache.h): keys and values are loaded from the store into B tiles as they are.
//
// Tiles (every one 16 rows x 64 bytes; rows past the pieces are zero). B tiles come from the
// store: 16 dimension pairs x 16 keys of a key panel, or 16 key pairs x 16 columns of a value
// panel, each 1 KiB contiguous (a B tile of rows strided through whole value rows, the first
// layout tried, loaded more slowly: docs/benchmarks.md). The query rows' pieces (amx::pieces)
// fill one A tile; tmm0/tmm1 accumulate two panels (two column tiles), and the A and B operands
// alternate between two register sets from one step to the next (see FAIRKV_LOAD below): A in
// tmm2 / tmm3, B in tmm4, tmm5 / tmm6, tmm7.
// Piece rows are [piece 1 of rows 0..n)[piece 2][piece 3 where there is one]; a row's result is
// the sum of its pieces'.
#include <cstring>

#include "kv/attention_amx.h"
#include "kv/attention_amx_util.h"

namespace fairkv::kv::amx {

#if defined(FAIRKV_AMX_BUILD)

namespace {

using namespace detail;  // NOLINT(google-build-using-namespace): the kernels' own helpers

// The values' kernel also splits probabilities with AVX512_BF16's conversion (available()
// checks for it).
#define FAIRKV_AMX_PAIRS_FN                                                     \
  __attribute__((                                                               \
      target("avx512f,avx512bw,avx512vl,avx512dq,avx512bf16,fma,f16c,amx-tile," \
             "amx-bf16")))

// Scratch (within Rows::scratch, which scratch_floats() sizes for the f16 kernels' larger needs),
// for head_dim d (d32 = d / 32 dimension tiles, d16 = d / 16 column tiles):
//   qa: d32 tiles            the query pieces as bf16, 16 rows x 32 dimensions per dimension tile
//   pa: kPairsBlock/32 tiles the probabilities' pieces as bf16, 16 rows x 32 keys per 32 keys
//   cb: max(4, d16) tiles    C tiles stored for the epilogues, one per panel or column tile
struct Layout {
  uint16_t *qa, *pa;
  float* cb;
};

Layout layout(const Rows& r) {
  const int64_t d32 = r.d / 32;
  Layout l;
  l.qa = reinterpret_cast<uint16_t*>(r.scratch);
  l.pa = reinterpret_cast<uint16_t*>(r.scratch + d32 * kTileFloats);
  l.cb = r.scratch + (d32 + kPairsBlock / 32) * kTileFloats;
  return l;
}

constexpr int64_t kTileElems = 2 * kTileFloats;  // bf16 elements of a tile

uint16_t bf16_bits(float x) {  // x already a bf16 value
  return uint16_t(bits_of(x) >> 16);
}

// x0's and x1's 16 floats rounded to bf16 (to nearest, ties to even, as round_bf16) as 32 bf16
// in order: one instruction (AVX512_BF16) where rounding each vector's lanes took five.
FAIRKV_AMX_PAIRS_FN inline __m512i split_bf16(__m512 x0, __m512 x1) {
  return reinterpret_cast<__m512i>(_mm512_cvtne2ps_pbh(x1, x0));
}
// The float32 values of the first (second) 16 bf16 of b.
FAIRKV_AMX_PAIRS_FN inline __m512 low_bf16(__m512i b) {
  return _mm512_castsi512_ps(
      _mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm512_castsi512_si256(b)), 16));
}
FAIRKV_AMX_PAIRS_FN inline __m512 high_bf16(__m512i b) {
  return _mm512_castsi512_ps(
      _mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm512_extracti64x4_epi64(b, 1)), 16));
}

// The sum of a row's pieces in a stored C tile (row rho at c + rho * 16).
FAIRKV_AMX_FN inline __m512 piece_sum(const float* c, int n, int r, int np) {
  const __m512 two = _mm512_add_ps(_mm512_load_ps(c + r * 16), _mm512_load_ps(c + (n + r) * 16));
  return np == 2 ? two : _mm512_add_ps(two, _mm512_load_ps(c + (2 * n + r) * 16));
}

// Tiles are not renamed: a tile load into a register that a product still reads waits for that
// product. So the A and B operands alternate between two sets of registers from one step to
// the next, and two accumulators (two panels or column tiles) take what is left.
#define FAIRKV_LOAD(t, p, stride) _tile_loadd(t, p, stride)

// A product, then the next of the prefetches spread one per product (pf in scope).
#define FAIRKV_DP(c, a, b)   \
  do {                       \
    _tile_dpbf16ps(c, a, b); \
    pf.tick();               \
  } while (0)

// D32: d / 32 where it is a compile-time constant (0: read it from rows), so that the loops
// over a row's tiles unroll.
template <int D32>
FAIRKV_AMX_FN void scores_impl(const Rows& rows, const uint16_t* K, int n_panels, float* s,
                               int64_t s_stride, Ahead ahead) {
  const Layout l = layout(rows);
  const int64_t d32 = D32 ? D32 : rows.d / 32, panel = d32 * 32 * kTile;
  const int n = rows.n, np = pieces(n);
  auto pf = spread(ahead, int64_t(n_panels + 1) / 2 * d32 * 2);  // products
  for (int p = 0; p < n_panels; p += 2) {
    // tmm0, tmm1: panels p and p + 1 (the latter, past n_panels, read but not stored).
    const uint16_t* Pa = K + p * panel;
    const uint16_t* Pb = p + 1 < n_panels ? Pa + panel : Pa;
    float* cb = l.cb + p * kTileFloats;
    _tile_zero(0);
    _tile_zero(1);
    int64_t c = 0;
    for (; c + 2 <= d32; c += 2) {
      const uint16_t* qa = l.qa + c * kTileElems;
      FAIRKV_LOAD(2, qa, 64);
      prefetch_near_tile(Pa, 2 * (c + 2) * kTileElems);
      prefetch_near_tile(Pb, 2 * (c + 2) * kTileElems);
      FAIRKV_LOAD(4, Pa + c * kTileElems, 64);
      FAIRKV_LOAD(5, Pb + c * kTileElems, 64);
      FAIRKV_DP(0, 2, 4);
      FAIRKV_DP(1, 2, 5);
      FAIRKV_LOAD(3, qa + kTileElems, 64);
      prefetch_near_tile(Pa, 2 * (c + 3) * kTileElems);
      prefetch_near_tile(Pb, 2 * (c + 3) * kTileElems);
      FAIRKV_LOAD(6, Pa + (c + 1) * kTileElems, 64);
      FAIRKV_LOAD(7, Pb + (c + 1) * kTileElems, 64);
      FAIRKV_DP(0, 3, 6);
      FAIRKV_DP(1, 3, 7);
    }
    if (c < d32) {
      FAIRKV_LOAD(2, l.qa + c * kTileElems, 64);
      FAIRKV_LOAD(4, Pa + c * kTileElems, 64);
      FAIRKV_LOAD(5, Pb + c * kTileElems, 64);
      FAIRKV_DP(0, 2, 4);
      FAIRKV_DP(1, 2, 5);
    }
    _tile_stored(0, cb, 64);
    if (p + 1 < n_panels) _tile_stored(1, cb + kTileFloats, 64);
  }
  // Summed once every panel's products are issued.
  for (int p = 0; p < n_panels; ++p) {
    const float* cb = l.cb + p * kTileFloats;
    for (int r = 0; r < n; ++r)
      _mm512_storeu_ps(s + r * s_stride + p * kTile, piece_sum(cb, n, r, np));
  }
}

template <int D32>
FAIRKV_AMX_PAIRS_FN void values_impl(const Rows& rows, const uint16_t* V, int64_t nb,
                                     const float* prob, int64_t p_stride, const float* corr,
                                     float* const* o, Ahead ahead) {
  const Layout l = layout(rows);
  const int64_t d32 = D32 ? D32 : rows.d / 32, d16 = 2 * d32, d = d32 * 32;
  const int n = rows.n, np = pieces(n);
  const int64_t chunks = (nb + 31) / 32;
  // The prefetches spread over the products, the pieces' chunks and the epilogue's column tiles.
  auto pf = spread(ahead, d16 / 2 * chunks * 2 + chunks + d16);
  // The probabilities' pieces as bf16, 32 keys per row (keys >= nb zero).
  for (int64_t kc = 0; kc < chunks; ++kc) {
    pf.tick();
    uint16_t* pa = l.pa + kc * kTileElems;
    __mmask16 m[2];
    for (int h = 0; h < 2; ++h) {
      const int64_t left = nb - kc * 32 - h * 16;
      m[h] = left >= 16  ? __mmask16(0xFFFF)
             : left <= 0 ? __mmask16(0)
                         : __mmask16((1u << left) - 1);
    }
    for (int r = 0; r < n; ++r) {
      const float* x = prob + r * p_stride + kc * 32;
      __m512 x0 = _mm512_maskz_loadu_ps(m[0], x), x1 = _mm512_maskz_loadu_ps(m[1], x + 16);
      for (int piece = 0; piece < np; ++piece) {  // each the bf16 of what the previous left
        const __m512i b = split_bf16(x0, x1);
        _mm512_store_si512(pa + (piece * n + r) * 32, b);
        if (piece + 1 < np) {
          x0 = _mm512_sub_ps(x0, low_bf16(b));
          x1 = _mm512_sub_ps(x1, high_bf16(b));
        }
      }
    }
    for (int r = np * n; r < kTile; ++r) _mm512_store_si512(pa + r * 32, _mm512_setzero_si512());
  }
  FAIRKV_AMX_BARRIER();
  const int64_t vstride = 64;    // bytes from one key pair to the next within a B tile
  const int64_t kstep = 32 * d;  // elements from one value panel (32 keys) to the next
  // Chunk kc + 2 of the same column tiles, or past the last chunk the next column tiles' first:
  // bytes from b.
  auto near = [&](int64_t kc) {
    return 2 * (kc + 2 < chunks ? (kc + 2) * kstep : 2 * kTileElems + (kc + 2 - chunks) * kstep);
  };
  for (int64_t cc = 0; cc < d16; cc += 2) {
    // tmm0, tmm1: column tiles cc and cc + 1.
    const uint16_t* b = V + cc * kTileElems;
    float* cb = l.cb + cc * kTileFloats;
    _tile_zero(0);
    _tile_zero(1);
    int64_t kc = 0;
    for (; kc + 2 <= chunks; kc += 2) {
      const uint16_t* pa = l.pa + kc * kTileElems;
      FAIRKV_LOAD(2, pa, 64);
      prefetch_near_tile(b, near(kc));
      prefetch_near_tile(b, near(kc) + 2 * kTileElems);
      FAIRKV_LOAD(4, b + kc * kstep, vstride);
      FAIRKV_LOAD(5, b + kc * kstep + kTileElems, vstride);
      FAIRKV_DP(0, 2, 4);
      FAIRKV_DP(1, 2, 5);
      FAIRKV_LOAD(3, pa + kTileElems, 64);
      prefetch_near_tile(b, near(kc + 1));
      prefetch_near_tile(b, near(kc + 1) + 2 * kTileElems);
      FAIRKV_LOAD(6, b + (kc + 1) * kstep, vstride);
      FAIRKV_LOAD(7, b + (kc + 1) * kstep + kTileElems, vstride);
      FAIRKV_DP(0, 3, 6);
      FAIRKV_DP(1, 3, 7);
    }
    if (kc < chunks) {
      FAIRKV_LOAD(2, l.pa + kc * kTileElems, 64);
      FAIRKV_LOAD(4, b + kc * kstep, vstride);
      FAIRKV_LOAD(5, b + kc * kstep + kTileElems, vstride);
      FAIRKV_DP(0, 2, 4);
      FAIRKV_DP(1, 2, 5);
    }
    _tile_stored(0, cb, 64);
    _tile_stored(1, cb + kTileFloats, 64);
  }
  for (int64_t cc = 0; cc < d16; ++cc) {
    pf.tick();
    const float* cb = l.cb + cc * kTileFloats;
    for (int r = 0; r < n; ++r) {
      float* dst = o[r] + cc * kTile;
      const __m512 acc = _mm512_mul_ps(_mm512_loadu_ps(dst), _mm512_set1_ps(corr[r]));
      _mm512_storeu_ps(dst, _mm512_add_ps(acc, piece_sum(cb, n, r, np)));
    }
  }
}

#undef FAIRKV_LOAD
#undef FAIRKV_DP

}  // namespace

void begin_pairs(const Rows& rows, const float* const* q, float scale) {
  const Layout l = layout(rows);
  const int n = rows.n, np = pieces(n);
  const int64_t d32 = rows.d / 32;
  std::memset(l.qa, 0, sizeof(uint16_t) * size_t(d32 * kTileElems));
  for (int64_t c = 0; c < d32; ++c) {
    uint16_t* qa = l.qa + c * kTileElems;  // 16 rows of 32 dimensions
    for (int r = 0; r < n; ++r)
      for (int64_t k = 0; k < 32; ++k) {
        const float x = scale * q[r][c * 32 + k];
        const float p1 = round_bf16(x), p2 = round_bf16(x - p1), p3 = round_bf16(x - p1 - p2);
        qa[r * 32 + k] = bf16_bits(p1);
        qa[(n + r) * 32 + k] = bf16_bits(p2);
        if (np == 3) qa[(2 * n + r) * 32 + k] = bf16_bits(p3);
      }
  }
  configure();
}

void scores_pairs(const Rows& rows, const uint16_t* K, int n_panels, float* s, int64_t s_stride,
                  Ahead ahead) {
  using Fn = void (*)(const Rows&, const uint16_t*, int, float*, int64_t, Ahead);
  const Fn fn = rows.d == 128 ? scores_impl<4> : rows.d == 64 ? scores_impl<2> : scores_impl<0>;
  fn(rows, K, n_panels, s, s_stride, ahead);
}

void values_pairs(const Rows& rows, const uint16_t* V, int64_t nb, const float* prob,
                  int64_t p_stride, const float* corr, float* const* o, Ahead ahead) {
  using Fn = void (*)(const Rows&, const uint16_t*, int64_t, const float*, int64_t, const float*,
                      float* const*, Ahead);
  const Fn fn = rows.d == 128 ? values_impl<4> : rows.d == 64 ? values_impl<2> : values_impl<0>;
  fn(rows, V, nb, prob, p_stride, corr, o, ahead);
}

#else  // no AMX in this build: available() is false and nothing else is called

void begin_pairs(const Rows&, const float* const*, float) {}
void scores_pairs(const Rows&, const uint16_t*, int, float*, int64_t, Ahead) {}
void values_pairs(const Rows&, const uint16_t*, int64_t, const float*, int64_t, const float*,
                  float* const*, Ahead) {}

#endif

}  // namespace fairkv::kv::amx
