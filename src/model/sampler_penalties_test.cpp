// The logit bias and the penalties of the sampler against a brute-force reference: the logits
// modified by hand from the whole history, then either the argmax (greedy, exact) or the
// frequencies of many seeded draws against their softmax.
#include "model/sampler.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <random>
#include <vector>

namespace fairkv::model {
namespace {

const float kInf = std::numeric_limits<float>::infinity();

// Every filter off, temperature 1: draws follow the softmax of the shaped logits.
SamplerConfig plain_softmax() {
  SamplerConfig c;
  c.temp = 1;
  c.top_k = 0;
  c.top_p = 1;
  c.min_p = 0;
  c.seed = 42;
  return c;
}

// The logits as the sampler should shape them, from the whole history: biases in their order,
// then for a token seen `count` times among the last repeat_last_n, llama.cpp's formula.
std::vector<float> reference_logits(std::vector<float> logits, const std::vector<int32_t>& history,
                                    const SamplerConfig& c) {
  for (const LogitBias& b : c.logit_bias) logits[size_t(b.token)] += b.bias;
  if (c.repeat_last_n == 0) return logits;
  const size_t n =
      c.repeat_last_n < 0 ? history.size() : std::min(history.size(), size_t(c.repeat_last_n));
  const std::vector<int32_t> window(history.end() - ptrdiff_t(n), history.end());
  for (size_t t = 0; t < logits.size(); ++t) {
    const auto count = std::count(window.begin(), window.end(), int32_t(t));
    if (count == 0) continue;
    float& l = logits[t];
    l = l <= 0 ? l * c.repeat_penalty : l / c.repeat_penalty;
    l -= float(count) * c.frequency_penalty + 1.0f * c.presence_penalty;
  }
  return logits;
}

std::vector<double> softmax(const std::vector<float>& logits) {
  const float top = *std::max_element(logits.begin(), logits.end());
  std::vector<double> p(logits.size());
  double sum = 0;
  for (size_t i = 0; i < p.size(); ++i) sum += p[i] = std::exp(double(logits[i]) - top);
  for (double& v : p) v /= sum;
  return p;
}

// 20000 draws (nothing accepted in between) against the softmax of `want`.
void expect_draws_follow(Sampler& s, const std::vector<float>& logits,
                         const std::vector<float>& want) {
  const int n = 20000;
  std::vector<int> hits(logits.size());
  for (int i = 0; i < n; ++i) ++hits[size_t(s.sample(logits))];
  const std::vector<double> p = softmax(want);
  for (size_t t = 0; t < p.size(); ++t) {
    if (p[t] == 0) {
      EXPECT_EQ(hits[t], 0) << "token " << t << " is banned";
      continue;
    }
    // About 4 standard deviations of a frequency over 20000 draws at p = 0.5.
    EXPECT_NEAR(double(hits[t]) / n, p[t], 0.015) << "token " << t;
  }
}

Sampler with_history(const SamplerConfig& c, const std::vector<int32_t>& history) {
  Sampler s(c);
  s.accept(history);
  return s;
}

TEST(SamplerPenalties, RepeatPenaltyDividesPositiveAndMultipliesNegativeLogits) {
  const std::vector<float> logits = {1.5f, -0.5f, 0.8f, 0.2f, -1.0f, 0.0f};
  const std::vector<int32_t> history = {0, 1, 1, 4, 5};
  SamplerConfig c = plain_softmax();
  c.repeat_penalty = 2;
  const std::vector<float> want = {0.75f, -1.0f, 0.8f, 0.2f, -2.0f, 0.0f};
  EXPECT_EQ(reference_logits(logits, history, c), want);  // the reference itself, by hand
  Sampler s = with_history(c, history);
  expect_draws_follow(s, logits, want);
}

TEST(SamplerPenalties, PresenceAndFrequencyLowerSeenTokensByTheirCounts) {
  const std::vector<float> logits = {0.5f, 0.4f, 1.2f, 0.9f, 0.0f};
  const std::vector<int32_t> history = {2, 2, 3, 2};
  SamplerConfig c = plain_softmax();
  c.presence_penalty = 0.5f;
  c.frequency_penalty = 0.3f;
  // Token 2: seen 3 times, 1.2 - 0.5 - 0.9; token 3: once, 0.9 - 0.5 - 0.3.
  const std::vector<float> want = {0.5f, 0.4f, 1.2f - 1.4f, 0.9f - 0.8f, 0.0f};
  const std::vector<float> ref = reference_logits(logits, history, c);
  for (size_t t = 0; t < want.size(); ++t) EXPECT_NEAR(ref[t], want[t], 1e-6f);
  Sampler s = with_history(c, history);
  expect_draws_follow(s, logits, want);
  // Negative penalties favour what was seen.
  c.presence_penalty = -1;
  c.frequency_penalty = -0.25f;
  Sampler neg = with_history(c, history);
  expect_draws_follow(neg, logits, reference_logits(logits, history, c));
}

TEST(SamplerPenalties, BiasAndEveryPenaltyTogetherMatchTheReference) {
  const std::vector<float> logits = {1.0f, 0.3f, -0.7f, 0.9f, 0.1f, -0.2f, 0.6f};
  const std::vector<int32_t> history = {6, 0, 3, 3, 1, 6, 2, 3};
  SamplerConfig c = plain_softmax();
  c.logit_bias = {{2, 1.5f}, {4, -kInf}, {0, -0.5f}, {2, 0.25f}};
  c.repeat_penalty = 1.3f;
  c.repeat_last_n = 6;  // token 6's first occurrence has left the window
  c.presence_penalty = 0.2f;
  c.frequency_penalty = 0.1f;
  Sampler s = with_history(c, history);
  expect_draws_follow(s, logits, reference_logits(logits, history, c));
}

TEST(SamplerPenalties, OnlyTheLastNTokensCount) {
  const std::vector<float> logits = {3.0f, 2.9f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f};
  SamplerConfig c;
  c.temp = 0;
  c.repeat_penalty = 2;
  auto greedy = [&](int last_n, const std::vector<int32_t>& history) {
    c.repeat_last_n = last_n;
    return with_history(c, history).sample(logits);
  };
  EXPECT_EQ(greedy(2, {0, 5, 6}), 0);  // token 0 has left the window of 2
  EXPECT_EQ(greedy(3, {0, 5, 6}), 1);  // 3 / 2 < 2.9
  EXPECT_EQ(greedy(0, {0, 0, 0}), 0);  // 0: off
  std::vector<int32_t> long_history = {0};
  long_history.resize(1000, 5);
  EXPECT_EQ(greedy(-1, long_history), 1);  // -1: the whole history
  EXPECT_EQ(greedy(64, long_history), 0);
}

TEST(SamplerPenalties, GreedyAppliesTheBiasAndThePenaltiesBeforeTheArgmax) {
  const std::vector<float> logits = {1.0f, 2.0f, 3.0f};
  SamplerConfig c;
  c.temp = 0;
  c.logit_bias = {{2, -kInf}};
  EXPECT_EQ(Sampler(c).sample(logits), 1);
  c.logit_bias = {{0, 5}};
  EXPECT_EQ(Sampler(c).sample(logits), 0);
  c.logit_bias = {};
  c.presence_penalty = 1.5f;
  EXPECT_EQ(with_history(c, {2}).sample(logits), 1);  // 3 - 1.5 < 2
  c.presence_penalty = 0;
  c.frequency_penalty = 0.6f;
  EXPECT_EQ(with_history(c, {2}).sample(logits), 2);     // 3 - 0.6 > 2
  EXPECT_EQ(with_history(c, {2, 2}).sample(logits), 1);  // 3 - 1.2 < 2
  c.frequency_penalty = 0.5f;
  EXPECT_EQ(with_history(c, {2, 2}).sample(logits), 1);  // a tie at 2: the first maximum
}

TEST(SamplerPenalties, ABannedTokenIsNeverDrawn) {
  const std::vector<float> logits = {4.0f, 1.0f, 0.5f, 0.0f};
  SamplerConfig c = plain_softmax();
  c.logit_bias = {{0, -kInf}};
  Sampler s(c);
  expect_draws_follow(s, logits, {-kInf, 1.0f, 0.5f, 0.0f});
  // Everything but one token banned: always that token, whatever the filters.
  c = SamplerConfig();
  c.logit_bias = {{0, -kInf}, {1, -kInf}, {3, -kInf}};
  Sampler only(c);
  for (int i = 0; i < 200; ++i) ASSERT_EQ(only.sample(logits), 2);
}

TEST(SamplerPenalties, TheBiasComesBeforeTopK) {
  // With top-k 2, a +10 bias lifts token 3 into the kept pair; the rest follows the softmax.
  const std::vector<float> logits = {5.0f, 4.0f, 3.0f, 0.0f};
  SamplerConfig c = plain_softmax();
  c.top_k = 2;
  c.logit_bias = {{3, 10}};
  Sampler s(c);
  expect_draws_follow(s, logits, {5.0f, -kInf, -kInf, 10.0f});
}

TEST(SamplerPenalties, NothingLeftToSampleIsAnError) {
  const std::vector<float> logits = {1.0f, 2.0f};
  SamplerConfig c;
  c.logit_bias = {{0, -kInf}, {1, -kInf}};
  Sampler banned(c);  // the vocabulary size is not known here
  EXPECT_THROW(banned.sample(logits), std::runtime_error);
  c.logit_bias = {{2, 1}};
  Sampler outside(c);
  EXPECT_THROW(outside.sample(logits), std::invalid_argument);
}

TEST(SamplerPenalties, GreedyMatchesTheReferenceOnRandomHistories) {
  std::mt19937 rng(11);
  std::normal_distribution<float> normal(0, 1.5f);
  auto pick = [&](auto... v) {
    const double values[] = {double(v)...};
    return values[std::uniform_int_distribution<size_t>(0, sizeof...(v) - 1)(rng)];
  };
  const size_t V = 20;
  for (int trial = 0; trial < 400; ++trial) {
    SamplerConfig c;
    c.temp = 0;
    c.repeat_penalty = float(pick(1, 0.8, 1.3, 2));
    c.repeat_last_n = int(pick(-1, 0, 1, 5, 64));
    c.presence_penalty = float(pick(0, -1, 0.7, 2));
    c.frequency_penalty = float(pick(0, -0.4, 0.3, 1.1));
    for (int b = int(pick(0, 1, 3)); b > 0; --b)
      c.logit_bias.push_back({int32_t(rng() % V), float(pick(-kInf, -3, 0.5, 4))});
    std::vector<float> logits(V);
    for (float& l : logits) l = normal(rng);
    std::vector<int32_t> history(size_t(pick(0, 3, 40, 150)));
    for (int32_t& t : history) t = int32_t(rng() % (V + 5));  // ids past the row are ignored
    const std::vector<float> want = reference_logits(logits, history, c);
    Sampler s(c);
    s.accept(history);
    if (*std::max_element(want.begin(), want.end()) == -kInf) {
      EXPECT_THROW(s.sample(logits), std::runtime_error);
      continue;
    }
    ASSERT_EQ(s.sample(logits), argmax(want)) << "trial " << trial;
  }
}

}  // namespace
}  // namespace fairkv::model
