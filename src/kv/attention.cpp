// Fast attention over one head store: up to kMaxRows query rows (tokens x GQA heads) share every
// block of keys and values, so a decode step streams the store once for the whole group.
//
// Per block of kBlock keys: the rows are swept in address order beforehand (for the hardware
// prefetchers, about kTouchBytes at a time; not for one or two rows of an f16 store, which read
// K and V row after row themselves); the keys are scored against every query row, four
// rows x four keys at a time (AVX-512) with every operand in a register so that each loaded
// vector serves four FMAs, f16 converted in registers; the rows' online softmax advances once per
// block; the values are accumulated for up to eight rows x two vectors of head_dim at a time
// (each value vector loaded and converted once per eight rows, each probability broadcast once
// per two vectors). Rows whose head_dim is not a whole number of vectors, and partial blocks of
// keys for the scores, go through a zero-padded float32 copy.
//
// With f16 and a group of 8 one core is bound by the arithmetic plus the sweep, which do not
// overlap: 2 x 1024 FMAs per key for 512 bytes of K and V; on the development machine (Zen 4,
// one 512-bit FMA per cycle) the kernels reach about 70% of that peak from cache.
#include <algorithm>
#include <atomic>
#include <cmath>
#include <limits>
#include <stdexcept>
#include <type_traits>
#include <utility>
#include <vector>

#include "kernels/simd.h"
#include "kv/attention.h"

namespace fairkv::kv {

namespace {

namespace simd = kernels::simd;

constexpr int kLanes = simd::kLanes;
constexpr int kMaxRows = 16;    // query rows per pass: their PV accumulators stay in registers
constexpr int kSub = 16;        // keys scored together (one transposed reduction on AVX-512)
constexpr int64_t kBlock = 64;  // keys per online-softmax step
constexpr int kPvRows = 8;      // query rows per value tile (8 x 2 vectors)
// Rows of K and V (together about this many bytes) that touch_rows brings in at once.
constexpr size_t kTouchBytes = size_t(256) << 10;
constexpr float kNegInf = -std::numeric_limits<float>::infinity();

int64_t round_up(int64_t x, int64_t m) {
  return (x + m - 1) / m * m;
}

struct Scratch {
  std::vector<float> kbuf, vbuf, qbuf, obuf;
  std::vector<float> s;  // kMaxRows x kBlock scores, then probabilities
};

// Keys [r0, r0 + n) of K or V as float32 rows of stride dp (a multiple of kLanes, zero padded),
// at least min_rows rows (rows past n are zero): an f32 store whose rows are whole vectors is read
// in place when it has the rows.
const float* block_rows(const HeadStore& st, const void* base, int64_t r0, int64_t n, int64_t dp,
                        std::vector<float>& buf, int64_t min_rows = 0) {
  const int64_t d = st.head_dim();
  if (st.type() == KvType::F32 && dp == d && n >= min_rows)
    return static_cast<const float*>(base) + r0 * d;
  const int64_t rows = std::max(n, min_rows);
  buf.resize(size_t(rows * dp));
  for (int64_t j = 0; j < n; ++j) {
    float* dst = buf.data() + j * dp;
    if (st.type() == KvType::F32) {
      std::copy_n(static_cast<const float*>(base) + (r0 + j) * d, d, dst);
    } else {
      const uint16_t* src = static_cast<const uint16_t*>(base) + (r0 + j) * d;
      int64_t i = 0;
      for (; i + kLanes <= d; i += kLanes) simd::store(dst + i, simd::load_f16(src + i));
      for (; i < d; ++i) dst[i] = simd::half_to_float(src[i]);
    }
    std::fill(dst + d, dst + dp, 0.0f);
  }
  std::fill(buf.data() + n * dp, buf.data() + rows * dp, 0.0f);
  return buf.data();
}

#if defined(FAIRKV_AVX512)
// Sums each of 16 vectors into one lane: out[e] = sum(v[slot]) with slot = 4 (e % 4) + e / 4 (a
// 4x4 transpose of the natural order, undone by the caller's placement of keys in slots).
// 15 adds and 30 shuffles instead of 16 full horizontal reductions.
inline __m512 reduce16(const __m512* v) {
  __m512 w[8], z[4], u[2];
  FAIRKV_UNROLL
  for (int i = 0; i < 8; ++i) {
    const __m512 a = v[2 * i], b = v[2 * i + 1];
    w[i] = _mm512_add_ps(_mm512_shuffle_f32x4(a, b, 0x44), _mm512_shuffle_f32x4(a, b, 0xEE));
  }
  FAIRKV_UNROLL
  for (int i = 0; i < 4; ++i) {
    const __m512 a = w[2 * i], b = w[2 * i + 1];
    z[i] = _mm512_add_ps(_mm512_shuffle_f32x4(a, b, _MM_SHUFFLE(2, 0, 2, 0)),
                         _mm512_shuffle_f32x4(a, b, _MM_SHUFFLE(3, 1, 3, 1)));
  }
  FAIRKV_UNROLL
  for (int i = 0; i < 2; ++i) {
    const __m512 a = z[2 * i], b = z[2 * i + 1];
    u[i] = _mm512_add_ps(_mm512_shuffle_ps(a, b, _MM_SHUFFLE(1, 0, 1, 0)),
                         _mm512_shuffle_ps(a, b, _MM_SHUFFLE(3, 2, 3, 2)));
  }
  return _mm512_add_ps(_mm512_shuffle_ps(u[0], u[1], _MM_SHUFFLE(2, 0, 2, 0)),
                       _mm512_shuffle_ps(u[0], u[1], _MM_SHUFFLE(3, 1, 3, 1)));
}
#endif

#if defined(FAIRKV_AVX512)
// 16 keys' elements [c, c + 16) of a row of K as float32 (converted from f16 in registers).
template <class T>
inline __m512 load16(const T* p) {
  if constexpr (std::is_same_v<T, uint16_t>)
    return _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
  else
    return _mm512_loadu_ps(p);
}
#endif

// s[j] = q . K[j] * scale for the kSub keys of K (rows of stride dp; all kSub rows readable,
// the caller ignores scores past its keys). DP > 0 fixes dp at compile time, so that every row is
// a constant offset from one base register. T: the rows' element type (float or f16 bits).
template <int DP, class T>
inline void score_sub(const float* q, const T* K, int64_t dp_runtime, float scale, float* s) {
  const int64_t dp = DP > 0 ? DP : dp_runtime;
#if defined(FAIRKV_AVX512)
  static_assert(kSub == 16 && kLanes == 16);
  __m512 acc[16];
  FAIRKV_UNROLL
  for (int i = 0; i < 16; ++i) acc[i] = _mm512_setzero_ps();
  // Slot i holds key 4 (i % 4) + i / 4, the order reduce16 returns to 0..15.
  if constexpr (DP > 0 && DP <= 128) {
    // The query in registers and the keys read row after row, in address order: the hardware
    // prefetchers follow that stream, so a single row needs no sweep ahead (see run_pass).
    constexpr int kVecs = DP > 0 && DP <= 128 ? DP / 16 : 1;
    __m512 qv[kVecs];
    FAIRKV_UNROLL
    for (int c = 0; c < kVecs; ++c) qv[c] = _mm512_loadu_ps(q + 16 * c);
    FAIRKV_UNROLL
    for (int k = 0; k < 16; ++k) {
      const int i = 4 * (k % 4) + k / 4;
      FAIRKV_UNROLL
      for (int c = 0; c < kVecs; ++c)
        acc[i] = _mm512_fmadd_ps(qv[c], load16(K + k * DP + 16 * c), acc[i]);
    }
  } else {
    for (int64_t c = 0; c < dp; c += 16) {
      const __m512 qv = _mm512_loadu_ps(q + c);
      FAIRKV_UNROLL
      for (int i = 0; i < 16; ++i)
        acc[i] = _mm512_fmadd_ps(qv, load16(K + (4 * (i % 4) + i / 4) * dp + c), acc[i]);
    }
  }
  _mm512_storeu_ps(s, _mm512_mul_ps(reduce16(acc), _mm512_set1_ps(scale)));
#else
  static_assert(std::is_same_v<T, float>, "the portable path reads float32 rows");
  for (int j = 0; j < kSub; ++j) {
    simd::V acc0 = simd::zero(), acc1 = simd::zero();
    const float* k = K + j * dp;
    int64_t c = 0;
    for (; c + 2 * kLanes <= dp; c += 2 * kLanes) {
      acc0 = simd::fma(simd::load(q + c), simd::load(k + c), acc0);
      acc1 = simd::fma(simd::load(q + c + kLanes), simd::load(k + c + kLanes), acc1);
    }
    for (; c < dp; c += kLanes) acc0 = simd::fma(simd::load(q + c), simd::load(k + c), acc0);
    s[j] = simd::reduce(simd::add(acc0, acc1)) * scale;
  }
#endif
}

#if defined(FAIRKV_AVX512)
// Scores of 4 query rows x 4 keys at once: every loaded vector of q or K serves four products
// (half a load per FMA instead of one, which the per-row kernel is bound by). Row i's four
// scores go to s[i][0..3].
template <int DP, class T>
inline void score_4x4(const float* const* q, const T* K, int64_t dp_runtime, float scale,
                      float* const* s) {
  const int64_t dp = DP > 0 ? DP : dp_runtime;
  __m512 acc[16];
  FAIRKV_UNROLL
  for (int i = 0; i < 16; ++i) acc[i] = _mm512_setzero_ps();
  const float *q0 = q[0], *q1 = q[1], *q2 = q[2], *q3 = q[3];
  for (int64_t c = 0; c < dp; c += 16) {
    __m512 qv[4] = {_mm512_loadu_ps(q0 + c), _mm512_loadu_ps(q1 + c), _mm512_loadu_ps(q2 + c),
                    _mm512_loadu_ps(q3 + c)};
    // Likewise the queries: every operand of the 16 FMAs in a register, 8 loads in all.
    asm("" : "+v"(qv[0]), "+v"(qv[1]), "+v"(qv[2]), "+v"(qv[3]));
    FAIRKV_UNROLL
    for (int kk = 0; kk < 4; ++kk) {
      __m512 k = load16(K + kk * dp + c);
      // Keep k in a register: GCC would otherwise fold the load into each of the four FMAs,
      // back to one load per FMA.
      asm("" : "+v"(k));
      // Slot 4 kk + rr: reduce16 puts it at lane 4 rr + kk.
      FAIRKV_UNROLL
      for (int rr = 0; rr < 4; ++rr)
        acc[4 * kk + rr] = _mm512_fmadd_ps(qv[rr], k, acc[4 * kk + rr]);
    }
  }
  const __m512 v = _mm512_mul_ps(reduce16(acc), _mm512_set1_ps(scale));
  _mm_storeu_ps(s[0], _mm512_extractf32x4_ps(v, 0));
  _mm_storeu_ps(s[1], _mm512_extractf32x4_ps(v, 1));
  _mm_storeu_ps(s[2], _mm512_extractf32x4_ps(v, 2));
  _mm_storeu_ps(s[3], _mm512_extractf32x4_ps(v, 3));
}
#endif

// The score kernels for one element type, with dp fixed at compile time where it is common.
template <class T>
struct ScoreKernels {
  void (*sub)(const float*, const T*, int64_t, float, float*) = nullptr;
#if defined(FAIRKV_AVX512)
  void (*tile)(const float* const*, const T*, int64_t, float, float* const*) = nullptr;
#endif
  template <int DP>
  static ScoreKernels make() {
    ScoreKernels k;
    k.sub = &score_sub<DP, T>;
#if defined(FAIRKV_AVX512)
    k.tile = &score_4x4<DP, T>;
#endif
    return k;
  }
  static ScoreKernels for_dp(int64_t dp) {
    switch (dp) {
      case 64:
        return make<64>();
      case 128:
        return make<128>();
      case 256:
        return make<256>();
      default:
        return make<0>();
    }
  }
};

// The query rows of one pass: row i is token t(i), query head g(i).
struct Pass {
  int n = 0;
  const float* q[kMaxRows];  // padded to dp
  float* o[kMaxRows];        // padded accumulators
  int64_t lim[kMaxRows];     // keys [begin, lim) visible
  float m[kMaxRows], l[kMaxRows];
};

// Reads one byte of every cache line of the rows [r0, r0 + n) of K and V, in address order.
// The kernels walk a block column-wise (one vector of every row at a time), which the hardware
// prefetchers do not follow; a sequential sweep first lets them stream the rows in (about
// kTouchBytes at a time, which stays in L2), and then the kernels run from cache.
// Measured on the development machine (Zen 4, 4 KiB pages): software prefetches ahead of the
// arithmetic (16 to 1024 rows, t0, t1, t2 or nta, every line or only the first lines of each
// page, with or without this sweep) and demand touches of rows ahead interleaved with it were
// all no faster or slower than this sweep (likely: each occupies one of the few L1 miss buffers,
// and the hardware prefetchers stop at page boundaries). Sweeps of ~256 KiB beat per-block ones.
void touch_rows(const HeadStore& st, int64_t r0, int64_t n, size_t row_bytes) {
  const char* k = static_cast<const char*>(st.k_data()) + size_t(r0) * row_bytes;
  const char* v = static_cast<const char*>(st.v_data()) + size_t(r0) * row_bytes;
  const size_t bytes = size_t(n) * row_bytes;
  int sum = 0;
  for (size_t off = 0; off < bytes; off += 64) sum += k[off];
  for (size_t off = 0; off < bytes; off += 64) sum += v[off];
  asm volatile("" ::"r"(sum));
}

#if defined(FAIRKV_AVX512)
// o[r][c0, c0 + 16 CW) = o * corr[r] + sum_j prob[r][j] V[j][c0, c0 + 16 CW) for NR rows: each
// value vector loaded (and converted, for f16) serves NR FMAs and each broadcast probability
// CW, with the NR x CW accumulators in registers for the whole block.
template <int NR, int CW, class T>
inline void pv_tile(float* const* o, int64_t c0, const T* V, int64_t stride, int64_t nb,
                    const float* prob, const float* corr) {
  __m512 acc[NR][CW];
  FAIRKV_UNROLL
  for (int r = 0; r < NR; ++r) {
    const __m512 cr = _mm512_set1_ps(corr[r]);
    FAIRKV_UNROLL
    for (int c = 0; c < CW; ++c) acc[r][c] = _mm512_mul_ps(_mm512_loadu_ps(o[r] + c0 + 16 * c), cr);
  }
  for (int64_t j = 0; j < nb; ++j) {
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
}

// pv_tile over the whole of head_dim (dp a multiple of 16) for NR rows.
template <int NR, int CW, class T>
void pv_rows(float* const* o, const T* V, int64_t stride, int64_t nb, int64_t dp, const float* prob,
             const float* corr) {
  int64_t c0 = 0;
  for (; c0 + 16 * CW <= dp; c0 += 16 * CW) pv_tile<NR, CW>(o, c0, V, stride, nb, prob, corr);
  for (; c0 < dp; c0 += 16) pv_tile<NR, 1>(o, c0, V, stride, nb, prob, corr);
}

// The values of a block for every row of the pass, rows in tiles of up to kPvRows.
template <class T>
void pv_fast(Pass& p, const T* V, int64_t stride, int64_t nb, int64_t dp, const float* prob,
             const float* corr) {
  if constexpr (std::is_same_v<T, float>) {
    // float32 values need no conversion, so reading each value row again for every pair of rows
    // (from L1) costs little, while whole rows in address order stream better than 4 x 4 tiles
    // walking the block column by column (kv_bench, 2 threads: f32 group 4 0.54-0.73 -> 0.80-0.87
    // of the streaming read). Eight rows keep their 8 x 2 tiles (pairs were 5% slower on one
    // thread), and f16 rows would be converted once per pair, which costs more than order gains.
    if (dp % 128 == 0 && p.n <= 4) {
      int r = 0;
      for (; r + 2 <= p.n; r += 2)
        pv_rows<2, 8>(p.o + r, V, stride, nb, dp, prob + r * kBlock, corr + r);
      if (r < p.n) pv_rows<1, 8>(p.o + r, V, stride, nb, dp, prob + r * kBlock, corr + r);
      return;
    }
  }
  for (int r = 0; r < p.n;) {
    float* const* o = p.o + r;
    const float* pr = prob + r * kBlock;
    const float* cr = corr + r;
    switch (std::min(p.n - r, kPvRows)) {
      case 8:
        pv_rows<8, 2>(o, V, stride, nb, dp, pr, cr);
        r += 8;
        break;
      case 7:
      case 6:
      case 5:
      case 4:
        pv_rows<4, 4>(o, V, stride, nb, dp, pr, cr);
        r += 4;
        break;
      case 3:
        pv_rows<3, 4>(o, V, stride, nb, dp, pr, cr);
        r += 3;
        break;
      case 2:
        pv_rows<2, 8>(o, V, stride, nb, dp, pr, cr);
        r += 2;
        break;
      default:
        pv_rows<1, 8>(o, V, stride, nb, dp, pr, cr);
        r += 1;
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
              const float* corr) {
  for (int64_t c = 0; c < dp; c += kLanes) {
    simd::V acc[NR];
    FAIRKV_UNROLL
    for (int r = 0; r < NR; ++r) acc[r] = simd::mul(simd::load(p.o[r] + c), simd::set1(corr[r]));
    for (int64_t j = 0; j < nb; ++j) {
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
                      int64_t nb, int64_t dp, const float* prob, const float* corr) {
  using Fn = void (*)(Pass&, const void*, int64_t, int64_t, int64_t, const float*, const float*);
  static constexpr Fn table[] = {&pv_block<N + 1, F16>...};
  table[p.n - 1](p, V, stride, nb, dp, prob, corr);
}

// Values of keys [r0, r0 + nb): read in place when rows are whole vectors (f16 converted on the
// fly), else through a float32 copy.
void pv(const HeadStore& st, Pass& p, int64_t r0, int64_t nb, int64_t dp, const float* prob,
        const float* corr, Scratch& w) {
  const int64_t d = st.head_dim();
  constexpr auto rows = std::make_integer_sequence<int, kMaxRows>{};
#if defined(FAIRKV_AVX512)
  if (dp == d) {
    if (st.type() == KvType::F16)
      pv_fast(p, static_cast<const uint16_t*>(st.v_data()) + r0 * d, d, nb, dp, prob, corr);
    else
      pv_fast(p, static_cast<const float*>(st.v_data()) + r0 * d, d, nb, dp, prob, corr);
    return;
  }
#endif
  if (dp == d && st.type() == KvType::F16) {
    pv_dispatch_impl<true>(rows, p, static_cast<const uint16_t*>(st.v_data()) + r0 * d, d, nb, dp,
                           prob, corr);
  } else {
    const float* V = block_rows(st, st.v_data(), r0, nb, dp, w.vbuf);
    pv_dispatch_impl<false>(rows, p, V, dp, nb, dp, prob, corr);
  }
}

// Advances row r's online softmax over the block's scores s[0, nb), of which [0, visible) are
// real: s becomes the probabilities relative to the new maximum (zero past `visible`), and the
// return value is the factor that rescales what was accumulated before.
float softmax_step(float* s, int64_t visible, int64_t nb, float& m, float& l) {
  const int64_t nv = (visible + kLanes - 1) / kLanes;
  for (int64_t j = visible; j < nv * kLanes; ++j) s[j] = kNegInf;
  simd::V vmax = simd::set1(m);
  for (int64_t v = 0; v < nv; ++v) vmax = simd::max(vmax, simd::load(s + v * kLanes));
  const float bm = simd::reduce_max(vmax);
  const simd::V vbm = simd::set1(bm);
  for (int64_t v = 0; v < nv; ++v)
    simd::store(s + v * kLanes, simd::exp(simd::sub(simd::load(s + v * kLanes), vbm)));
  std::fill(s + visible, s + std::max(nb, nv * kLanes), 0.0f);  // exactly zero, not exp(-huge)
  simd::V sum = simd::zero();
  for (int64_t v = 0; v < nv; ++v) sum = simd::add(sum, simd::load(s + v * kLanes));
  const float corr = std::exp(m - bm);  // 0 on the first block (m = -inf)
  l = l * corr + simd::reduce(sum);
  m = bm;
  return corr;
}

// Scores of every row of the pass against kSub keys starting at key k0 (rows of K of stride
// dp); row r's go to s[r * kBlock ...]. Rows four at a time where the tile kernel exists.
template <class T>
void score_rows(const Pass& p, const ScoreKernels<T>& f, const T* K, int64_t dp, int64_t k0,
                float scale, float* s) {
  int r = 0;
#if defined(FAIRKV_AVX512)
  for (; r + 4 <= p.n; r += 4) {
    if (std::max({p.lim[r], p.lim[r + 1], p.lim[r + 2], p.lim[r + 3]}) <= k0) continue;
    for (int64_t kk = 0; kk < kSub; kk += 4) {
      float* out[4];
      for (int i = 0; i < 4; ++i) out[i] = s + (r + i) * kBlock + kk;
      f.tile(p.q + r, K + kk * dp, dp, scale, out);
    }
  }
#endif
  for (; r < p.n; ++r)
    if (p.lim[r] > k0) f.sub(p.q[r], K, dp, scale, s + r * kBlock);
}

void run_pass(const HeadStore& st, Pass& p, int64_t begin, float scale, int64_t dp, Scratch& w) {
  int64_t hi = begin;
  for (int r = 0; r < p.n; ++r) hi = std::max(hi, p.lim[r]);
  w.s.resize(size_t(kMaxRows * kBlock));
  float corr[kMaxRows];
  const size_t row_bytes = size_t(st.head_dim()) * kv_type_bytes(st.type());
  // One or two rows of an f16 store read K and V row after row (score_sub, pv_rows with the
  // whole head_dim in registers), which the prefetchers follow: there the sweep only adds its
  // own time (measured, f16 group 1, 2 threads: 0.79 of the streaming read without it, 0.63
  // with it, in the machine's high-bandwidth state). f32 rows span two 4 KiB pages per 16 keys
  // and tiles of rows walk blocks column by column: they keep the sweep (without it f32 group 1
  // fell from 0.95 to 0.75 of the read, group 8 from 0.46 to 0.29).
  const bool sweep = !(st.type() == KvType::F16 && p.n <= 2);
  // Whole blocks per sweep of touch_rows.
  const int64_t touch_rows_n =
      std::max<int64_t>(1, int64_t(kTouchBytes / (2 * row_bytes * size_t(kBlock)))) * kBlock;
  const auto f32 = ScoreKernels<float>::for_dp(dp);
#if defined(FAIRKV_AVX512)
  const auto f16 = ScoreKernels<uint16_t>::for_dp(dp);
  // Whole sub-blocks of a store whose rows are whole vectors are scored in place.
  const bool in_place = dp == st.head_dim();
#endif
  for (int64_t r0 = begin; r0 < hi; r0 += kBlock) {
    const int64_t nb = std::min(kBlock, hi - r0);
    if (sweep && (r0 - begin) % touch_rows_n == 0)
      touch_rows(st, r0, std::min(touch_rows_n, hi - r0), row_bytes);
    // Scores, kSub keys at a time: their rows are shared by every query row.
    for (int64_t j0 = 0; j0 < nb; j0 += kSub) {
      const int64_t ns = std::min<int64_t>(kSub, nb - j0);
#if defined(FAIRKV_AVX512)
      if (in_place && ns == kSub) {
        if (st.type() == KvType::F16)
          score_rows(p, f16, static_cast<const uint16_t*>(st.k_data()) + (r0 + j0) * dp, dp,
                     r0 + j0, scale, &w.s[size_t(j0)]);
        else
          score_rows(p, f32, static_cast<const float*>(st.k_data()) + (r0 + j0) * dp, dp, r0 + j0,
                     scale, &w.s[size_t(j0)]);
        continue;
      }
#endif
      score_rows(p, f32, block_rows(st, st.k_data(), r0 + j0, ns, dp, w.kbuf, kSub), dp, r0 + j0,
                 scale, &w.s[size_t(j0)]);
    }
    for (int r = 0; r < p.n; ++r) {
      float* s = &w.s[size_t(r * kBlock)];
      const int64_t visible = std::clamp<int64_t>(p.lim[r] - r0, 0, nb);
      if (visible == 0) {
        corr[r] = 1.0f;
        std::fill(s, s + nb, 0.0f);
      } else {
        corr[r] = softmax_step(s, visible, nb, p.m[r], p.l[r]);
      }
    }
    pv(st, p, r0, nb, dp, w.s.data(), corr, w);
  }
}

// probs rows of the window: exp(q . k * scale - lse) over the visible keys, zero elsewhere.
void write_probs(const HeadStore& st, const float* q, int64_t begin, int64_t lim, float lse,
                 float scale, int64_t dp, Scratch& w, float* out) {
  const int64_t len = st.size();
  std::fill(out, out + len, 0.0f);
  const auto f32 = ScoreKernels<float>::for_dp(dp);
  float s[kSub];
  for (int64_t r0 = begin; r0 < lim; r0 += kSub) {
    const int64_t n = std::min<int64_t>(kSub, lim - r0);
    f32.sub(q, block_rows(st, st.k_data(), r0, n, dp, w.kbuf, kSub), dp, scale, s);
    for (int64_t j = 0; j < n; ++j) out[r0 + j] = std::exp(s[j] - lse);
  }
}

}  // namespace

void attend(const AttentionArgs& a) {
  if (!a.store || !a.q || !a.out || a.group < 1 || a.n_tokens < 0 || a.begin < 0)
    throw std::invalid_argument("attend: store, q and out are required, group >= 1, begin >= 0");
  const HeadStore& st = *a.store;
  const int64_t d = st.head_dim(), G = a.group, dp = round_up(d, kLanes);
  const int64_t end = std::min<int64_t>(a.end, st.size());
  const int64_t rows = a.n_tokens * G;
  const int64_t first_probs = a.n_tokens - (a.probs ? a.probs_tokens : 0);
  static thread_local Scratch w;
  w.qbuf.assign(size_t(std::min<int64_t>(rows, kMaxRows) * dp), 0.0f);
  w.obuf.resize(size_t(std::min<int64_t>(rows, kMaxRows) * dp));
  for (int64_t r0 = 0; r0 < rows; r0 += kMaxRows) {
    Pass p;
    p.n = int(std::min<int64_t>(kMaxRows, rows - r0));
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
        else
          write_probs(st, p.q[r], a.begin, p.lim[r], lse, a.scale, dp, w, dst);
      }
    }
  }
}

void attend_batch(std::span<const AttentionArgs> calls, kernels::ThreadPool& pool) {
  const int T = pool.size();
  const int64_t n = int64_t(calls.size());
  // Decode calls over long stores are cut into token slices when the calls alone cannot keep
  // every thread busy; slices shorter than kMinSlice keys are not worth their merge.
  constexpr int64_t kMinSlice = 2048;
  struct Task {
    int64_t call, begin, end;
  };
  std::vector<Task> tasks;
  std::vector<int64_t> first_task(size_t(n) + 1, 0);
  const int64_t want = n < T ? (2 * T + n - 1) / std::max<int64_t>(n, 1) : 1;
  for (int64_t i = 0; i < n; ++i) {
    const AttentionArgs& a = calls[size_t(i)];
    first_task[size_t(i)] = int64_t(tasks.size());
    const int64_t lo = a.begin, hi = std::min<int64_t>({a.end, a.store->size(), a.visible + 1});
    const bool sliceable = a.n_tokens == 1 && !a.probs && hi - lo >= 2 * kMinSlice;
    const int64_t slices = sliceable ? std::clamp<int64_t>((hi - lo) / kMinSlice, 1, want) : 1;
    for (int64_t s = 0; s < slices; ++s)
      tasks.push_back({i, slices == 1 ? a.begin : lo + (hi - lo) * s / slices,
                       slices == 1 ? a.end : lo + (hi - lo) * (s + 1) / slices});
  }
  first_task[size_t(n)] = int64_t(tasks.size());
  // Longest first (keys times query rows, plus a few rows' worth for the read), so that ragged
  // lengths end together instead of one long call starting last.
  std::vector<int64_t> order(tasks.size());
  std::vector<double> cost(tasks.size());
  for (size_t k = 0; k < tasks.size(); ++k) {
    const AttentionArgs& a = calls[size_t(tasks[k].call)];
    const int64_t hi = std::min<int64_t>({tasks[k].end, a.store->size(), a.visible + a.n_tokens});
    cost[k] = double(std::max<int64_t>(0, hi - tasks[k].begin)) * double(a.n_tokens * a.group + 4);
    order[k] = int64_t(k);
  }
  std::stable_sort(order.begin(), order.end(),
                   [&](int64_t x, int64_t y) { return cost[size_t(x)] > cost[size_t(y)]; });
  // Partial outputs of sliced calls: group x head_dim and group floats per task.
  std::vector<std::vector<float>> part_out(tasks.size()), part_lse(tasks.size());
  auto sliced = [&](int64_t call) {
    return first_task[size_t(call) + 1] - first_task[size_t(call)] > 1;
  };
  std::atomic<int64_t> next{0};
  pool.parallel_for(T, [&](int64_t, int64_t, int) {
    for (int64_t i; (i = next.fetch_add(1)) < int64_t(tasks.size());) {
      const int64_t k = order[size_t(i)];
      const Task& t = tasks[size_t(k)];
      AttentionArgs a = calls[size_t(t.call)];
      if (sliced(t.call)) {
        const int64_t d = a.store->head_dim();
        part_out[size_t(k)].resize(size_t(a.group * d));
        part_lse[size_t(k)].resize(size_t(a.group));
        a.begin = t.begin;
        a.end = t.end;
        a.out = part_out[size_t(k)].data();
        a.lse = part_lse[size_t(k)].data();
      }
      attend(a);
    }
  });
  for (int64_t i = 0; i < n; ++i) {
    if (!sliced(i)) continue;
    const AttentionArgs& a = calls[size_t(i)];
    const int64_t f = first_task[size_t(i)], cnt = first_task[size_t(i) + 1] - f;
    std::vector<const float*> outs, lses;
    for (int64_t k = f; k < f + cnt; ++k) {
      outs.push_back(part_out[size_t(k)].data());
      lses.push_back(part_lse[size_t(k)].data());
    }
    merge_partials(int(cnt), outs.data(), lses.data(), a.group, a.store->head_dim(), a.out, a.lse);
  }
}

}  // namespace fairkv::kv
