// A bf16 store (keys and values in tile-row panels, cache.h) through attend's kernels other than
// AMX: the AVX-512 / AVX2 / portable FMA kernels that read the same panels, against attend_ref.
// (AMX on the same stores: attention_amx_test.cpp; attention_test.cpp runs bf16 with the
// process default, AMX where the CPU has it.)
#include <gtest/gtest.h>

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
using test::random_store;
using test::sz;

class Bf16Fallback : public ::testing::Test {
 protected:
  void SetUp() override { attend_allow_amx_bf16(false); }
  void TearDown() override { attend_allow_amx_bf16(true); }
};

// Decode and prefill (with the window's probabilities, after cached rows) at head sizes odd and
// even, groups 1-8, lengths around panels and blocks.
TEST_F(Bf16Fallback, MatchesReference) {
  std::mt19937 rng(31);
  for (int64_t d : {7, 33, 64, 128})
    for (int group : {1, 3, 4, 8})
      for (int64_t len : {1, 5, 16, 17, 63, 64, 65, 200, 1001}) {
        const std::string what =
            "d " + std::to_string(d) + " g" + std::to_string(group) + " len " + std::to_string(len);
        const HeadStore s = random_store(len, d, KvType::BF16, rng);
        ASSERT_FALSE(attend_uses_amx(s)) << what;
        const int64_t n = len % 5 + 1;  // the last n rows as a prefill after len - n cached
        const auto q = randn(n * group * d, rng);
        std::vector<float> o(sz(n * group * d)), o_ref(o.size()), lse(sz(n * group)),
            lse_ref(lse.size()), pr(sz(group * len)), pr_ref(pr.size());
        AttentionArgs a;
        a.store = &s;
        a.q = q.data();
        a.n_tokens = n;
        a.group = group;
        a.scale = 1.0f / std::sqrt(float(d));
        a.visible = len - n;
        a.begin = len > 40 ? 3 : 0;
        a.probs_tokens = 1;
        a.out = o.data();
        a.lse = lse.data();
        a.probs = pr.data();
        attend(a);
        a.out = o_ref.data();
        a.lse = lse_ref.data();
        a.probs = pr_ref.data();
        attend_ref(a);
        expect_close(o, o_ref, 2e-5f, what + " out");
        expect_close(lse, lse_ref, 2e-6f, what + " lse");
        expect_close(pr, pr_ref, 2e-5f, what + " probs");
      }
}

}  // namespace
}  // namespace fairkv::kv
