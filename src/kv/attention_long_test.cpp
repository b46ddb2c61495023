// Long prefills: thousands of query tokens, causal, into empty stores and (chunked prefill) into
// stores that already hold earlier rows, checked against the reference on slices of the prompt,
// the observation window's probabilities included, with the kernel's scratch staying small.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <random>
#include <string>
#include <vector>

#include "kv/attention.h"
#include "kv/attention_test_util.h"

namespace fairkv::kv {
namespace {

using test::expect_close;
using test::randn;
using test::sz;

struct LongCase {
  KvTypes type;
  int64_t head_dim;
  int group;
  int64_t held, prompt;  // rows the store held before, tokens of the prompt appended to them
};

class LongPrefill : public ::testing::TestWithParam<LongCase> {};

// The whole prompt goes through one attend call; the reference runs on token ranges [t0, t1) of
// it (the same queries and causal limits, visible = held + t0), the last range ending with the
// window whose probabilities both report.
TEST_P(LongPrefill, MatchesReferenceOnSlicesOfThePrompt) {
  const LongCase c = GetParam();
  const int64_t d = c.head_dim, G = c.group, n = c.prompt, len = c.held + n, W = 8;
  std::mt19937 rng(uint32_t(d * 131 + G * 7 + c.held));
  HeadStore s(d, c.type);
  const auto k = randn(len * d, rng), v = randn(len * d, rng);
  s.append(k.data(), v.data(), c.held);  // earlier chunks, then this one
  s.append(k.data() + c.held * d, v.data() + c.held * d, n);
  // Quantized keys score a q8_0 query: one it holds exactly leaves only float rounding.
  const auto q =
      kv_type_quantized(c.type.k) ? test::q8_exact(n * G * d, rng) : randn(n * G * d, rng);
  std::vector<float> o(sz(n * G * d)), lse(sz(n * G)), p(sz(W * G * len), -1.0f);
  AttentionArgs a;
  a.store = &s;
  a.q = q.data();
  a.n_tokens = n;
  a.group = int(G);
  a.scale = 1.0f / std::sqrt(float(d));
  a.visible = c.held;
  a.out = o.data();
  a.lse = lse.data();
  a.probs = p.data();
  a.probs_tokens = W;
  attend(a);
  // Scores are kept per block of keys, never per prompt: well under one row of n x n floats per
  // query row of a pass.
  EXPECT_LT(attend_scratch_bytes(), size_t(256) << 10);

  for (int64_t t0 : {int64_t(0), n / 2 - 7, n - 40}) {
    const int64_t t1 = t0 + 40, rows = 40 * G;
    std::vector<float> o_ref(sz(rows * d)), lse_ref(sz(rows)), p_ref(p.size(), -2.0f);
    AttentionArgs r = a;
    r.q = q.data() + t0 * G * d;
    r.n_tokens = t1 - t0;
    r.visible = c.held + t0;
    r.out = o_ref.data();
    r.lse = lse_ref.data();
    r.probs = t1 == n ? p_ref.data() : nullptr;
    r.probs_tokens = t1 == n ? W : 0;
    attend_ref(r);
    const std::string what = kv_types_name(c.type) + " d" + std::to_string(d) + " g" +
                             std::to_string(G) + " tokens " + std::to_string(t0);
    const test::PieceSlack slack = test::kernel_slack(s, r.q, rows, a.scale);
    expect_close(o.data() + t0 * G * d, o_ref.data(), rows * d, 2e-5f, what + " out", slack.out);
    expect_close(lse.data() + t0 * G, lse_ref.data(), rows, 2e-6f, what + " lse", slack.lse);
    if (t1 == n) expect_close(p.data(), p_ref.data(), sz(W * G * len), 2e-5f, what + " probs");
  }
}

INSTANTIATE_TEST_SUITE_P(Prompts, LongPrefill,
                         ::testing::Values(LongCase{KvType::F16, 128, 8, 0, 3000},
                                           LongCase{KvType::F16, 64, 4, 1000, 2000},
                                           LongCase{KvType::F16, 40, 1, 1500, 1500},
                                           LongCase{KvType::F32, 128, 1, 0, 3000},
                                           LongCase{KvType::F32, 64, 8, 700, 2300},
                                           LongCase{KvType::F32, 40, 4, 0, 3000},
                                           LongCase{KvType::Q8_0, 128, 8, 0, 3000},
                                           LongCase{KvType::Q4_0, 64, 1, 1000, 2000},
                                           LongCase{{KvType::Q8_0, KvType::F16}, 128, 4, 700, 2300},
                                           LongCase{KvType::BF16, 128, 8, 1500, 1500}),
                         [](const auto& info) {
                           const LongCase& c = info.param;
                           return std::string(kv_type_name(c.type.k)) + "_" +
                                  kv_type_name(c.type.v) + "_d" + std::to_string(c.head_dim) +
                                  "_g" + std::to_string(c.group) + "_held" +
                                  std::to_string(c.held) + "_n" + std::to_string(c.prompt);
                         });

}  // namespace
}  // namespace fairkv::kv
