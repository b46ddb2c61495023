// Worked cases of the per-layer and per-head policies added after the first eight: small score
// sets solved by hand in the comments.
#include <gtest/gtest.h>

#include "kv/compress.h"
#include "kv/compress_test_util.h"

namespace fairkv::kv {
namespace {

using test::Idx;

// Scores of L layers x H heads over a prefix of P tokens, prompt n = P + W.
PromptScores scores(int L, int H, int64_t W, std::vector<std::vector<float>> heads) {
  PromptScores s;
  s.n_layers = L;
  s.n_kv_heads = H;
  s.window = W;
  s.n_prompt = int64_t(heads[0].size()) + W;
  for (auto& h : heads) s.heads.push_back({std::move(h), 0, 0, {}, 0, {}, {}});
  return s;
}

TEST(ZipVL, LayerCountReachesTauByHand) {
  // Layer 0: mean attention [0.4, 0.2, 0.1, 0.1] (sum 0.8), so the window holds 0.2.
  // tau 0.85: 0.2 + 0.4 = 0.6, + 0.2 = 0.8, + 0.1 = 0.9 >= 0.85: three tokens.
  // Layer 1: prefix 4 x 0.02 = 0.08, the window 0.92 >= 0.85 already: none.
  const auto s = scores(2, 2, 2,
                        {{0.5f, 0.1f, 0.1f, 0.1f},
                         {0.3f, 0.3f, 0.1f, 0.1f},
                         {0.02f, 0.02f, 0.02f, 0.02f},
                         {0.02f, 0.02f, 0.02f, 0.02f}});
  CompressionConfig c;
  c.policy = Policy::ZipVL;
  c.window = 2;
  c.zipvl_tau = 0.85;
  c.resolve();  // no size needed: tau sizes it
  const auto sel = select_tokens(c, s);
  // Each head its own top 3, ties to the more recent token; the window {4, 5} always.
  EXPECT_EQ(sel[0], (Idx{0, 2, 3, 4, 5}));
  EXPECT_EQ(sel[1], (Idx{0, 1, 3, 4, 5}));
  EXPECT_EQ(sel[2], (Idx{4, 5}));
  EXPECT_EQ(sel[3], (Idx{4, 5}));
  // A budget of 3 caps every head at one token besides the window: head 1's tie 0.3 / 0.3 goes
  // to token 1.
  c.budget = 3;
  c.resolve();
  const auto capped = select_tokens(c, s);
  EXPECT_EQ(capped[0], (Idx{0, 4, 5}));
  EXPECT_EQ(capped[1], (Idx{1, 4, 5}));
  EXPECT_EQ(capped[2], (Idx{4, 5}));
  // tau 1 keeps every token whose attention is not zero: all four here.
  EXPECT_EQ(zipvl_count(std::vector<std::vector<float>>{{0.5f, 0.1f, 0.1f, 0.1f}}, 1.0, 99), 4);
}

TEST(ZipVL, BruteForceOnRandomWindows) {
  // The count is the smallest k whose top-k mass (by the layer's mean) plus the window's reaches
  // tau: checked against trying every k.
  const int L = 2, H = 3, G = 2;
  const int64_t W = 4, n = 40;
  const auto probs = test::random_probs(L, H, G, W, n, 9);
  CompressionConfig c;
  c.policy = Policy::ZipVL;
  c.window = W;
  c.zipvl_tau = 0.9;
  c.resolve();
  const auto sel = compress(c, probs.data(), L, H, G, W, n);
  for (int l = 0; l < L; ++l) {
    std::vector<double> mean(size_t(n - W), 0.0);
    for (int h = 0; h < H; ++h)
      for (int g = 0; g < G; ++g)
        for (int64_t i = 0; i < W; ++i)
          for (int64_t j = 0; j < n - W; ++j)
            mean[size_t(j)] +=
                probs[size_t((((l * H + h) * G + g) * W + i) * n + j)] / double(W * G * H);
    std::vector<double> sorted = mean;
    std::sort(sorted.rbegin(), sorted.rend());
    double total = 0;
    for (double v : mean) total += v;
    int64_t want = 0;
    for (double mass = 1 - total; mass < 0.9 && want < n - W; ++want) mass += sorted[size_t(want)];
    for (int h = 0; h < H; ++h) EXPECT_EQ(int64_t(sel[size_t(l * H + h)].size()), want + W);
  }
}

TEST(CompressKV, RetrievalHeadsChooseAndErrorsSplitTheLayers) {
  // Budget 3, window 1: two tokens chosen per head on average out of four.
  // Eviction error of the uniform split (mass outside each head's top 2):
  //   layer 0: [.4 .1 .3 0] leaves .1, [.1 .2 0 .5] leaves .1: 0.2
  //   layer 1: four x .1 leaves .2 in each head: 0.4
  // 4 tokens (2 layers x 2) split 1 : 2 -> 1.33 / 2.67 -> 1 and 3 (largest remainder).
  // Layer 0's retrieval head is head 1 (0.3 > 0.1): its top 1 is token 3, for both heads.
  // Layer 1's is head 0: all tied, so the three most recent, 1 2 3.
  auto s = scores(2, 2, 1,
                  {{0.4f, 0.1f, 0.3f, 0.0f},
                   {0.1f, 0.2f, 0.0f, 0.5f},
                   {0.1f, 0.1f, 0.1f, 0.1f},
                   {0.1f, 0.1f, 0.1f, 0.1f}});
  CompressionConfig c = test::config(Policy::CompressKV, 3, 1);
  c.head_importance = HeadImportance{2, 2, {0.1, 0.3, 0.4, 0.2}};
  c.resolve();
  EXPECT_EQ(compresskv_budgets(s.heads, 2, 2, 2, 4), (Idx{1, 3}));
  const auto sel = select_tokens(c, s);
  EXPECT_EQ(sel[0], (Idx{3, 4}));
  EXPECT_EQ(sel[1], (Idx{3, 4}));
  EXPECT_EQ(sel[2], (Idx{1, 2, 3, 4}));
  EXPECT_EQ(sel[3], (Idx{1, 2, 3, 4}));
  // Two retrieval heads in layer 0 average to [.25 .15 .15 .25]: the tie goes to token 3.
  c.compresskv_heads = 2;
  EXPECT_EQ(select_tokens(c, s)[0], (Idx{3, 4}));
  // The policy needs the importance file, by name.
  CompressionConfig bare = test::config(Policy::CompressKV, 3, 1);
  EXPECT_THROW(bare.resolve(), std::invalid_argument);
}

TEST(TaskKV, FarHeadsKeepTheBudgetOthersSinksAndMiddle) {
  // Head outputs (0,0) (1,0) (0,3) (0,1): centre (.25, 1), squared distances 1.06, 1.56, 4.06,
  // 0.06: with share 0.5 heads 2 and 1 are the heterogeneous ones.
  const std::vector<float> wide = {0.9f, 0.1f, 0.5f, 0.2f, 0.6f, 0.3f, 0.05f, 0.4f};
  const std::vector<float> near = {0.9f, 0.8f, 0.1f, 0.1f, 0.1f, 0.1f, 0.1f, 0.7f};
  auto s = scores(1, 4, 1, {near, wide, wide, near});
  const std::vector<std::vector<float>> out = {{0, 0}, {1, 0}, {0, 3}, {0, 1}};
  for (size_t h = 0; h < 4; ++h) s.heads[h].head_output = out[h];
  std::vector<const HeadScores*> layer;
  for (const auto& h : s.heads) layer.push_back(&h);
  EXPECT_EQ(taskkv_heterogeneous(layer, 0.5), (std::vector<int>{1, 2}));
  EXPECT_EQ(taskkv_heterogeneous(layer, 0.25), (std::vector<int>{2}));
  // Budget 5, window 1: 4 chosen. Heterogeneous heads: top 4 of `wide` = 0 4 2 7. The others:
  // sink 0, then the two best middle tokens of `near` after it, 1 and 7.
  CompressionConfig c = test::config(Policy::TaskKV, 5, 1);
  c.sinks = 1;
  c.taskkv_middle = 2;
  c.resolve();
  const auto sel = select_tokens(c, s);
  EXPECT_EQ(sel[0], (Idx{0, 1, 7, 8}));
  EXPECT_EQ(sel[1], (Idx{0, 2, 4, 7, 8}));
  EXPECT_EQ(sel[2], (Idx{0, 2, 4, 7, 8}));
  EXPECT_EQ(sel[3], (Idx{0, 1, 7, 8}));
}

TEST(TaskKV, ShareOneIsSnapKV) {
  const int L = 2, H = 3, G = 2;
  const int64_t W = 4, n = 40;
  const auto probs = test::random_probs(L, H, G, W, n, 13);
  CompressionConfig t = test::config(Policy::TaskKV, 12, W),
                    snap = test::config(Policy::SnapKV, 12, W);
  t.taskkv_share = 1;
  t.resolve();
  snap.resolve();
  EXPECT_EQ(compress(t, probs.data(), L, H, G, W, n), compress(snap, probs.data(), L, H, G, W, n));
  // Share 0: every head keeps the 4 sinks, min(8, 8 - 4) = 4 middle tokens and the window.
  t.taskkv_share = 0;
  for (const auto& v : compress(t, probs.data(), L, H, G, W, n)) {
    EXPECT_EQ(v.size(), 12u);
    EXPECT_EQ(Idx(v.begin(), v.begin() + 4), (Idx{0, 1, 2, 3}));
  }
}

TEST(TaskKV, HeadOutputsFromTheCacheSeparateTheHeads) {
  // Three heads attend alike (a quarter on each of 4 tokens) but head 2's values are (4, 0)
  // where the others' are zero: outputs (0,0) (0,0) (4,0), centre (4/3, 0), head 2 the far one.
  // From the attention rows alone the heads are all at the centre and the tie goes to head 0.
  const int H = 3;
  const int64_t n = 4;
  CompressionConfig c = test::config(Policy::TaskKV, 3, 1);
  c.sinks = 1;
  c.taskkv_middle = 0;
  c.taskkv_share = 1.0 / 3;
  c.resolve();
  SequenceCache cache(1, H, 2, KvType::F32);
  for (int h = 0; h < H; ++h) {
    const float k[8] = {}, v[8] = {4, 0, 4, 0, 4, 0, 4, 0}, zero[8] = {};
    cache.head(0, h).append(k, h == 2 ? v : zero, n);
  }
  const float row[4] = {0.25f, 0.25f, 0.25f, 0.25f};
  ScoreCollector with(c, 1, H), without(c, 1, H);
  for (int h = 0; h < H; ++h) {
    with.observe(0, h, row, 1, 1, n);
    without.observe(0, h, row, 1, 1, n);
  }
  ASSERT_TRUE(with.needs_head_outputs());
  with.set_head_outputs(cache);
  // Budget 3, window 1: the far head keeps its top 2 (all tied: the recent 1, 2), the others
  // the sink 0; every head the window, 3.
  EXPECT_EQ(with.select(n), (Selection{{0, 3}, {0, 3}, {1, 2, 3}}));
  EXPECT_EQ(without.select(n), (Selection{{1, 2, 3}, {0, 3}, {0, 3}}));
}

}  // namespace
}  // namespace fairkv::kv
