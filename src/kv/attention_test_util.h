// Test helpers shared by the attention tests: random stores and queries, and closeness relative
// to the values' scale.
#pragma once

#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <random>
#include <string>
#include <vector>

#include "kernels/types.h"
#include "kv/cache.h"

namespace fairkv::kv::test {

inline size_t sz(int64_t x) {
  return static_cast<size_t>(x);
}

inline std::vector<float> randn(int64_t n, std::mt19937& rng, float sigma = 1.0f) {
  std::normal_distribution<float> dist(0.0f, sigma);
  std::vector<float> x(sz(n));
  for (float& v : x) v = dist(rng);
  return x;
}

// A store of `len` random rows (keys and values ~ N(0, 1)) of types t.
inline HeadStore random_store(int64_t len, int64_t d, KvTypes t, std::mt19937& rng) {
  HeadStore s(d, t);
  const auto k = randn(len * d, rng), v = randn(len * d, rng);
  s.append(k.data(), v.data(), len);
  return s;
}

// Relative-to-scale closeness: outputs are convex combinations of V rows (|v| ~ 1); infinities
// (the lse of an empty range) must match exactly.
inline void expect_close(const float* got, const float* want, int64_t n, float tol,
                         const std::string& what) {
  for (int64_t i = 0; i < n; ++i) {
    if (std::isinf(want[i])) {
      ASSERT_EQ(got[i], want[i]) << what << " at " << i;
      continue;
    }
    ASSERT_NEAR(got[i], want[i], tol * (1.0f + std::fabs(want[i]))) << what << " at " << i;
  }
}

inline void expect_close(const std::vector<float>& got, const std::vector<float>& want, float tol,
                         const std::string& what) {
  ASSERT_EQ(got.size(), want.size()) << what;
  expect_close(got.data(), want.data(), int64_t(want.size()), tol, what);
}

// n floats (n a multiple of 32) that quantize to q8_0 exactly: every block is d * q with d an
// fp16 value and some |q| = 127, so a quantized-key kernel scores with the query itself and only
// float rounding tells it from the reference.
inline std::vector<float> q8_exact(int64_t n, std::mt19937& rng) {
  std::uniform_int_distribution<int> qd(-127, 127);
  std::uniform_real_distribution<float> dd(0.005f, 0.03f);
  std::vector<float> x(static_cast<size_t>(n));
  for (int64_t b = 0; b < n; b += 32) {
    const float d = kernels::fp16_to_fp32(kernels::fp32_to_fp16(dd(rng)));
    for (int64_t i = b; i < b + 32; ++i) x[static_cast<size_t>(i)] = d * float(qd(rng));
    x[static_cast<size_t>(b + (qd(rng) + 127) % 32)] = d * 127.0f;
  }
  return x;
}

}  // namespace fairkv::kv::test
