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

#include "kv/compress_test_util.h"

namespace fairkv::kv {
namespace {

using namespace test;

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

}  // namespace
}  // namespace fairkv::kv
