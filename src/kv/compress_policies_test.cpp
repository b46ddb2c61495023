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
    if (c.policy == Policy::HeadKV || c.policy == Policy::CompressKV)
      c.head_importance = test_importance(L, H);
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
    if (c.policy == Policy::ZipVL || c.policy == Policy::TaskKV) {
      // The budget caps ZipVL's own size; Task-KV's other heads keep less than it.
      EXPECT_LE(total, L * H * B) << name;
    } else if (c.policy != Policy::Full) {
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
      if (c.policy == Policy::HeadKV || c.policy == Policy::CompressKV)
        c.head_importance = test_importance(L, H);
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

// CriticalKV's projected value norms: one layer of H = 2 KV heads, groups of 3, head_dim 8, W_o
// with 5 rows, 70 tokens (two token blocks). The layer's norms against the definition in double;
// and the per-head sums, taken by query-head ranges as ranks holding query slices take them, over
// the first 68 rows, give the same floats bit for bit.
TEST(CriticalKv, ProjectedValueNormsEqualTheDefinitionAndTheirParts) {
  const int H = 2, G = 3;
  const int64_t hd = 8, embd = 5, n = 70, cols = H * G * hd;
  std::mt19937 rng(5);
  std::normal_distribution<float> z(0.0f, 1.0f);
  SequenceCache cache(1, H, hd, KvType::F32);
  std::vector<std::vector<float>> vals(H);
  for (int h = 0; h < H; ++h) {
    std::vector<float> k(sz(n * hd));
    vals[sz(h)].resize(sz(n * hd));
    for (float& x : k) x = z(rng);
    for (float& x : vals[sz(h)]) x = z(rng);
    cache.head(0, h).append(k.data(), vals[sz(h)].data(), n);
  }
  std::vector<float> wo(sz(embd * cols));
  for (float& x : wo) x = z(rng);
  const auto norms = projected_value_norms(cache, 0, G, embd, [&](int64_t r, float* out) {
    std::copy_n(wo.begin() + r * cols, cols, out);
  });
  ASSERT_EQ(norms.size(), sz(H));
  for (int h = 0; h < H; ++h) {
    ASSERT_EQ(norms[sz(h)].size(), sz(n));
    for (int64_t j = 0; j < n; ++j) {
      double want = 0;
      for (int g = 0; g < G; ++g)
        for (int64_t r = 0; r < embd; ++r) {
          double d = 0;
          for (int64_t k = 0; k < hd; ++k)
            d += double(wo[sz(r * cols + (h * G + g) * hd + k)]) * vals[sz(h)][sz(j * hd + k)];
          want += std::fabs(d);
        }
      want /= G;
      EXPECT_NEAR(norms[sz(h)][sz(j)], want, 1e-5 * want) << "head " << h << " token " << j;
    }
    // Query heads [0, 1) on one rank and [1, 3) on another, over the first n - 2 rows.
    const int64_t m = n - 2;
    std::vector<double> sums;
    for (auto [q0, q1] : {std::pair{0, 1}, std::pair{1, 3}}) {
      const auto part = projected_value_sums(
          cache.head(0, h), m, q1 - q0, embd, [&, q0 = q0, q1 = q1](int64_t r, float* out) {
            std::copy_n(wo.begin() + r * cols + (h * G + q0) * hd, (q1 - q0) * hd, out);
          });
      ASSERT_EQ(part.size(), sz((q1 - q0) * m));
      sums.insert(sums.end(), part.begin(), part.end());
    }
    const auto got = mean_value_norms(sums, G);
    ASSERT_EQ(got.size(), sz(m));
    for (int64_t j = 0; j < m; ++j) EXPECT_EQ(got[sz(j)], norms[sz(h)][sz(j)]) << "token " << j;
  }
  EXPECT_THROW(mean_value_norms(std::vector<double>(7), G), std::invalid_argument);
  EXPECT_THROW(projected_value_sums(cache.head(0, 0), n + 1, 1, embd, [](int64_t, float*) {}),
               std::invalid_argument);
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
