#include "serve/logprobs.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <numeric>
#include <random>
#include <vector>

namespace fairkv::serve {
namespace {

// The dense reference: log-softmax in long double, the order by a full stable sort.
std::vector<long double> log_softmax(const std::vector<float>& row) {
  long double mx = *std::max_element(row.begin(), row.end()), sum = 0;
  for (float x : row) sum += std::exp((long double)x - mx);
  std::vector<long double> out;
  for (float x : row) out.push_back((long double)x - mx - std::log(sum));
  return out;
}

TEST(Logprobs, EqualTheDenseLogSoftmaxAndItsOrder) {
  std::mt19937 rng(7);
  std::normal_distribution<float> d(0, 4);
  for (int trial = 0; trial < 20; ++trial) {
    std::vector<float> row(trial % 2 ? 49152 : 37);
    for (float& x : row) x = d(rng);
    row[3] = row[5];  // a tie: the lower id comes first
    const std::vector<long double> ref = log_softmax(row);
    std::vector<int32_t> order(row.size());
    std::iota(order.begin(), order.end(), 0);
    std::stable_sort(order.begin(), order.end(),
                     [&](int32_t a, int32_t b) { return row[size_t(a)] > row[size_t(b)]; });
    const int n = trial % kMaxTopLogprobs + 1;
    const auto chosen = int32_t(rng() % row.size());
    const TokenLogprob lp = token_logprob(row, chosen, n);
    EXPECT_EQ(lp.token, chosen);
    EXPECT_NEAR(lp.logprob, double(ref[size_t(chosen)]), 1e-5);
    ASSERT_EQ(lp.top.size(), std::min<size_t>(size_t(n), row.size()));
    for (size_t k = 0; k < lp.top.size(); ++k) {
      EXPECT_EQ(lp.top[k].token, order[k]) << k;
      EXPECT_NEAR(lp.top[k].logprob, double(ref[size_t(order[k])]), 1e-5);
    }
  }
}

TEST(Logprobs, ProbabilitiesSumToOneAndZeroAsksOnlyTheChosen) {
  const std::vector<float> row = {1.0f, 2.0f, 3.0f, -1e4f};
  double sum = 0;
  for (int32_t t = 0; t < 4; ++t) sum += std::exp(double(token_logprob(row, t, 0).logprob));
  EXPECT_NEAR(sum, 1.0, 1e-6);
  EXPECT_TRUE(token_logprob(row, 2, 0).top.empty());
  const TokenLogprob all = token_logprob(row, 0, 9);  // more than the row: the whole row
  ASSERT_EQ(all.top.size(), 4u);
  EXPECT_EQ(all.top[0].token, 2);
  EXPECT_EQ(all.top[3].token, 3);
}

}  // namespace
}  // namespace fairkv::serve
