#include "kv/attention.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "kernels/threadpool.h"
#include "kv/attention_test_util.h"

namespace fairkv::kv {
namespace {

using test::expect_close;
using test::randn;
using test::random_store;
using test::sz;

struct Shape {
  int group;
  int64_t head_dim, len;
};

class AttendVsRef : public ::testing::TestWithParam<std::tuple<KvType, int, int64_t>> {};

// A decode step of `group` query rows q over rows [begin, end) of s equals the reference.
void expect_decode_matches_reference(const HeadStore& s, const std::vector<float>& q, int group,
                                     int64_t begin, int64_t end, const std::string& what) {
  const int64_t d = s.head_dim();
  std::vector<float> o(sz(group * d)), o_ref(o.size()), lse(sz(group)), lse_ref(lse.size());
  AttentionArgs a;
  a.store = &s;
  a.q = q.data();
  a.group = group;
  a.scale = 1.0f / std::sqrt(float(d));
  a.visible = s.size() - 1;
  a.begin = begin;
  a.end = end;
  a.out = o.data();
  a.lse = lse.data();
  attend(a);
  a.out = o_ref.data();
  a.lse = lse_ref.data();
  attend_ref(a);
  const test::PieceSlack slack = test::kernel_slack(s, q.data(), group, a.scale);
  expect_close(o, o_ref, 2e-5f, what + " out", slack.out);
  expect_close(lse, lse_ref, 2e-6f, what + " lse", slack.lse);
}

// Decode: one token after it was appended sees the whole store.
TEST_P(AttendVsRef, DecodeMatchesReference) {
  const auto [type, group, d] = GetParam();
  std::mt19937 rng(uint32_t(group * 1000 + d));
  for (int64_t len : {1, 5, 16, 31, 33, 64, 100, 257}) {
    const HeadStore s = random_store(len, d, type, rng);
    expect_decode_matches_reference(s, randn(group * d, rng), group, 0, INT64_MAX,
                                    "len " + std::to_string(len));
  }
}

// Prefill of n tokens appended to m cached rows: token t sees rows [0, m + t]. The last
// probs_tokens tokens report their probabilities.
TEST_P(AttendVsRef, PrefillIsCausalAndReportsWindowProbabilities) {
  const auto [type, group, d] = GetParam();
  std::mt19937 rng(uint32_t(group * 7 + d));
  for (auto [m, n] : {std::pair<int64_t, int64_t>{0, 1}, {0, 37}, {19, 21}, {64, 5}}) {
    const HeadStore s = random_store(m + n, d, type, rng);
    const auto q = randn(n * group * d, rng);
    const int64_t W = std::min<int64_t>(n, 6);
    std::vector<float> o(sz(n * group * d)), o_ref(o.size()), lse(sz(n * group)),
        lse_ref(lse.size()), p(sz(W * group * (m + n)), -1.0f), p_ref(p.size(), -2.0f);
    AttentionArgs a;
    a.store = &s;
    a.q = q.data();
    a.n_tokens = n;
    a.group = group;
    a.scale = 0.7f / std::sqrt(float(d));
    a.visible = m;
    a.probs_tokens = W;
    a.out = o.data();
    a.lse = lse.data();
    a.probs = p.data();
    attend(a);
    a.out = o_ref.data();
    a.lse = lse_ref.data();
    a.probs = p_ref.data();
    attend_ref(a);
    const std::string what = "m " + std::to_string(m) + " n " + std::to_string(n);
    const test::PieceSlack slack = test::kernel_slack(s, q.data(), n * group, a.scale);
    expect_close(o, o_ref, 2e-5f, what + " out", slack.out);
    expect_close(lse, lse_ref, 2e-6f, what + " lse", slack.lse);
    expect_close(p, p_ref, 2e-5f, what + " probs", std::expm1(2 * slack.lse));
    // Causality, checked on the reference itself: zero past each token, rows sum to one.
    for (int64_t w = 0; w < W; ++w)
      for (int g = 0; g < group; ++g) {
        const int64_t t = n - W + w;
        const float* row = &p_ref[sz((w * group + g) * (m + n))];
        double sum = 0;
        for (int64_t j = 0; j < m + n; ++j) {
          if (j > m + t) {
            ASSERT_EQ(row[j], 0.0f);
          }
          sum += row[j];
        }
        ASSERT_NEAR(sum, 1.0, 1e-5);
      }
  }
}

// A slice [begin, end) of the store, with its log-sum-exp; slices merge into the whole.
TEST_P(AttendVsRef, SlicesMergeIntoTheWhole) {
  const auto [type, group, d] = GetParam();
  std::mt19937 rng(uint32_t(group * 31 + d));
  const int64_t len = 203;
  const HeadStore s = random_store(len, d, type, rng);
  const auto q = randn(group * d, rng);
  const test::PieceSlack slack = test::kernel_slack(s, q.data(), group, 1.0f / std::sqrt(float(d)));
  const std::vector<int64_t> cuts = {0, 1, 50, 50, 130, len};  // one empty slice
  const int parts = int(cuts.size()) - 1;
  std::vector<std::vector<float>> outs(sz(parts)), lses(sz(parts));
  for (int i = 0; i < parts; ++i) {
    outs[sz(i)].resize(sz(group * d));
    lses[sz(i)].resize(sz(group));
    std::vector<float> o_ref(sz(group * d)), lse_ref(sz(group));
    AttentionArgs a;
    a.store = &s;
    a.q = q.data();
    a.group = group;
    a.scale = 1.0f / std::sqrt(float(d));
    a.visible = len - 1;
    a.begin = cuts[sz(i)];
    a.end = cuts[sz(i) + 1];
    a.out = outs[sz(i)].data();
    a.lse = lses[sz(i)].data();
    attend(a);
    a.out = o_ref.data();
    a.lse = lse_ref.data();
    attend_ref(a);
    expect_close(outs[sz(i)], o_ref, 2e-5f, "slice " + std::to_string(i), slack.out);
    expect_close(lses[sz(i)], lse_ref, 2e-6f, "slice lse " + std::to_string(i), slack.lse);
    if (cuts[sz(i)] == cuts[sz(i) + 1]) {
      for (float x : lses[sz(i)]) EXPECT_EQ(x, -std::numeric_limits<float>::infinity());
    }
  }
  std::vector<const float*> po, pl;
  for (int i = 0; i < parts; ++i) {
    po.push_back(outs[sz(i)].data());
    pl.push_back(lses[sz(i)].data());
  }
  std::vector<float> merged(sz(group * d)), merged_lse(sz(group));
  merge_partials(parts, po.data(), pl.data(), group, d, merged.data(), merged_lse.data());
  std::vector<float> whole(sz(group * d)), whole_lse(sz(group));
  AttentionArgs a;
  a.store = &s;
  a.q = q.data();
  a.group = group;
  a.scale = 1.0f / std::sqrt(float(d));
  a.visible = len - 1;
  a.out = whole.data();
  a.lse = whole_lse.data();
  attend_ref(a);
  expect_close(merged, whole, 2e-5f, "merged", slack.out);
  expect_close(merged_lse, whole_lse, 2e-6f, "merged lse", slack.lse);
}

// Attention over a store on a reserved address range (HeadStore::reserve_virtual) equals, bit
// for bit, attention over an ordinary store fed the same rows: decode and a multi-token step,
// while decode appends grow both and after a keep().
TEST_P(AttendVsRef, ReservedStoreAttendsIdentically) {
  const auto [type, group, d] = GetParam();
  std::mt19937 rng(uint32_t(group * 13 + d));
  const int64_t prefill = 21, n = 90;
  const auto k = randn(n * d, rng), v = randn(n * d, rng), q = randn(4 * group * d, rng);
  HeadStore plain(d, type), res(d, type);
  res.reserve_virtual(128);
  // Output and lse of the last n_tokens rows' queries over the whole store.
  auto attend_all = [&](const HeadStore& s, int64_t n_tokens) {
    std::vector<float> out(sz(n_tokens * group * d + n_tokens * group));
    AttentionArgs a;
    a.store = &s;
    a.q = q.data();
    a.n_tokens = n_tokens;
    a.group = group;
    a.scale = 1.0f / std::sqrt(float(d));
    a.visible = s.size() - n_tokens;
    a.out = out.data();
    a.lse = out.data() + n_tokens * group * d;
    attend(a);
    return out;
  };
  auto expect_same = [&](const std::string& what) {
    for (int64_t n_tokens : {1, 4}) {
      const auto want = attend_all(plain, n_tokens), got = attend_all(res, n_tokens);
      ASSERT_EQ(std::memcmp(got.data(), want.data(), want.size() * sizeof(float)), 0)
          << what << ", " << n_tokens << " tokens";
    }
  };
  plain.append(k.data(), v.data(), prefill);
  res.append(k.data(), v.data(), prefill);
  for (int64_t i = prefill; i < n; ++i) {
    plain.append(k.data() + i * d, v.data() + i * d, 1);
    res.append(k.data() + i * d, v.data() + i * d, 1);
    if (i % 11 == 0) expect_same("after " + std::to_string(i + 1) + " rows");
  }
  std::vector<int64_t> keep;
  for (int64_t i = 0; i < n; i += 1 + i % 3) keep.push_back(i);
  plain.keep(keep);
  res.keep(keep);
  expect_same("after keep");
}

INSTANTIATE_TEST_SUITE_P(
    Shapes, AttendVsRef,
    ::testing::Combine(::testing::Values(KvType::F32, KvType::F16, KvType::BF16),
                       ::testing::Values(1, 2, 3, 4, 8),
                       ::testing::Values(int64_t(8), int64_t(16), int64_t(32), int64_t(64),
                                         int64_t(128), int64_t(40))),
    [](const auto& info) {
      return std::string(kv_type_name(std::get<0>(info.param))) + "_g" +
             std::to_string(std::get<1>(info.param)) + "_d" +
             std::to_string(std::get<2>(info.param));
    });

// Long decode over many blocks and several touch sweeps, whole and as an unaligned slice
// [begin, end): lengths are not multiples of the block, head sizes 64 and 128.
TEST(Attend, LongDecodeMatchesReference) {
  std::mt19937 rng(11);
  for (KvType type : {KvType::F16, KvType::F32})
    for (int64_t d : {int64_t(64), int64_t(128)}) {
      const int64_t len = 2377;
      const HeadStore s = random_store(len, d, type, rng);
      for (int group : {1, 4, 8})
        for (auto [begin, end] : {std::pair<int64_t, int64_t>{0, INT64_MAX}, {37, 2001}}) {
          expect_decode_matches_reference(s, randn(group * d, rng), group, begin, end,
                                          std::string(kv_type_name(type)) + " d" +
                                              std::to_string(d) + " g" + std::to_string(group) +
                                              " begin " + std::to_string(begin));
        }
    }
}

// An empty store: no keys, so zero outputs and lse = -inf, as the reference.
TEST(Attend, EmptyStoreGivesZeroAndMinusInfinity) {
  for (KvType type : {KvType::F16, KvType::F32}) {
    const HeadStore s(128, type);
    std::vector<float> q(8 * 128, 1.0f), o(q.size(), 7.0f), lse(8, 7.0f);
    AttentionArgs a;
    a.store = &s;
    a.q = q.data();
    a.group = 8;
    a.visible = -1;
    a.out = o.data();
    a.lse = lse.data();
    attend(a);
    for (float x : o) EXPECT_EQ(x, 0.0f);
    for (float x : lse) EXPECT_EQ(x, -std::numeric_limits<float>::infinity());
  }
}

// More query rows than one pass holds (tokens x group > 16) and a group beyond 16.
TEST(Attend, ManyRowsSpanSeveralPasses) {
  std::mt19937 rng(5);
  for (int group : {16, 20}) {
    const int64_t d = 32, m = 10, n = 3;
    const HeadStore s = random_store(m + n, d, KvType::F16, rng);
    const auto q = randn(n * group * d, rng);
    std::vector<float> o(sz(n * group * d)), o_ref(o.size());
    AttentionArgs a;
    a.store = &s;
    a.q = q.data();
    a.n_tokens = n;
    a.group = group;
    a.scale = 0.2f;
    a.visible = m;
    a.out = o.data();
    attend(a);
    a.out = o_ref.data();
    attend_ref(a);
    expect_close(o, o_ref, 2e-5f, "group " + std::to_string(group));
  }
}

// Large scores: the online softmax must rescale without overflow.
TEST(Attend, LargeScoresStayFinite) {
  std::mt19937 rng(6);
  const int64_t d = 64, len = 300;
  HeadStore s(d, KvType::F32);
  auto k = randn(len * d, rng, 4.0f), v = randn(len * d, rng);
  s.append(k.data(), v.data(), len);
  const auto q = randn(2 * d, rng, 4.0f);
  std::vector<float> o(sz(2 * d)), o_ref(o.size()), lse(2), lse_ref(2);
  AttentionArgs a;
  a.store = &s;
  a.q = q.data();
  a.group = 2;
  a.scale = 1.0f;  // scores in the hundreds
  a.visible = len - 1;
  a.out = o.data();
  a.lse = lse.data();
  attend(a);
  a.out = o_ref.data();
  a.lse = lse_ref.data();
  attend_ref(a);
  expect_close(o, o_ref, 1e-4f, "out");
  expect_close(lse, lse_ref, 1e-5f, "lse");
}

// One decode call per store (its last row is the new token's), store b with queries
// Q[b * group * d ...) and outputs into out (and lse, when given) at the same offsets.
std::vector<AttentionArgs> decode_calls(const std::vector<HeadStore>& stores,
                                        const std::vector<float>& Q, int group,
                                        std::vector<float>& out, std::vector<float>* lse) {
  std::vector<AttentionArgs> calls(stores.size());
  for (size_t b = 0; b < stores.size(); ++b) {
    const int64_t d = stores[b].head_dim();
    AttentionArgs& a = calls[b];
    a.store = &stores[b];
    a.q = &Q[b * sz(group * d)];
    a.group = group;
    a.scale = 1.0f / std::sqrt(float(d));
    a.visible = stores[b].size() - 1;
    a.out = &out[b * sz(group * d)];
    if (lse) a.lse = &(*lse)[b * sz(group)];
  }
  return calls;
}

// A batch of sequences of different lengths against a dense padded tensor with a mask, computed
// here independently of both kernels.
TEST(AttendBatch, RaggedBatchEqualsDenseMaskedReference) {
  std::mt19937 rng(7);
  const int group = 4;
  const int64_t d = 32;
  const std::vector<int64_t> lens = {1, 17, 64, 5, 200, 33};
  const int64_t B = int64_t(lens.size()), Lmax = 200;
  // Dense K, V: B x Lmax x d, padded with garbage that the mask must hide.
  const auto K = randn(B * Lmax * d, rng), V = randn(B * Lmax * d, rng);
  std::vector<HeadStore> stores;
  for (int64_t b = 0; b < B; ++b) {
    stores.emplace_back(d, KvType::F32);
    stores.back().append(&K[sz(b * Lmax * d)], &V[sz(b * Lmax * d)], lens[sz(b)]);
  }
  const auto Q = randn(B * group * d, rng);
  std::vector<float> out(sz(B * group * d));
  const auto calls = decode_calls(stores, Q, group, out, nullptr);
  kernels::ThreadPool pool(2);
  attend_batch(calls, pool);
  for (int64_t b = 0; b < B; ++b)
    for (int g = 0; g < group; ++g) {
      const float* q = &Q[sz((b * group + g) * d)];
      std::vector<double> sc(sz(Lmax));
      double mx = -1e300;
      for (int64_t j = 0; j < Lmax; ++j) {
        double x = 0;
        for (int64_t i = 0; i < d; ++i) x += double(q[i]) * K[sz((b * Lmax + j) * d + i)];
        sc[sz(j)] = j < lens[sz(b)] ? x / std::sqrt(double(d)) : -INFINITY;  // the mask
        mx = std::max(mx, sc[sz(j)]);
      }
      double sum = 0;
      for (double& x : sc) sum += x = std::exp(x - mx);
      for (int64_t i = 0; i < d; ++i) {
        double o = 0;
        for (int64_t j = 0; j < Lmax; ++j) o += sc[sz(j)] / sum * V[sz((b * Lmax + j) * d + i)];
        ASSERT_NEAR(out[sz((b * group + g) * d + i)], o, 2e-5 * (1 + std::fabs(o)))
            << "sequence " << b << " head " << g << " dim " << i;
      }
    }
}

// Ragged decode calls, taken longest first by the pool, equal single calls.
TEST(AttendBatch, RaggedDecodeBatchEqualsSingleCalls) {
  std::mt19937 rng(12);
  const int group = 8;
  const int64_t d = 128;
  const std::vector<int64_t> lens = {300, 5000, 1, 0, 2500, 77, 4100};
  std::vector<HeadStore> stores;
  for (int64_t len : lens) stores.push_back(random_store(len, d, KvType::F16, rng));
  const int64_t B = int64_t(lens.size());
  const auto Q = randn(B * group * d, rng);
  std::vector<float> out(sz(B * group * d)), lse(sz(B * group));
  const auto calls = decode_calls(stores, Q, group, out, &lse);
  for (int threads : {1, 2, 3}) {
    kernels::ThreadPool pool(threads);
    std::fill(out.begin(), out.end(), 0.0f);
    attend_batch(calls, pool);
    for (int64_t b = 0; b < B; ++b) {
      AttentionArgs a = calls[sz(b)];
      std::vector<float> o1(sz(group * d)), l1(sz(group));
      a.out = o1.data();
      a.lse = l1.data();
      attend(a);
      const std::vector<float> got(out.begin() + b * group * d, out.begin() + (b + 1) * group * d);
      const std::vector<float> got_lse(lse.begin() + b * group, lse.begin() + (b + 1) * group);
      const std::string what = std::to_string(threads) + " threads, call " + std::to_string(b);
      expect_close(got, o1, 1e-5f, what);
      expect_close(got_lse, l1, 1e-6f, what + " lse");
    }
  }
}

// Long decode calls fewer than the threads are cut into slices and merged.
TEST(AttendBatch, SlicedDecodeEqualsSingleCall) {
  std::mt19937 rng(8);
  const int group = 8;
  const int64_t d = 64, len = 10000;
  const HeadStore s = random_store(len, d, KvType::F16, rng);
  const auto q = randn(group * d, rng);
  std::vector<float> o(sz(group * d)), lse(sz(group)), o1(o.size()), lse1(lse.size());
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
  a.out = o1.data();
  a.lse = lse1.data();
  attend(a);
  expect_close(o, o1, 1e-5f, "out");
  expect_close(lse, lse1, 1e-6f, "lse");
  // Without slicing the call is attend's, bit for bit (what invariant batching relies on).
  a.out = o.data();
  a.lse = lse.data();
  attend_batch(std::span<const AttentionArgs>(&a, 1), pool, /*slice=*/false);
  EXPECT_EQ(std::memcmp(o.data(), o1.data(), o.size() * sizeof(float)), 0);
  EXPECT_EQ(std::memcmp(lse.data(), lse1.data(), lse.size() * sizeof(float)), 0);
}

}  // namespace
}  // namespace fairkv::kv

namespace fairkv::kv {
namespace {

TEST(Attend, RejectsMissingBuffersAndNegativeBegin) {
  std::mt19937 rng(9);
  const HeadStore s = random_store(4, 8, KvType::F32, rng);
  std::vector<float> q(8), o(8);
  AttentionArgs a;
  a.store = &s;
  a.q = q.data();
  a.out = o.data();
  a.visible = 3;
  a.begin = -1;
  EXPECT_THROW(attend(a), std::invalid_argument);
  EXPECT_THROW(attend_ref(a), std::invalid_argument);
  a.begin = 0;
  a.out = nullptr;
  EXPECT_THROW(attend(a), std::invalid_argument);
  a.out = o.data();
  a.group = 0;
  EXPECT_THROW(attend(a), std::invalid_argument);
}

}  // namespace
}  // namespace fairkv::kv
