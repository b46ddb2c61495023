#include "model/sampler.h"

#include <algorithm>
#include <cmath>
#include <stdexcept>

#include <fmt/format.h>

namespace fairkv::model {

int32_t argmax(std::span<const float> logits) {
  // First maximum wins, as llama.cpp's greedy sampler does.
  return int32_t(std::max_element(logits.begin(), logits.end()) - logits.begin());
}

void check_sampler(const SamplerConfig& c) {
  auto fail = [](const char* option, const char* expected, double got) {
    throw std::invalid_argument(fmt::format("{}: expected {}, got {}", option, expected, got));
  };
  // Written so that NaN fails every test.
  if (!(c.temp >= 0) || !std::isfinite(c.temp)) fail("--temp", "a number >= 0", c.temp);
  if (c.top_k < 0) fail("--top-k", "a count >= 0 (0: off)", c.top_k);
  if (!(c.top_p > 0 && c.top_p <= 1)) fail("--top-p", "a number in (0, 1] (1: off)", c.top_p);
  if (!(c.min_p >= 0 && c.min_p <= 1)) fail("--min-p", "a number in [0, 1] (0: off)", c.min_p);
}

Sampler::Sampler(const SamplerConfig& c) : c_(c), rng_(c.seed) {
  check_sampler(c);
}

int32_t Sampler::sample(std::span<const float> logits) {
  if (c_.temp <= 0) return argmax(logits);
  cand_.clear();
  for (size_t i = 0; i < logits.size(); ++i) cand_.push_back({logits[i], int32_t(i)});
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
  std::vector<double> p(n);
  double sum = 0;
  for (size_t i = 0; i < n; ++i) sum += p[i] = std::exp(double(cand_[i].first - cand_[0].first));
  for (double& v : p) v /= sum;
  if (c_.top_p < 1.0f) {
    double acc = 0;
    size_t keep = n;
    for (size_t i = 0; i < n; ++i) {
      acc += p[i];
      if (acc >= c_.top_p) {
        keep = i + 1;
        break;
      }
    }
    n = keep;
  }
  if (c_.min_p > 0) {
    size_t keep = 1;
    while (keep < n && p[keep] >= c_.min_p * p[0]) ++keep;
    n = keep;
  }
  // Temperature, then draw.
  std::vector<double> w(n);
  for (size_t i = 0; i < n; ++i) w[i] = std::exp(double(cand_[i].first - cand_[0].first) / c_.temp);
  std::discrete_distribution<size_t> dist(w.begin(), w.end());
  return cand_[dist(rng_)].second;
}

}  // namespace fairkv::model
