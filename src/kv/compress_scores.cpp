// Window score aggregation: from one head's observation-window probabilities to one score per
// prefix token (SnapKV / Ada-KV / CAKE / DefensiveKV), plus pooling and top-k.
#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>
#include <stdexcept>
#include <string>

#include "kernels/simd.h"
#include "kv/compress.h"

namespace fairkv::kv {

std::vector<float> pool1d(std::span<const float> x, Pooling p, int kernel) {
  const int64_t n = int64_t(x.size()), r = kernel / 2;
  if (p == Pooling::None || kernel <= 1) return {x.begin(), x.end()};
  std::vector<float> y(static_cast<size_t>(n));
  for (int64_t j = 0; j < n; ++j) {
    const int64_t lo = std::max<int64_t>(0, j - r), hi = std::min<int64_t>(n, j + r + 1);
    if (p == Pooling::Max) {
      float m = -std::numeric_limits<float>::infinity();
      for (int64_t i = lo; i < hi; ++i) m = std::max(m, x[size_t(i)]);
      y[size_t(j)] = m;
    } else {
      // torch's avg_pool1d counts the zero padding: the border averages over the full kernel.
      double s = 0;
      for (int64_t i = lo; i < hi; ++i) s += x[size_t(i)];
      y[size_t(j)] = float(s / kernel);
    }
  }
  return y;
}

namespace {

// NaN never wins: a strict weak order needs it below everything.
float rank_key(float x) {
  return std::isnan(x) ? -std::numeric_limits<float>::infinity() : x;
}

}  // namespace

std::vector<int64_t> top_k(std::span<const float> score, int64_t k) {
  const int64_t n = int64_t(score.size());
  k = std::clamp<int64_t>(k, 0, n);
  std::vector<int64_t> idx(static_cast<size_t>(n));
  std::iota(idx.begin(), idx.end(), 0);
  if (k < n) {
    // Larger score first; among equals the more recent (larger index) token.
    auto before = [&](int64_t a, int64_t b) {
      const float sa = rank_key(score[size_t(a)]), sb = rank_key(score[size_t(b)]);
      return sa != sb ? sa > sb : a > b;
    };
    std::nth_element(idx.begin(), idx.begin() + k, idx.end(), before);
    idx.resize(size_t(k));
  }
  std::sort(idx.begin(), idx.end());
  return idx;
}

namespace {

// Combines per-query-head rows (group x P) into one row.
std::vector<float> combine_group(const std::vector<std::vector<double>>& rows, GqaCombine how) {
  const size_t P = rows.empty() ? 0 : rows[0].size();
  std::vector<float> out(P);
  for (size_t j = 0; j < P; ++j) {
    double v = how == GqaCombine::Max ? -std::numeric_limits<double>::infinity() : 0.0;
    for (const auto& r : rows) v = how == GqaCombine::Max ? std::max(v, r[j]) : v + r[j];
    out[j] = float(how == GqaCombine::Max ? v : v / double(rows.size()));
  }
  return out;
}

// SnapKV / Ada-KV: mean over the window's rows, per query head (Ada-KV's calcul_attn_sore).
std::vector<std::vector<double>> window_means(const float* probs, int group, int64_t W, int64_t n,
                                              int64_t P) {
  std::vector<std::vector<double>> rows(size_t(group), std::vector<double>(size_t(P), 0.0));
  for (int g = 0; g < group; ++g)
    for (int64_t i = 0; i < W; ++i) {
      const float* p = probs + (int64_t(g) * W + i) * n;
      for (int64_t j = 0; j < P; ++j) rows[size_t(g)][size_t(j)] += p[j];
    }
  for (auto& r : rows)
    for (double& v : r) v /= double(W);
  return rows;
}

HeadScores cake_scores(const CompressionConfig& c, const float* probs, int group, int64_t W,
                       int64_t n, int64_t P) {
  HeadScores h;
  std::vector<std::vector<double>> indicator(static_cast<size_t>(group),
                                             std::vector<double>(static_cast<size_t>(P)));
  for (int g = 0; g < group; ++g) {
    for (int64_t j = 0; j < P; ++j) {
      double s = 0, s2 = 0;
      for (int64_t i = 0; i < W; ++i) {
        const double a = probs[(int64_t(g) * W + i) * n + j];
        s += a;
        s2 += a * a;
        // Spatial dispersion: the entropy of the window's attention over the prefix (CAKE's
        // calculate_entropy, with its 1e-10 guard).
        h.entropy -= a * std::log(a + 1e-10);
      }
      const double mean = s / double(W);
      // Temporal shift: variance over the window's queries, unbiased as torch.var.
      const double var = W > 1 ? std::max(0.0, (s2 - s * mean) / double(W - 1)) : 0.0;
      h.variance += var;
      indicator[size_t(g)][size_t(j)] = mean + c.cake_gamma * var;
    }
  }
  h.score = pool1d(combine_group(indicator, c.gqa), c.resolved_pooling(), c.resolved_pool_kernel());
  return h;
}

// DefensiveKV's defensive aggregation (EfficientDefensiveKVPress.score): pool every window row
// and give it back its mass, take the worst case over rows and query heads, and lift scores below
// the head's mean to that mean.
HeadScores defensive_scores(const CompressionConfig& c, const float* probs, int group, int64_t W,
                            int64_t n, int64_t P) {
  HeadScores h;
  std::vector<float> worst(size_t(P), 0.0f);
  const Pooling pool = c.resolved_pooling();
  const int kernel = c.resolved_pool_kernel();
  for (int g = 0; g < group; ++g)
    for (int64_t i = 0; i < W; ++i) {
      const float* p = probs + (int64_t(g) * W + i) * n;
      const std::vector<float> pooled = pool1d(std::span<const float>(p, size_t(P)), pool, kernel);
      double mass = 0, pooled_mass = 0;
      for (int64_t j = 0; j < P; ++j) {
        mass += p[j];
        pooled_mass += pooled[size_t(j)];
      }
      const double scale = pooled_mass > 0 ? mass / pooled_mass : 0.0;
      for (int64_t j = 0; j < P; ++j)
        worst[size_t(j)] = std::max(worst[size_t(j)], float(pooled[size_t(j)] * scale));
    }
  double mean = 0;
  for (float v : worst) mean += v;
  mean /= double(std::max<int64_t>(P, 1));
  h.score.resize(size_t(P));
  for (int64_t j = 0; j < P; ++j) h.score[size_t(j)] = std::max(worst[size_t(j)], float(mean));
  if (c.critical) {
    // CriticalKV's stage 1 ranks by the plain mean attention of the window's rows.
    const auto rows = window_means(probs, group, W, n, P);
    h.attention = combine_group(rows, GqaCombine::Mean);
    double prefix = 0;
    for (float v : h.attention) prefix += v;
    h.window_mass = std::clamp(1.0 - prefix, 0.0, 1.0);
  }
  return h;
}

}  // namespace

HeadScores score_head(const CompressionConfig& c, const float* probs, int group, int64_t window,
                      int64_t n) {
  if (group < 1 || window < 0 || window > n)
    throw std::invalid_argument("score_head: group " + std::to_string(group) + ", window " +
                                std::to_string(window) + ", n " + std::to_string(n) +
                                ": expected group >= 1 and 0 <= window <= n");
  const int64_t P = n - window;
  if (!c.needs_scores() || P == 0 || window == 0) return {};
  switch (c.policy) {
    case Policy::Cake:
      return cake_scores(c, probs, group, window, n, P);
    case Policy::DefensiveKV:
      return defensive_scores(c, probs, group, window, n, P);
    case Policy::EpiCache: {
      // The largest attention any window query of the group gives the token.
      HeadScores h;
      h.score.assign(size_t(P), 0.0f);
      for (int64_t r = 0; r < int64_t(group) * window; ++r)
        for (int64_t j = 0; j < P; ++j)
          h.score[size_t(j)] = std::max(h.score[size_t(j)], probs[r * n + j]);
      h.score = pool1d(h.score, c.resolved_pooling(), c.resolved_pool_kernel());
      return h;
    }
    default: {
      HeadScores h;
      h.score = pool1d(combine_group(window_means(probs, group, window, n, P), c.gqa),
                       c.resolved_pooling(), c.resolved_pool_kernel());
      // Task-KV's semantic vector weighs every token the window sees, the window included.
      if (c.policy == Policy::TaskKV)
        h.attention = combine_group(window_means(probs, group, window, n, n), GqaCombine::Mean);
      return h;
    }
  }
}

namespace {

// Tokens per block of the value-norm loop: 4 vectors of running dot products, so that 4
// independent chains hide the multiply-adds' latency.
constexpr int64_t kTokenBlock = 4 * kernels::simd::kLanes;

// The store's first n values as float32, token-blocked and transposed, [block][dim][token in
// block], zero past n: a dimension's values of a block's tokens sit side by side.
std::vector<float> values_of(const HeadStore& st, int64_t n) {
  const int64_t hd = st.head_dim(), blocks = (n + kTokenBlock - 1) / kTokenBlock;
  std::vector<float> v(size_t(blocks * hd * kTokenBlock), 0.0f);
  std::vector<float> row(static_cast<size_t>(hd));
  for (int64_t j = 0; j < n; ++j) {
    st.v_row(j, row.data());
    float* at = v.data() + (j / kTokenBlock) * hd * kTokenBlock + j % kTokenBlock;
    for (int64_t k = 0; k < hd; ++k) at[k * kTokenBlock] = row[size_t(k)];
  }
  return v;
}

// One row r of W_o: acc[q][j] += |(W_o^q v_j)_r| for q_heads query heads, whose columns of the
// row are w (q_heads * hd floats), over values_of()'s layout. Each token's dot product adds its
// hd terms in order (multiply-adds), a block of tokens at a time. The one loop both the layer and
// the per-head paths run, so that their sums agree bit for bit.
void add_wo_row(const float* w, int q_heads, const float* v, int64_t n, int64_t hd, double* acc) {
  namespace simd = kernels::simd;
  constexpr int kVectors = int(kTokenBlock / simd::kLanes);
  for (int q = 0; q < q_heads; ++q) {
    const float* wq = w + int64_t(q) * hd;
    double* a = acc + int64_t(q) * n;
    for (int64_t j0 = 0; j0 < n; j0 += kTokenBlock) {
      const float* x = v + (j0 / kTokenBlock) * hd * kTokenBlock;
      simd::V d[kVectors];
      FAIRKV_UNROLL
      for (int i = 0; i < kVectors; ++i) d[i] = simd::zero();
      for (int64_t k = 0; k < hd; ++k) {
        const simd::V wk = simd::set1(wq[k]);
        FAIRKV_UNROLL
        for (int i = 0; i < kVectors; ++i)
          d[i] = simd::fma(wk, simd::load(x + k * kTokenBlock + i * simd::kLanes), d[i]);
      }
      float dots[kTokenBlock];
      for (int i = 0; i < kVectors; ++i) simd::store(dots + i * simd::kLanes, d[i]);
      const int64_t m = std::min(kTokenBlock, n - j0);
      for (int64_t t = 0; t < m; ++t) a[j0 + t] += std::fabs(double(dots[t]));
    }
  }
}

}  // namespace

std::vector<double> projected_value_sums(
    const HeadStore& st, int64_t n, int q_heads, int64_t embd,
    const std::function<void(int64_t row, float* out)>& wo_cols) {
  if (q_heads < 1 || n < 0 || n > st.size())
    throw std::invalid_argument("projected_value_sums: " + std::to_string(q_heads) +
                                " query heads over " + std::to_string(n) + " of " +
                                std::to_string(st.size()) + " rows");
  const int64_t hd = st.head_dim();
  const std::vector<float> v = values_of(st, n);
  std::vector<double> acc(size_t(q_heads) * size_t(n), 0.0);
  std::vector<float> row(size_t(q_heads * hd));
  for (int64_t r = 0; r < embd; ++r) {
    wo_cols(r, row.data());
    add_wo_row(row.data(), q_heads, v.data(), n, hd, acc.data());
  }
  return acc;
}

std::vector<float> mean_value_norms(std::span<const double> sums, int group) {
  if (group < 1 || sums.size() % size_t(group) != 0)
    throw std::invalid_argument("mean_value_norms: " + std::to_string(sums.size()) +
                                " sums for a group of " + std::to_string(group));
  const size_t n = sums.size() / size_t(group);
  std::vector<float> out(n);
  for (size_t j = 0; j < n; ++j) {
    double s = 0;
    for (size_t g = 0; g < size_t(group); ++g) s += sums[g * n + j];
    out[j] = float(s / double(group));
  }
  return out;
}

std::vector<std::vector<float>> projected_value_norms(
    const SequenceCache& cache, int layer, int group, int64_t embd,
    const std::function<void(int64_t row, float* out)>& wo_row) {
  const int H = cache.n_kv_heads();
  if (group < 1 || layer < 0 || layer >= cache.n_layers())
    throw std::invalid_argument("projected_value_norms: layer " + std::to_string(layer) +
                                ", group " + std::to_string(group));
  const int64_t hd = cache.head(layer, 0).head_dim(), q_dim = int64_t(H) * group * hd;
  std::vector<std::vector<float>> v(static_cast<size_t>(H));
  std::vector<std::vector<double>> acc(static_cast<size_t>(H));
  for (int h = 0; h < H; ++h) {
    const HeadStore& st = cache.head(layer, h);
    v[size_t(h)] = values_of(st, st.size());
    acc[size_t(h)].assign(size_t(group) * size_t(st.size()), 0.0);
  }
  // Row by row of W_o (one row dequantized at a time, for every head).
  std::vector<float> row(static_cast<size_t>(q_dim));
  for (int64_t r = 0; r < embd; ++r) {
    wo_row(r, row.data());
    for (int h = 0; h < H; ++h)
      add_wo_row(row.data() + int64_t(h) * group * hd, group, v[size_t(h)].data(),
                 cache.head(layer, h).size(), hd, acc[size_t(h)].data());
  }
  std::vector<std::vector<float>> out(static_cast<size_t>(H));
  for (int h = 0; h < H; ++h) out[size_t(h)] = mean_value_norms(acc[size_t(h)], group);
  return out;
}

}  // namespace fairkv::kv
