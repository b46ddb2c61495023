// The AMX kernel (attention_amx.h) through attend with AMX allowed, against attend_ref and
// against the AVX-512 / portable kernel (AMX not allowed), plus its bf16 entry points on raw
// rows. Skipped where the CPU or the OS does not give the process AMX.
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

HeadStore random_store(int64_t len, int64_t d, std::mt19937& rng) {
  return test::random_store(len, d, KvType::F16, rng);
}

// AMX allowed for the test's duration (the process default is off).
class AmxAttend : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!amx::available()) GTEST_SKIP() << "no AMX here (CPUID or the kernel's permission)";
    attend_allow_amx(true);
  }
  void TearDown() override { attend_allow_amx(false); }
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
  attend_allow_amx(amx);
  if (ref)
    attend_ref(a);
  else
    attend(a);
  attend_allow_amx(true);
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
  expect_close(got.out, want.out, 2e-5f, what + " out");
  expect_close(got.lse, want.lse, 2e-6f, what + " lse");
  expect_close(got.out, simd.out, 2e-5f, what + " out vs avx-512");
  expect_close(got.lse, simd.lse, 2e-6f, what + " lse vs avx-512");
}

// Groups 1-8, head sizes 32-128, lengths around the 16-key panels and 64-key blocks.
TEST_F(AmxAttend, DecodeMatchesReference) {
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
TEST_F(AmxAttend, SlicesMatchReference) {
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
TEST_F(AmxAttend, PrefillWithProbabilitiesMatchesReference) {
  std::mt19937 rng(23);
  for (int group : {1, 3, 8})
    for (auto [m, n] : {std::pair<int64_t, int64_t>{0, 37}, {19, 21}, {64, 5}}) {
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
      expect_close(got.out, want.out, 2e-5f, what + " out");
      expect_close(got.lse, want.lse, 2e-6f, what + " lse");
      expect_close(got.probs, want.probs, 2e-5f, what + " probs");
    }
}

// attend_batch cuts a long decode into token slices merged by their lse: on AMX as a whole.
TEST_F(AmxAttend, SlicedBatchDecodeMatchesReference) {
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
    expect_close(o, want.out, 2e-5f, "g" + std::to_string(group) + " out");
    expect_close(lse, want.lse, 2e-6f, "g" + std::to_string(group) + " lse");
  }
}

// Keys and values at f16's edges: zeros, subnormals, large values (the lanes' lower halves meet
// zeros, so no element's bit pattern may leak into a product). Scores of hundreds and values
// of thousands make float32 rounding itself larger, hence LargeScoresStayFinite's tolerances.
TEST_F(AmxAttend, EdgeValuesStayExact) {
  std::mt19937 rng(25);
  const int64_t d = 64, len = 90;
  auto k = randn(len * d, rng), v = randn(len * d, rng);
  const float edge[] = {0.0f, -0.0f, 6e-8f, -3e-6f, 6.1e-5f, 65504.0f, -65504.0f, 1.0f / 3};
  for (size_t i = 0; i < k.size(); i += 7) k[i] = edge[i % 8];
  for (size_t i = 0; i < v.size(); i += 5) v[i] = edge[(i + 3) % 8] / 32;
  HeadStore s(d, KvType::F16);
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
    expect_close(got.out, want.out, 1e-4f, "g" + std::to_string(group) + " out");
    expect_close(got.lse, want.lse, 1e-5f, "g" + std::to_string(group) + " lse");
  }
}

// The bf16 entry points on raw rows: a bf16 store's panels and value rows.
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

TEST(AmxKernels, Bf16ScoresAndValuesMatchDoubleReference) {
  if (!amx::available()) GTEST_SKIP() << "no AMX here";
  std::mt19937 rng(26);
  const int64_t d = 128, keys = 64;
  for (int n : {1, 5, 8}) {
    // Keys as 4 panels (element i of key t at (t / 16) * 16 d + i * 16 + t % 16), values
    // row-major, queries float.
    std::vector<uint16_t> K(sz(keys * d)), V(sz(keys * d));
    for (auto& x : K) x = to_bf16(std::normal_distribution<float>()(rng));
    for (auto& x : V) x = to_bf16(std::normal_distribution<float>()(rng));
    auto k_at = [&](int64_t t, int64_t i) {
      return from_bf16(K[sz((t / 16) * 16 * d + i * 16 + t % 16)]);
    };
    const auto q = randn(n * d, rng);
    std::vector<const float*> qr;
    for (int r = 0; r < n; ++r) qr.push_back(&q[sz(r * d)]);
    std::vector<float> scratch(amx::scratch_floats(d) + 16);
    const uintptr_t at = reinterpret_cast<uintptr_t>(scratch.data());
    const amx::Rows rows{n, d, scratch.data() + (64 - at % 64) % 64 / sizeof(float)};
    const float scale = 0.125f;
    std::vector<float> s(sz(n * keys)), o(sz(n * d), 1.0f);
    std::vector<float*> orow;
    for (int r = 0; r < n; ++r) orow.push_back(&o[sz(r * d)]);
    const std::vector<float> corr(sz(n), 0.5f);
    const int64_t nb = 57;  // a partial last tile of keys
    amx::begin(rows, qr.data(), scale);
    amx::scores(rows, amx::Elem::BF16, K.data(), 4, s.data(), keys);
    // Probabilities from the scores (a softmax over the nb keys, as attend hands them over).
    std::vector<float> p(sz(n * keys));
    for (int r = 0; r < n; ++r) {
      double sum = 0;
      for (int64_t j = 0; j < nb; ++j) sum += std::exp(double(s[sz(r * keys + j)]));
      for (int64_t j = 0; j < keys; ++j)
        p[sz(r * keys + j)] = float(std::exp(double(s[sz(r * keys + j)])) / sum);
    }
    amx::values(rows, amx::Elem::BF16, V.data(), nb, p.data(), keys, corr.data(), orow.data());
    amx::end();
    for (int r = 0; r < n; ++r) {
      for (int64_t t = 0; t < keys; ++t) {
        double x = 0;
        for (int64_t i = 0; i < d; ++i) x += double(scale * q[sz(r * d + i)]) * k_at(t, i);
        ASSERT_NEAR(s[sz(r * keys + t)], x, 2e-6 * (1 + std::fabs(x)))
            << "n " << n << " row " << r << " key " << t;
      }
      for (int64_t i = 0; i < d; ++i) {
        double x = 0.5;  // the previous 1.0 times corr
        for (int64_t j = 0; j < nb; ++j)
          x += double(p[sz(r * keys + j)]) * from_bf16(V[sz(j * d + i)]);
        ASSERT_NEAR(o[sz(r * d + i)], x, 2e-5 * (1 + std::fabs(x)))
            << "n " << n << " row " << r << " dim " << i;
      }
    }
  }
}

}  // namespace
}  // namespace fairkv::kv
