// The AMX kernels (attention_amx.h) through attend with AMX allowed, f16 and bf16 stores, against
// attend_ref and against the AVX-512 / portable kernel (AMX not allowed), plus the bf16 store's
// tile kernels on raw panels. Skipped where the CPU or the OS does not give the process AMX.
#include "kv/attention_amx.h"

#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "kernels/threadpool.h"
#include "kv/attention.h"
#include "kv/attention_test_util.h"

namespace fairkv::kv {
namespace {

using test::expect_close;
using test::randn;
using test::sz;

// AMX for f16 and bf16 stores on or off.
void allow_amx(bool on) {
  attend_allow_amx(on);
  attend_allow_amx_bf16(on, 1);  // every call, a decode of group 1 included
}

// AMX allowed for the test's duration (the process default: off for f16, on for bf16); the
// parameter is the store's type.
class AmxAttend : public ::testing::TestWithParam<KvType> {
 protected:
  void SetUp() override {
    if (!amx::available()) GTEST_SKIP() << "no AMX here (CPUID or the kernel's permission)";
    allow_amx(true);
  }
  void TearDown() override {
    attend_allow_amx(false);
    attend_allow_amx_bf16(true);
  }
  HeadStore random_store(int64_t len, int64_t d, std::mt19937& rng) const {
    return test::random_store(len, d, GetParam(), rng);
  }
};

struct Outputs {
  std::vector<float> out, lse, probs;
};

// attend (on AMX when `amx`) or attend_ref over a, into fresh buffers.
Outputs run(AttentionArgs a, bool amx, bool ref = false) {
  const int64_t rows = a.n_tokens * a.group, d = a.store->head_dim();
  Outputs r{std::vector<float>(sz(rows * d)), std::vector<float>(sz(rows)),
            std::vector<float>(sz(a.probs_tokens * a.group * a.store->size()), -1.0f)};
  a.out = r.out.data();
  a.lse = r.lse.data();
  if (a.probs_tokens > 0) a.probs = r.probs.data();
  allow_amx(amx);
  if (ref)
    attend_ref(a);
  else
    attend(a);
  allow_amx(true);
  return r;
}

// One decode call: AMX (which attend must choose) against the reference with attention_test's
// tolerances, and against the AVX-512 kernel.
void expect_decode(const HeadStore& s, const std::vector<float>& q, int group, int64_t begin,
                   int64_t end, const std::string& what) {
  ASSERT_TRUE(attend_uses_amx(s)) << what;
  AttentionArgs a;
  a.store = &s;
  a.q = q.data();
  a.group = group;
  a.scale = 1.0f / std::sqrt(float(s.head_dim()));
  a.visible = s.size() - 1;
  a.begin = begin;
  a.end = end;
  const Outputs got = run(a, true), want = run(a, false, true), simd = run(a, false);
  const test::PieceSlack slack = test::kernel_slack(s, q.data(), group, a.scale);
  expect_close(got.out, want.out, 2e-5f, what + " out", slack.out);
  expect_close(got.lse, want.lse, 2e-6f, what + " lse", slack.lse);
  expect_close(got.out, simd.out, 2e-5f, what + " out vs avx-512", slack.out);
  expect_close(got.lse, simd.lse, 2e-6f, what + " lse vs avx-512", slack.lse);
}

// Groups 1-8, head sizes 32-128, lengths around the 16-key panels and 64-key blocks.
TEST_P(AmxAttend, DecodeMatchesReference) {
  std::mt19937 rng(21);
  for (int64_t d : {32, 64, 96, 128})
    for (int64_t len : {1, 5, 16, 17, 63, 64, 65, 200, 1001})
      for (int group = 1; group <= 8; ++group) {
        const HeadStore s = random_store(len, d, rng);
        expect_decode(s, randn(group * d, rng), group, 0, INT64_MAX,
                      "d " + std::to_string(d) + " len " + std::to_string(len) + " g" +
                          std::to_string(group));
      }
}

// Slices [begin, end), unaligned, one empty; their lse.
TEST_P(AmxAttend, SlicesMatchReference) {
  std::mt19937 rng(22);
  const HeadStore s = random_store(777, 128, rng);
  for (int group : {1, 4, 8})
    for (auto [b, e] : {std::pair<int64_t, int64_t>{0, 1},
                        {3, 50},
                        {17, 700},
                        {64, 129},
                        {500, 777},
                        {300, 300}}) {
      expect_decode(
          s, randn(group * 128, rng), group, b, e,
          "g" + std::to_string(group) + " [" + std::to_string(b) + ", " + std::to_string(e) + ")");
    }
}

// A prefill (several tokens, causal, passes of up to amx::kRows rows) reporting the window's
// probabilities.
TEST_P(AmxAttend, PrefillWithProbabilitiesMatchesReference) {
  std::mt19937 rng(23);
  for (int group : {1, 3, 8})
    for (auto [m, n] : {std::pair<int64_t, int64_t>{0, 37}, {19, 21}, {64, 5}, {70, 21}}) {
      const int64_t d = 64;
      const HeadStore s = random_store(m + n, d, rng);
      const auto q = randn(n * group * d, rng);
      AttentionArgs a;
      a.store = &s;
      a.q = q.data();
      a.n_tokens = n;
      a.group = group;
      a.scale = 0.7f / std::sqrt(float(d));
      a.visible = m;
      a.probs_tokens = std::min<int64_t>(n, 6);
      const Outputs got = run(a, true), want = run(a, false, true);
      const std::string what = "g" + std::to_string(group) + " m " + std::to_string(m);
      const test::PieceSlack slack = test::kernel_slack(s, q.data(), n * group, a.scale);
      expect_close(got.out, want.out, 2e-5f, what + " out", slack.out);
      expect_close(got.lse, want.lse, 2e-6f, what + " lse", slack.lse);
      // A probability exp(score - lse) <= 1 moves by at most e^(2 delta) - 1.
      expect_close(got.probs, want.probs, 2e-5f, what + " probs", std::expm1(2 * slack.lse));
    }
}

// attend_batch cuts a long decode into token slices merged by their lse: on AMX as a whole.
TEST_P(AmxAttend, SlicedBatchDecodeMatchesReference) {
  std::mt19937 rng(24);
  const int64_t d = 128, len = 9000;
  const HeadStore s = random_store(len, d, rng);
  for (int group : {1, 4, 8}) {
    const auto q = randn(group * d, rng);
    std::vector<float> o(sz(group * d)), lse(sz(group));
    AttentionArgs a;
    a.store = &s;
    a.q = q.data();
    a.group = group;
    a.scale = 1.0f / std::sqrt(float(d));
    a.visible = len - 1;
    a.out = o.data();
    a.lse = lse.data();
    kernels::ThreadPool pool(2);
    attend_batch(std::span<const AttentionArgs>(&a, 1), pool);
    const Outputs want = run(a, false, true);
    const test::PieceSlack slack = test::kernel_slack(s, q.data(), group, a.scale);
    expect_close(o, want.out, 2e-5f, "g" + std::to_string(group) + " out", slack.out);
    expect_close(lse, want.lse, 2e-6f, "g" + std::to_string(group) + " lse", slack.lse);
  }
}

// Keys and values at f16's edges: zeros, subnormals, large values (the lanes' lower halves meet
// zeros, so no element's bit pattern may leak into a product). Scores of hundreds and values
// of thousands make float32 rounding itself larger, hence LargeScoresStayFinite's tolerances.
TEST_P(AmxAttend, EdgeValuesStayExact) {
  std::mt19937 rng(25);
  const int64_t d = 64, len = 90;
  auto k = randn(len * d, rng), v = randn(len * d, rng);
  const float edge[] = {0.0f, -0.0f, 6e-8f, -3e-6f, 6.1e-5f, 65504.0f, -65504.0f, 1.0f / 3};
  for (size_t i = 0; i < k.size(); i += 7) k[i] = edge[i % 8];
  for (size_t i = 0; i < v.size(); i += 5) v[i] = edge[(i + 3) % 8] / 32;
  HeadStore s(d, GetParam());
  s.append(k.data(), v.data(), len);
  for (int group : {2, 8}) {
    const auto q = randn(group * d, rng, 0.01f);
    AttentionArgs a;
    a.store = &s;
    a.q = q.data();
    a.group = group;
    a.scale = 0.125f;
    a.visible = len - 1;
    const Outputs got = run(a, true), want = run(a, false, true);
    const test::PieceSlack slack = test::kernel_slack(s, q.data(), group, a.scale);
    expect_close(got.out, want.out, 1e-4f, "g" + std::to_string(group) + " out", slack.out);
    expect_close(got.lse, want.lse, 1e-5f, "g" + std::to_string(group) + " lse", slack.lse);
  }
}

INSTANTIATE_TEST_SUITE_P(Types, AmxAttend, ::testing::Values(KvType::F16, KvType::BF16),
                         [](const auto& info) { return std::string(kv_type_name(info.param)); });

uint16_t to_bf16(float x) {
  uint32_t b;
  std::memcpy(&b, &x, 4);
  b += 0x7FFF + ((b >> 16) & 1);
  return uint16_t(b >> 16);
}

float from_bf16(uint16_t h) {
  const uint32_t b = uint32_t(h) << 16;
  float x;
  std::memcpy(&x, &b, 4);
  return x;
}

// The bf16 store's tile kernels on raw panels (cache.h's bf16_key_index / bf16_value_index),
// against sums in double: scores of 1-4 panels, values of a partial block (57 keys; the pairs up
// to 64 keys are read, with zero probabilities past 57). Rows beyond five take two pieces
// (amx::pieces): each query element and probability within 2^-16, which bounds a score's error
// by 2^-16 sum |scale q_i k_i| and a value sum's by 2^-16 sum |p_j v_j|, on top of float32's.
TEST(AmxKernels, PairsScoresAndValuesMatchDoubleReference) {
  if (!amx::available()) GTEST_SKIP() << "no AMX here";
  std::mt19937 rng(26);
  const int64_t keys = 64;
  for (int64_t d : {32, 64, 96, 128})
    for (int n : {1, 5, 6, 8}) {
      std::vector<uint16_t> K(sz(keys * d)), V(sz(keys * d));
      std::vector<float> k(K.size()), v(V.size());  // row-major, as floats
      for (int64_t t = 0; t < keys; ++t)
        for (int64_t i = 0; i < d; ++i) {
          const uint16_t kb = to_bf16(std::normal_distribution<float>()(rng));
          const uint16_t vb = to_bf16(std::normal_distribution<float>()(rng));
          K[sz(t / 16 * 16 * d + bf16_key_index(t % 16, i, d))] = kb;
          V[sz(t / kValuePanel * kValuePanel * d + bf16_value_index(t % kValuePanel, i, d))] = vb;
          k[sz(t * d + i)] = from_bf16(kb);
          v[sz(t * d + i)] = from_bf16(vb);
        }
      const auto q = randn(n * d, rng);
      std::vector<const float*> qr;
      for (int r = 0; r < n; ++r) qr.push_back(&q[sz(r * d)]);
      std::vector<float> scratch(amx::scratch_floats(d) + 16);
      const uintptr_t at = reinterpret_cast<uintptr_t>(scratch.data());
      const amx::Rows rows{n, d, scratch.data() + (64 - at % 64) % 64 / sizeof(float)};
      const float scale = 0.125f;
      std::vector<float> s(sz(n * keys), -1.0f), o(sz(n * d), 1.0f);
      std::vector<float*> orow;
      for (int r = 0; r < n; ++r) orow.push_back(&o[sz(r * d)]);
      const std::vector<float> corr(sz(n), 0.5f);
      const int64_t nb = 57;
      const int panels = 1 + n % 4;  // 2, 2, 3, 1
      amx::begin_pairs(rows, qr.data(), scale);
      amx::scores_pairs(rows, K.data(), panels, s.data(), keys);
      std::vector<float> p(sz(n * keys));
      for (int r = 0; r < n; ++r)
        for (int64_t j = 0; j < keys; ++j)
          p[sz(r * keys + j)] = std::uniform_real_distribution<float>(0.0f, 0.05f)(rng);
      amx::values_pairs(rows, V.data(), nb, p.data(), keys, corr.data(), orow.data());
      amx::end();
      const std::string what = "d " + std::to_string(d) + " n " + std::to_string(n);
      const double piece = amx::pieces(n) == 2 ? std::ldexp(1.0, -16) : 0.0;
      for (int r = 0; r < n; ++r) {
        for (int64_t t = 0; t < keys; ++t) {
          double x = 0, size = 0;
          for (int64_t i = 0; i < d; ++i) {
            const double e = double(scale * q[sz(r * d + i)]) * k[sz(t * d + i)];
            x += e;
            size += std::fabs(e);
          }
          if (t >= panels * 16) x = -1.0, size = 0.0;  // not scored: left as it was
          ASSERT_NEAR(s[sz(r * keys + t)], x, 2e-6 * (1 + std::fabs(x)) + piece * size)
              << what << " row " << r << " key " << t;
        }
        for (int64_t i = 0; i < d; ++i) {
          double x = 0.5, size = 0;  // the previous 1.0 times corr
          for (int64_t j = 0; j < nb; ++j) {
            const double e = double(p[sz(r * keys + j)]) * v[sz(j * d + i)];
            x += e;
            size += std::fabs(e);
          }
          ASSERT_NEAR(o[sz(r * d + i)], x, 1e-5 * (1 + std::fabs(x)) + piece * size)
              << what << " row " << r << " dim " << i;
        }
      }
    }
}

}  // namespace
}  // namespace fairkv::kv
