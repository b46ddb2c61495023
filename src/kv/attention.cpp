#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "kernels/types.h"
#include "kv/attention.h"

namespace fairkv::kv {

namespace {

constexpr int64_t kBlock = 64;  // keys scored together before their values are accumulated

// Rows [r0, r0 + n) of K or V as float32: the f32 store is read in place, f16 is converted once
// per block and shared by the whole group.
const float* rows_f32(const HeadStore& s, const void* base, int64_t r0, int64_t n,
                      std::vector<float>& buf) {
  const int64_t d = s.head_dim();
  if (s.type() == KvType::F32) return static_cast<const float*>(base) + r0 * d;
  buf.resize(size_t(n * d));
  const auto* h = static_cast<const uint16_t*>(base) + r0 * d;
  for (int64_t i = 0; i < n * d; ++i) buf[size_t(i)] = kernels::fp16_to_fp32(h[i]);
  return buf.data();
}

float dot(const float* a, const float* b, int64_t n) {
  float s = 0;

  for (int64_t i = 0; i < n; ++i) s += a[i] * b[i];
  return s;
}

}  // namespace

void attend(const AttentionArgs& a) {
  const HeadStore& s = *a.store;
  const int64_t d = s.head_dim(), G = a.group;
  const int64_t end = std::min<int64_t>(a.end, s.size());
  std::vector<float> kbuf, vbuf, scores(static_cast<size_t>(G * kBlock)), m(static_cast<size_t>(G)),
      l(static_cast<size_t>(G));
  for (int64_t t = 0; t < a.n_tokens; ++t) {
    const int64_t lim = std::min(end, a.visible + t + 1);
    const float* q = a.q + t * G * d;
    float* out = a.out + t * G * d;
    std::fill(out, out + G * d, 0.0f);
    std::fill(m.begin(), m.end(), -std::numeric_limits<float>::infinity());
    std::fill(l.begin(), l.end(), 0.0f);
    // Online softmax over blocks of keys (one pass over K and V).
    for (int64_t r0 = a.begin; r0 < lim; r0 += kBlock) {
      const int64_t n = std::min(kBlock, lim - r0);
      const float* K = rows_f32(s, s.k_data(), r0, n, kbuf);
      const float* V = rows_f32(s, s.v_data(), r0, n, vbuf);
      for (int64_t g = 0; g < G; ++g) {
        float* sc = &scores[size_t(g * kBlock)];
        float bmax = m[size_t(g)];
        for (int64_t j = 0; j < n; ++j) {
          sc[j] = dot(q + g * d, K + j * d, d) * a.scale;
          bmax = std::max(bmax, sc[j]);
        }
        const float corr = std::exp(m[size_t(g)] - bmax);  // 0 on the first block
        float* o = out + g * d;
        for (int64_t i = 0; i < d; ++i) o[i] *= corr;
        float sum = l[size_t(g)] * corr;
        for (int64_t j = 0; j < n; ++j) {
          const float p = std::exp(sc[j] - bmax);
          sum += p;
          const float* v = V + j * d;

          for (int64_t i = 0; i < d; ++i) o[i] += p * v[i];
        }
        m[size_t(g)] = bmax;
        l[size_t(g)] = sum;
      }
    }
    for (int64_t g = 0; g < G; ++g) {
      float* o = out + g * d;
      const float inv = l[size_t(g)] > 0 ? 1.0f / l[size_t(g)] : 0.0f;
      for (int64_t i = 0; i < d; ++i) o[i] *= inv;
      if (a.lse)
        a.lse[t * G + g] = l[size_t(g)] > 0 ? m[size_t(g)] + std::log(l[size_t(g)])
                                            : -std::numeric_limits<float>::infinity();
    }
    // The observation window's probabilities, normalised with the final log-sum-exp.
    const int64_t first_probs = a.n_tokens - a.probs_tokens;
    if (a.probs && t >= first_probs) {
      const int64_t len = s.size();
      for (int64_t g = 0; g < G; ++g) {
        float* p = a.probs + ((t - first_probs) * G + g) * len;
        std::fill(p, p + len, 0.0f);
        const float lse = m[size_t(g)] + std::log(l[size_t(g)]);
        for (int64_t r0 = a.begin; r0 < lim; r0 += kBlock) {
          const int64_t n = std::min(kBlock, lim - r0);
          const float* K = rows_f32(s, s.k_data(), r0, n, kbuf);
          for (int64_t j = 0; j < n; ++j)
            p[r0 + j] = std::exp(dot(q + g * d, K + j * d, d) * a.scale - lse);
        }
      }
    }
  }
}

void attend_ref(const AttentionArgs& a) {
  const HeadStore& s = *a.store;
  const int64_t d = s.head_dim(), G = a.group;
  const int64_t end = std::min<int64_t>(a.end, s.size());
  std::vector<float> k(static_cast<size_t>(d)), v(static_cast<size_t>(d));
  for (int64_t t = 0; t < a.n_tokens; ++t) {
    const int64_t lim = std::min(end, a.visible + t + 1);
    for (int64_t g = 0; g < G; ++g) {
      const float* q = a.q + (t * G + g) * d;
      std::vector<double> sc;
      double mx = -std::numeric_limits<double>::infinity();
      for (int64_t j = a.begin; j < lim; ++j) {
        s.k_row(j, k.data());
        double x = 0;
        for (int64_t i = 0; i < d; ++i) x += double(q[i]) * k[size_t(i)];
        sc.push_back(x * a.scale);
        mx = std::max(mx, sc.back());
      }
      double sum = 0;
      for (double& x : sc) sum += x = std::exp(x - mx);
      std::vector<double> o(size_t(d), 0.0);
      for (int64_t j = a.begin; j < lim; ++j) {
        s.v_row(j, v.data());
        for (int64_t i = 0; i < d; ++i)
          o[size_t(i)] += sc[size_t(j - a.begin)] / sum * v[size_t(i)];
      }
      for (int64_t i = 0; i < d; ++i) a.out[(t * G + g) * d + i] = float(o[size_t(i)]);
      if (a.lse)
        a.lse[t * G + g] =
            sc.empty() ? -std::numeric_limits<float>::infinity() : float(mx + std::log(sum));
      const int64_t first_probs = a.n_tokens - a.probs_tokens;
      if (a.probs && t >= first_probs) {
        float* p = a.probs + ((t - first_probs) * G + g) * s.size();
        std::fill(p, p + s.size(), 0.0f);
        for (int64_t j = a.begin; j < lim; ++j) p[j] = float(sc[size_t(j - a.begin)] / sum);
      }
    }
  }
}

void merge_partials(int n_parts, const float* const* outs, const float* const* lses, int64_t n_rows,
                    int64_t head_dim, float* out, float* lse) {
  for (int64_t r = 0; r < n_rows; ++r) {
    float mx = -std::numeric_limits<float>::infinity();
    for (int p = 0; p < n_parts; ++p) mx = std::max(mx, lses[p][r]);
    float* o = out + r * head_dim;
    std::fill(o, o + head_dim, 0.0f);
    if (mx == -std::numeric_limits<float>::infinity()) {
      if (lse) lse[r] = mx;
      continue;
    }
    double total = 0;
    for (int p = 0; p < n_parts; ++p) total += std::exp(double(lses[p][r]) - mx);
    for (int p = 0; p < n_parts; ++p) {
      const float w = float(std::exp(double(lses[p][r]) - mx) / total);
      if (w == 0) continue;
      const float* src = outs[p] + r * head_dim;
      for (int64_t i = 0; i < head_dim; ++i) o[i] += w * src[i];
    }
    if (lse) lse[r] = mx + float(std::log(total));
  }
}

}  // namespace fairkv::kv
