// Shared helpers of the placement tests: seeded random instances and brute-force references.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <functional>
#include <limits>
#include <random>
#include <span>
#include <vector>

namespace fairkv::placement::testing {

// Log-normal loads from a fixed seed (the tests only need variety, not portability).
inline std::vector<double> random_loads(std::mt19937_64& rng, int n, double sigma, double mean) {
  std::lognormal_distribution<double> dist(0.0, sigma);
  std::vector<double> x(static_cast<size_t>(n));
  for (double& v : x) v = mean * dist(rng);
  return x;
}

// The optimum of the fixed-size partition by enumeration: every assignment of items to bins with
// exactly count[b] items in bin b (bins of equal remaining size and load 0 are not told apart).
inline double brute_force_partition(std::span<const double> load, std::span<const int> count) {
  const size_t n = load.size(), bins = count.size();
  std::vector<int> left(count.begin(), count.end());
  std::vector<double> sum(bins, 0.0);
  double best = std::numeric_limits<double>::infinity();
  std::function<void(size_t)> go = [&](size_t i) {
    if (i == n) {
      best = std::min(best, *std::max_element(sum.begin(), sum.end()));
      return;
    }
    for (size_t b = 0; b < bins; ++b) {
      if (left[b] == 0) continue;
      // An untouched bin is the same as any other untouched bin of the same size.
      bool twin = false;
      for (size_t c = 0; c < b && !twin; ++c)
        twin = left[c] == count[c] && left[b] == count[b] && count[c] == count[b];
      if (twin) continue;
      --left[b];
      sum[b] += load[i];
      go(i + 1);
      sum[b] -= load[i];
      ++left[b];
    }
  };
  go(0);
  return best;
}

inline bool near(double a, double b, double rel) {
  return std::abs(a - b) <= rel * std::max({1.0, std::abs(a), std::abs(b)});
}

}  // namespace fairkv::placement::testing
