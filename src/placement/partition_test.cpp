#include "placement/partition.h"

#include <gtest/gtest.h>

#include "placement/planners.h"
#include "placement/test_util.h"

namespace fairkv::placement {
namespace {

using testing::brute_force_partition;
using testing::near;
using testing::random_loads;

std::vector<int> bin_sizes(std::span<const int> bin, int bins) {
  std::vector<int> c(size_t(bins), 0);
  for (int b : bin) ++c[size_t(b)];
  return c;
}

double max_of(std::span<const double> load, std::span<const int> bin, int bins) {
  std::vector<double> s(size_t(bins), 0.0);
  for (size_t i = 0; i < load.size(); ++i) s[size_t(bin[i])] += load[i];
  return *std::max_element(s.begin(), s.end());
}

TEST(Partition, MatchesBruteForceOnRandomInstances) {
  std::mt19937_64 rng(7);
  int checked = 0;
  for (int n = 1; n <= 10; ++n)
    for (int bins = 2; bins <= 5; ++bins) {
      if (bins > n) continue;
      for (int trial = 0; trial < 12; ++trial) {
        const double sigma = trial % 3 == 0 ? 0.25 : trial % 3 == 1 ? 0.5 : 1.0;
        const auto load = random_loads(rng, n, sigma, 100.0);
        const auto count = tp_counts(n, bins);
        const auto r = partition_balanced(load, count, 1'000'000);
        EXPECT_TRUE(r.proven);
        EXPECT_EQ(bin_sizes(r.bin, bins), count);
        EXPECT_DOUBLE_EQ(max_of(load, r.bin, bins), r.max_load);
        const double best = brute_force_partition(load, count);
        EXPECT_TRUE(near(r.max_load, best, 1e-9))
            << "n=" << n << " bins=" << bins << " got " << r.max_load << " optimum " << best;
        ++checked;
      }
    }
  EXPECT_GT(checked, 300);
}

TEST(Partition, ExactAtSixteenUnits) {
  // 16 units on 2, 4 and 8 devices: the search must prove optimality within the planner's default
  // node budget, and agree with enumeration.
  std::mt19937_64 rng(11);
  const PlanOptions defaults;
  for (int bins : {2, 4, 8})
    for (double sigma : {0.25, 0.5, 1.0}) {
      const auto load = random_loads(rng, 16, sigma, 1000.0);
      const auto count = tp_counts(16, bins);
      const auto r = partition_balanced(load, count, defaults.node_limit);
      EXPECT_TRUE(r.proven) << bins << " bins, sigma " << sigma << ", " << r.nodes << " nodes";
      EXPECT_TRUE(near(r.max_load, brute_force_partition(load, count), 1e-9))
          << bins << " bins, sigma " << sigma;
    }
}

TEST(Partition, SubsetProgramMatchesBruteForce) {
  // A node budget of 1 leaves every instance to the subset program.
  std::mt19937_64 rng(13);
  for (int n = 1; n <= 12; ++n)
    for (int bins = 1; bins <= std::min(n, 6); ++bins)
      for (int trial = 0; trial < 3; ++trial) {
        const auto load = random_loads(rng, n, 0.7, 100.0);
        const auto count = tp_counts(n, bins);
        const auto r = partition_balanced(load, count, 1);
        EXPECT_TRUE(r.proven);
        EXPECT_EQ(bin_sizes(r.bin, bins), count);
        EXPECT_TRUE(near(r.max_load, brute_force_partition(load, count), 1e-9))
            << n << " items, " << bins << " bins";
      }
  // Bins of unequal sizes in any order, and empty bins.
  const std::vector<double> load{7, 6, 5, 4, 3, 2, 1};
  const std::vector<int> count{1, 0, 4, 2};
  const auto r = partition_balanced(load, count, 1);
  EXPECT_EQ(bin_sizes(r.bin, 4), count);
  EXPECT_DOUBLE_EQ(r.max_load, brute_force_partition(load, count));
}

TEST(Partition, KeepsInitialWhenItIsOptimal) {
  const std::vector<double> load{5, 5, 5, 5, 5, 5};
  const std::vector<int> count{3, 3};
  const std::vector<int> initial{0, 0, 0, 1, 1, 1};
  const auto r = partition_balanced(load, count, 1000, initial);
  EXPECT_EQ(r.bin, initial);
  EXPECT_DOUBLE_EQ(r.max_load, 15.0);
  EXPECT_TRUE(r.proven);
}

TEST(Partition, KnownOptimum) {
  // {9,1} {8,2} {7,3} {6,4} all weigh 10; tp's contiguous pairs give 17.
  const std::vector<double> load{9, 8, 7, 6, 4, 3, 2, 1};
  const std::vector<int> count{2, 2, 2, 2};
  const std::vector<int> tp{0, 0, 1, 1, 2, 2, 3, 3};
  const auto r = partition_balanced(load, count, 1000, tp);
  EXPECT_DOUBLE_EQ(r.max_load, 10.0);
  EXPECT_TRUE(r.proven);
  EXPECT_DOUBLE_EQ(max_of(load, tp, 4), 17.0);
}

TEST(Partition, NodeLimitGivesBestFoundNotProven) {
  std::mt19937_64 rng(3);
  const auto load = random_loads(rng, 64, 1.0, 100.0);
  const auto count = tp_counts(64, 8);
  auto greedy = partition_greedy(load, count);
  const double greedy_max = max_of(load, greedy, 8);
  improve_by_swaps(load, greedy, 8);
  const double swapped_max = max_of(load, greedy, 8);
  EXPECT_LE(swapped_max, greedy_max);
  const auto r = partition_balanced(load, count, 50);
  EXPECT_EQ(bin_sizes(r.bin, 8), count);
  EXPECT_LE(r.max_load, swapped_max);
  double total = 0;
  for (double x : load) total += x;
  EXPECT_GE(r.max_load, total / 8 * (1 - 1e-12));
  if (!r.proven) {
    EXPECT_GT(r.nodes, 50);
  }
}

TEST(Partition, RejectsBadSizes) {
  const std::vector<double> load{1, 2, 3};
  EXPECT_THROW(partition_balanced(load, std::vector<int>{1, 1}, 100), std::invalid_argument);
  EXPECT_THROW(partition_balanced(load, std::vector<int>{}, 100), std::invalid_argument);
  EXPECT_THROW(partition_balanced(load, std::vector<int>{4, -1}, 100), std::invalid_argument);
}

}  // namespace
}  // namespace fairkv::placement
