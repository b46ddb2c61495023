// attend() with ggml_order (llama.cpp's arithmetic, attention_ggml.cpp) against the reference:
// the same attention up to float rounding, causal for prefill, over slices of the store; and
// refused where it does not apply. Bitwise agreement with llama.cpp is the SmolLM2 golden test's.
#include <gtest/gtest.h>

#include <cmath>
#include <random>
#include <stdexcept>
#include <vector>

#include "kv/attention.h"
#include "kv/attention_test_util.h"

namespace fairkv::kv {
namespace {

using test::randn;

TEST(AttendGgml, MatchesReferenceForDecodeAndPrefill) {
  std::mt19937 rng(5);
  const int64_t d = 64, len = 150;
  HeadStore s(d, KvType::F32);
  const auto k = randn(len * d, rng), v = randn(len * d, rng);
  s.append(k.data(), v.data(), len);
  for (int group : {1, 3}) {
    // n = 1: a decode step (ggml's vec_dot for the values); n = 7: the last 7 rows are a
    // prefill's own, causal (tinyBLAS's order).
    for (int64_t n : {1, 7}) {
      for (auto [begin, end] : {std::pair<int64_t, int64_t>{0, INT64_MAX}, {20, 140}}) {
        const auto q = randn(n * group * d, rng);
        std::vector<float> got(size_t(n * group * d)), want(got.size());
        AttentionArgs a;
        a.store = &s;
        a.q = q.data();
        a.n_tokens = n;
        a.group = group;
        a.scale = 0.125f;
        a.visible = len - n;
        a.begin = begin;
        a.end = end;
        a.out = want.data();
        attend_ref(a);
        a.out = got.data();
        a.ggml_order = true;
        attend(a);
        for (size_t i = 0; i < got.size(); ++i)
          ASSERT_NEAR(got[i], want[i], 2e-6f * (1.0f + std::fabs(want[i])))
              << "group " << group << " n " << n << " begin " << begin << " at " << i;
      }
    }
  }
}

TEST(AttendGgml, RefusesF16StoresAndLse) {
  HeadStore s(64, KvType::F16);
  std::vector<float> kv(64, 1.0f), q(64, 1.0f), out(64), lse(1);
  s.append(kv.data(), kv.data(), 1);
  AttentionArgs a;
  a.store = &s;
  a.q = q.data();
  a.out = out.data();
  a.ggml_order = true;
  EXPECT_THROW(attend(a), std::invalid_argument);
  HeadStore f(64, KvType::F32);
  f.append(kv.data(), kv.data(), 1);
  a.store = &f;
  a.lse = lse.data();
  EXPECT_THROW(attend(a), std::invalid_argument);
}

}  // namespace
}  // namespace fairkv::kv
