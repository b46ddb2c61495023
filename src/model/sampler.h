// Choosing the next token from logits: logit bias, repetition / presence / frequency penalties,
// then greedy, or temperature with top-k / top-p / min-p. One Sampler per sequence (a serving
// request): it holds the sequence's token history for the penalties and its own RNG.
#pragma once

#include <cstdint>
#include <random>
#include <span>
#include <unordered_map>
#include <vector>

namespace fairkv::model {

struct LogitBias {
  int32_t token = 0;
  float bias = 0;  // added to the token's logit; -inf bans the token
};

struct SamplerConfig {
  float temp = 0.8f;    // <= 0: greedy (argmax)
  int top_k = 40;       // <= 0: off
  float top_p = 0.95f;  // >= 1: off
  float min_p = 0.05f;  // <= 0: off
  // llama.cpp's penalties over the last repeat_last_n tokens given to Sampler::accept: a token
  // seen there has its logit divided by repeat_penalty when > 0 (multiplied when <= 0), then
  // lowered by presence_penalty + frequency_penalty * (times seen).
  float repeat_penalty = 1.0f;  // 1: off
  int repeat_last_n = 64;       // 0: off; -1: every token accepted (the whole context)
  float presence_penalty = 0;   // 0: off (OpenAI's presence_penalty)
  float frequency_penalty = 0;  // 0: off (OpenAI's frequency_penalty)
  // Added to the logits before anything else; a token listed twice gets both biases.
  std::vector<LogitBias> logit_bias;
  uint64_t seed = 0;
};

// Throws std::invalid_argument naming the option as the command line spells it (--temp, --top-k,
// --top-p, --min-p, --repeat-penalty, --repeat-last-n, --presence-penalty, --frequency-penalty,
// --logit-bias) when a value is outside its range or not a number: temp >= 0, top_k >= 0,
// top_p in (0, 1], min_p in [0, 1], repeat_penalty > 0, repeat_last_n >= -1, presence and
// frequency in [-2, 2], each bias in [-100, 100] or -inf on a token id >= 0. n_vocab > 0: the
// bias's token ids are below it, and the bias does not ban every token.
void check_sampler(const SamplerConfig& c, int64_t n_vocab = 0);

// Whether the logit bias or a penalty changes the logits (the defaults change nothing).
bool shapes_logits(const SamplerConfig& c);

// Applies, in llama.cpp's default order: logit bias, penalties, top-k, top-p, min-p,
// temperature, then draws. Greedy (temp <= 0) is the argmax after the bias and the penalties.
// The draw depends only on the seed and the calls made on this Sampler.
class Sampler {
 public:
  // check_sampler(c, n_vocab) first; n_vocab 0: unknown.
  explicit Sampler(const SamplerConfig& c, int64_t n_vocab = 0);

  // Records a token of the sequence for the penalties. As llama.cpp does, feed the prompt's
  // tokens, then each token chosen: sample() does not record its own choice.
  void accept(int32_t token);
  void accept(std::span<const int32_t> tokens);

  // The next token for one row of logits. Throws std::runtime_error when every token is banned
  // (-inf), std::invalid_argument when a biased token id is outside the row.
  int32_t sample(std::span<const float> logits);

  const SamplerConfig& config() const { return c_; }

 private:
  void shape_logits(size_t n_vocab);  // bias and penalties on cand_, still in id order
  int32_t draw(size_t n);             // from the first n candidates' weights w_

  SamplerConfig c_;
  std::mt19937_64 rng_;
  // The last repeat_last_n accepted tokens (a ring once full; unused for -1) and how many times
  // each occurs there: the penalties only need the counts.
  std::vector<int32_t> window_;
  size_t window_next_ = 0;
  std::unordered_map<int32_t, int> counts_;
  // Reused by every call, so sampling does not allocate once warm.
  std::vector<std::pair<float, int32_t>> cand_;
  std::vector<double> p_, w_;
};

int32_t argmax(std::span<const float> logits);

}  // namespace fairkv::model
