// Test helpers shared by the attention tests: random stores and queries, and closeness relative
// to the values' scale.
#pragma once

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <random>
#include <string>
#include <vector>

#include "kernels/types.h"
#include "kv/attention_amx.h"
#include "kv/attention_kernels.h"
#include "kv/attention_quant.h"
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

// Relative-to-scale closeness: outputs are convex combinations of V rows (|v| ~ 1), plus an
// absolute slack (kernel_slack); infinities (the lse of an empty range) must match exactly.
inline void expect_close(const float* got, const float* want, int64_t n, float tol,
                         const std::string& what, float slack = 0.0f) {
  for (int64_t i = 0; i < n; ++i) {
    if (std::isinf(want[i])) {
      ASSERT_EQ(got[i], want[i]) << what << " at " << i;
      continue;
    }
    ASSERT_NEAR(got[i], want[i], tol * (1.0f + std::fabs(want[i])) + slack) << what << " at " << i;
  }
}

inline void expect_close(const std::vector<float>& got, const std::vector<float>& want, float tol,
                         const std::string& what, float slack = 0.0f) {
  ASSERT_EQ(got.size(), want.size()) << what;
  expect_close(got.data(), want.data(), int64_t(want.size()), tol, what, slack);
}

// What attend may add to float32 rounding for `rows` query rows (q: rows x head_dim floats) over
// s, from the kernels that are not exact to it (zero where none runs):
// - a bf16 store's AMX passes of six or more rows take each query element and probability as
//   two bf16 pieces, within 2^-16 of it (attention_amx.h, "Exactness"). A score then moves by at
//   most delta = 2^-16 max_{row, key} sum_i |scale q_i k_i|, an lse by delta, and an output by
//   (e^(2 delta) - 1 + 2^-16) max |v|;
// - quantized values are summed as 16-bit weights (attention_quant.h, pv_quant): each within
//   half a unit (and float32's rounding of its two factors, the 0.01) of the product it stands
//   for, so an output moves by at most kBlock x 0.51 / kWeightSteps of max |v|.
struct PieceSlack {
  float lse = 0.0f, out = 0.0f;
};
inline PieceSlack kernel_slack(const HeadStore& s, const float* q, int64_t rows, float scale) {
  const bool bf16 = s.types().k == KvType::BF16 && s.types().v == KvType::BF16;
  const int pass = int(std::min<int64_t>(rows, amx::kRows));  // the first pass's rows, the most
  const bool pieces = bf16 && amx::pieces(pass) == 2 && amx::available();
  const bool weights = kv_type_quantized(s.types().v) && detail::quant_scores_vnni();
  if (!pieces && !weights) return {};
  const int64_t d = s.head_dim();
  std::vector<float> k(sz(d)), v(sz(d));
  double score = 0.0, vmax = 0.0;
  for (int64_t t = 0; t < s.size(); ++t) {
    s.k_row(t, k.data());
    s.v_row(t, v.data());
    for (int64_t i = 0; i < d; ++i) vmax = std::max(vmax, double(std::fabs(v[sz(i)])));
    for (int64_t r = 0; pieces && r < rows; ++r) {
      double sum = 0.0;
      for (int64_t i = 0; i < d; ++i) sum += std::fabs(double(scale) * q[r * d + i] * k[sz(i)]);
      score = std::max(score, sum);
    }
  }
  PieceSlack out;
  if (pieces) {
    const double delta = std::ldexp(score, -16);
    out = {float(delta), float((std::expm1(2 * delta) + std::ldexp(1.0, -16)) * vmax)};
  }
  if (weights) out.out += float(double(detail::kBlock) * 0.51 / detail::kWeightSteps * vmax);
  return out;
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
