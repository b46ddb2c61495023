#include "kv/attention_quant.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <random>
#include <string>
#include <tuple>
#include <vector>

#include "kernels/types.h"
#include "kv/attention.h"
#include "kv/attention_kernels.h"
#include "kv/attention_merge.h"
#include "kv/attention_test_util.h"

namespace fairkv::kv {
namespace {

using test::expect_close;
using test::q8_exact;
using test::randn;
using test::random_store;
using test::sz;

// The scores of the integer kernel (whichever this CPU runs) and of the portable loop against
// float64 dot products of the dequantized keys with the dequantized query blocks.
TEST(QuantScores, IntegerDotProductsMatchDequantizedBlocks) {
  std::mt19937 rng(3);
  for (KvType t : {KvType::Q8_0, KvType::Q4_0})
    for (int64_t d : {32, 64, 96, 128, 256}) {
      const int64_t len = 45, n = 5;
      const HeadStore s = random_store(len, d, t, rng);
      const auto q = randn(n * d, rng);
      std::vector<const float*> rows;
      for (int64_t r = 0; r < n; ++r) rows.push_back(&q[sz(r * d)]);
      detail::QuantQueries qq;
      qq.set(rows.data(), int(n), d);
      const int64_t k0 = 3, nk = 40;
      std::vector<float> fast(sz(n * nk)), port(fast.size()), avx2(fast.size());
      detail::quant_scores(s, k0, nk, qq, int(n), 0.5f, fast.data(), nk);
      detail::quant_scores_portable(s, k0, nk, qq, int(n), 0.5f, port.data(), nk);
      const bool has_avx2 = detail::quant_scores_avx2(s, k0, nk, qq, int(n), 0.5f, avx2.data(), nk);
      std::vector<float> key(sz(d));
      ASSERT_TRUE(has_avx2 || !__builtin_cpu_supports("avx2"));
      const std::string what = std::string(kv_type_name(t)) + " d" + std::to_string(d) +
                               (detail::quant_scores_vnni() ? " vnni" : " portable");
      for (int64_t j = 0; j < nk; ++j) {
        s.k_row(k0 + j, key.data());
        for (int64_t r = 0; r < n; ++r) {
          double want = 0;
          for (int64_t i = 0; i < d; ++i)
            want += double(key[sz(i)]) * qq.d[sz(r * qq.blocks + i / 32)] * qq.q[sz(r * d + i)];
          want *= 0.5;
          const double tol = 1e-5 * (1 + std::fabs(want));
          ASSERT_NEAR(port[sz(r * nk + j)], want, tol) << what << " key " << j << " row " << r;
          ASSERT_NEAR(fast[sz(r * nk + j)], want, tol) << what << " key " << j << " row " << r;
          if (has_avx2) {
            ASSERT_NEAR(avx2[sz(r * nk + j)], want, tol) << "avx2 key " << j << " row " << r;
          }
        }
      }
    }
}

// Rows of q x 2^-e with q in [-127, 127] and some |q| = 127 per block of 32: q8_0 holds them
// exactly with d = 2^-e, so that every block's d_k x d_q x dot, and their sums, are exact floats.
std::vector<float> pow2_rows(int64_t n, int64_t d, int e, std::mt19937& rng) {
  std::uniform_int_distribution<int> qd(-127, 127);
  std::vector<float> x(sz(n * d));
  for (int64_t b = 0; b < n * d; b += 32) {
    for (int64_t i = b; i < b + 32; ++i) x[sz(i)] = std::ldexp(float(qd(rng)), -e);
    x[sz(b + (qd(rng) + 127) % 32)] = std::ldexp(qd(rng) < 0 ? -127.0f : 127.0f, -e);
  }
  return x;
}

// Keys for q4_0 that it holds exactly with d = 2^-e: q in [-8, 7] x 2^-e, each block's largest
// magnitude -8 x 2^-e (so that ggml's d = max / -8 is 2^-e).
std::vector<float> pow2_rows_q4(int64_t n, int64_t d, int e, std::mt19937& rng) {
  std::uniform_int_distribution<int> qd(-7, 7);
  std::vector<float> x(sz(n * d));
  for (int64_t b = 0; b < n * d; b += 32) {
    for (int64_t i = b; i < b + 32; ++i) x[sz(i)] = std::ldexp(float(qd(rng)), -e);
    x[sz(b + (qd(rng) + 7) % 32)] = std::ldexp(-8.0f, -e);
  }
  return x;
}

// The signed value of element i of key block blk (ggml's bytes) and its scale.
int block_value(KvType t, const uint8_t* blk, int i) {
  if (t == KvType::Q8_0) return int8_t(blk[2 + i]);
  return (i < 16 ? blk[2 + i] & 15 : blk[2 + i - 16] >> 4) - 8;
}

// The integer sums of every kernel are the signed dot products exactly: with power-of-two scales
// the scores are exact floats, equal to a scalar reference over the ggml blocks' integers (int64
// dots per block), for keys in whole panels, partly covered panels and the row-major tail.
TEST(QuantScores, IntegerDotsEqualScalarReferenceExactly) {
  std::mt19937 rng(5);
  for (KvType t : {KvType::Q8_0, KvType::Q4_0})
    for (int64_t d : {32, 64, 96, 128, 256}) {
      const int64_t len = 3 * kKeyPanel + 11, nb = d / 32;
      const auto k = t == KvType::Q8_0 ? pow2_rows(len, d, 7, rng) : pow2_rows_q4(len, d, 7, rng);
      const auto v = randn(len * d, rng);
      HeadStore s(d, t);
      s.append(k.data(), v.data(), len);
      const size_t bb = s.k_row_bytes() / sz(nb);
      std::vector<uint8_t> key(s.k_row_bytes());
      for (int n : {1, 3, 8, 9, 16, 17}) {
        const auto q = pow2_rows(n, d, 5, rng);
        std::vector<const float*> rows;
        for (int r = 0; r < n; ++r) rows.push_back(&q[sz(r * d)]);
        detail::QuantQueries qq;
        qq.set(rows.data(), n, d);
        for (auto [k0, nk] : {std::pair<int64_t, int64_t>{0, len},
                              {3, 40},
                              {16, 32},
                              {21, len - 21},
                              {len - 5, 5}}) {
          std::vector<float> fast(sz(n * nk)), port(fast.size()), avx2(fast.size());
          detail::quant_scores(s, k0, nk, qq, n, 0.5f, fast.data(), nk);
          detail::quant_scores_portable(s, k0, nk, qq, n, 0.5f, port.data(), nk);
          const bool has_avx2 = detail::quant_scores_avx2(s, k0, nk, qq, n, 0.5f, avx2.data(), nk);
          for (int64_t j = 0; j < nk; ++j) {
            s.k_raw_row(k0 + j, key.data());
            for (int r = 0; r < n; ++r) {
              double want = 0;
              for (int64_t b = 0; b < nb; ++b) {
                const uint8_t* blk = &key[sz(b) * bb];
                int64_t dot = 0;
                for (int i = 0; i < 32; ++i)
                  dot += int64_t(block_value(t, blk, i)) * qq.q[sz((r * nb + b) * 32 + i)];
                uint16_t h;
                std::memcpy(&h, blk, 2);
                want += double(kernels::fp16_to_fp32(h)) * qq.d[sz(r * nb + b)] * double(dot);
              }
              want *= 0.5;
              const std::string what = std::string(kv_type_name(t)) + " d" + std::to_string(d) +
                                       " n" + std::to_string(n) + " k0 " + std::to_string(k0) +
                                       " key " + std::to_string(j) + " row " + std::to_string(r);
              ASSERT_EQ(fast[sz(r * nk + j)], float(want)) << what;
              ASSERT_EQ(port[sz(r * nk + j)], float(want)) << what;
              if (has_avx2) {
                ASSERT_EQ(avx2[sz(r * nk + j)], float(want)) << what << " avx2";
              }
            }
          }
        }
      }
    }
}

// Quantized values are summed as 16-bit weights (pv_quant): for each type, every row count a
// call may take (each kernel width, and rows past eight), one key, odd and even counts, a whole
// call and blocks of several calls (a quantized store's softmax steps 256 keys), the output is
// bit for bit what attention_quant.h's rule gives, emulated here with float32 factors and exact
// integer sums, call by call; and it is within the rule's bound of the float64 product of the
// probabilities and the dequantized values.
TEST(QuantValues, IntegerWeightsFollowTheirRule) {
  if (!detail::quant_scores_vnni()) GTEST_SKIP() << "no AVX512-VNNI on this CPU";
  std::mt19937 rng(17);
  std::uniform_real_distribution<float> unif(0.0f, 1.0f);
  constexpr int64_t kStride = kCanonicalRows;
  for (KvType t : {KvType::Q8_0, KvType::Q4_0})
    for (int64_t d : {32, 128})
      for (int n : {1, 2, 3, 4, 7, 8, 9, 16})
        for (int64_t nb : {1, 2, 17, 63, 64, 65, 130, 256}) {
          const int64_t r0 = 5, blocks = d / kernels::kQK;
          const HeadStore s = random_store(r0 + nb + 3, d, KvTypes(t), rng);
          // Rows of spread probabilities, of one peak, and (the third) of none at all.
          std::vector<float> prob(sz(n * kStride), 0.0f), corr(sz(n));
          for (int r = 0; r < n; ++r) {
            corr[sz(r)] = 0.5f + unif(rng);
            for (int64_t j = 0; r != 2 && j < nb; ++j)
              prob[sz(r * kStride + j)] =
                  r % 2 ? std::exp(-2.0f * float(std::abs(j - nb / 2))) : unif(rng);
          }
          const auto o0 = randn(n * d, rng);
          std::vector<float> o = o0;
          std::vector<float*> rows(sz(n));
          for (int r = 0; r < n; ++r) rows[sz(r)] = o.data() + r * d;
          detail::Prefetch ahead;
          ASSERT_TRUE(detail::pv_quant(s, rows.data(), n, r0, nb, prob.data(), kStride, corr.data(),
                                       ahead));

          // The values' scales and quants as stored.
          const auto* V = static_cast<const uint8_t*>(s.v_data());
          auto scale = [&](int64_t j, int64_t b) {
            uint16_t h;
            std::memcpy(&h, V + sz(r0 + j) * s.v_row_bytes() + sz(b) * kv_row_bytes(t, 32), 2);
            return kernels::fp16_to_fp32(h);
          };
          auto quant = [&](int64_t j, int64_t b, int i) {
            const uint8_t* q = V + sz(r0 + j) * s.v_row_bytes() + sz(b) * kv_row_bytes(t, 32) + 2;
            if (t == KvType::Q8_0) return int(int8_t(q[i]));
            return (i < 16 ? q[i] & 15 : q[i - 16] >> 4) - 8;
          };
          const double qmax = t == KvType::Q8_0 ? 127 : 8;
          auto inverse = [](float x, float to) {
            return x > 0.0f && to / x <= 3.0e38f ? to / x : 0.0f;
          };
          for (int r = 0; r < n; ++r)
            for (int64_t b = 0; b < blocks; ++b)
              for (int i = 0; i < kernels::kQK; ++i) {
                const int64_t at = r * d + b * kernels::kQK + i;
                float want = o0[sz(at)] * corr[sz(r)];
                double exact = want, bound = 0.0;
                for (int64_t j0 = 0; j0 < nb; j0 += detail::kBlock) {  // call by call
                  const int64_t j1 = std::min(nb, j0 + detail::kBlock);
                  const float* p = prob.data() + r * kStride;
                  const float pmax = *std::max_element(p + j0, p + j1);
                  float top = 0.0f;
                  for (int64_t j = j0; j < j1; ++j) top = std::max(top, std::fabs(scale(j, b)));
                  const float inv_p = inverse(pmax, 1.0f);
                  const float inv_s = inverse(top, float(detail::kWeightSteps));
                  int64_t sum = 0;
                  for (int64_t j = j0; j < j1; ++j) {
                    const float x = (p[j] * inv_p) * (scale(j, b) * inv_s);
                    sum += int64_t(std::nearbyint(x)) * quant(j, b, i);
                    exact += double(p[j]) * scale(j, b) * quant(j, b, i);
                  }
                  want = std::fma(float(sum), pmax * top / float(detail::kWeightSteps), want);
                  bound += double(j1 - j0) * 0.51 / detail::kWeightSteps * pmax * top * qmax;
                }
                const std::string what = std::string(kv_type_name(t)) + " d" + std::to_string(d) +
                                         " n" + std::to_string(n) + " nb" + std::to_string(nb) +
                                         " row " + std::to_string(r) + " at " + std::to_string(at);
                ASSERT_EQ(o[sz(at)], want) << what;
                ASSERT_NEAR(o[sz(at)], exact, bound + 1e-6 * (1.0 + std::fabs(exact))) << what;
              }
        }
}

AttentionArgs decode_args(const HeadStore& s, const std::vector<float>& q, int group,
                          std::vector<float>& o, std::vector<float>& lse) {
  const int64_t d = s.head_dim();
  o.assign(sz(group * d), 0.0f);
  lse.assign(sz(group), 0.0f);
  AttentionArgs a;
  a.store = &s;
  a.q = q.data();
  a.group = group;
  a.scale = 1.0f / std::sqrt(float(d));
  a.visible = s.size() - 1;
  a.out = o.data();
  a.lse = lse.data();
  return a;
}

class QuantAttendVsRef : public ::testing::TestWithParam<std::tuple<KvTypes, int, int64_t>> {};

// Decode over quantized stores equals the reference over the same (dequantized) rows: to float
// rounding for queries that q8_0 holds exactly, and to the query's rounding for any query.
TEST_P(QuantAttendVsRef, DecodeMatchesReference) {
  const auto [t, group, d] = GetParam();
  std::mt19937 rng(uint32_t(group * 100 + d));
  for (int64_t len : {1, 5, 15, 16, 17, 63, 64, 65, 200, 1001}) {
    const HeadStore s = random_store(len, d, t, rng);
    std::vector<float> o, lse, o_ref, lse_ref;
    // The whole store, and slices (a token slice's partial softmax and its lse) that start or end
    // inside a key panel or on its edge.
    for (auto [begin, end] : {std::pair<int64_t, int64_t>{0, len},
                              {len / 3, len - len / 5},
                              {len / 16 * 16, len},
                              {0, (len + 1) / 2}}) {
      const std::string what = "len " + std::to_string(len) + " slice [" + std::to_string(begin) +
                               ", " + std::to_string(end) + ")";
      for (bool exact : {true, false}) {
        const auto q = exact ? q8_exact(group * d, rng) : randn(group * d, rng);
        AttentionArgs a = decode_args(s, q, group, o, lse);
        a.begin = begin;
        a.end = end;
        attend(a);
        AttentionArgs r = decode_args(s, q, group, o_ref, lse_ref);
        r.begin = begin;
        r.end = end;
        attend_ref(r);
        const bool qk = kv_type_quantized(t.k);
        const float tol = exact || !qk ? 2e-5f : 4e-2f;
        const test::PieceSlack slack = test::kernel_slack(s, q.data(), group, a.scale);
        expect_close(o, o_ref, tol, what + (exact ? " exact q" : " any q") + " out", slack.out);
        expect_close(lse, lse_ref, exact || !qk ? 2e-6f : 4e-2f, what + " lse", slack.lse);
      }
    }
  }
}

// Prefill: causal, over m cached rows and n new ones, on an exactly representable query.
TEST_P(QuantAttendVsRef, PrefillMatchesReference) {
  const auto [t, group, d] = GetParam();
  std::mt19937 rng(uint32_t(group * 7 + d));
  for (auto [m, n] : {std::pair<int64_t, int64_t>{0, 37}, {70, 21}}) {
    const HeadStore s = random_store(m + n, d, t, rng);
    const auto q = q8_exact(n * group * d, rng);
    std::vector<float> o(sz(n * group * d)), o_ref(o.size()), lse(sz(n * group)),
        lse_ref(lse.size());
    AttentionArgs a;
    a.store = &s;
    a.q = q.data();
    a.n_tokens = n;
    a.group = group;
    a.scale = 1.0f / std::sqrt(float(d));
    a.visible = m;
    a.out = o.data();
    a.lse = lse.data();
    attend(a);
    a.out = o_ref.data();
    a.lse = lse_ref.data();
    attend_ref(a);
    const std::string what = "m " + std::to_string(m) + " n " + std::to_string(n);
    const test::PieceSlack slack = test::kernel_slack(s, q.data(), n * group, a.scale);
    expect_close(o, o_ref, 2e-5f, what + " out", slack.out);
    expect_close(lse, lse_ref, 2e-6f, what + " lse", slack.lse);
  }
}

INSTANTIATE_TEST_SUITE_P(
    Shapes, QuantAttendVsRef,
    ::testing::Combine(::testing::Values(KvTypes(KvType::Q8_0), KvTypes(KvType::Q4_0),
                                         KvTypes(KvType::Q8_0, KvType::F16),
                                         KvTypes(KvType::F16, KvType::Q8_0), KvTypes(KvType::BF16),
                                         KvTypes(KvType::Q4_0, KvType::BF16)),
                       ::testing::Range(1, 9), ::testing::Values(32, 64, 96, 128)),
    [](const auto& info) {
      const KvTypes t = std::get<0>(info.param);
      return std::string(kv_type_name(t.k)) + "_" + kv_type_name(t.v) + "_g" +
             std::to_string(std::get<1>(info.param)) + "_d" +
             std::to_string(std::get<2>(info.param));
    });

// The observation window's probabilities on a quantized cache are those of an f32 cache of the
// same rows when the new rows' float32 keys are given: eviction scores computed before
// quantization.
TEST(QuantAttend, WindowProbabilitiesUseTheKeysAsComputed) {
  std::mt19937 rng(9);
  const int64_t d = 64, n = 40, W = 8;
  const int group = 4;
  const auto k = randn(n * d, rng), v = randn(n * d, rng), q = randn(n * group * d, rng);
  HeadStore f32(d, KvType::F32), q8(d, KvType::Q8_0);
  f32.append(k.data(), v.data(), n);
  q8.append(k.data(), v.data(), n);
  std::vector<float> o(sz(n * group * d)), p(sz(W * group * n)), p_ref(p.size()), p_q(p.size());
  AttentionArgs a;
  a.q = q.data();
  a.n_tokens = n;
  a.group = group;
  a.scale = 1.0f / std::sqrt(float(d));
  a.visible = 0;
  a.out = o.data();
  a.probs_tokens = W;
  a.store = &f32;
  a.probs = p_ref.data();
  attend_ref(a);
  a.store = &q8;
  a.probs = p.data();
  a.fresh_keys = k.data();
  attend(a);
  expect_close(p, p_ref, 1e-5f, "with fresh keys");
  // Without them, the quantized keys score: close, but not the same.
  a.fresh_keys = nullptr;
  a.probs = p_q.data();
  attend(a);
  expect_close(p_q, p_ref, 5e-2f, "from quantized keys");
  float diff = 0;
  for (size_t i = 0; i < p.size(); ++i) diff = std::max(diff, std::fabs(p_q[i] - p_ref[i]));
  EXPECT_GT(diff, 1e-5f);
}

}  // namespace
}  // namespace fairkv::kv
