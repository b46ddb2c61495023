#include "model/layer_steps.h"

#include <gtest/gtest.h>

#include <cmath>
#include <stdexcept>
#include <vector>

namespace fairkv::model {
namespace {

ModelConfig tiny_config() {
  ModelConfig c;
  c.n_layers = 1;
  c.n_embd = 8;
  c.n_heads = 4;
  c.n_kv_heads = 2;
  c.head_dim = 2;
  c.n_ff = 16;
  c.n_vocab = 3;
  return c;
}

TEST(LayerSteps, GatherAndScatterMoveAUnitsColumns) {
  // Three rows of width 6; the unit's columns are [2, 5).
  std::vector<float> m(18);
  for (size_t i = 0; i < m.size(); ++i) m[i] = float(i);
  std::vector<float> g(9);
  LayerSteps::gather(&m[2], 6, 3, 3, g.data());
  EXPECT_EQ(g, (std::vector<float>{2, 3, 4, 8, 9, 10, 14, 15, 16}));
  std::vector<float> back(18, -1.0f);
  LayerSteps::scatter(g.data(), 3, 3, &back[2], 6);
  for (size_t i = 0; i < back.size(); ++i)
    EXPECT_EQ(back[i], (i % 6 >= 2 && i % 6 < 5) ? m[i] : -1.0f) << i;
}

// A share that stores the new rows appends them and is causal over them; one that does not
// sees all of the rows it holds.
TEST(LayerSteps, UnitAttentionAppendsOnlyWhenItStores) {
  const ModelConfig c = tiny_config();
  kernels::ThreadPool pool(1);
  const LayerSteps steps(c, pool, kernels::Activations::Float32);
  kv::HeadStore store(c.head_dim, kv::KvType::F32);
  const std::vector<float> old_k = {1, 0, 0, 1}, old_v = {1, 2, 3, 4};
  store.append(old_k.data(), old_v.data(), 2);
  std::vector<float> q(2 * 2 * 2, 0.5f), k = {1, 1, 0, 1}, v = {5, 6, 7, 8}, out(8), lse(4);
  const kv::AttentionArgs a =
      steps.unit_attention(store, q.data(), 2, 2, k.data(), v.data(), out.data(), lse.data());
  EXPECT_EQ(store.size(), 4);
  EXPECT_EQ(a.visible, 2);
  EXPECT_EQ(a.n_tokens, 2);
  EXPECT_EQ(a.group, 2);
  EXPECT_FLOAT_EQ(a.scale, 1.0f / std::sqrt(2.0f));
  const kv::AttentionArgs b =
      steps.unit_attention(store, q.data(), 2, 2, nullptr, nullptr, out.data(), lse.data());
  EXPECT_EQ(store.size(), 4);
  EXPECT_EQ(b.visible, 4);
}

TEST(LayerSteps, WindowByHeadIsHeadMajor) {
  kv::HeadStore store(2, kv::KvType::F32);
  const std::vector<float> kv4(6, 1.0f);
  store.append(kv4.data(), kv4.data(), 3);
  kv::AttentionArgs a;
  a.store = &store;
  a.n_tokens = 5;
  a.group = 2;
  std::vector<float> probs;
  LayerSteps::request_window(a, 2, probs);
  ASSERT_EQ(a.probs_tokens, 2);
  ASSERT_EQ(probs.size(), size_t(2 * 2 * 3));
  // Token-major: probs[(t * heads + g) * n + j] = 100 t + 10 g + j.
  for (int t = 0; t < 2; ++t)
    for (int g = 0; g < 2; ++g)
      for (int j = 0; j < 3; ++j) probs[size_t((t * 2 + g) * 3 + j)] = float(100 * t + 10 * g + j);
  std::vector<float> by_head;
  LayerSteps::window_by_head(a, probs, by_head);
  for (int g = 0; g < 2; ++g)
    for (int t = 0; t < 2; ++t)
      for (int j = 0; j < 3; ++j)
        EXPECT_EQ(by_head[size_t((g * 2 + t) * 3 + j)], float(100 * t + 10 * g + j));
}

TEST(LayerSteps, EmbedRejectsTokensOutsideTheVocabulary) {
  const ModelConfig c = tiny_config();
  kernels::ThreadPool pool(1);
  const LayerSteps steps(c, pool, kernels::Activations::Float32);
  std::vector<float> table(size_t(c.n_vocab * c.n_embd), 0.0f);
  kernels::WeightMatrix emb;
  emb.type = kernels::DType::F32;
  emb.data = table.data();
  emb.rows = c.n_vocab;
  emb.cols = c.n_embd;
  std::vector<float> x(size_t(c.n_embd));
  const std::vector<int32_t> bad = {3};
  EXPECT_THROW(steps.embed(emb, bad, x.data()), std::out_of_range);
}

// With segments, linear and logits make one matmul per segment of rows, with its mode: each
// row's result is that of its segment's call alone.
TEST(LayerSteps, SegmentsSplitTheMatmulCalls) {
  using kernels::Batching;
  const ModelConfig c = tiny_config();
  kernels::ThreadPool pool(2);
  LayerSteps steps(c, pool, kernels::Activations::LikeGgml);
  const int64_t rows = 8, E = c.n_embd, out = 5;
  std::vector<float> wf(size_t(out * E)), x(size_t(rows * E));
  for (size_t i = 0; i < wf.size(); ++i) wf[i] = std::sin(float(i));
  for (size_t i = 0; i < x.size(); ++i) x[i] = std::cos(float(3 * i));
  const kernels::WeightMatrix w{kernels::DType::F32, out, E, wf.data(), 0};
  const std::vector<RowSegment> segs = {
      {0, 3, Batching::Invariant}, {3, 7, Batching::Fastest}, {7, 8, Batching::Invariant}};
  steps.set_segments(segs);

  std::vector<float> y(size_t(rows * out)), want(y.size());
  steps.linear(w, x.data(), rows, y.data());
  for (const RowSegment& s : segs)
    kernels::matmul(w, &x[size_t(s.begin * E)], s.end - s.begin, &want[size_t(s.begin * out)], pool,
                    kernels::Activations::LikeGgml, s.batching);
  EXPECT_EQ(y, want);

  // Logits of x rows 2, 5, 6 and 7: three calls, rows {2}, {5, 6} and {7}.
  const std::vector<float> norm_w(size_t(E), 1.0f);
  const std::vector<int64_t> logit_rows = {2, 5, 6, 7};
  std::vector<float> normed, logits(4 * size_t(out)), want_logits(logits.size());
  steps.logits(norm_w.data(), w, x.data(), logit_rows, normed, logits.data());
  const std::vector<float> n_copy = normed;
  kernels::matmul(w, &n_copy[0], 1, &want_logits[0], pool, kernels::Activations::LikeGgml,
                  Batching::Invariant);
  kernels::matmul(w, &n_copy[size_t(E)], 2, &want_logits[size_t(out)], pool,
                  kernels::Activations::LikeGgml, Batching::Fastest);
  kernels::matmul(w, &n_copy[size_t(3 * E)], 1, &want_logits[size_t(3 * out)], pool,
                  kernels::Activations::LikeGgml, Batching::Invariant);
  EXPECT_EQ(logits, want_logits);

  EXPECT_THROW(steps.linear(w, x.data(), rows - 1, y.data()), std::logic_error);
  EXPECT_THROW(steps.set_segments({{0, 3, Batching::Fastest}, {4, 8, Batching::Fastest}}),
               std::invalid_argument);
  EXPECT_THROW(steps.set_segments({{0, 0, Batching::Fastest}}), std::invalid_argument);
}

}  // namespace
}  // namespace fairkv::model
