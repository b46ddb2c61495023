// Helpers shared by the compression tests: random window probabilities and small builders.
#pragma once

#include <cmath>
#include <cstdint>
#include <numeric>
#include <random>
#include <vector>

#include "kv/compress.h"

namespace fairkv::kv::test {

inline size_t sz(int64_t x) {
  return static_cast<size_t>(x);
}
using Idx = std::vector<int64_t>;

// Window probabilities [layer][kv head][group][window][n]: causal softmax rows of random logits
// with a few spikes, so that heads differ in how concentrated they are.
inline std::vector<float> random_probs(int L, int H, int G, int64_t W, int64_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<double> z(0.0, 1.0);
  std::uniform_real_distribution<double> u(0.0, 1.0);
  std::vector<float> p(sz(int64_t(L) * H * G * W * n), 0.0f);
  for (int64_t r = 0; r < int64_t(L) * H * G * W; ++r) {
    const int64_t i = r % W, visible = n - W + i + 1;
    const double sharp = 0.5 + 3.0 * u(rng);
    std::vector<double> e(sz(visible));
    double sum = 0;
    for (int64_t j = 0; j < visible; ++j) {
      double x = sharp * z(rng);
      if (u(rng) < 0.05) x += 4;
      sum += e[sz(j)] = std::exp(x);
    }
    for (int64_t j = 0; j < visible; ++j) p[sz(r * n + j)] = float(e[sz(j)] / sum);
  }
  return p;
}

inline CompressionConfig config(Policy p, int64_t budget, int64_t window) {
  CompressionConfig c;
  c.policy = p;
  c.budget = budget;
  c.window = window;
  return c;
}

inline Idx range(int64_t a, int64_t b) {
  Idx v(sz(b - a));
  std::iota(v.begin(), v.end(), a);
  return v;
}

}  // namespace fairkv::kv::test
