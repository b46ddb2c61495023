// Budget allocation: how many tokens each layer / head chooses outside the observation window.
#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>
#include <stdexcept>
#include <string>

#include "kv/compress.h"

namespace fairkv::kv {

std::vector<int64_t> distribute(int64_t total, std::span<const double> weight,
                                std::span<const int64_t> cap) {
  const size_t n = weight.size();
  if (cap.size() != n) throw std::invalid_argument("distribute: weight and cap sizes differ");
  std::vector<int64_t> out(n, 0);
  if (n == 0 || total <= 0) return out;
  int64_t cap_sum = 0;
  for (int64_t c : cap) cap_sum += std::max<int64_t>(c, 0);
  if (cap_sum <= total) {
    for (size_t i = 0; i < n; ++i) out[i] = std::max<int64_t>(cap[i], 0);
    return out;
  }
  // Water-filling: share in proportion to weight, pin the items that reach their cap and share
  // what they leave among the rest. Zero (or unusable) weights everywhere fall back to equal.
  std::vector<double> w(n);
  bool any = false;
  for (size_t i = 0; i < n; ++i) {
    w[i] = std::isfinite(weight[i]) && weight[i] > 0 ? weight[i] : 0.0;
    any = any || w[i] > 0;
  }
  if (!any) std::fill(w.begin(), w.end(), 1.0);
  std::vector<double> x(n, 0.0);
  std::vector<bool> pinned(n, false);
  double left = double(total);
  for (;;) {
    double wsum = 0;
    for (size_t i = 0; i < n; ++i)
      if (!pinned[i]) wsum += w[i];
    if (wsum <= 0) {
      // Only zero-weight items remain unpinned: share what is left equally among them.
      size_t free = 0;
      for (size_t i = 0; i < n; ++i) free += !pinned[i];
      for (size_t i = 0; i < n; ++i)
        if (!pinned[i]) w[i] = 1.0, wsum += 1.0;
      if (free == 0) break;
    }
    bool pinned_any = false;
    for (size_t i = 0; i < n; ++i) {
      if (pinned[i]) continue;
      x[i] = left * w[i] / wsum;
      if (x[i] >= double(cap[i])) {
        x[i] = double(std::max<int64_t>(cap[i], 0));
        pinned[i] = true;
        pinned_any = true;
      }
    }
    if (!pinned_any) break;
    left = double(total);
    for (size_t i = 0; i < n; ++i)
      if (pinned[i]) left -= x[i];
  }
  // Integers: floors, then one more to the largest remainders (lower index first among equals).
  int64_t given = 0;
  for (size_t i = 0; i < n; ++i) {
    out[i] = std::min<int64_t>(int64_t(std::floor(x[i] + 1e-9)), std::max<int64_t>(cap[i], 0));
    given += out[i];
  }
  std::vector<size_t> order(n);
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) {
    return x[a] - double(out[a]) > x[b] - double(out[b]);
  });
  // Floating error can leave the floors a few units off: cycle until the total is exact.
  for (bool progress = true; given < total && progress;) {
    progress = false;
    for (size_t i : order) {
      if (given == total) break;
      if (out[i] < cap[i]) ++out[i], ++given, progress = true;
    }
  }
  for (bool progress = true; given > total && progress;) {
    progress = false;
    for (auto it = order.rbegin(); it != order.rend() && given > total; ++it)
      if (out[*it] > 0) --out[*it], --given, progress = true;
  }
  return out;
}

std::vector<int64_t> pyramid_budgets(int64_t avg, int n_layers, int64_t available, double beta) {
  if (n_layers <= 0) return {};
  avg = std::clamp<int64_t>(avg, 0, available);
  if (n_layers == 1 || avg == available) return std::vector<int64_t>(size_t(n_layers), avg);
  // PyramidKV (pyramidkv_utils.py): min = avg / beta, max = 2 avg - min, so that the mean is avg;
  // a max beyond the prompt is clipped and the min raised by as much. Layer l gets
  // max - (max - min) l / (L - 1); here exactly, with the integer rounding spread by
  // distribute() so that the layers add up to L x avg.
  double mn = double(avg) / beta, mx = 2.0 * double(avg) - mn;
  if (mx > double(available)) {
    mx = double(available);
    mn = 2.0 * double(avg) - mx;
  }
  std::vector<double> w(static_cast<size_t>(n_layers));
  for (int l = 0; l < n_layers; ++l) w[size_t(l)] = mx - (mx - mn) * l / double(n_layers - 1);
  const std::vector<int64_t> cap(size_t(n_layers), available);
  return distribute(avg * n_layers, w, cap);
}

std::vector<std::vector<int64_t>> adakv_choose(std::span<const std::vector<float>> scores,
                                               int64_t avg, double alpha) {
  const size_t H = scores.size();
  std::vector<std::vector<int64_t>> chosen(H);
  if (H == 0) return chosen;
  const int64_t P = int64_t(scores[0].size());
  for (const auto& s : scores)
    if (int64_t(s.size()) != P)
      throw std::invalid_argument("adakv_choose: heads of one layer have different lengths");
  avg = std::clamp<int64_t>(avg, 0, P);
  // The safeguard: every head first takes its own top floor(alpha * avg) tokens, so that no head
  // starves (Ada-KV section 4, kvpress' AdaKVPress.alpha_safeguard).
  const int64_t floor_k = std::min(avg, int64_t(std::floor(alpha * double(avg) + 1e-9)));
  std::vector<std::vector<char>> taken(H, std::vector<char>(size_t(P), 0));
  for (size_t h = 0; h < H; ++h)
    for (int64_t j : top_k(scores[h], floor_k)) taken[h][size_t(j)] = 1;
  // Then one top-k over the remaining scores of all heads of the layer.
  const int64_t rest = int64_t(H) * (avg - floor_k);
  struct Cand {
    float s;
    int64_t j;
    size_t h;
  };
  std::vector<Cand> cand;
  cand.reserve(H * size_t(P - floor_k));
  for (size_t h = 0; h < H; ++h)
    for (int64_t j = 0; j < P; ++j)
      if (!taken[h][size_t(j)]) {
        const float s = scores[h][size_t(j)];
        cand.push_back({std::isnan(s) ? -std::numeric_limits<float>::infinity() : s, j, h});
      }
  if (rest > 0) {
    auto before = [](const Cand& a, const Cand& b) {
      if (a.s != b.s) return a.s > b.s;
      if (a.j != b.j) return a.j > b.j;
      return a.h < b.h;
    };
    const int64_t k = std::min<int64_t>(rest, int64_t(cand.size()));
    std::nth_element(cand.begin(), cand.begin() + k, cand.end(), before);
    for (int64_t i = 0; i < k; ++i) taken[cand[size_t(i)].h][size_t(cand[size_t(i)].j)] = 1;
  }
  for (size_t h = 0; h < H; ++h)
    for (int64_t j = 0; j < P; ++j)
      if (taken[h][size_t(j)]) chosen[h].push_back(j);
  return chosen;
}

std::vector<std::vector<int64_t>> critical_choose(const CompressionConfig& c,
                                                  std::span<const HeadScores* const> heads,
                                                  int64_t avg) {
  const size_t H = heads.size();
  if (H == 0) return {};
  const size_t P = heads[0]->score.size();
  for (const HeadScores* h : heads)
    if (h->score.size() != P || h->value_norm.size() < P ||
        (!c.critical_share && h->attention.size() != P))
      throw std::invalid_argument(
          "critical_choose: every head needs scores, value norms and attention for " +
          std::to_string(P) + " prefix tokens");
  avg = std::clamp<int64_t>(avg, 0, int64_t(P));
  // Stage 1: tokens kept by attention alone.
  std::vector<std::vector<int64_t>> first(H);
  if (c.critical_share) {
    // CriticalKV (kvpress CriticalAdaKVPress): each head's attention-only budget, of which the
    // top (1 - share) by score.
    std::vector<std::vector<float>> sc(H);
    for (size_t h = 0; h < H; ++h) sc[h] = heads[h]->score;
    const auto base = adakv_choose(sc, avg, c.resolved_alpha());
    for (size_t h = 0; h < H; ++h) {
      const int64_t k =
          int64_t(std::floor((1 - *c.critical_share) * double(base[h].size()) + 1e-9));
      first[h] = top_k(heads[h]->score, k);
    }
  } else {
    // DefensiveKV's reference: the top tokens by mean attention until, with the window's own
    // share, they reach critical_mass of the window's attention (the token that reaches it is
    // not taken, as its argmax of the cumulative sum), at most avg.
    for (size_t h = 0; h < H; ++h) {
      const double target = c.critical_mass - heads[h]->window_mass;
      std::vector<int64_t> by_att(P);
      std::iota(by_att.begin(), by_att.end(), int64_t(0));
      const auto& a = heads[h]->attention;
      std::stable_sort(by_att.begin(), by_att.end(), [&](int64_t x, int64_t y) {
        return a[size_t(x)] != a[size_t(y)] ? a[size_t(x)] > a[size_t(y)] : x > y;
      });
      int64_t count = 0;
      double sum = 0;
      while (count < int64_t(P) && sum + double(a[size_t(by_att[size_t(count)])]) < target)
        sum += double(a[size_t(by_att[size_t(count++)])]);
      if (target <= 0) count = 0;
      by_att.resize(size_t(std::min(count, avg)));
      std::sort(by_att.begin(), by_att.end());
      first[h] = std::move(by_att);
    }
  }
  // Stage 2: scores re-weighted by the value norms, normalised over the layer's heads per token;
  // the stage-1 tokens rank above everything; then Ada-KV's layer-wide top-k.
  std::vector<std::vector<float>> combined(H, std::vector<float>(P));
  for (size_t j = 0; j < P; ++j) {
    double denom = 0;
    for (size_t h = 0; h < H; ++h) denom += std::max(0.0f, heads[h]->value_norm[j]);
    for (size_t h = 0; h < H; ++h) {
      const double w =
          denom > 0 ? std::max(0.0f, heads[h]->value_norm[j]) / denom : 1.0 / double(H);
      combined[h][j] = float(double(heads[h]->score[j]) * w);
    }
  }
  for (size_t h = 0; h < H; ++h)
    for (int64_t j : first[h]) combined[h][size_t(j)] = std::numeric_limits<float>::infinity();
  return adakv_choose(combined, avg, c.resolved_alpha());
}

std::vector<int64_t> headkv_budgets(const HeadImportance& imp, int64_t avg, int64_t available,
                                    double beta) {
  const size_t N = imp.importance.size();
  avg = std::clamp<int64_t>(avg, 0, available);
  double total_imp = 0;
  for (double v : imp.importance) total_imp += v;
  // HeadKV: a base of avg - avg / beta for every head, and a pool of N x avg / beta shared in
  // proportion to importance; the weights sum to N x avg.
  const double base = double(avg) - double(avg) / beta, pool = double(avg) / beta * double(N);
  std::vector<double> w(N);
  for (size_t i = 0; i < N; ++i)
    w[i] = base + (total_imp > 0 ? imp.importance[i] / total_imp : 1.0 / double(N)) * pool;
  const std::vector<int64_t> cap(N, available);
  return distribute(avg * int64_t(N), w, cap);
}

std::vector<int64_t> cake_budgets(std::span<const double> preference, int64_t avg,
                                  int64_t available) {
  // CAKE: B_l = P_l / sum P x (L x avg), capped at the prompt with the excess handed on
  // (adjust_budgets); distribute() does both and keeps the total exact.
  avg = std::clamp<int64_t>(avg, 0, available);
  const std::vector<int64_t> cap(preference.size(), available);
  return distribute(avg * int64_t(preference.size()), preference, cap);
}

int64_t zipvl_count(std::span<const std::vector<float>> scores, double tau, int64_t cap) {
  if (scores.empty()) return 0;
  const size_t P = scores[0].size();
  std::vector<float> mean(P, 0.0f);
  double prefix = 0;
  for (size_t j = 0; j < P; ++j) {
    double v = 0;
    for (const auto& s : scores) v += s[j];
    mean[j] = float(v / double(scores.size()));
    prefix += mean[j];
  }
  // The window's rows sum to 1: what the prefix does not hold, the window (always kept) does.
  double mass = std::max(0.0, 1.0 - prefix);
  std::vector<int64_t> by_score(P);
  std::iota(by_score.begin(), by_score.end(), int64_t(0));
  // Highest first, ties to the more recent token, as top_k.
  std::sort(by_score.begin(), by_score.end(), [&](int64_t a, int64_t b) {
    return mean[size_t(a)] != mean[size_t(b)] ? mean[size_t(a)] > mean[size_t(b)] : a > b;
  });
  int64_t k = 0;
  while (k < int64_t(P) && k < cap && mass < tau) mass += mean[size_t(by_score[size_t(k++)])];
  return k;
}

}  // namespace fairkv::kv
