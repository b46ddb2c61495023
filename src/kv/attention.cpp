// Fast attention over one head store: up to kMaxRows query rows (tokens x GQA heads) share every
// block of keys and values, so a decode step streams the store once for the whole group.
//
// Per block of kBlock keys: the keys (converted to float32 when stored as f16, or when head_dim is
// not a whole number of vectors) are scored against every query row, the rows' online softmax is
// advanced, and the values are accumulated with the probabilities broadcast from memory, one
// vector of head_dim at a time for all rows together.
#include <algorithm>
#include <atomic>
#include <cmath>
#include <limits>
#include <stdexcept>
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
constexpr int64_t kBlock = 32;  // keys per online-softmax step; a block of V stays in L1
constexpr float kNegInf = -std::numeric_limits<float>::infinity();

int64_t round_up(int64_t x, int64_t m) {
  return (x + m - 1) / m * m;
}

struct Scratch {
  std::vector<float> kbuf, vbuf, qbuf, obuf;
  std::vector<float> s;  // kMaxRows x kBlock scores, then probabilities
};

// Keys [r0, r0 + n) of K or V as float32 rows of stride dp (a multiple of kLanes, zero padded):
// an f32 store whose rows are whole vectors is read in place.
const float* block_rows(const HeadStore& st, const void* base, int64_t r0, int64_t n, int64_t dp,
                        std::vector<float>& buf) {
  const int64_t d = st.head_dim();
  if (st.type() == KvType::F32 && dp == d) return static_cast<const float*>(base) + r0 * d;
  buf.resize(size_t(n * dp));
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
  return buf.data();
}

#if defined(FAIRKV_AVX512)
// Sums each of 16 vectors into one lane: out[e] = sum(v[slot]) with slot = 4 (e % 4) + e / 4 (a
// 4x4 transpose of the natural order, undone by the caller's placement of keys in slots).
// 15 adds and 30 shuffles instead of 16 full horizontal reductions.
inline __m512 reduce16(const __m512* v) {
  __m512 w[8], z[4], u[2];
  for (int i = 0; i < 8; ++i) {
    const __m512 a = v[2 * i], b = v[2 * i + 1];
    w[i] = _mm512_add_ps(_mm512_shuffle_f32x4(a, b, 0x44), _mm512_shuffle_f32x4(a, b, 0xEE));
  }
  for (int i = 0; i < 4; ++i) {
    const __m512 a = w[2 * i], b = w[2 * i + 1];
    z[i] = _mm512_add_ps(_mm512_shuffle_f32x4(a, b, _MM_SHUFFLE(2, 0, 2, 0)),
                         _mm512_shuffle_f32x4(a, b, _MM_SHUFFLE(3, 1, 3, 1)));
  }
  for (int i = 0; i < 2; ++i) {
    const __m512 a = z[2 * i], b = z[2 * i + 1];
    u[i] = _mm512_add_ps(_mm512_shuffle_ps(a, b, _MM_SHUFFLE(1, 0, 1, 0)),
                         _mm512_shuffle_ps(a, b, _MM_SHUFFLE(3, 2, 3, 2)));
  }
  return _mm512_add_ps(_mm512_shuffle_ps(u[0], u[1], _MM_SHUFFLE(2, 0, 2, 0)),
                       _mm512_shuffle_ps(u[0], u[1], _MM_SHUFFLE(3, 1, 3, 1)));
}
#endif

// s[j] = q . K[j] * scale for the n <= kSub keys of K (rows of stride dp).
inline void score_sub(const float* q, const float* K, int64_t dp, int n, float scale, float* s) {
#if defined(FAIRKV_AVX512)
  static_assert(kSub == 16 && kLanes == 16);
  const float* rows[16];
  for (int slot = 0; slot < 16; ++slot) {
    const int key = 4 * (slot % 4) + slot / 4;
    rows[slot] = K + std::min(key, n - 1) * dp;  // keys past n repeat a valid row, unused
  }
  __m512 acc[16];
  FAIRKV_UNROLL
  for (int i = 0; i < 16; ++i) acc[i] = _mm512_setzero_ps();
  for (int64_t c = 0; c < dp; c += 16) {
    const __m512 qv = _mm512_loadu_ps(q + c);
    FAIRKV_UNROLL
    for (int i = 0; i < 16; ++i) acc[i] = _mm512_fmadd_ps(qv, _mm512_loadu_ps(rows[i] + c), acc[i]);
  }
  _mm512_storeu_ps(s, _mm512_mul_ps(reduce16(acc), _mm512_set1_ps(scale)));
#else
  for (int j = 0; j < n; ++j) {
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

// The query rows of one pass: row i is token t(i), query head g(i).
struct Pass {
  int n = 0;
  const float* q[kMaxRows];  // padded to dp
  float* o[kMaxRows];        // padded accumulators
  int64_t lim[kMaxRows];     // keys [begin, lim) visible
  float m[kMaxRows], l[kMaxRows];
};

// o[r] = o[r] * corr[r] + sum_j prob[r][j] V[j] for the NR rows of a pass, one vector of
// head_dim at a time: each value vector is loaded once for all rows, whose accumulators stay in
// registers (NR is a template argument so that the compiler unrolls over the rows).
template <int NR>
void pv_block(Pass& p, const float* V, int64_t nb, int64_t dp, const float* prob,
              const float* corr) {
  for (int64_t c = 0; c < dp; c += kLanes) {
    simd::V acc[NR];
    FAIRKV_UNROLL
    for (int r = 0; r < NR; ++r) acc[r] = simd::mul(simd::load(p.o[r] + c), simd::set1(corr[r]));
    for (int64_t j = 0; j < nb; ++j) {
      const simd::V v = simd::load(V + j * dp + c);
      FAIRKV_UNROLL
      for (int r = 0; r < NR; ++r) acc[r] = simd::fma(simd::set1(prob[r * kBlock + j]), v, acc[r]);
    }
    FAIRKV_UNROLL
    for (int r = 0; r < NR; ++r) simd::store(p.o[r] + c, acc[r]);
  }
}

template <int... N>
void pv_dispatch_impl(std::integer_sequence<int, N...>, Pass& p, const float* V, int64_t nb,
                      int64_t dp, const float* prob, const float* corr) {
  using Fn = void (*)(Pass&, const float*, int64_t, int64_t, const float*, const float*);
  static constexpr Fn table[] = {&pv_block<N + 1>...};
  table[p.n - 1](p, V, nb, dp, prob, corr);
}

void pv_dispatch(Pass& p, const float* V, int64_t nb, int64_t dp, const float* prob,
                 const float* corr) {
  pv_dispatch_impl(std::make_integer_sequence<int, kMaxRows>{}, p, V, nb, dp, prob, corr);
}

void run_pass(const HeadStore& st, Pass& p, int64_t begin, float scale, int64_t dp, Scratch& w) {
  int64_t hi = begin;
  for (int r = 0; r < p.n; ++r) hi = std::max(hi, p.lim[r]);
  w.s.resize(size_t(kMaxRows * kBlock));
  float corr[kMaxRows];
  for (int64_t r0 = begin; r0 < hi; r0 += kBlock) {
    const int64_t nb = std::min(kBlock, hi - r0);
    const float* K = block_rows(st, st.k_data(), r0, nb, dp, w.kbuf);
    for (int r = 0; r < p.n; ++r) {
      float* s = &w.s[size_t(r * kBlock)];
      const int64_t visible = std::clamp<int64_t>(p.lim[r] - r0, 0, nb);
      if (visible == 0) {
        corr[r] = 1.0f;
        std::fill(s, s + nb, 0.0f);
        continue;
      }
      for (int64_t j0 = 0; j0 < visible; j0 += kSub)
        score_sub(p.q[r], K + j0 * dp, dp, int(std::min<int64_t>(kSub, visible - j0)), scale,
                  s + j0);
      float bm = p.m[r];
      for (int64_t j = 0; j < visible; ++j) bm = std::max(bm, s[j]);
      // Online softmax: rescale what was accumulated to the new maximum.
      corr[r] = std::exp(p.m[r] - bm);  // 0 on the first block (m = -inf)
      int64_t j = 0;
      simd::V sum = simd::zero();
      const simd::V vbm = simd::set1(bm);
      for (; j + kLanes <= visible; j += kLanes) {
        const simd::V e = simd::exp(simd::sub(simd::load(s + j), vbm));
        simd::store(s + j, e);
        sum = simd::add(sum, e);
      }
      float tail = 0;
      for (; j < visible; ++j) tail += s[j] = std::exp(s[j] - bm);
      std::fill(s + visible, s + nb, 0.0f);
      p.l[r] = p.l[r] * corr[r] + simd::reduce(sum) + tail;
      p.m[r] = bm;
    }
    const float* V = block_rows(st, st.v_data(), r0, nb, dp, w.vbuf);
    pv_dispatch(p, V, nb, dp, w.s.data(), corr);
  }
}

// probs rows of the window: exp(q . k * scale - lse) over the visible keys, zero elsewhere.
void write_probs(const HeadStore& st, const float* q, int64_t begin, int64_t lim, float lse,
                 float scale, int64_t dp, Scratch& w, float* out) {
  const int64_t len = st.size();
  std::fill(out, out + len, 0.0f);
  float s[kSub];
  for (int64_t r0 = begin; r0 < lim; r0 += kBlock) {
    const int64_t nb = std::min(kBlock, lim - r0);
    const float* K = block_rows(st, st.k_data(), r0, nb, dp, w.kbuf);
    for (int64_t j0 = 0; j0 < nb; j0 += kSub) {
      const int n = int(std::min<int64_t>(kSub, nb - j0));
      score_sub(q, K + j0 * dp, dp, n, scale, s);
      for (int j = 0; j < n; ++j) out[r0 + j0 + j] = std::exp(s[j] - lse);
    }
  }
}

}  // namespace

void attend(const AttentionArgs& a) {
  if (!a.store || !a.q || !a.out || a.group < 1 || a.n_tokens < 0)
    throw std::invalid_argument("attend: store, q and out are required, group >= 1");
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
  // Partial outputs of sliced calls: group x head_dim and group floats per task.
  std::vector<std::vector<float>> part_out(tasks.size()), part_lse(tasks.size());
  auto sliced = [&](int64_t call) {
    return first_task[size_t(call) + 1] - first_task[size_t(call)] > 1;
  };
  std::atomic<int64_t> next{0};
  pool.parallel_for(T, [&](int64_t, int64_t, int) {
    for (int64_t k; (k = next.fetch_add(1)) < int64_t(tasks.size());) {
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
