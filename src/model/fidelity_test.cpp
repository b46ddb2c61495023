#include "model/fidelity.h"

#include <gtest/gtest.h>

#include <cmath>
#include <vector>

namespace fairkv::model {
namespace {

TEST(Fidelity, KlOfIdenticalRowsIsZero) {
  const std::vector<float> a{1, 2, 3, -1};
  EXPECT_NEAR(kl_divergence(a, a), 0.0, 1e-15);
}

TEST(Fidelity, KlMatchesClosedFormForTwoOutcomes) {
  // P = (p, 1-p), Q = (q, 1-q) from logits (log p, log(1-p)).
  const double p = 0.8, q = 0.3;
  const std::vector<float> lp{float(std::log(p)), float(std::log(1 - p))};
  const std::vector<float> lq{float(std::log(q)), float(std::log(1 - q))};
  const double expect = p * std::log(p / q) + (1 - p) * std::log((1 - p) / (1 - q));
  EXPECT_NEAR(kl_divergence(lp, lq), expect, 1e-6);
  // Shifting logits changes nothing.
  std::vector<float> shifted = lq;
  for (float& v : shifted) v += 7;
  EXPECT_NEAR(kl_divergence(lp, shifted), expect, 1e-6);
}

TEST(Fidelity, Top1CountsAgreeingRows) {
  const std::vector<float> ref{0, 5, 1, /*row 2*/ 3, 0, 0};
  const std::vector<float> got{0, 4, 1, /*row 2*/ 0, 0, 9};
  const Fidelity f = compare_rows(ref, got, 3);
  EXPECT_EQ(f.rows, 2);
  EXPECT_DOUBLE_EQ(f.top1, 0.5);
  EXPECT_GT(f.kl, 0);
}

}  // namespace
}  // namespace fairkv::model
