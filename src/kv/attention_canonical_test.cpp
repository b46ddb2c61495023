// The canonical blocked order (attention_merge.h): a unit's rows cut into token slices at
// multiples of kCanonicalRows, each slice attended alone into its blocks' partials
// (AttentionArgs::blocks), the partials folded in row order with merge_block and finished with
// finish_partial, give attend's output over the whole store bit for bit: every KV type, group,
// head_dim, decode and causal prefill rows, slices that are empty or start mid-store. The
// log-sum-exp merge of the slices' outputs (merge_partials) is checked to differ, so the
// comparison can fail.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <limits>
#include <random>
#include <stdexcept>
#include <string>
#include <vector>

#include "kv/attention.h"
#include "kv/attention_merge.h"
#include "kv/attention_test_util.h"

namespace fairkv::kv {
namespace {

using test::randn;
using test::sz;

struct Sliced {
  std::vector<float> out;         // the fold of the slices' blocks
  std::vector<float> lse_merged;  // the slices' outputs merged by log-sum-exp instead
  std::vector<float> lse_out;
};

// Rows [0, len) of k, v (len x d) cut at `cuts` (multiples of kCanonicalRows, ascending; the last
// slice takes the rest), each slice a store of its own; queries of n tokens whose first sees
// rows [0, visible + 1).
Sliced attend_sliced(const std::vector<float>& k, const std::vector<float>& v, int64_t len,
                     int64_t d, KvTypes t, const std::vector<float>& q, int64_t n, int G,
                     int64_t visible, const std::vector<int64_t>& cuts) {
  std::vector<int64_t> bounds = {0};
  bounds.insert(bounds.end(), cuts.begin(), cuts.end());
  bounds.push_back(len);
  const int64_t rows = n * G, partial = kPartialHeader + d;
  std::vector<float> m(sz(rows), -std::numeric_limits<float>::infinity()), l(sz(rows), 0.0f);
  std::vector<float> o(sz(rows * d), 0.0f);
  std::vector<std::vector<float>> outs, lses;
  for (size_t i = 0; i + 1 < bounds.size(); ++i) {
    const int64_t b = bounds[i], e = bounds[i + 1];
    HeadStore s(d, t);
    if (e > b) s.append(&k[sz(b * d)], &v[sz(b * d)], e - b);
    AttentionArgs a;
    a.store = &s;
    a.q = q.data();
    a.n_tokens = n;
    a.group = G;
    a.scale = 1.0f / std::sqrt(float(d));
    a.visible = visible - b;
    const int64_t nb = attend_blocks(a);
    std::vector<float> blocks(sz(rows * nb * partial), 7.0f);
    std::vector<float> part_out(sz(rows * d));
    a.out = part_out.data();
    a.blocks = blocks.data();
    attend(a);
    for (int64_t r = 0; r < rows; ++r)
      for (int64_t j = 0; j < nb; ++j) {
        const float* p = &blocks[sz((r * nb + j) * partial)];
        merge_block(m[sz(r)], l[sz(r)], &o[sz(r * d)], p[0], p[1], p + kPartialHeader, d);
      }
    // Today's merge of token slices: each slice's output and log-sum-exp.
    a.blocks = nullptr;
    outs.emplace_back(sz(rows * d));
    lses.emplace_back(sz(rows));
    a.out = outs.back().data();
    a.lse = lses.back().data();
    attend(a);
  }
  Sliced r;
  r.out.resize(sz(rows * d));
  for (int64_t i = 0; i < rows; ++i)
    finish_partial(m[sz(i)], l[sz(i)], &o[sz(i * d)], d, &r.out[sz(i * d)], nullptr);
  std::vector<const float*> po, pl;
  for (size_t i = 0; i < outs.size(); ++i) {
    po.push_back(outs[i].data());
    pl.push_back(lses[i].data());
  }
  r.lse_merged.resize(sz(rows * d));
  r.lse_out.resize(sz(rows));
  merge_partials(int(outs.size()), po.data(), pl.data(), rows, d, r.lse_merged.data(),
                 r.lse_out.data());
  return r;
}

struct Case {
  KvTypes type;
  int64_t head_dim;
  int group;
};

class CanonicalOrder : public ::testing::TestWithParam<Case> {};

TEST_P(CanonicalOrder, TokenSlicesFoldToTheWholeStoresBits) {
  const Case c = GetParam();
  const int64_t d = c.head_dim, C = kCanonicalRows;
  const int G = c.group;
  std::mt19937 rng(uint32_t(d * 17 + G));
  int lse_differs = 0, compared = 0;
  // Lengths below one block, at a block's end and beyond (ends off the kernels' 64-key steps and
  // panels too); cuts into 1..4 slices, some empty.
  const std::vector<std::pair<int64_t, std::vector<int64_t>>> cases = {
      {37, {}},
      {C - 27, {0}},
      {C, {C}},
      {3 * C + 8, {C}},
      {3 * C + 8, {2 * C, 3 * C}},
      {7 * C + 7, {C, 4 * C}},
      {7 * C + 7, {0, 3 * C, 6 * C}},
      {15 * C + 40, {5 * C, 10 * C, 14 * C}},
      {15 * C + 40, {8 * C, 8 * C}},
      {12 * C + 9, {C * 3, C * 9, C * 12}}};
  for (const auto& [len, cuts] : cases)
    for (const int64_t n : {int64_t(1), int64_t(5)}) {
      SCOPED_TRACE(kv_types_name(c.type) + " d " + std::to_string(d) + " G " + std::to_string(G) +
                   " len " + std::to_string(len) + " cuts " + std::to_string(cuts.size()) +
                   " tokens " + std::to_string(n));
      const auto k = randn(len * d, rng, 2.0f), v = randn(len * d, rng);
      const auto q =
          kv_type_quantized(c.type.k) ? test::q8_exact(n * G * d, rng) : randn(n * G * d, rng);
      HeadStore whole(d, c.type);
      whole.append(k.data(), v.data(), len);
      std::vector<float> want(sz(n * G * d)), want_lse(sz(n * G));
      AttentionArgs a;
      a.store = &whole;
      a.q = q.data();
      a.n_tokens = n;
      a.group = G;
      a.scale = 1.0f / std::sqrt(float(d));
      a.visible = len - n;  // the last n rows are the tokens' own
      a.out = want.data();
      a.lse = want_lse.data();
      attend(a);
      const Sliced got = attend_sliced(k, v, len, d, c.type, q, n, G, len - n, cuts);
      ASSERT_EQ(std::memcmp(got.out.data(), want.data(), want.size() * sizeof(float)), 0);
      if (!cuts.empty() && len > C) {
        ++compared;
        lse_differs +=
            std::memcmp(got.lse_merged.data(), want.data(), want.size() * sizeof(float)) != 0;
        test::expect_close(got.lse_merged, want, 1e-5f, "lse merge");
      }
    }
  // Merging the slices' outputs by log-sum-exp agrees only to rounding.
  EXPECT_GT(lse_differs, compared / 2);
}

INSTANTIATE_TEST_SUITE_P(Types, CanonicalOrder,
                         ::testing::Values(Case{KvType::F32, 64, 3}, Case{KvType::F32, 40, 1},
                                           Case{KvType::F16, 64, 8}, Case{KvType::F16, 128, 4},
                                           Case{KvType::BF16, 64, 3}, Case{KvType::BF16, 128, 8},
                                           Case{KvTypes(KvType::Q8_0), 64, 3},
                                           Case{KvTypes(KvType::Q4_0, KvType::F16), 64, 4}),
                         [](const ::testing::TestParamInfo<Case>& i) {
                           std::string n = kv_types_name(i.param.type) + "_d" +
                                           std::to_string(i.param.head_dim) + "_g" +
                                           std::to_string(i.param.group);
                           for (char& ch : n)
                             if (!std::isalnum(static_cast<unsigned char>(ch))) ch = '_';
                           return n;
                         });

// One block's partial, finished, is attend's output: below kCanonicalRows rows a store is
// attended as one pass, the way it was before the canonical order.
TEST(CanonicalOrderBlocks, OneBlockFinishedIsTheOutputAndCountsFollowTheRows) {
  std::mt19937 rng(5);
  const int64_t d = 64, len = 50;
  HeadStore s = test::random_store(len, d, KvType::F16, rng);
  const auto q = randn(2 * d, rng);
  std::vector<float> out(sz(2 * d)), lse(2), blocks(sz(2 * (kPartialHeader + d)));
  AttentionArgs a;
  a.store = &s;
  a.q = q.data();
  a.group = 2;
  a.scale = 0.125f;
  a.visible = len - 1;
  ASSERT_EQ(attend_blocks(a), 1);
  a.out = out.data();
  a.lse = lse.data();
  attend(a);
  std::vector<float> again(out.size());
  a.out = again.data();
  a.lse = nullptr;
  a.blocks = blocks.data();
  attend(a);  // writing blocks changes nothing of the output
  EXPECT_EQ(std::memcmp(again.data(), out.data(), out.size() * sizeof(float)), 0);
  for (int r = 0; r < 2; ++r) {
    std::vector<float> o(sz(d));
    float l = 0;
    const float* p = &blocks[sz(r * (kPartialHeader + d))];
    finish_partial(p[0], p[1], p + kPartialHeader, d, o.data(), &l);
    EXPECT_EQ(std::memcmp(o.data(), &out[sz(r * d)], sz(d) * sizeof(float)), 0);
    EXPECT_EQ(l, lse[sz(r)]);
  }
  // Blocks touched by [begin, hi): from begin's block to hi - 1's.
  const int64_t C = kCanonicalRows;
  HeadStore big = test::random_store(4 * C + 44, d, KvType::F16, rng);
  a.store = &big;
  a.visible = 4 * C + 43;
  EXPECT_EQ(attend_blocks(a), 5);
  a.begin = C + 36;
  EXPECT_EQ(attend_blocks(a), 4);
  a.end = 2 * C;
  EXPECT_EQ(attend_blocks(a), 1);
  a.begin = 2 * C;
  EXPECT_EQ(attend_blocks(a), 0);
  // ggml's order has no blocks.
  a.ggml_order = true;
  EXPECT_THROW(attend(a), std::invalid_argument);
}

}  // namespace
}  // namespace fairkv::kv
