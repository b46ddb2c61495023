// A rank's shard holds exactly the slices its placement names: the Wq/Wk/Wv rows and Wo columns
// of its units and its part of the MLP, byte for byte (quantized blocks copied as they are).
#include <gtest/gtest.h>

#include <cstring>
#include <filesystem>
#include <string>

#include "model/model.h"
#include "placement/planners.h"
#include "runtime/model_placement.h"
#include "runtime/shard.h"

namespace fairkv::runtime {
namespace {

namespace pl = placement;

pl::Placement split_placement(const model::ModelConfig& c, int devices) {
  pl::Profile p = model_profile(c, 10.0);
  for (int l = 0; l < c.n_layers; ++l) p.tokens[size_t(l)][0] = 1000.0;
  pl::PlanOptions o;
  o.planner = pl::PlannerKind::Split;
  o.devices = devices;
  return pl::plan(p, pl::cost_model_for(p, 1, "none", "f32"), o);
}

std::vector<float> dequant_row(const kernels::WeightMatrix& m, int64_t r) {
  std::vector<float> out(size_t(m.cols));
  kernels::dequantize_row(m.type, m.row(r), out.data(), m.cols);
  return out;
}

TEST(Shard, SlicesAreTheUnitsRowsAndColumns) {
  const std::string path =
      std::string(FAIRKV_SHARED_DIR) + "/models/synthetic/llama-gqa4-q8_0.gguf";
  if (!std::filesystem::exists(path)) GTEST_SKIP() << path << " is absent";
  const auto m = model::Model::load(path);
  const model::ModelConfig& c = m->config;
  const int R = 3;
  const pl::Placement p = split_placement(c, R);
  const int64_t hd = c.head_dim, group = c.group();
  int64_t ff_covered = 0;
  size_t units_held = 0;
  for (int r = 0; r < R; ++r) {
    const ShardedWeights s = shard_weights(c, m->weights, p, r);
    EXPECT_TRUE(s.notes.empty()) << s.notes.front();  // 32-wide heads: whole Q8_0 blocks
    size_t owned = 0;
    for (const auto& o : s.owned) owned += o.size();
    EXPECT_EQ(s.bytes, owned);
    EXPECT_EQ(s.ff_begin, ff_covered);  // the ranks' MLP parts tile [0, ff)
    ff_covered = s.ff_end;
    EXPECT_EQ(s.ff_begin % 32, 0);
    for (int l = 0; l < c.n_layers; ++l) {
      const model::LayerWeights& L = m->weights.layers[size_t(l)];
      const ShardLayer& S = s.layers[size_t(l)];
      units_held += S.units.size();
      ASSERT_EQ(S.wo.type, L.wo.type);
      for (const HeldUnit& u : S.units) {
        for (int64_t i = 0; i < u.q_rows; ++i)
          ASSERT_EQ(std::memcmp(S.wq.row(u.q_row + i), L.wq.row(u.head * group * hd + i),
                                kernels::row_bytes(L.wq.type, L.wq.cols)),
                    0);
        for (int64_t i = 0; i < hd; ++i) {
          const size_t rb = kernels::row_bytes(L.wk.type, L.wk.cols);
          ASSERT_EQ(std::memcmp(S.wk.row(u.kv_row + i), L.wk.row(u.head * hd + i), rb), 0);
          ASSERT_EQ(std::memcmp(S.wv.row(u.kv_row + i), L.wv.row(u.head * hd + i), rb), 0);
        }
        for (int64_t e = 0; e < c.n_embd; e += 17) {
          const auto full = dequant_row(L.wo, e), mine = dequant_row(S.wo, e);
          for (int64_t j = 0; j < u.q_rows; ++j)
            ASSERT_EQ(mine[size_t(u.q_row + j)], full[size_t(u.head * group * hd + j)]);
        }
      }
      for (int64_t e = 0; e < c.n_embd; e += 13) {
        const auto full = dequant_row(L.w_down, e), mine = dequant_row(S.down, e);
        for (int64_t j = 0; j < s.ff_end - s.ff_begin; ++j)
          ASSERT_EQ(mine[size_t(j)], full[size_t(s.ff_begin + j)]);
      }
      ASSERT_EQ(std::memcmp(S.gate.row(0), L.w_gate.row(s.ff_begin),
                            kernels::row_bytes(L.w_gate.type, c.n_embd)),
                0);
    }
  }
  EXPECT_EQ(ff_covered, c.n_ff);
  // The output matrix by vocabulary: the ranks' slices are its rows, in order.
  int64_t v_covered = 0;
  for (int r = 0; r < R; ++r) {
    const ShardedWeights s = shard_weights(c, m->weights, p, r);
    EXPECT_EQ(s.vocab_begin, v_covered);
    v_covered = s.vocab_end;
    ASSERT_EQ(s.output.rows, s.vocab_end - s.vocab_begin);
    const size_t rb = kernels::row_bytes(m->weights.output.type, c.n_embd);
    for (int64_t i = 0; i < s.output.rows; ++i)
      ASSERT_EQ(std::memcmp(s.output.row(i), m->weights.output.row(s.vocab_begin + i), rb), 0);
  }
  EXPECT_EQ(v_covered, c.n_vocab);
  // The heavy units are cut into token slices, but only each unit's tail holds its weights: every
  // unit is held exactly once.
  int replicas = 0;
  for (int x : p.replicas) replicas += x;
  EXPECT_GT(replicas, 0);
  EXPECT_EQ(units_held, size_t(c.n_layers * c.n_kv_heads));
}

TEST(Shard, MlpRangesTileAndAlign) {
  for (int64_t ff : {172, 704, 1024, 28672})
    for (int R = 1; R <= 8; ++R) {
      int64_t at = 0;
      for (int r = 0; r < R; ++r) {
        int64_t f0, f1;
        mlp_range(ff, r, R, 32, &f0, &f1);
        EXPECT_EQ(f0, at);
        EXPECT_LE(f0, f1);
        if (ff % 32 == 0) {
          EXPECT_EQ(f0 % 32, 0);
        }
        at = f1;
      }
      EXPECT_EQ(at, ff);
    }
}

TEST(Shard, VocabRangesTileInEqualBlocks) {
  for (int64_t vocab : {1, 5, 512, 32000, 128256})
    for (int R = 1; R <= 8; ++R) {
      const int64_t block = (vocab + R - 1) / R;
      int64_t at = 0;
      for (int r = 0; r < R; ++r) {
        int64_t v0, v1;
        vocab_range(vocab, r, R, &v0, &v1);
        EXPECT_EQ(v0, at);
        EXPECT_LE(v1 - v0, block);  // every slice fits the all-gather's block
        EXPECT_EQ(v1 - v0, std::min(block, vocab - v0));
        at = v1;
      }
      EXPECT_EQ(at, vocab);
    }
}

TEST(Shard, RejectsAPlacementOfAnotherShape) {
  const std::string path = std::string(FAIRKV_SHARED_DIR) + "/models/stories260K.gguf";
  if (!std::filesystem::exists(path)) GTEST_SKIP() << path << " is absent";
  const auto m = model::Model::load(path);
  pl::Placement p;
  p.planner = "tp";
  p.devices = 2;
  p.kv_heads = 2;
  p.layers.resize(1);
  EXPECT_THROW(shard_weights(m->config, m->weights, p, 0), std::invalid_argument);
}

}  // namespace
}  // namespace fairkv::runtime
