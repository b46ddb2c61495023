#include "model/sampler.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>
#include <stdexcept>

#include <fmt/format.h>

namespace fairkv::model {

namespace {

[[noreturn]] void bad_bias_token(int32_t token, int64_t n_vocab) {
  if (n_vocab > 0)
    throw std::invalid_argument(
        fmt::format("--logit-bias: expected a token id in [0, {}), got {}", n_vocab, token));
  throw std::invalid_argument(fmt::format("--logit-bias: expected a token id >= 0, got {}", token));
}

bool penalties_on(const SamplerConfig& c) {
  return c.repeat_last_n != 0 &&
         (c.repeat_penalty != 1 || c.presence_penalty != 0 || c.frequency_penalty != 0);
}

}  // namespace

int32_t argmax(std::span<const float> logits) {
  // First maximum wins, as llama.cpp's greedy sampler does.
  return int32_t(std::max_element(logits.begin(), logits.end()) - logits.begin());
}

void check_sampler(const SamplerConfig& c, int64_t n_vocab) {
  auto fail = [](const char* option, const char* expected, auto got) {
    throw std::invalid_argument(fmt::format("{}: expected {}, got {}", option, expected, got));
  };
  // Written so that NaN fails every test.
  if (!(c.temp >= 0) || !std::isfinite(c.temp)) fail("--temp", "a number >= 0", c.temp);
  if (c.top_k < 0) fail("--top-k", "a count >= 0 (0: off)", c.top_k);
  if (!(c.top_p > 0 && c.top_p <= 1)) fail("--top-p", "a number in (0, 1] (1: off)", c.top_p);
  if (!(c.min_p >= 0 && c.min_p <= 1)) fail("--min-p", "a number in [0, 1] (0: off)", c.min_p);
  // A tiny penalty would turn positive logits into inf (llama.cpp checks 1 / p too).
  if (!(c.repeat_penalty > 0) || !std::isfinite(c.repeat_penalty) ||
      !std::isfinite(1.0f / c.repeat_penalty))
    fail("--repeat-penalty", "a number > 0 (1: off)", c.repeat_penalty);
  if (c.repeat_last_n < -1)
    fail("--repeat-last-n", "a count >= -1 (0: off, -1: the whole context)", c.repeat_last_n);
  if (!(c.presence_penalty >= -2 && c.presence_penalty <= 2))
    fail("--presence-penalty", "a number in [-2, 2] (0: off)", c.presence_penalty);
  if (!(c.frequency_penalty >= -2 && c.frequency_penalty <= 2))
    fail("--frequency-penalty", "a number in [-2, 2] (0: off)", c.frequency_penalty);
  const float neg_inf = -std::numeric_limits<float>::infinity();
  std::vector<int32_t> banned;
  for (const LogitBias& b : c.logit_bias) {
    if (b.token < 0 || (n_vocab > 0 && b.token >= n_vocab)) bad_bias_token(b.token, n_vocab);
    // OpenAI's range; +inf would make every other token impossible and the softmax NaN.
    if (!(b.bias >= -100 && b.bias <= 100) && b.bias != neg_inf)
      throw std::invalid_argument(
          fmt::format("--logit-bias: expected a bias in [-100, 100] or -inf, got {} for token {}",
                      b.bias, b.token));
    if (b.bias == neg_inf) banned.push_back(b.token);
  }
  std::sort(banned.begin(), banned.end());
  banned.erase(std::unique(banned.begin(), banned.end()), banned.end());
  if (n_vocab > 0 && int64_t(banned.size()) == n_vocab)
    throw std::invalid_argument(
        fmt::format("--logit-bias: bans every token of the vocabulary ({} tokens)", n_vocab));
}

Sampler::Sampler(const SamplerConfig& c, int64_t n_vocab) : c_(c), rng_(c.seed) {
  check_sampler(c, n_vocab);
}

bool shapes_logits(const SamplerConfig& c) {
  return !c.logit_bias.empty() || penalties_on(c);
}

void Sampler::accept(int32_t token) {
  if (!penalties_on(c_)) return;  // nothing would read the history
  ++counts_[token];
  if (c_.repeat_last_n < 0) return;  // the whole context: the counts are all it takes
  const size_t n = size_t(c_.repeat_last_n);
  if (window_.size() < n) {
    window_.push_back(token);  // grows with the tokens seen, not to repeat_last_n up front
    return;
  }
  int32_t& oldest = window_[window_next_];
  if (--counts_[oldest] == 0) counts_.erase(oldest);
  oldest = token;
  window_next_ = (window_next_ + 1) % n;
}

void Sampler::accept(std::span<const int32_t> tokens) {
  for (int32_t t : tokens) accept(t);
}

void Sampler::shape_logits(size_t n_vocab) {
  for (const LogitBias& b : c_.logit_bias) {
    if (b.token < 0 || size_t(b.token) >= n_vocab) bad_bias_token(b.token, int64_t(n_vocab));
    cand_[size_t(b.token)].first += b.bias;
  }
  if (!penalties_on(c_)) return;
  for (const auto& [token, count] : counts_) {
    if (token < 0 || size_t(token) >= n_vocab) continue;  // not a token of these logits
    // llama.cpp's arithmetic, in float: multiplying a negative logit is what penalises it.
    float& l = cand_[size_t(token)].first;
    l = l <= 0 ? l * c_.repeat_penalty : l / c_.repeat_penalty;
    l -= float(count) * c_.frequency_penalty + float(count > 0) * c_.presence_penalty;
  }
}

int32_t Sampler::draw(size_t n) {
  // std::discrete_distribution's draw as libstdc++ writes it, on the reused w_: the same seed
  // gives the same tokens as the vector-allocating version did. One candidate: no draw.
  if (n < 2) return cand_[0].second;
  const auto w = w_.begin();
  const double sum = std::accumulate(w, w + ptrdiff_t(n), 0.0);
  for (size_t i = 0; i < n; ++i) w_[i] /= sum;
  std::partial_sum(w, w + ptrdiff_t(n), w);
  w_[n - 1] = 1.0;
  const double u = std::generate_canonical<double, std::numeric_limits<double>::digits>(rng_);
  return cand_[size_t(std::lower_bound(w, w + ptrdiff_t(n), u) - w)].second;
}

int32_t Sampler::sample(std::span<const float> logits) {
  const bool shaped = shapes_logits(c_);
  if (c_.temp <= 0 && !shaped) return argmax(logits);
  cand_.clear();
  for (size_t i = 0; i < logits.size(); ++i) cand_.push_back({logits[i], int32_t(i)});
  if (shaped) shape_logits(logits.size());
  // Banned tokens (-inf) must never be drawn, and NaN would break the sort: both leave.
  std::erase_if(cand_, [](const auto& t) { return !(t.first > -INFINITY); });
  if (cand_.empty())
    throw std::runtime_error("sampler: every token has logit -inf (banned by --logit-bias?)");
  if (c_.temp <= 0) {
    // Still in id order: the first maximum wins, as argmax.
    auto by_value = [](const auto& a, const auto& b) { return a.first < b.first; };
    return std::max_element(cand_.begin(), cand_.end(), by_value)->second;
  }
  auto by_logit = [](const auto& a, const auto& b) {
    return a.first > b.first || (a.first == b.first && a.second < b.second);
  };
  // top-k: keep the k largest logits.
  size_t n = cand_.size();
  if (c_.top_k > 0 && size_t(c_.top_k) < n) {
    std::partial_sort(cand_.begin(), cand_.begin() + c_.top_k, cand_.end(), by_logit);
    n = size_t(c_.top_k);
  } else {
    std::sort(cand_.begin(), cand_.end(), by_logit);
  }
  cand_.resize(n);
  // Probabilities at temperature 1 for the top-p and min-p cuts (llama.cpp's order).
  p_.resize(n);
  double sum = 0;
  for (size_t i = 0; i < n; ++i) sum += p_[i] = std::exp(double(cand_[i].first - cand_[0].first));
  for (double& v : p_) v /= sum;
  if (c_.top_p < 1.0f) {
    double acc = 0;
    size_t keep = n;
    for (size_t i = 0; i < n; ++i) {
      acc += p_[i];
      if (acc >= c_.top_p) {
        keep = i + 1;
        break;
      }
    }
    n = keep;
  }
  if (c_.min_p > 0) {
    size_t keep = 1;
    while (keep < n && p_[keep] >= c_.min_p * p_[0]) ++keep;
    n = keep;
  }
  // Temperature, then draw.
  w_.resize(n);
  for (size_t i = 0; i < n; ++i)
    w_[i] = std::exp(double(cand_[i].first - cand_[0].first) / c_.temp);
  return draw(n);
}

}  // namespace fairkv::model
