#include "placement/rebalance.h"

#include <gtest/gtest.h>

#include "placement/test_util.h"

namespace fairkv::placement {
namespace {

using testing::near;

// max over every non-empty device set of its Hall ratio: the optimum by enumeration.
double brute_force_optimum(const RebalanceProblem& p) {
  const int devices = int(p.base.size());
  double best = 0;
  for (int mask = 1; mask < (1 << devices); ++mask) {
    std::vector<int> set;
    for (int d = 0; d < devices; ++d)
      if (mask >> d & 1) set.push_back(d);
    best = std::max(best, hall_ratio(p, set));
  }
  return best;
}

// Device loads that the returned shares give.
std::vector<double> loads_of(const RebalanceProblem& p, const RebalanceResult& r) {
  std::vector<double> l = p.base;
  for (size_t u = 0; u < p.load.size(); ++u)
    for (size_t i = 0; i < p.holders[u].size(); ++i)
      l[size_t(p.holders[u][i])] += r.share[u][i] * p.load[u];
  return l;
}

RebalanceProblem random_problem(std::mt19937_64& rng, int units, int devices) {
  std::uniform_real_distribution<double> uni(0.0, 1.0);
  RebalanceProblem p;
  p.base.resize(size_t(devices));
  for (double& b : p.base) b = uni(rng) < 0.3 ? 0.0 : 50.0 * uni(rng);
  for (int u = 0; u < units; ++u) {
    p.load.push_back(uni(rng) < 0.1 ? 0.0 : 200.0 * uni(rng) * uni(rng));
    std::vector<int> hs;
    for (int d = 0; d < devices; ++d)
      if (uni(rng) < 0.4) hs.push_back(d);
    if (hs.empty()) hs.push_back(int(rng() % uint64_t(devices)));
    std::shuffle(hs.begin(), hs.end(), rng);
    p.holders.push_back(hs);
  }
  return p;
}

TEST(Rebalance, MatchesEnumerationOfDeviceSets) {
  std::mt19937_64 rng(5);
  for (int trial = 0; trial < 600; ++trial) {
    const int devices = 1 + trial % 6;
    const int units = 1 + (trial / 6) % 7;
    const auto p = random_problem(rng, units, devices);
    const auto r = rebalance(p);
    const double best = brute_force_optimum(p);
    ASSERT_TRUE(near(r.max_load, best, 1e-9)) << "trial " << trial;
    // The shares are a feasible solution that achieves the optimum...
    for (size_t u = 0; u < p.load.size(); ++u) {
      double sum = 0;
      for (double s : r.share[u]) {
        EXPECT_GE(s, 0.0);
        sum += s;
      }
      EXPECT_NEAR(sum, 1.0, 1e-12);
    }
    for (double l : loads_of(p, r)) EXPECT_LE(l, best * (1 + 1e-9) + 1e-12);
    // ...and the critical set proves it: no shares can do better.
    EXPECT_TRUE(near(hall_ratio(p, r.critical), best, 1e-9)) << "trial " << trial;
  }
}

TEST(Rebalance, HandExample) {
  // Unit 0 (load 90) on devices 0 and 1, unit 1 (load 10) on device 1 only, device 2 idle with
  // base 0: the best is 50 / 50, and device 2 cannot help.
  RebalanceProblem p;
  p.load = {90, 10};
  p.holders = {{0, 1}, {1}};
  p.base = {0, 0, 0};
  const auto r = rebalance(p);
  EXPECT_NEAR(r.max_load, 50.0, 1e-12);
  // Shares may round by the flow's slack (1e-13 of the loads), far below the 1e-9 contract.
  EXPECT_NEAR(r.share[0][0], 50.0 / 90.0, 1e-10);
  EXPECT_NEAR(r.share[0][1], 40.0 / 90.0, 1e-10);
  EXPECT_NEAR(r.share[1][0], 1.0, 1e-10);
}

TEST(Rebalance, BaseOverMeanDominates) {
  RebalanceProblem p;
  p.load = {10};
  p.holders = {{0, 1}};
  p.base = {100, 0};
  const auto r = rebalance(p);
  EXPECT_NEAR(r.max_load, 100.0, 1e-12);
  EXPECT_NEAR(r.share[0][1], 1.0, 1e-10);
}

TEST(Rebalance, RejectsMalformedProblems) {
  RebalanceProblem p;
  p.load = {1};
  p.base = {0, 0};
  p.holders = {{}};
  EXPECT_THROW(rebalance(p), std::invalid_argument);
  p.holders = {{0, 0}};
  EXPECT_THROW(rebalance(p), std::invalid_argument);
  p.holders = {{2}};
  EXPECT_THROW(rebalance(p), std::invalid_argument);
  p.holders = {{0}};
  p.load = {-1};
  EXPECT_THROW(rebalance(p), std::invalid_argument);
}

TEST(Rebalance, LayerKeepsHoldersAndReachesOptimum) {
  CostModel cost;
  cost.batch = 4;
  cost.head_dim = 8;
  cost.group = 2;
  cost.embd = 64;
  // Units 0 and 1 token-split over devices 0 and 1, unit 2 whole on device 2.
  LayerPlacement layer;
  layer.devices = {{{0, 0.5, ShareKind::Tokens}, {1, 0.5, ShareKind::Tokens}},
                   {{0, 0.5, ShareKind::Tokens}, {1, 0.5, ShareKind::Tokens}},
                   {{2, 1.0, ShareKind::Whole}}};
  normalize(layer);
  const std::vector<double> actual{300, 20, 100};
  const auto out = rebalance_layer(layer, actual, cost, 3);
  check_layer(out, 3, 3, "rebalanced");
  const auto loads = device_loads(out, actual, cost, 3);
  const double w = cost.unit_weight_load();
  // Devices 0 and 1 share 320 tokens; device 1, the tail of both units, reads their weights
  // (2w), so device 0 takes w more tokens: both end at 160 + w. Device 2 is fixed.
  EXPECT_NEAR(loads[0], 160 + w, 1e-9);
  EXPECT_NEAR(loads[1], 160 + w, 1e-9);
  EXPECT_EQ(tail_devices(out, 3), (std::vector<int>{1, 1, 2}));
  EXPECT_NEAR(loads[2], 100 + w, 1e-9);
  for (int d = 0; d < 2; ++d)
    for (const Share& s : out.devices[size_t(d)]) EXPECT_LE(s.head, 1);
}

}  // namespace
}  // namespace fairkv::placement
