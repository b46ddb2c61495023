// The head-aware selections added after the first eight policies: CompressKV's retrieval-head
// choice and error-driven layer budgets, Task-KV's semantic separation of heads.
#include <algorithm>
#include <cmath>
#include <numeric>
#include <stdexcept>
#include <string>

#include "kv/compress.h"

namespace fairkv::kv {

std::vector<int64_t> compresskv_budgets(std::span<const HeadScores> heads, int n_layers,
                                        int n_kv_heads, int64_t avg, int64_t available) {
  // A layer's eviction error: the window attention that its heads' top-avg tokens leave out.
  std::vector<double> err(size_t(n_layers), 0.0);
  for (int l = 0; l < n_layers; ++l)
    for (int h = 0; h < n_kv_heads; ++h) {
      const auto& score = heads[size_t(l) * n_kv_heads + h].score;
      double total = 0, kept = 0;
      for (float v : score) total += v;
      for (int64_t j : top_k(score, avg)) kept += score[size_t(j)];
      err[size_t(l)] += std::max(0.0, total - kept);
    }
  const std::vector<int64_t> cap(size_t(n_layers), available);
  return distribute(int64_t(n_layers) * avg, err, cap);
}

std::vector<int64_t> compresskv_choose(std::span<const HeadScores* const> layer,
                                       std::span<const double> importance, int sr_heads,
                                       int64_t k) {
  const size_t H = layer.size();
  if (importance.size() != H)
    throw std::invalid_argument("compresskv_choose: one importance per head expected");
  std::vector<size_t> order(H);
  std::iota(order.begin(), order.end(), size_t(0));
  std::stable_sort(order.begin(), order.end(),
                   [&](size_t a, size_t b) { return importance[a] > importance[b]; });
  const size_t m = std::min(H, size_t(std::max(1, sr_heads)));
  const size_t P = layer[0]->score.size();
  std::vector<float> mean(P, 0.0f);
  for (size_t j = 0; j < P; ++j) {
    double v = 0;
    for (size_t i = 0; i < m; ++i) v += layer[order[i]]->score[j];
    mean[j] = float(v / double(m));
  }
  return top_k(mean, k);
}

std::vector<int> taskkv_heterogeneous(std::span<const HeadScores* const> layer, double share) {
  const size_t H = layer.size();
  auto vec = [](const HeadScores* h) -> const std::vector<float>& {
    return h->head_output.empty() ? h->attention : h->head_output;
  };
  const size_t D = vec(layer[0]).size();
  for (const HeadScores* h : layer)
    if (vec(h).size() != D)
      throw std::invalid_argument("taskkv: heads' semantic vectors of different lengths");
  std::vector<double> centre(D, 0.0);
  for (const HeadScores* h : layer)
    for (size_t d = 0; d < D; ++d) centre[d] += vec(h)[d] / double(H);
  std::vector<double> dist(H, 0.0);
  for (size_t i = 0; i < H; ++i) {
    for (size_t d = 0; d < D; ++d) {
      const double x = vec(layer[i])[d] - centre[d];
      dist[i] += x * x;
    }
  }
  std::vector<int> order(H);
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(),
                   [&](int a, int b) { return dist[size_t(a)] > dist[size_t(b)]; });
  const size_t m = std::min(H, size_t(std::llround(share * double(H))));
  std::vector<int> out(order.begin(), order.begin() + std::ptrdiff_t(m));
  std::sort(out.begin(), out.end());
  return out;
}

std::vector<std::vector<int64_t>> taskkv_choose(const CompressionConfig& c,
                                                std::span<const HeadScores* const> layer,
                                                int64_t avg) {
  const size_t H = layer.size();
  const int64_t P = int64_t(layer[0]->score.size());
  const auto het = taskkv_heterogeneous(layer, c.taskkv_share);
  std::vector<std::vector<int64_t>> out(H);
  for (size_t h = 0; h < H; ++h) {
    const auto& score = layer[h]->score;
    if (std::find(het.begin(), het.end(), int(h)) != het.end()) {
      out[h] = top_k(score, avg);
      continue;
    }
    // Sinks, then the highest-scored middle tokens, within the average budget.
    const int64_t sinks = std::min({c.sinks, avg, P});
    const int64_t middle = std::min(c.taskkv_middle, avg - sinks);
    for (int64_t j = 0; j < sinks; ++j) out[h].push_back(j);
    for (int64_t j : top_k(std::span(score).subspan(size_t(sinks)), middle))
      out[h].push_back(j + sinks);
  }
  return out;
}

bool ScoreCollector::needs_head_outputs() const {
  return c_.policy == Policy::TaskKV;
}

std::vector<float> head_output(const HeadScores& hs, const HeadStore& st) {
  const int64_t D = st.head_dim();
  std::vector<float> v(static_cast<size_t>(D));
  std::vector<double> o(static_cast<size_t>(D), 0.0);
  for (size_t j = 0; j < hs.attention.size(); ++j) {
    st.v_row(int64_t(j), v.data());
    for (int64_t d = 0; d < D; ++d) o[size_t(d)] += double(hs.attention[j]) * v[size_t(d)];
  }
  return {o.begin(), o.end()};
}

void ScoreCollector::set_head_outputs(const SequenceCache& cache) {
  if (!needs_head_outputs()) return;
  if (cache.n_layers() != s_.n_layers || cache.n_kv_heads() != s_.n_kv_heads)
    throw std::invalid_argument("ScoreCollector::set_head_outputs: a cache of another shape");
  for (int l = 0; l < s_.n_layers; ++l)
    for (int h = 0; h < s_.n_kv_heads; ++h) {
      HeadScores& hs = s_.heads[size_t(l) * s_.n_kv_heads + h];
      const HeadStore& st = cache.head(l, h);
      if (int64_t(hs.attention.size()) > st.size())
        throw std::invalid_argument("ScoreCollector::set_head_outputs: the cache holds " +
                                    std::to_string(st.size()) + " rows, the scores " +
                                    std::to_string(hs.attention.size()));
      hs.head_output = head_output(hs, st);
    }
}

}  // namespace fairkv::kv
