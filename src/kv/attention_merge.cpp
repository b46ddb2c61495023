#include "kv/attention_merge.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "kernels/simd.h"

namespace fairkv::kv {

namespace {
namespace simd = kernels::simd;
constexpr float kNegInf = -std::numeric_limits<float>::infinity();
}  // namespace

void merge_partials(int n_parts, const float* const* outs, const float* const* lses, int64_t n_rows,
                    int64_t head_dim, float* out, float* lse) {
  std::vector<double> acc(static_cast<size_t>(head_dim));
  for (int64_t r = 0; r < n_rows; ++r) {
    float mx = kNegInf;
    for (int p = 0; p < n_parts; ++p) mx = std::max(mx, lses[p][r]);
    float* o = out + r * head_dim;
    if (mx == kNegInf) {  // no slice saw a token
      std::fill(o, o + head_dim, 0.0f);
      if (lse) lse[r] = kNegInf;
      continue;
    }
    double total = 0;
    std::fill(acc.begin(), acc.end(), 0.0);
    for (int p = 0; p < n_parts; ++p) {
      if (lses[p][r] == kNegInf) continue;
      const double w = std::exp(double(lses[p][r]) - double(mx));
      total += w;
      const float* src = outs[p] + r * head_dim;
      for (int64_t i = 0; i < head_dim; ++i) acc[size_t(i)] += w * double(src[i]);
    }
    for (int64_t i = 0; i < head_dim; ++i) o[i] = float(acc[size_t(i)] / total);
    if (lse) lse[r] = mx + float(std::log(total));
  }
}

void merge_block(float& m, float& l, float* o, float mb, float lb, const float* ob,
                 int64_t head_dim) {
  if (lb == 0.0f) return;
  if (l == 0.0f) {
    m = mb;
    l = lb;
    std::copy_n(ob, head_dim, o);
    return;
  }
  // One exp: the larger maximum's factor is exp(0) = 1 exactly.
  const float a = mb > m ? std::exp(m - mb) : 1.0f, b = mb > m ? 1.0f : std::exp(mb - m);
  // fma(x, b, y * a) element by element, vector and scalar alike (fma rounds once either way):
  // the same bits wherever it runs, whatever the compiler contracts elsewhere.
  l = std::fma(lb, b, l * a);
  const simd::V va = simd::set1(a), vb = simd::set1(b);
  int64_t i = 0;
  for (; i + simd::kLanes <= head_dim; i += simd::kLanes)
    simd::store(o + i, simd::fma(simd::load(ob + i), vb, simd::mul(simd::load(o + i), va)));
  for (; i < head_dim; ++i) o[i] = std::fma(ob[i], b, o[i] * a);
  m = std::max(m, mb);
}

void finish_partial(float m, float l, const float* o, int64_t head_dim, float* out, float* lse) {
  const bool empty = l == 0.0f;
  const float inv = empty ? 0.0f : 1.0f / l;
  for (int64_t i = 0; i < head_dim; ++i) out[i] = o[i] * inv;
  if (lse) *lse = empty ? kNegInf : m + std::log(l);
}

float merge_weight(float mine, const float* lses, int n_parts, size_t stride) {
  float m = kNegInf;
  for (int q = 0; q < n_parts; ++q) m = std::max(m, lses[size_t(q) * stride]);
  double sum = 0;
  for (int q = 0; q < n_parts; ++q) sum += std::exp(double(lses[size_t(q) * stride] - m));
  return float(std::exp(double(mine - m)) / sum);
}

}  // namespace fairkv::kv
