// Log-probabilities of generated tokens, as OpenAI's and vLLM's `logprobs` report them: the
// log-softmax of the model's raw logits row (before logit bias, penalties, temperature and
// top-k/p, as vLLM's default "raw_logprobs" mode), for the chosen token and the n most likely.
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <vector>

namespace fairkv::serve {

// The most alternatives a request may ask for (OpenAI's and vLLM's default max_logprobs).
inline constexpr int kMaxTopLogprobs = 20;

struct TopLogprob {
  int32_t token = 0;
  float logprob = 0;
  std::string text;  // the token's piece (raw bytes, possibly part of a UTF-8 character)
};

// One generated token's log-probability and its most likely alternatives.
struct TokenLogprob {
  int32_t token = 0;
  float logprob = 0;
  std::string text;
  std::vector<TopLogprob> top;  // the n most likely, most likely first (ties: lower id first)
};

// log softmax(row)[chosen] and the top_n largest entries (texts left empty). The sum of
// exponentials is taken in double, so a row of 10^5 entries keeps float precision.
TokenLogprob token_logprob(std::span<const float> row, int32_t chosen, int top_n);

}  // namespace fairkv::serve
