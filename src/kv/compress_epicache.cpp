// EpiCache (arXiv 2509.17396): token scores, sensitivity-driven layer budgets and the layer-wide
// choice over heads of different lengths, which block-wise prefill produces.
#include <algorithm>
#include <cmath>
#include <limits>
#include <stdexcept>
#include <string>
#include <tuple>

#include "kv/compress.h"

namespace fairkv::kv {

std::vector<int64_t> epicache_budgets(std::span<const double> similarity, double power, int64_t avg,
                                      int64_t available) {
  const size_t L = similarity.size();
  avg = std::clamp<int64_t>(avg, 0, available);
  std::vector<double> weight(L, 1.0);
  if (power > 0 && L > 0) {
    const auto [lo, hi] = std::minmax_element(similarity.begin(), similarity.end());
    if (*hi > *lo)
      for (size_t l = 0; l < L; ++l)
        weight[l] = std::pow(1.0 - (similarity[l] - *lo) / (*hi - *lo), power);
  }
  // The reference keeps every layer at a quarter of the average at least; the rest follows the
  // weights, capped by what a layer can hold.
  const int64_t floor = avg / 4;
  std::vector<int64_t> cap(L, available - floor);
  auto out = distribute(int64_t(L) * (avg - floor), weight, cap);
  for (auto& b : out) b += floor;
  return out;
}

std::vector<std::vector<int64_t>> epicache_choose(std::span<const HeadScores* const> layer,
                                                  int64_t k) {
  const size_t H = layer.size();
  std::vector<std::tuple<float, int64_t, int>> all;  // (score, token, head)
  for (size_t h = 0; h < H; ++h)
    for (size_t j = 0; j < layer[h]->score.size(); ++j) {
      const float s = layer[h]->score[j];
      all.emplace_back(std::isnan(s) ? -std::numeric_limits<float>::infinity() : s, int64_t(j),
                       int(h));
    }
  k = std::clamp<int64_t>(k, 0, int64_t(all.size()));
  // Larger score first; among equals the more recent token, then the lower head.
  auto before = [](const auto& a, const auto& b) {
    if (std::get<0>(a) != std::get<0>(b)) return std::get<0>(a) > std::get<0>(b);
    if (std::get<1>(a) != std::get<1>(b)) return std::get<1>(a) > std::get<1>(b);
    return std::get<2>(a) < std::get<2>(b);
  };
  if (k < int64_t(all.size())) {
    std::nth_element(all.begin(), all.begin() + k, all.end(), before);
    all.resize(size_t(k));
  }
  std::vector<std::vector<int64_t>> out(H);
  for (const auto& [s, j, h] : all) out[size_t(h)].push_back(j);
  for (auto& v : out) std::sort(v.begin(), v.end());
  return out;
}

Selection epicache_select(const CompressionConfig& c, const PromptScores& s) {
  const int L = s.n_layers, H = s.n_kv_heads;
  const size_t N = size_t(L) * size_t(H);
  if (s.heads.size() != N)
    throw std::invalid_argument("epicache: " + std::to_string(s.heads.size()) +
                                " scored heads for " + std::to_string(L) + " layers x " +
                                std::to_string(H) + " KV heads");
  const int64_t W = s.window;
  int64_t longest = 0;  // the most prefix rows any head holds
  for (const auto& h : s.heads) longest = std::max(longest, int64_t(h.score.size()));
  const int64_t avg = std::clamp<int64_t>(c.budget_for(s.n_prompt) - W, 0, longest);
  std::vector<int64_t> layer_budget(size_t(L), avg);
  if (c.epicache_power > 0) {
    const auto& sim = c.layer_sensitivity.value();
    if (int64_t(sim.size()) != L)
      throw std::invalid_argument("epicache: the layer sensitivity has " +
                                  std::to_string(sim.size()) + " layers, the model " +
                                  std::to_string(L));
    layer_budget = epicache_budgets(sim, c.epicache_power, avg, longest);
  }
  Selection sel(N);
  for (int l = 0; l < L; ++l) {
    std::vector<const HeadScores*> heads(static_cast<size_t>(H));
    for (int h = 0; h < H; ++h) heads[size_t(h)] = &s.heads[size_t(l) * H + h];
    auto chosen = epicache_choose(heads, int64_t(H) * layer_budget[size_t(l)]);
    for (int h = 0; h < H; ++h) {
      auto& v = sel[size_t(l) * H + h];
      v = std::move(chosen[size_t(h)]);
      // The window: the head's last W rows, after its scored prefix.
      const int64_t P = int64_t(heads[size_t(h)]->score.size());
      for (int64_t i = P; i < P + W; ++i) v.push_back(i);
    }
  }
  return sel;
}

std::vector<double> layer_key_similarity(const SequenceCache& full, const SequenceCache& part,
                                         std::span<const std::vector<int64_t>> positions) {
  const int L = full.n_layers(), H = full.n_kv_heads();
  if (part.n_layers() != L || part.n_kv_heads() != H || positions.size() != size_t(L) * H)
    throw std::invalid_argument("layer_key_similarity: caches or positions of different shapes");
  const int64_t hd = full.head(0, 0).head_dim();
  std::vector<float> a(static_cast<size_t>(hd)), b(static_cast<size_t>(hd));
  std::vector<double> out(size_t(L), 0.0);
  for (int l = 0; l < L; ++l) {
    double sum = 0;
    int64_t count = 0;
    for (int h = 0; h < H; ++h) {
      const auto& pos = positions[size_t(l) * H + h];
      const HeadStore &f = full.head(l, h), &p = part.head(l, h);
      if (int64_t(pos.size()) != p.size())
        throw std::invalid_argument("layer_key_similarity: positions do not match the rows");
      for (size_t i = 0; i < pos.size(); ++i) {
        if (pos[i] < 0 || pos[i] >= f.size())
          throw std::invalid_argument("layer_key_similarity: a position past the full cache");
        f.k_row(pos[i], a.data());
        p.k_row(int64_t(i), b.data());
        double ab = 0, aa = 0, bb = 0;
        for (int64_t k = 0; k < hd; ++k) {
          ab += double(a[size_t(k)]) * b[size_t(k)];
          aa += double(a[size_t(k)]) * a[size_t(k)];
          bb += double(b[size_t(k)]) * b[size_t(k)];
        }
        sum += aa > 0 && bb > 0 ? ab / std::sqrt(aa * bb) : 1.0;
        ++count;
      }
    }
    out[size_t(l)] = count ? sum / double(count) : 1.0;
  }
  return out;
}

}  // namespace fairkv::kv
