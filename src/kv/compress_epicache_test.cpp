// EpiCache's building blocks against hand-solved cases and a brute-force reference: the token
// score (largest window attention), the sensitivity-driven layer budgets and the layer-wide
// choice over heads of different lengths.
#include <gtest/gtest.h>

#include <algorithm>
#include <random>
#include <tuple>

#include "kv/compress.h"
#include "kv/compress_test_util.h"

namespace fairkv::kv {
namespace {

using test::Idx;

CompressionConfig epicache(int64_t budget, int64_t window) {
  CompressionConfig c = test::config(Policy::EpiCache, budget, window);
  c.resolve();
  return c;
}

TEST(EpiCache, ScoreIsTheLargestWindowAttentionByHand) {
  // group 2, window 2, n 4: prefix tokens 0 and 1, window rows 2 and 3.
  // Query head 0: rows [0.5 0.1 0.4 0] and [0.2 0.3 0.1 0.4]; head 1: [0.1 0.6 0.3 0] and
  // [0.7 0.1 0.1 0.1]. Token 0: max(0.5, 0.2, 0.1, 0.7) = 0.7; token 1: max(0.1, 0.3, 0.6, 0.1)
  // = 0.6 (no pooling by default).
  const std::vector<float> probs = {0.5f, 0.1f, 0.4f, 0.0f, 0.2f, 0.3f, 0.1f, 0.4f,
                                    0.1f, 0.6f, 0.3f, 0.0f, 0.7f, 0.1f, 0.1f, 0.1f};
  const HeadScores h = score_head(epicache(3, 2), probs.data(), 2, 2, 4);
  EXPECT_EQ(h.score, (std::vector<float>{0.7f, 0.6f}));
}

TEST(EpiCache, LayerBudgetsBySensitivityByHand) {
  // Similarities [0.9, 0.5, 0.7] normalise to [1, 0, 0.5]; power 1 weighs [0, 1, 0.5]. Average 8:
  // floor 2 each, the other 3 x 6 = 18 split 0 : 12 : 6, so [2, 14, 8] (adds up to 24).
  const std::vector<double> sim = {0.9, 0.5, 0.7};
  EXPECT_EQ(epicache_budgets(sim, 1.0, 8, 100), (std::vector<int64_t>{2, 14, 8}));
  // Power 2 weighs [0, 1, 0.25]: 18 split 0 : 14.4 : 3.6, rounded by largest remainder to 14 : 4.
  EXPECT_EQ(epicache_budgets(sim, 2.0, 8, 100), (std::vector<int64_t>{2, 16, 6}));
  // Power 0 (the default), or equal similarities: uniform.
  EXPECT_EQ(epicache_budgets(sim, 0.0, 8, 100), (std::vector<int64_t>{8, 8, 8}));
  EXPECT_EQ(epicache_budgets(std::vector<double>{0.3, 0.3}, 2.0, 5, 100),
            (std::vector<int64_t>{5, 5}));
  // No layer takes more than is available (10, so 8 above the floor): layer 1 stops at 10, its
  // excess fills layer 2 to 10 too, and the 2 left go to layer 0 (weight 0): [4, 10, 10].
  EXPECT_EQ(epicache_budgets(sim, 1.0, 8, 10), (std::vector<int64_t>{4, 10, 10}));
}

TEST(EpiCache, RaggedLayerChoiceByHand) {
  // One layer, two heads of different lengths (block-wise prefill leaves them ragged), window 1.
  // Head 0 prefix scores [0.5 0.1 0.3], head 1 [0.3 0.9]. Budget 3 per head: 2 x (3 - 1) = 4
  // chosen over both heads: 0.9 (h1 t1), 0.5 (h0 t0), then 0.3 three times: h0 t2 and h1 t0
  // tie, ties go to the more recent token (h0's token 2) first, then h1's token 0.
  PromptScores s;
  s.n_layers = 1;
  s.n_kv_heads = 2;
  s.window = 1;
  s.n_prompt = 100;  // the whole prompt: sizes a ratio, unused with a budget
  s.heads.resize(2);
  s.heads[0].score = {0.5f, 0.1f, 0.3f};
  s.heads[1].score = {0.3f, 0.9f};
  const auto sel = select_tokens(epicache(3, 1), s);
  // Indices are the heads' own rows: head 0's window is its row 3, head 1's its row 2.
  EXPECT_EQ(sel[0], (Idx{0, 2, 3}));
  EXPECT_EQ(sel[1], (Idx{0, 1, 2}));
  // Budget 2: 2 chosen: 0.9 and 0.5.
  const auto small = select_tokens(epicache(2, 1), s);
  EXPECT_EQ(small[0], (Idx{0, 3}));
  EXPECT_EQ(small[1], (Idx{1, 2}));
  // A budget above what the heads hold keeps everything.
  const auto all = select_tokens(epicache(9, 1), s);
  EXPECT_EQ(all[0], (Idx{0, 1, 2, 3}));
  EXPECT_EQ(all[1], (Idx{0, 1, 2}));
}

TEST(EpiCache, ChoiceEqualsSortingEverything) {
  // Against the plainest reference: sort all (score, token, head) by score, then recency, then
  // head, and take the first k. Scores from a few levels, so that ties are common.
  std::mt19937 rng(7);
  for (int trial = 0; trial < 50; ++trial) {
    const int H = 1 + int(rng() % 4);
    std::vector<HeadScores> heads(static_cast<size_t>(H));
    std::vector<std::tuple<float, int64_t, int>> all;
    for (int h = 0; h < H; ++h) {
      const int64_t len = int64_t(rng() % 12);
      for (int64_t j = 0; j < len; ++j) {
        const float v = float(rng() % 5) / 4.0f;
        heads[size_t(h)].score.push_back(v);
        all.emplace_back(v, j, h);
      }
    }
    const int64_t k = int64_t(rng() % (all.size() + 2));
    std::sort(all.begin(), all.end(), [](const auto& a, const auto& b) {
      if (std::get<0>(a) != std::get<0>(b)) return std::get<0>(a) > std::get<0>(b);
      if (std::get<1>(a) != std::get<1>(b)) return std::get<1>(a) > std::get<1>(b);
      return std::get<2>(a) < std::get<2>(b);
    });
    std::vector<Idx> want(static_cast<size_t>(H));
    for (size_t i = 0; i < std::min<size_t>(size_t(k), all.size()); ++i)
      want[size_t(std::get<2>(all[i]))].push_back(std::get<1>(all[i]));
    for (auto& v : want) std::sort(v.begin(), v.end());
    std::vector<const HeadScores*> layer;
    for (const auto& h : heads) layer.push_back(&h);
    EXPECT_EQ(epicache_choose(layer, k), want) << "trial " << trial;
  }
}

TEST(EpiCache, OneShotKeepsTheBudgetPerLayer) {
  // On a whole prompt (every head the same length) each layer keeps H x budget rows exactly,
  // the window in every head.
  const int L = 3, H = 4, G = 2;
  const int64_t W = 4, n = 60, B = 12;
  const auto probs = test::random_probs(L, H, G, W, n, 5);
  const auto sel = compress(epicache(B, W), probs.data(), L, H, G, W, n);
  for (int l = 0; l < L; ++l) {
    int64_t rows = 0;
    for (int h = 0; h < H; ++h) {
      const Idx& v = sel[size_t(l * H + h)];
      rows += int64_t(v.size());
      EXPECT_EQ(Idx(v.end() - W, v.end()), test::range(n - W, n));
    }
    EXPECT_EQ(rows, H * B);
  }
}

TEST(EpiCache, RefusesABlockBelowTheWindowAndPowerWithoutProfile) {
  CompressionConfig c = test::config(Policy::EpiCache, 64, 32);
  c.epicache_block = 16;
  EXPECT_THROW(c.resolve(), std::invalid_argument);
  c.epicache_block = 64;
  c.epicache_power = 2;
  try {
    c.resolve();
    FAIL() << "power without a profile accepted";
  } catch (const std::invalid_argument& e) {
    EXPECT_NE(std::string(e.what()).find("--kv-layer-sensitivity"), std::string::npos);
  }
  c.layer_sensitivity = std::vector<double>{0.9, 0.8};
  EXPECT_NO_THROW(c.resolve());
}

}  // namespace
}  // namespace fairkv::kv
