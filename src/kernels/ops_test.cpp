// Row operations against direct double-precision formulas.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <limits>
#include <random>
#include <utility>
#include <vector>

#include "kernels/ops.h"

namespace fairkv::kernels {
namespace {

std::vector<float> random_vec(int64_t n, float scale, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> dist(0.0f, scale);
  std::vector<float> v(static_cast<size_t>(n));
  for (float& x : v) x = dist(rng);
  return v;
}

TEST(Ops, RmsnormMatchesFormula) {
  for (int64_t n : {1, 7, 64, 100, 2048}) {
    const std::vector<float> x = random_vec(n, 3.0f, 1), w = random_vec(n, 1.0f, 2);
    std::vector<float> out(x.size());
    rmsnorm(out.data(), x.data(), w.data(), n, 1e-5f);
    double ss = 0;
    for (float v : x) ss += double(v) * v;
    const double scale = 1.0 / std::sqrt(ss / double(n) + 1e-5);
    for (int64_t i = 0; i < n; ++i) {
      const double want = double(x[size_t(i)]) * scale * double(w[size_t(i)]);
      ASSERT_NEAR(out[size_t(i)], want, 1e-6 * std::fabs(want) + 1e-7) << n << " " << i;
    }
    // In place.
    std::vector<float> y = x;
    rmsnorm(y.data(), y.data(), w.data(), n, 1e-5f);
    EXPECT_EQ(y, out);
  }
}

void rope_direct(std::vector<double>& x, int64_t pos, double base, RopeStyle style) {
  const int64_t d = int64_t(x.size());
  std::vector<double> y = x;
  for (int64_t i = 0; i < d / 2; ++i) {
    const double theta = double(pos) * std::pow(base, -2.0 * double(i) / double(d));
    const int64_t a = style == RopeStyle::Interleaved ? 2 * i : i;
    const int64_t b = style == RopeStyle::Interleaved ? 2 * i + 1 : i + d / 2;
    y[size_t(a)] = x[size_t(a)] * std::cos(theta) - x[size_t(b)] * std::sin(theta);
    y[size_t(b)] = x[size_t(a)] * std::sin(theta) + x[size_t(b)] * std::cos(theta);
  }
  x = y;
}

TEST(Ops, RopeMatchesDirectFormula) {
  for (RopeStyle style : {RopeStyle::Interleaved, RopeStyle::Neox}) {
    for (int64_t d : {8, 32, 64, 128}) {
      for (float base : {10000.0f, 500000.0f, 1000000.0f}) {
        for (int64_t pos : {0, 1, 7, 511, 4096, 100000}) {
          const std::vector<float> x = random_vec(d, 1.0f, uint32_t(d + pos));
          std::vector<float> y = x;
          rope(y.data(), d, pos, base, style);
          std::vector<double> want(x.begin(), x.end());
          rope_direct(want, pos, double(base), style);
          for (int64_t i = 0; i < d; ++i) {
            ASSERT_NEAR(y[size_t(i)], want[size_t(i)], 1e-6)
                << "d=" << d << " pos=" << pos << " base=" << base << " i=" << i;
          }
        }
      }
    }
  }
  // Position 0 is the identity; a rotation keeps every pair's norm.
  std::vector<float> x = random_vec(16, 1.0f, 9), y = x;
  rope(y.data(), 16, 0, 10000.0f, RopeStyle::Interleaved);
  EXPECT_EQ(x, y);
  rope(y.data(), 16, 123, 10000.0f, RopeStyle::Neox);
  for (int i = 0; i < 8; ++i) {
    EXPECT_NEAR(std::hypot(y[size_t(i)], y[size_t(i + 8)]),
                std::hypot(x[size_t(i)], x[size_t(i + 8)]), 1e-6);
  }
  // The interleaved and NEOX layouts are different rotations.
  std::vector<float> a = x, b = x;
  rope(a.data(), 16, 5, 10000.0f, RopeStyle::Interleaved);
  rope(b.data(), 16, 5, 10000.0f, RopeStyle::Neox);
  EXPECT_NE(a, b);
}

TEST(Ops, SoftmaxAndLogSumExpMatchDouble) {
  for (int64_t n : {1, 2, 15, 16, 17, 100, 1000, 5000}) {
    for (float scale : {0.1f, 5.0f, 40.0f}) {
      const std::vector<float> x = random_vec(n, scale, uint32_t(n));
      std::vector<float> p = x;
      const float lse = softmax(p.data(), n);
      double m = -INFINITY;
      for (float v : x) m = std::max(m, double(v));
      double s = 0;
      for (float v : x) s += std::exp(double(v) - m);
      const double want_lse = m + std::log(s);
      EXPECT_NEAR(lse, want_lse, 1e-6 * std::fabs(want_lse) + 1e-6) << n;
      double total = 0;
      for (int64_t i = 0; i < n; ++i) {
        const double want = std::exp(double(x[size_t(i)]) - want_lse);
        ASSERT_NEAR(p[size_t(i)], want, 2e-6 * want + 1e-12) << n << " " << i;
        total += p[size_t(i)];
      }
      EXPECT_NEAR(total, 1.0, 1e-5);
    }
  }
}

TEST(Ops, SoftmaxHandlesLargeAndMaskedValues) {
  const float inf = std::numeric_limits<float>::infinity();
  std::vector<float> x = {1000.0f, 1000.0f, -inf, 999.0f};
  const float lse = softmax(x.data(), 4);
  EXPECT_NEAR(lse, 1000.0 + std::log(2.0 + std::exp(-1.0)), 1e-3);
  EXPECT_EQ(x[2], 0.0f);
  EXPECT_NEAR(x[0], 1.0 / (2.0 + std::exp(-1.0)), 1e-6);
  std::vector<float> masked(20, -inf);
  EXPECT_EQ(softmax(masked.data(), 20), -inf);
  for (float v : masked) EXPECT_EQ(v, 0.0f);
  EXPECT_EQ(softmax(nullptr, 0), -inf);
}

TEST(Ops, SiluMulMatchesFormulaOverTheWholeRange) {
  const int64_t n = 4001;
  std::vector<float> g(static_cast<size_t>(n)), u = random_vec(n, 1.0f, 5);
  for (int64_t i = 0; i < n; ++i) g[size_t(i)] = -100.0f + 200.0f * float(i) / float(n - 1);
  std::vector<float> out = g;
  silu_mul(out.data(), u.data(), n);
  for (int64_t i = 0; i < n; ++i) {
    const double x = g[size_t(i)];
    const double want = x / (1.0 + std::exp(-x)) * double(u[size_t(i)]);
    ASSERT_NEAR(out[size_t(i)], want, 1e-6 * std::fabs(want) + 1e-30) << "x=" << x;
  }
  // An element's result does not depend on where the call starts or ends (the tail takes the
  // vector body's formula): slices of the range give the whole call's bits.
  for (const auto& [b, e] :
       {std::pair<int64_t, int64_t>{0, 7}, {3, 40}, {17, 4001}, {3990, 4001}}) {
    std::vector<float> part(g.begin() + b, g.begin() + e);
    silu_mul(part.data(), u.data() + b, e - b);
    ASSERT_EQ(std::memcmp(part.data(), out.data() + b, part.size() * sizeof(float)), 0)
        << "[" << b << ", " << e << ")";
  }
}

TEST(Ops, Add) {
  for (int64_t n : {0, 1, 17, 64}) {
    std::vector<float> y = random_vec(n, 1.0f, 1), x = random_vec(n, 1.0f, 2), want = y;
    for (int64_t i = 0; i < n; ++i) want[size_t(i)] += x[size_t(i)];
    add(y.data(), x.data(), n);
    EXPECT_EQ(y, want);
  }
}

}  // namespace
}  // namespace fairkv::kernels
