#include "model/sampler.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <random>
#include <string>
#include <vector>

namespace fairkv::model {
namespace {

std::string error_of(const SamplerConfig& c, int64_t n_vocab = 0) {
  try {
    Sampler s(c, n_vocab);
  } catch (const std::invalid_argument& e) {
    return e.what();
  }
  return "";
}

TEST(Sampler, ValuesOutsideTheirRangesNameTheOption) {
  const float nan = std::numeric_limits<float>::quiet_NaN();
  SamplerConfig ok;
  EXPECT_EQ(error_of(ok), "");
  auto with = [&](auto field, auto value) {
    SamplerConfig c = ok;
    c.*field = value;
    return error_of(c);
  };
  EXPECT_NE(with(&SamplerConfig::temp, -1.0f).find("--temp"), std::string::npos);
  EXPECT_NE(with(&SamplerConfig::temp, nan).find("--temp"), std::string::npos);
  EXPECT_NE(with(&SamplerConfig::temp, INFINITY).find("--temp"), std::string::npos);
  EXPECT_NE(with(&SamplerConfig::top_k, -5).find("--top-k"), std::string::npos);
  EXPECT_NE(with(&SamplerConfig::top_p, 2.0f).find("--top-p"), std::string::npos);
  EXPECT_NE(with(&SamplerConfig::top_p, 0.0f).find("--top-p"), std::string::npos);
  EXPECT_NE(with(&SamplerConfig::min_p, nan).find("--min-p"), std::string::npos);
  EXPECT_NE(with(&SamplerConfig::min_p, 1.5f).find("--min-p"), std::string::npos);
  // The edges of each range are accepted: greedy, top-k off, top-p off, min-p off.
  EXPECT_EQ(with(&SamplerConfig::temp, 0.0f), "");
  EXPECT_EQ(with(&SamplerConfig::top_k, 0), "");
  EXPECT_EQ(with(&SamplerConfig::top_p, 1.0f), "");
  EXPECT_EQ(with(&SamplerConfig::min_p, 0.0f), "");
}

TEST(Sampler, GreedyIsTheFirstMaximum) {
  const float logits[] = {1, 3, 3, 2};
  SamplerConfig c;
  c.temp = 0;
  Sampler s(c);
  EXPECT_EQ(s.sample(logits), 1);
}

TEST(Sampler, PenaltyAndBiasValuesOutsideTheirRangesNameTheOption) {
  const float nan = std::numeric_limits<float>::quiet_NaN();
  const float inf = std::numeric_limits<float>::infinity();
  auto with = [](auto field, auto value) {
    SamplerConfig c;
    c.*field = value;
    return error_of(c);
  };
  EXPECT_EQ(with(&SamplerConfig::repeat_penalty, 0.0f),
            "--repeat-penalty: expected a number > 0 (1: off), got 0");
  EXPECT_EQ(with(&SamplerConfig::repeat_penalty, -1.1f),
            "--repeat-penalty: expected a number > 0 (1: off), got -1.1");
  EXPECT_NE(with(&SamplerConfig::repeat_penalty, nan).find("--repeat-penalty"), std::string::npos);
  EXPECT_NE(with(&SamplerConfig::repeat_penalty, inf).find("--repeat-penalty"), std::string::npos);
  EXPECT_NE(with(&SamplerConfig::repeat_penalty, 1e-40f).find("--repeat-penalty"),
            std::string::npos);  // 1 / p is inf
  EXPECT_EQ(with(&SamplerConfig::repeat_last_n, -2),
            "--repeat-last-n: expected a count >= -1 (0: off, -1: the whole context), got -2");
  EXPECT_EQ(with(&SamplerConfig::presence_penalty, 2.5f),
            "--presence-penalty: expected a number in [-2, 2] (0: off), got 2.5");
  EXPECT_NE(with(&SamplerConfig::presence_penalty, nan).find("--presence-penalty"),
            std::string::npos);
  EXPECT_EQ(with(&SamplerConfig::frequency_penalty, -3.0f),
            "--frequency-penalty: expected a number in [-2, 2] (0: off), got -3");
  // The edges: off, and the ends of the ranges.
  EXPECT_EQ(with(&SamplerConfig::repeat_penalty, 1.0f), "");
  EXPECT_EQ(with(&SamplerConfig::repeat_last_n, -1), "");
  EXPECT_EQ(with(&SamplerConfig::repeat_last_n, 0), "");
  EXPECT_EQ(with(&SamplerConfig::presence_penalty, -2.0f), "");
  EXPECT_EQ(with(&SamplerConfig::frequency_penalty, 2.0f), "");

  auto bias = [](std::vector<LogitBias> b, int64_t n_vocab = 0) {
    SamplerConfig c;
    c.logit_bias = std::move(b);
    return error_of(c, n_vocab);
  };
  EXPECT_EQ(bias({{5, 100}, {6, -100}, {7, -inf}}), "");
  EXPECT_EQ(bias({{-1, 1}}), "--logit-bias: expected a token id >= 0, got -1");
  EXPECT_EQ(bias({{10, 1}}, 10), "--logit-bias: expected a token id in [0, 10), got 10");
  EXPECT_EQ(bias({{9, 1}}, 10), "");
  EXPECT_EQ(bias({{3, 101}}),
            "--logit-bias: expected a bias in [-100, 100] or -inf, got 101 for token 3");
  EXPECT_EQ(bias({{3, inf}}),
            "--logit-bias: expected a bias in [-100, 100] or -inf, got inf for token 3");
  EXPECT_NE(bias({{3, nan}}).find("--logit-bias"), std::string::npos);
  // Banning the whole vocabulary leaves nothing to sample (a token listed twice counts once).
  EXPECT_EQ(bias({{0, -inf}, {1, -inf}, {1, -inf}}, 3), "");
  EXPECT_EQ(bias({{0, -inf}, {1, -inf}, {2, -inf}}, 3),
            "--logit-bias: bans every token of the vocabulary (3 tokens)");
}

// The sampler as it was before the penalties, with std::discrete_distribution: the reference
// for "a seed keeps its sequence".
int32_t sample_before(const SamplerConfig& c, std::mt19937_64& rng, std::span<const float> logits) {
  std::vector<std::pair<float, int32_t>> cand;
  for (size_t i = 0; i < logits.size(); ++i) cand.push_back({logits[i], int32_t(i)});
  auto by_logit = [](const auto& a, const auto& b) {
    return a.first > b.first || (a.first == b.first && a.second < b.second);
  };
  size_t n = cand.size();
  if (c.top_k > 0 && size_t(c.top_k) < n) {
    std::partial_sort(cand.begin(), cand.begin() + c.top_k, cand.end(), by_logit);
    n = size_t(c.top_k);
  } else {
    std::sort(cand.begin(), cand.end(), by_logit);
  }
  std::vector<double> p(n);
  double sum = 0;
  for (size_t i = 0; i < n; ++i) sum += p[i] = std::exp(double(cand[i].first - cand[0].first));
  for (double& v : p) v /= sum;
  if (c.top_p < 1.0f) {
    double acc = 0;
    for (size_t i = 0; i < n; ++i)
      if ((acc += p[i]) >= c.top_p) {
        n = i + 1;
        break;
      }
  }
  if (c.min_p > 0) {
    size_t keep = 1;
    while (keep < n && p[keep] >= c.min_p * p[0]) ++keep;
    n = keep;
  }
  std::vector<double> w(n);
  for (size_t i = 0; i < n; ++i) w[i] = std::exp(double(cand[i].first - cand[0].first) / c.temp);
  std::discrete_distribution<size_t> dist(w.begin(), w.end());
  return cand[dist(rng)].second;
}

TEST(Sampler, ASeedKeepsTheSequenceItHadBeforeThePenalties) {
  std::mt19937 gen(3);
  std::normal_distribution<float> normal(0, 2);
  std::vector<float> logits(300);
  SamplerConfig plain, wide, narrow;
  wide.top_k = 0;
  wide.min_p = 0;
  wide.top_p = 1;
  wide.temp = 1.5f;
  narrow.top_k = 3;
  narrow.seed = 99;
  for (const SamplerConfig& c : {plain, wide, narrow}) {
    Sampler s(c);
    std::mt19937_64 rng(c.seed);
    for (int i = 0; i < 300; ++i) {
      for (float& l : logits) l = normal(gen);
      ASSERT_EQ(s.sample(logits), sample_before(c, rng, logits)) << "draw " << i;
    }
  }
}

TEST(Sampler, ASeedGivesTheSameSequenceWhateverElseSamples) {
  std::vector<float> logits(50);
  for (size_t i = 0; i < logits.size(); ++i) logits[i] = float(std::sin(double(i)));
  SamplerConfig c;
  c.top_k = 0;
  c.min_p = 0;
  c.seed = 1234;
  c.repeat_penalty = 1.3f;
  Sampler a(c), b(c);
  SamplerConfig other_c = c;
  other_c.seed = 1;
  Sampler other(other_c);
  std::vector<int32_t> sa, sb, so;
  for (int i = 0; i < 200; ++i) {
    sa.push_back(a.sample(logits));
    a.accept(sa.back());
    for (int k = 0; k < 3; ++k) so.push_back(other.sample(logits));  // interleaved elsewhere
  }
  for (int i = 0; i < 200; ++i) {
    sb.push_back(b.sample(logits));
    b.accept(sb.back());
  }
  EXPECT_EQ(sa, sb);
  EXPECT_NE(std::vector<int32_t>(so.begin(), so.begin() + 200), sa);  // the seed matters
}

}  // namespace
}  // namespace fairkv::model
