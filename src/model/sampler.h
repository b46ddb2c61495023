// Choosing the next token from logits: greedy, or temperature with top-k / top-p / min-p.
#pragma once

#include <cstdint>
#include <random>
#include <span>
#include <vector>

namespace fairkv::model {

struct SamplerConfig {
  float temp = 0.8f;    // <= 0: greedy (argmax)
  int top_k = 40;       // <= 0: off
  float top_p = 0.95f;  // >= 1: off
  float min_p = 0.05f;  // <= 0: off
  uint64_t seed = 0;
};

// Throws std::invalid_argument naming the option (--temp, --top-k, --top-p, --min-p) when a
// value is outside its range or not a number: temp >= 0, top_k >= 0, top_p in (0, 1],
// min_p in [0, 1].
void check_sampler(const SamplerConfig& c);

// Applies, in llama.cpp's default order: top-k, top-p, min-p, temperature, then draws.
class Sampler {
 public:
  explicit Sampler(const SamplerConfig& c);  // check_sampler(c) first
  int32_t sample(std::span<const float> logits);

 private:
  SamplerConfig c_;
  std::mt19937_64 rng_;
  std::vector<std::pair<float, int32_t>> cand_;
};

int32_t argmax(std::span<const float> logits);

}  // namespace fairkv::model
