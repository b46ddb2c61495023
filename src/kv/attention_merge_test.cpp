#include "kv/attention_merge.h"

#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <vector>

namespace fairkv::kv {
namespace {

constexpr float kNegInf = -std::numeric_limits<float>::infinity();

// The distributed form (each part scales its own output, the scaled outputs are summed) gives
// the merge of the form that holds every part.
TEST(AttentionMerge, WeightedSumEqualsMergePartials) {
  const int parts = 4;
  const int64_t d = 8;
  // Part 2 saw no token: lse -inf, output zero.
  const std::vector<float> lses = {1.5f, -3.25f, kNegInf, 7.0f};
  std::vector<std::vector<float>> outs(parts, std::vector<float>(size_t(d)));
  for (int p = 0; p < parts; ++p)
    for (int64_t i = 0; i < d; ++i)
      outs[size_t(p)][size_t(i)] = p == 2 ? 0.0f : float(std::sin(double(p * d + i)));
  std::vector<const float*> po, pl;
  for (int p = 0; p < parts; ++p) {
    po.push_back(outs[size_t(p)].data());
    pl.push_back(&lses[size_t(p)]);
  }
  std::vector<float> merged(static_cast<size_t>(d));
  float merged_lse = 0;
  merge_partials(parts, po.data(), pl.data(), 1, d, merged.data(), &merged_lse);

  std::vector<float> summed(size_t(d), 0.0f);
  double total = 0;
  for (int p = 0; p < parts; ++p) {
    const float w = merge_weight(lses[size_t(p)], lses.data(), parts, 1);
    if (p == 2) {
      EXPECT_EQ(w, 0.0f);
    }
    total += w;
    for (int64_t i = 0; i < d; ++i) summed[size_t(i)] += w * outs[size_t(p)][size_t(i)];
  }
  EXPECT_NEAR(total, 1.0, 1e-6);
  for (int64_t i = 0; i < d; ++i) EXPECT_NEAR(summed[size_t(i)], merged[size_t(i)], 1e-6f);
}

// Parts' lses sit `stride` floats apart, as ranks' blocks of an all-gather do.
TEST(AttentionMerge, WeightReadsStridedLses) {
  const std::vector<float> lses = {0.5f, 99.0f, 99.0f, 2.0f, 99.0f, 99.0f};
  const float w0 = merge_weight(lses[0], lses.data(), 2, 3);
  const float w1 = merge_weight(lses[3], lses.data(), 2, 3);
  EXPECT_NEAR(w0, 1.0 / (1.0 + std::exp(1.5)), 1e-7);
  EXPECT_NEAR(w0 + w1, 1.0f, 1e-7f);
}

}  // namespace
}  // namespace fairkv::kv
