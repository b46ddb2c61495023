// The GgmlOrder forms of the row operations against double-precision formulas: they follow
// ggml's order of operations (bitwise agreement with llama.cpp is what the SmolLM2 golden test
// checks), so here they only need to be within a few float roundings of the exact values.
#include "kernels/ggml_ops.h"

#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <random>
#include <vector>

namespace fairkv::kernels {
namespace {

std::vector<float> random_vec(int64_t n, float scale, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> dist(0.0f, scale);
  std::vector<float> v(static_cast<size_t>(n));
  for (float& x : v) x = dist(rng);
  return v;
}

TEST(GgmlOps, RmsnormMatchesFormula) {
  for (int64_t n : {1, 7, 64, 576, 2048}) {
    const std::vector<float> x = random_vec(n, 3.0f, 1), w = random_vec(n, 1.0f, 2);
    std::vector<float> out(x.size());
    rmsnorm_ggml(out.data(), x.data(), w.data(), n, 1e-5f);
    double ss = 0;
    for (float v : x) ss += double(v) * v;
    const double scale = 1.0 / std::sqrt(ss / double(n) + 1e-5);
    for (int64_t i = 0; i < n; ++i) {
      const double want = double(x[size_t(i)]) * scale * double(w[size_t(i)]);
      ASSERT_NEAR(out[size_t(i)], want, 1e-6 * std::fabs(want) + 1e-7) << n << " " << i;
    }
  }
}

TEST(GgmlOps, RopeMatchesDoubleAngles) {
  // theta is carried in float from pair to pair: its relative error grows to ~32 ulp at the
  // last pair, so the bound is on the angle error times the position.
  for (RopeStyle style : {RopeStyle::Interleaved, RopeStyle::Neox}) {
    for (int64_t pos : {0, 1, 17, 300, 4000}) {
      const int64_t d = 64;
      const std::vector<float> x = random_vec(d, 1.0f, uint32_t(pos + 5));
      std::vector<float> y = x;
      rope_ggml(y.data(), d, pos, 10000.0f, style);
      for (int64_t i = 0; i < d / 2; ++i) {
        const double th = double(pos) * std::pow(10000.0, -2.0 * double(i) / double(d));
        const int64_t a = style == RopeStyle::Interleaved ? 2 * i : i;
        const int64_t b = style == RopeStyle::Interleaved ? 2 * i + 1 : i + d / 2;
        const double x0 = x[size_t(a)], x1 = x[size_t(b)];
        const double tol = 1e-6 + 64 * 6e-8 * (1.0 + th);
        EXPECT_NEAR(y[size_t(a)], x0 * std::cos(th) - x1 * std::sin(th), tol) << pos << " " << i;
        EXPECT_NEAR(y[size_t(b)], x0 * std::sin(th) + x1 * std::cos(th), tol) << pos << " " << i;
      }
    }
  }
}

TEST(GgmlOps, SiluMulMatchesFormula) {
  for (int64_t n : {5, 16, 1536, 1539}) {
    std::vector<float> g = random_vec(n, 4.0f, 3), u = random_vec(n, 1.0f, 4);
    g[0] = 100.0f;   // exp(-100) far below the polynomial's range: silu = x
    g[1] = -100.0f;  // exp(100) beyond it: silu = 0 (x / inf)
    const std::vector<float> g0 = g;
    silu_mul_ggml(g.data(), u.data(), n);
    for (int64_t i = 0; i < n; ++i) {
      const double x = g0[size_t(i)];
      const double want = x / (1.0 + std::exp(-x)) * double(u[size_t(i)]);
      ASSERT_NEAR(g[size_t(i)], want, 4e-7 * std::fabs(want) + 1e-30) << n << " " << i;
    }
  }
}

TEST(GgmlOps, DotProductsMatchDoubleSums) {
  for (int64_t n : {16, 64, 256, 272}) {
    const std::vector<float> x = random_vec(n, 1.0f, 6), y = random_vec(n, 1.0f, 7);
    double want = 0, mag = 0;
    for (int64_t i = 0; i < n; ++i) {
      want += double(x[size_t(i)]) * y[size_t(i)];
      mag += std::fabs(double(x[size_t(i)]) * y[size_t(i)]);
    }
    EXPECT_NEAR(dot_f32_ggml(x.data(), y.data(), n), want, 1e-6 * mag) << n;
    EXPECT_NEAR(dot_f32_tinyblas(x.data(), y.data(), n), want, 1e-6 * mag) << n;
  }
  // Odd lengths: ggml's float tail.
  const std::vector<float> x = random_vec(67, 1.0f, 8), y = random_vec(67, 1.0f, 9);
  double want = 0;
  for (int i = 0; i < 67; ++i) want += double(x[size_t(i)]) * y[size_t(i)];
  EXPECT_NEAR(dot_f32_ggml(x.data(), y.data(), 67), want, 1e-5);
}

TEST(GgmlOps, SoftmaxMatchesFormulaAndIgnoresMaskedEntries) {
  for (int64_t n : {1, 16, 40, 256}) {
    std::vector<float> x = random_vec(n, 5.0f, 10);
    for (int64_t i = n / 2 + 1; i < n; i += 3)
      x[size_t(i)] = -std::numeric_limits<float>::infinity();
    const std::vector<float> x0 = x;
    softmax_ggml(x.data(), n);
    double mx = -INFINITY, sum = 0;
    for (float v : x0) mx = std::fmax(mx, double(v));
    for (float v : x0) sum += std::exp(double(v) - mx);
    for (int64_t i = 0; i < n; ++i) {
      const double arg = double(x0[size_t(i)]) - mx, want = std::exp(arg) / sum;
      if (std::isinf(arg)) {  // masked
        ASSERT_EQ(x[size_t(i)], 0.0f) << n << " " << i;
        continue;
      }
      // float's x - max carries half an ulp of |x - max|, which exp turns into relative error.
      ASSERT_NEAR(x[size_t(i)], want, want * (1e-6 + 6e-8 * std::fabs(arg)) + 1e-30)
          << n << " " << i;
    }
  }
}

}  // namespace
}  // namespace fairkv::kernels
