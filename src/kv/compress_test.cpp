#include "kv/compress.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <numeric>
#include <random>
#include <set>
#include <thread>

#include <nlohmann/json.hpp>

namespace fairkv::kv {
namespace {

size_t sz(int64_t x) {
  return static_cast<size_t>(x);
}
using Idx = std::vector<int64_t>;

// Window probabilities [layer][kv head][group][window][n]: causal softmax rows of random logits
// with a few spikes, so that heads differ in how concentrated they are.
std::vector<float> random_probs(int L, int H, int G, int64_t W, int64_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<double> z(0.0, 1.0);
  std::uniform_real_distribution<double> u(0.0, 1.0);
  std::vector<float> p(sz(int64_t(L) * H * G * W * n), 0.0f);
  for (int64_t r = 0; r < int64_t(L) * H * G * W; ++r) {
    const int64_t i = r % W, visible = n - W + i + 1;
    const double sharp = 0.5 + 3.0 * u(rng);
    std::vector<double> e(sz(visible));
    double sum = 0;
    for (int64_t j = 0; j < visible; ++j) {
      double x = sharp * z(rng);
      if (u(rng) < 0.05) x += 4;
      sum += e[sz(j)] = std::exp(x);
    }
    for (int64_t j = 0; j < visible; ++j) p[sz(r * n + j)] = float(e[sz(j)] / sum);
  }
  return p;
}

CompressionConfig config(Policy p, int64_t budget, int64_t window) {
  CompressionConfig c;
  c.policy = p;
  c.budget = budget;
  c.window = window;
  return c;
}

Idx range(int64_t a, int64_t b) {
  Idx v(sz(b - a));
  std::iota(v.begin(), v.end(), a);
  return v;
}

// ---- Building blocks, by hand ----

TEST(Pool1d, MatchesTorchSemantics) {
  const std::vector<float> x = {1, 5, 2, 0, 3};
  const auto avg = pool1d(x, Pooling::Avg, 3);  // zero padding counted: divide by 3 at the ends
  const std::vector<float> want_avg = {6.0f / 3, 8.0f / 3, 7.0f / 3, 5.0f / 3, 3.0f / 3};
  for (size_t i = 0; i < x.size(); ++i) EXPECT_FLOAT_EQ(avg[i], want_avg[i]);
  EXPECT_EQ(pool1d(x, Pooling::Max, 3), (std::vector<float>{5, 5, 5, 3, 3}));
  EXPECT_EQ(pool1d(x, Pooling::Max, 7), (std::vector<float>{5, 5, 5, 5, 5}));
  EXPECT_EQ(pool1d(x, Pooling::None, 7), x);
  EXPECT_EQ(pool1d(x, Pooling::Avg, 1), x);
}

TEST(TopK, TiesGoToTheMoreRecentToken) {
  const std::vector<float> s = {1, 3, 3, 2, 3};
  EXPECT_EQ(top_k(s, 2), (Idx{2, 4}));
  EXPECT_EQ(top_k(s, 4), (Idx{1, 2, 3, 4}));
  EXPECT_EQ(top_k(s, 0), Idx{});
  EXPECT_EQ(top_k(s, 9), range(0, 5));
  const std::vector<float> nan = {NAN, 0.5f, -1.0f};
  EXPECT_EQ(top_k(nan, 2), (Idx{1, 2}));  // NaN ranks last
}

TEST(Distribute, ExactTotalsProportionalAndCapped) {
  const std::vector<double> eq = {1, 1, 1};
  const std::vector<int64_t> big = {10, 10, 10};
  EXPECT_EQ(distribute(10, eq, big), (std::vector<int64_t>{4, 3, 3}));
  // 7.5 / 2.5, the first capped at 5: its excess goes to the other.
  const std::vector<double> w = {3, 1};
  const std::vector<int64_t> cap = {5, 100};
  EXPECT_EQ(distribute(10, w, cap), (std::vector<int64_t>{5, 5}));
  // Caps below the total: everything capped.
  const std::vector<int64_t> small = {1, 2, 3};
  EXPECT_EQ(distribute(10, eq, small), small);
  // Zero weights share equally.
  const std::vector<double> zero = {0, 0};
  const std::vector<int64_t> c2 = {9, 9};
  EXPECT_EQ(distribute(5, zero, c2), (std::vector<int64_t>{3, 2}));
  // Random instances: exact total, caps respected, within one of the water-filled share.
  std::mt19937 rng(1);
  for (int it = 0; it < 200; ++it) {
    const size_t n = 1 + rng() % 9;
    std::vector<double> wt(n);
    std::vector<int64_t> cp(n);
    int64_t cap_sum = 0;
    for (size_t i = 0; i < n; ++i) {
      wt[i] = (rng() % 4 == 0) ? 0.0 : double(rng() % 1000) / 7;
      cp[i] = rng() % 50;
      cap_sum += cp[i];
    }
    const int64_t total = rng() % 300;
    const auto out = distribute(total, wt, cp);
    EXPECT_EQ(std::accumulate(out.begin(), out.end(), int64_t(0)), std::min(total, cap_sum));
    for (size_t i = 0; i < n; ++i) {
      EXPECT_GE(out[i], 0);
      EXPECT_LE(out[i], cp[i]);
    }
  }
}

TEST(PyramidBudgets, LinearDescentAveragingTheBudget) {
  // avg 10, beta 20: min 0.5, max 19.5; layers 19.5, 14.75, 10, 5.25, 0.5 rounded to add to 50.
  EXPECT_EQ(pyramid_budgets(10, 5, 1000, 20), (std::vector<int64_t>{20, 15, 10, 5, 0}));
  // max clipped at the prompt (12 available): max 12, min 8: 12, 11, 10, 9, 8.
  EXPECT_EQ(pyramid_budgets(10, 5, 12, 20), (std::vector<int64_t>{12, 11, 10, 9, 8}));
  EXPECT_EQ(pyramid_budgets(10, 1, 1000, 20), (std::vector<int64_t>{10}));
  for (int L : {2, 7, 32}) {
    const auto b = pyramid_budgets(37, L, 500, 20);
    EXPECT_EQ(std::accumulate(b.begin(), b.end(), int64_t(0)), 37 * L);
    EXPECT_TRUE(std::is_sorted(b.rbegin(), b.rend()));  // non-increasing over layers
  }
}

TEST(HeadkvBudgets, BasePlusImportanceShare) {
  // avg 10, beta 2: base 5 each, pool 10 shared 3:1 -> 12.5, 7.5 -> 13, 7.
  HeadImportance imp{1, 2, {3, 1}};
  EXPECT_EQ(headkv_budgets(imp, 10, 100, 2), (std::vector<int64_t>{13, 7}));
  // Uniform importance: the uniform split.
  HeadImportance flat{2, 2, {1, 1, 1, 1}};
  EXPECT_EQ(headkv_budgets(flat, 9, 100, 1.01), (std::vector<int64_t>{9, 9, 9, 9}));
  // A head capped by the prompt hands its excess to the others.
  HeadImportance peak{1, 3, {100, 1, 1}};
  const auto b = headkv_budgets(peak, 10, 15, 1.01);
  EXPECT_EQ(b[0], 15);
  EXPECT_EQ(b[0] + b[1] + b[2], 30);
}

TEST(CakeBudgets, ProportionalToPreference) {
  const std::vector<double> p = {1, 3};
  EXPECT_EQ(cake_budgets(p, 4, 100), (std::vector<int64_t>{2, 6}));
  const std::vector<double> q = {1, 9};  // 0.8 / 7.2, the second capped at 5
  EXPECT_EQ(cake_budgets(q, 4, 5), (std::vector<int64_t>{3, 5}));
}

// ---- Policies on hand-worked tensors ----

TEST(SnapKV, HandWorkedWindowMeansAndPooling) {
  // One head, window 2 (tokens 6, 7), 6 prefix tokens, budget 4: 2 chosen + the window.
  const int64_t n = 8, W = 2;
  const std::vector<float> probs = {0.1f, 0.3f, 0.0f, 0.0f, 0.2f, 0.1f, 0.3f, 0.0f,
                                    0.1f, 0.1f, 0.0f, 0.4f, 0.0f, 0.0f, 0.2f, 0.2f};
  // Window means over the prefix: 0.1 0.2 0.0 0.2 0.1 0.05.
  auto c = config(Policy::SnapKV, 4, W);
  c.pooling = Pooling::None;
  c.resolve();
  EXPECT_EQ(compress(c, probs.data(), 1, 1, 1, W, n)[0], (Idx{1, 3, 6, 7}));
  // Avg-pooled (kernel 3): 0.1 0.1 0.133 0.1 0.117 0.05 -> tokens 2 and 4.
  c.pooling = Pooling::Avg;
  c.pool_kernel = 3;
  EXPECT_EQ(compress(c, probs.data(), 1, 1, 1, W, n)[0], (Idx{2, 4, 6, 7}));
}

TEST(SnapKV, GqaMeanOrMaxOverTheGroup) {
  // Two query heads, window 1; prefix rows 0.6 0 0 0.2 0 and 0 0.3 0.3 0.2 0 (+0.2 on the window).
  const int64_t n = 6, W = 1;
  const std::vector<float> probs = {0.6f, 0, 0, 0.2f, 0, 0.2f, 0, 0.3f, 0.3f, 0.2f, 0, 0.2f};
  auto c = config(Policy::SnapKV, 3, W);
  c.pooling = Pooling::None;
  c.resolve();
  // mean 0.3 0.15 0.15 0.2 0 -> 0, 3.
  EXPECT_EQ(compress(c, probs.data(), 1, 1, 2, W, n)[0], (Idx{0, 3, 5}));
  // max 0.6 0.3 0.3 0.2 0 -> 0 and the later of the tied 1, 2.
  c.gqa = GqaCombine::Max;
  EXPECT_EQ(compress(c, probs.data(), 1, 1, 2, W, n)[0], (Idx{0, 2, 5}));
}

TEST(Streaming, SinksAndRecentTokens) {
  auto c = config(Policy::Streaming, 10, 32);
  c.resolve();
  PromptScores s{2, 3, 50, 0, {}};
  const auto sel = select_tokens(c, s);
  ASSERT_EQ(sel.size(), 6u);
  for (const auto& v : sel) EXPECT_EQ(v, (Idx{0, 1, 2, 3, 44, 45, 46, 47, 48, 49}));
}

TEST(Full, KeepsEverything) {
  CompressionConfig c;
  c.resolve();
  EXPECT_FALSE(c.needs_scores());
  PromptScores s{2, 2, 17, 0, {}};
  for (const auto& v : select_tokens(c, s)) EXPECT_EQ(v, range(0, 17));
}

TEST(Cake, HandWorkedPreferenceAndIndicator) {
  // Two layers, one head, window 2, prefix 3. Layer 0's window rows agree on the prefix
  // (variance 0: preference 0); layer 1's disagree.
  const int64_t n = 5, W = 2;
  const std::vector<float> probs = {
      0.2f, 0.2f, 0.2f, 0.4f, 0.0f, 0.2f, 0.2f, 0.2f, 0.2f, 0.2f,  // layer 0
      0.6f, 0.0f, 0.0f, 0.4f, 0.0f, 0.0f, 0.6f, 0.0f, 0.2f, 0.2f,  // layer 1
  };
  auto c = config(Policy::Cake, 3, W);
  c.pooling = Pooling::None;
  c.resolve();
  const HeadScores h1 = score_head(c, probs.data() + 10, 1, W, n);
  // Entropy over the prefix: -2 x 0.6 ln 0.6 (zeros count 0 ln 1e-10 = 0).
  EXPECT_NEAR(h1.entropy, -2 * 0.6 * std::log(0.6), 1e-6);
  // Unbiased variance over the 2 rows: (0.6)^2 / 2 for columns 0 and 1.
  EXPECT_NEAR(h1.variance, 0.36, 1e-6);
  // Indicator: mean + 200 var = 0.3 + 36 for columns 0, 1, 0 for column 2.
  ASSERT_EQ(h1.score.size(), 3u);
  EXPECT_NEAR(h1.score[0], 36.3, 1e-4);
  EXPECT_NEAR(h1.score[2], 0.0, 1e-6);
  const HeadScores h0 = score_head(c, probs.data(), 1, W, n);
  EXPECT_NEAR(h0.variance, 0.0, 1e-12);
  // Budget 3 = window + 1 per layer on average: layer 0 (preference 0) gets none, layer 1 two.
  const auto sel = compress(c, probs.data(), 2, 1, 1, W, n);
  EXPECT_EQ(sel[0], (Idx{3, 4}));
  EXPECT_EQ(sel[1], (Idx{0, 1, 3, 4}));
}

TEST(DefensiveKV, WorstCaseOverRowsAndHeadsLiftedToTheMean) {
  // Group 2, window 2, prefix 4 (window columns left 0: only the prefix matters here).
  const int64_t n = 6, W = 2;
  const std::vector<float> probs = {
      0.1f, 0.5f, 0.1f, 0.1f, 0, 0, 0.2f, 0.2f, 0.2f, 0.2f, 0, 0,  // query head 0
      0.3f, 0.1f, 0.1f, 0.1f, 0, 0, 0.1f, 0.1f, 0.6f, 0.1f, 0, 0,  // query head 1
  };
  auto c = config(Policy::DefensiveKV, 4, W);
  c.pooling = Pooling::None;
  c.resolve();
  // Worst case 0.3 0.5 0.6 0.2, mean 0.4: 0.4 0.5 0.6 0.4.
  const HeadScores h = score_head(c, probs.data(), 2, W, n);
  ASSERT_EQ(h.score.size(), 4u);
  const std::vector<float> want = {0.4f, 0.5f, 0.6f, 0.4f};
  for (size_t j = 0; j < 4; ++j) EXPECT_NEAR(h.score[j], want[j], 1e-6);
  EXPECT_EQ(compress(c, probs.data(), 1, 1, 2, W, n)[0], (Idx{1, 2, 4, 5}));
  // Pooling keeps each row's mass. Avg-pooled (3), token 1 of each row: 0.7/3 of 2.2/3 (row mass
  // 0.8), 0.6/3 of 2/3 (0.8), 0.5/3 of 1.4/3 (0.6), 0.8/3 of 2.5/3 (0.9): the last is the worst
  // case, 0.288, above the mean over tokens (0.2615).
  c.pooling = Pooling::Avg;
  c.pool_kernel = 3;
  const HeadScores hp = score_head(c, probs.data(), 2, W, n);
  EXPECT_NEAR(hp.score[1], 0.8 / 2.5 * 0.9, 1e-6);
  // Token 0's worst case, 0.6/3 of 2.2/3 x 0.8 = 0.218, is below the mean of the worst cases
  // (0.218, 0.288, 0.288 and 0.7/3 of 2.5/3 x 0.9 = 0.252 for tokens 0..3): lifted to it.
  const double mean = (0.6 / 2.2 * 0.8 + 0.288 + 0.288 + 0.7 / 2.5 * 0.9) / 4;
  EXPECT_NEAR(hp.score[0], mean, 1e-6);
  EXPECT_NEAR(hp.score[3], std::max(0.7 / 2.5 * 0.9, mean), 1e-6);
}

// ---- Brute force: Ada-KV's choice is the best-scoring set with the floors ----

TEST(AdaKV, LayerWideTopKWithFloorIsTheBestFeasibleSet) {
  std::mt19937 rng(3);
  std::uniform_real_distribution<float> u(0.0f, 1.0f);
  const int H = 3;
  const int64_t P = 5, avg = 2;
  for (double alpha : {0.0, 0.5, 1.0}) {
    for (int it = 0; it < 20; ++it) {
      std::vector<std::vector<float>> s(H, std::vector<float>(sz(P)));
      for (auto& h : s)
        for (float& x : h) x = u(rng) * (h.data() == s[0].data() ? 3.0f : 1.0f);
      const auto got = adakv_choose(s, avg, alpha);
      const int64_t floor_k = int64_t(std::floor(alpha * avg + 1e-9));
      // Enumerate every set of H x avg (head, token) pairs that holds each head's top floor_k.
      double best = -1;
      std::vector<Idx> best_sel;
      const int N = H * int(P);
      for (uint32_t mask = 0; mask < (1u << N); ++mask) {
        if (__builtin_popcount(mask) != H * avg) continue;
        std::vector<Idx> sel(H);
        double sum = 0;
        for (int b = 0; b < N; ++b)
          if (mask >> b & 1) {
            sel[size_t(b / P)].push_back(b % P);
            sum += s[size_t(b / P)][size_t(b % P)];
          }
        bool ok = true;
        for (int h = 0; h < H; ++h)
          for (int64_t j : top_k(s[size_t(h)], floor_k))
            ok = ok && std::count(sel[size_t(h)].begin(), sel[size_t(h)].end(), j);
        if (ok && sum > best) best = sum, best_sel = sel;
      }
      ASSERT_EQ(got, best_sel) << "alpha " << alpha << " instance " << it;
    }
  }
}

// ---- Independent transcription of SnapKV scoring for random tensors ----

std::vector<float> ref_snap_scores(const float* probs, int G, int64_t W, int64_t n, bool gqa_max,
                                   bool avg_pool, int kernel) {
  const int64_t P = n - W;
  std::vector<double> comb(sz(P), gqa_max ? -1e300 : 0.0);
  for (int g = 0; g < G; ++g)
    for (int64_t j = 0; j < P; ++j) {
      double m = 0;
      for (int64_t i = 0; i < W; ++i) m += probs[(g * W + i) * n + j];
      m /= double(W);
      comb[sz(j)] = gqa_max ? std::max(comb[sz(j)], m) : comb[sz(j)] + m / G;
    }
  std::vector<float> out(sz(P));
  for (int64_t j = 0; j < P; ++j) {
    double acc = avg_pool ? 0.0 : -1e300;
    for (int64_t k = j - kernel / 2; k <= j + kernel / 2; ++k) {
      const double v = k >= 0 && k < P ? comb[sz(k)] : (avg_pool ? 0.0 : -1e300);
      acc = avg_pool ? acc + v : std::max(acc, v);
    }
    out[sz(j)] = float(avg_pool ? acc / kernel : acc);
  }
  return out;
}

TEST(SnapKV, RandomTensorsMatchAnIndependentTranscription) {
  const int L = 2, H = 3, G = 2;
  const int64_t W = 4, n = 40, B = 12;
  const auto probs = random_probs(L, H, G, W, n, 11);
  for (bool gmax : {false, true}) {
    auto c = config(Policy::SnapKV, B, W);
    c.gqa = gmax ? GqaCombine::Max : GqaCombine::Mean;
    c.resolve();
    const auto sel = compress(c, probs.data(), L, H, G, W, n);
    for (int i = 0; i < L * H; ++i) {
      const auto ref = ref_snap_scores(&probs[sz(i * G * W * n)], G, W, n, gmax, true, 5);
      // Brute force over the chosen set: every chosen score >= every unchosen one.
      const Idx& got = sel[sz(i)];
      ASSERT_EQ(int64_t(got.size()), B);
      std::set<int64_t> chosen(got.begin(), got.end() - W);
      ASSERT_EQ(int64_t(chosen.size()), B - W);
      float worst_in = 1e30f, best_out = -1e30f;
      for (int64_t j = 0; j < n - W; ++j) {
        if (chosen.count(j))
          worst_in = std::min(worst_in, ref[sz(j)]);
        else
          best_out = std::max(best_out, ref[sz(j)]);
      }
      EXPECT_GE(worst_in, best_out - 1e-7f) << "head " << i;
      EXPECT_EQ(Idx(got.end() - W, got.end()), range(n - W, n));
    }
  }
}

// ---- Properties over all policies ----

HeadImportance test_importance(int L, int H) {
  HeadImportance imp{L, H, {}};
  for (int i = 0; i < L * H; ++i) imp.importance.push_back(i % 3 == 0 ? 5.0 : 0.5 + 0.1 * i);
  return imp;
}

TEST(Policies, BudgetsAddUpAndTheWindowIsKept) {
  const int L = 3, H = 4, G = 2;
  const int64_t W = 8, n = 100, B = 24;
  const auto probs = random_probs(L, H, G, W, n, 21);
  for (auto name : policy_names()) {
    auto c = config(parse_policy(name), B, W);
    if (c.policy == Policy::Full) c.budget = 0;
    if (c.policy == Policy::HeadKV) c.head_importance = test_importance(L, H);
    c.resolve();
    const auto sel = compress(c, probs.data(), L, H, G, W, n);
    ASSERT_EQ(sel.size(), size_t(L * H)) << name;
    int64_t total = 0;
    for (int l = 0; l < L; ++l) {
      int64_t layer = 0;
      for (int h = 0; h < H; ++h) {
        const Idx& v = sel[sz(l * H + h)];
        ASSERT_TRUE(std::is_sorted(v.begin(), v.end()) &&
                    std::adjacent_find(v.begin(), v.end()) == v.end())
            << name;
        ASSERT_TRUE(v.empty() || (v.front() >= 0 && v.back() < n)) << name;
        if (c.policy != Policy::Streaming) {  // score-based policies (and full) keep the window
          ASSERT_GE(int64_t(v.size()), W) << name;
          EXPECT_EQ(Idx(v.end() - W, v.end()), range(n - W, n)) << name;
        }
        layer += int64_t(v.size());
      }
      const Policy p = c.policy;
      if (p == Policy::Full) {
        EXPECT_EQ(layer, H * n);
      } else if (p == Policy::Streaming || p == Policy::SnapKV || p == Policy::AdaKV ||
                 p == Policy::DefensiveKV) {
        EXPECT_EQ(layer, H * B) << name << " layer " << l;  // per-layer budgets
      }
      total += layer;
    }
    if (c.policy != Policy::Full) {
      EXPECT_EQ(total, L * H * B) << name;
    }
    // Uniform policies give every head the same count; the others may not.
    if (c.policy == Policy::SnapKV || c.policy == Policy::Streaming) {
      for (const auto& v : sel) EXPECT_EQ(int64_t(v.size()), B) << name;
    }
    if (c.policy == Policy::AdaKV) {  // the safeguard: window + floor(0.2 x 16) = 3 at least
      for (const auto& v : sel) EXPECT_GE(int64_t(v.size()), W + 3) << name;
    }
  }
}

TEST(Policies, ShortPromptsAreKeptWhole) {
  const int L = 2, H = 2, G = 1;
  for (int64_t n : {1, 5, 24}) {
    const int64_t W = std::min<int64_t>(8, n);
    const auto probs = random_probs(L, H, G, W, n, 5);
    for (auto name : policy_names()) {
      auto c = config(parse_policy(name), 24, 8);
      if (c.policy == Policy::Full) c.budget = 0;
      if (c.policy == Policy::HeadKV) c.head_importance = test_importance(L, H);
      c.resolve();
      for (const auto& v : compress(c, probs.data(), L, H, G, W, n))
        EXPECT_EQ(v, range(0, n)) << name << " n " << n;
    }
  }
}

TEST(Policies, RatioSizesTheBudgetFromThePrompt) {
  const int L = 2, H = 2, G = 2;
  const int64_t W = 4, n = 50;
  const auto probs = random_probs(L, H, G, W, n, 6);
  CompressionConfig c;
  c.policy = Policy::SnapKV;
  c.ratio = 0.3;  // 15 tokens per head
  c.window = W;
  c.resolve();
  EXPECT_EQ(c.budget_for(n), 15);
  for (const auto& v : compress(c, probs.data(), L, H, G, W, n)) EXPECT_EQ(v.size(), 15u);
}

TEST(AdaKV, AlphaOneIsSnapKVsUniformSplit) {
  const int L = 3, H = 4, G = 2;
  const int64_t W = 6, n = 90;
  const auto probs = random_probs(L, H, G, W, n, 8);
  for (int64_t B : {7, 20, 50}) {
    auto ada = config(Policy::AdaKV, B, W);
    ada.alpha = 1.0;
    ada.resolve();
    auto snap = config(Policy::SnapKV, B, W);
    snap.pooling = Pooling::Max;  // Ada-KV's scoring, uniform split
    snap.pool_kernel = 7;
    snap.resolve();
    EXPECT_EQ(compress(ada, probs.data(), L, H, G, W, n),
              compress(snap, probs.data(), L, H, G, W, n))
        << "budget " << B;
    // alpha < 1 really does move budget between heads.
    ada.alpha = 0.0;
    const auto free = compress(ada, probs.data(), L, H, G, W, n);
    std::set<size_t> sizes;
    for (const auto& v : free) sizes.insert(v.size());
    EXPECT_GT(sizes.size(), 1u) << "budget " << B;
  }
}

TEST(PyramidKV, LayersFollowThePyramidAndHeadsAreUniform) {
  const int L = 4, H = 2, G = 1;
  const int64_t W = 4, n = 200, B = 24;
  const auto probs = random_probs(L, H, G, W, n, 9);
  auto c = config(Policy::PyramidKV, B, W);
  c.resolve();
  const auto sel = compress(c, probs.data(), L, H, G, W, n);
  const auto lb = pyramid_budgets(B - W, L, n - W, 20);
  for (int l = 0; l < L; ++l)
    for (int h = 0; h < H; ++h) EXPECT_EQ(int64_t(sel[sz(l * H + h)].size()), lb[sz(l)] + W);
}

TEST(HeadKV, StaticBudgetsFollowImportance) {
  const int L = 2, H = 3, G = 1;
  const int64_t W = 4, n = 120, B = 20;
  const auto probs = random_probs(L, H, G, W, n, 10);
  auto c = config(Policy::HeadKV, B, W);
  c.head_importance = test_importance(L, H);
  c.resolve();
  const auto sel = compress(c, probs.data(), L, H, G, W, n);
  const auto hb = headkv_budgets(*c.head_importance, B - W, n - W, 1.01);
  for (int i = 0; i < L * H; ++i) EXPECT_EQ(int64_t(sel[sz(i)].size()), hb[sz(i)] + W);
  // The same heads get the same budgets on another prompt: static.
  const auto probs2 = random_probs(L, H, G, W, n, 99);
  const auto sel2 = compress(c, probs2.data(), L, H, G, W, n);
  for (int i = 0; i < L * H; ++i) EXPECT_EQ(sel[sz(i)].size(), sel2[sz(i)].size());
  c.head_importance = test_importance(L + 1, H);
  EXPECT_THROW(compress(c, probs.data(), L, H, G, W, n), std::invalid_argument);
}

TEST(ScoreCollector, HeadByHeadFromThreadsEqualsOneShot) {
  const int L = 3, H = 4, G = 2;
  const int64_t W = 5, n = 70;
  const auto probs = random_probs(L, H, G, W, n, 12);
  auto c = config(Policy::Cake, 20, W);
  c.resolve();
  ScoreCollector col(c, L, H);
  std::vector<std::thread> th;
  for (int t = 0; t < 2; ++t)
    th.emplace_back([&, t] {
      for (int i = t; i < L * H; i += 2)
        col.observe(i / H, i % H, &probs[sz(i * G * W * n)], G, W, n);
    });
  for (auto& x : th) x.join();
  EXPECT_EQ(col.select(n), compress(c, probs.data(), L, H, G, W, n));
}

TEST(ApplySelection, KeepsTheSelectedRows) {
  SequenceCache cache(2, 2, 4, KvType::F32);
  for (int l = 0; l < 2; ++l)
    for (int h = 0; h < 2; ++h)
      for (int t = 0; t < 10; ++t) {
        const float k[4] = {float(t), float(l), float(h), 0}, v[4] = {-float(t), 0, 0, 0};
        cache.head(l, h).append(k, v, 1);
      }
  const Selection sel = {{0, 9}, {1, 2, 3}, {9}, range(0, 10)};
  apply_selection(sel, cache);
  float row[4];
  for (int i = 0; i < 4; ++i) {
    const HeadStore& s = cache.head(i / 2, i % 2);
    ASSERT_EQ(s.size(), int64_t(sel[sz(i)].size()));
    for (int64_t r = 0; r < s.size(); ++r) {
      s.k_row(r, row);
      EXPECT_EQ(row[0], float(sel[sz(i)][sz(r)]));
      s.v_row(r, row);
      EXPECT_EQ(row[0], -float(sel[sz(i)][sz(r)]));
    }
  }
  EXPECT_EQ(cache.bytes(), size_t(2 + 3 + 1 + 10) * 2 * 4 * 4);
  EXPECT_THROW(apply_selection(Selection(3), cache), std::invalid_argument);
}

TEST(StatsJson, ReportsRaggedHeadsAndBytes) {
  SequenceCache a(2, 3, 8, KvType::F16), b(2, 3, 8, KvType::F16);
  std::vector<float> x(8 * 50, 0.5f);
  for (int l = 0; l < 2; ++l)
    for (int h = 0; h < 3; ++h) {
      a.head(l, h).append(x.data(), x.data(), 1 + l * 3 + h);
      b.head(l, h).append(x.data(), x.data(), 40 - h);
    }
  const SequenceCache* caches[] = {&a, &b};
  const int64_t prompts[] = {12, 40};
  const nlohmann::json j = stats_json(caches, prompts);
  EXPECT_EQ(j["layers"], 2);
  EXPECT_EQ(j["kv_heads"], 3);
  EXPECT_EQ(j["kv_type"], "f16");
  EXPECT_EQ(j["kv_bytes"], a.bytes() + b.bytes());
  ASSERT_EQ(j["sequences"].size(), 2u);
  EXPECT_EQ(j["sequences"][0]["prompt_tokens"], 12);
  EXPECT_EQ(j["sequences"][0]["kept"], nlohmann::json::parse("[[1,2,3],[4,5,6]]"));
  EXPECT_EQ(j["sequences"][1]["kept"], nlohmann::json::parse("[[40,39,38],[40,39,38]]"));
  EXPECT_EQ(j["sequences"][1]["kv_bytes"], b.bytes());
}

// ---- Configuration and input errors ----

std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const std::exception& e) {
    return e.what();
  }
  return "";
}

TEST(Config, ResolveNamesTheOptionAtFault) {
  CompressionConfig c;
  c.policy = Policy::AdaKV;
  c.budget = 64;
  c.gqa = GqaCombine::Max;
  c.resolve();
  EXPECT_EQ(c.describe(), "adakv budget=64 window=32 pool=max7 gqa=max alpha=0.2");

  CompressionConfig d;
  d.policy = Policy::SnapKV;
  EXPECT_EQ(error_of([&] { d.resolve(); }),
            "--kv-policy snapkv: needs a size: --kv-budget N (tokens per head) or --kv-ratio R");
  d.budget = 16;
  EXPECT_EQ(error_of([&] { d.resolve(); }),
            "--kv-budget: 16 is below the observation window (--kv-window 32), which every head "
            "keeps");
  d.ratio = 0.5;
  d.budget = 64;
  EXPECT_EQ(error_of([&] { d.resolve(); }), "--kv-budget / --kv-ratio: give one of them, not both");
  CompressionConfig h;
  h.policy = Policy::HeadKV;
  h.budget = 64;
  EXPECT_EQ(error_of([&] { h.resolve(); }),
            "--kv-head-importance: the headkv policy needs a head-importance file");
}

TEST(SelectTokens, RejectsScoresOfTheWrongShape) {
  auto c = config(Policy::SnapKV, 10, 4);
  c.resolve();
  PromptScores s{1, 2, 30, 4, {}};
  EXPECT_THROW(select_tokens(c, s), std::invalid_argument);  // no heads scored
  s.heads.resize(2);
  s.heads[0].score.resize(26);
  s.heads[1].score.resize(25);
  EXPECT_THROW(select_tokens(c, s), std::invalid_argument);  // one head too short
}

// ---- CriticalKV stage of DefensiveKV, and HeadKV importance from retrieval ----

// The top-k indices of a table of scores over all its cells (distinct values).
std::set<std::pair<size_t, int64_t>> top_cells(const std::vector<std::vector<float>>& v, size_t k) {
  std::vector<std::pair<float, std::pair<size_t, int64_t>>> all;
  for (size_t h = 0; h < v.size(); ++h)
    for (size_t j = 0; j < v[h].size(); ++j) all.push_back({v[h][j], {h, int64_t(j)}});
  std::sort(all.begin(), all.end(), [](auto& a, auto& b) { return a.first > b.first; });
  std::set<std::pair<size_t, int64_t>> out;
  for (size_t i = 0; i < k && i < all.size(); ++i) out.insert(all[i].second);
  return out;
}

TEST(CriticalKv, FixedSplitEqualsBruteForce) {
  // Two heads, six prefix tokens, 3 kept per head on average, no floor (alpha 0): stage 1 keeps
  // half of each head's attention-only share by score, stage 2 the rest by score x normalised
  // value norm, both as one layer-wide top-k.
  std::mt19937 rng(11);
  std::uniform_real_distribution<float> u(0.01f, 1.0f);
  for (int trial = 0; trial < 20; ++trial) {
    HeadScores a, b;
    for (HeadScores* h : {&a, &b}) {
      for (int j = 0; j < 6; ++j) {
        h->score.push_back(u(rng));
        h->value_norm.push_back(u(rng));
      }
    }
    CompressionConfig c;
    c.policy = Policy::DefensiveKV;
    c.alpha = 0.0;
    c.critical = true;
    c.critical_share = 0.5;
    const HeadScores* heads[] = {&a, &b};
    const auto got = critical_choose(c, heads, 3);
    // Reference.
    const std::vector<std::vector<float>> sc = {a.score, b.score};
    std::vector<size_t> base(2, 0);
    for (const auto& [h, j] : top_cells(sc, 6)) ++base[h];
    std::vector<std::vector<float>> comb(2, std::vector<float>(6));
    for (size_t h = 0; h < 2; ++h) {
      std::vector<int64_t> order(6);
      std::iota(order.begin(), order.end(), 0);
      std::sort(order.begin(), order.end(),
                [&](int64_t x, int64_t y) { return sc[h][size_t(x)] > sc[h][size_t(y)]; });
      for (int j = 0; j < 6; ++j) {
        const float vn = heads[h]->value_norm[size_t(j)];
        comb[h][size_t(j)] =
            sc[h][size_t(j)] * vn / (a.value_norm[size_t(j)] + b.value_norm[size_t(j)]);
      }
      for (size_t k = 0; k < base[h] / 2; ++k) comb[h][size_t(order[k])] = 1e30f;
    }
    std::vector<Idx> want(2);
    for (const auto& [h, j] : top_cells(comb, 6)) want[h].push_back(j);
    for (auto& w : want) std::sort(w.begin(), w.end());
    EXPECT_EQ(got, want) << "trial " << trial;
  }
}

TEST(HeadImportance, AnswerSpanIsTheLastLongestOccurrence) {
  const std::vector<int32_t> prompt = {1, 2, 3, 4, 5, 2, 3, 9};
  EXPECT_EQ(find_answer_span(prompt, std::vector<int32_t>{2, 3}),
            std::make_pair(int64_t(5), int64_t(7)));
  // A leading token that the prompt tokenizes differently is dropped.
  EXPECT_EQ(find_answer_span(prompt, std::vector<int32_t>{7, 3, 4}),
            std::make_pair(int64_t(2), int64_t(4)));
  EXPECT_FALSE(find_answer_span(prompt, std::vector<int32_t>{42}).has_value());
}

TEST(HeadImportance, ScoresRewardAttentionOnTheNeedle) {
  // Two query heads, two rows generating tokens 12 then 13, the needle [1, 4) = {11, 12, 13}.
  const std::vector<int32_t> tokens = {10, 11, 12, 13, 14}, targets = {12, 13};
  // probs: group x rows x n. Head 0 looks at the needle's matching tokens (0.6, then 0.3 with
  // 0.5 elsewhere); head 1 looks only outside the needle.
  const std::vector<float> probs = {0.1f, 0.1f, 0.6f, 0.1f, 0.1f, 0.5f, 0.1f, 0.0f, 0.3f, 0.1f,
                                    0.7f, 0.0f, 0.0f, 0.0f, 0.3f, 0.2f, 0.0f, 0.0f, 0.0f, 0.8f};
  double mass[2] = {0, 0}, hits[2] = {0, 0};
  accumulate_retrieval_scores(probs.data(), 2, 2, 5, tokens, targets, 1, 4, ImportanceScore::Mass,
                              mass);
  accumulate_retrieval_scores(probs.data(), 2, 2, 5, tokens, targets, 1, 4,
                              ImportanceScore::Retrieval, hits);
  EXPECT_NEAR(mass[0], 0.9, 1e-6);
  EXPECT_EQ(mass[1], 0.0);
  EXPECT_EQ(hits[0], 1.0);  // row 0's top is the needle's 12; row 1's top is outside
  EXPECT_EQ(hits[1], 0.0);
  EXPECT_THROW(accumulate_retrieval_scores(probs.data(), 2, 2, 5, tokens, targets, 3, 9,
                                           ImportanceScore::Mass, mass),
               std::invalid_argument);

  // Query heads to KV heads (group 2): the mean over the group, normalised to sum 1.
  const std::vector<double> q = {1.0, 3.0, 0.5,
                                 1.5};  // layer 0: KV head 0 {1, 3}, head 1 {.5, 1.5}
  const HeadImportance imp = importance_from_scores(q, 1, 2, 2);
  ASSERT_EQ(imp.importance.size(), 2u);
  EXPECT_NEAR(imp.importance[0], 2.0 / 3, 1e-12);  // means 2 and 1
  EXPECT_NEAR(imp.importance[1], 1.0 / 3, 1e-12);
}

}  // namespace
}  // namespace fairkv::kv
