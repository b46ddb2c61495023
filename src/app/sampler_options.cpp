#include "app/sampler_options.h"

#include <cctype>
#include <charconv>
#include <stdexcept>

namespace fairkv::app {

model::LogitBias parse_logit_bias(const std::string& text) {
  auto bad = [&] {
    return std::invalid_argument(
        "--logit-bias: expected TOKEN+BIAS or TOKEN-BIAS (e.g. 15043+1, 15043-inf), got '" + text +
        "'");
  };
  const size_t sign = text.find_first_of("+-");
  if (sign == 0 || sign == std::string::npos || sign + 1 == text.size()) throw bad();
  // from_chars reads no sign, space or base prefix: the token is digits only.
  model::LogitBias b;
  const char* end = text.data() + sign;
  auto [tok_end, tok_err] = std::from_chars(text.data(), end, b.token);
  if (tok_err != std::errc() || tok_end != end) throw bad();
  // The sign is the one before BIAS ("5--1" is a typo, not +1); from_chars takes "inf" too.
  const char* value = end + 1;
  if (*value == '+' || *value == '-') throw bad();
  auto [v_end, v_err] = std::from_chars(value, text.data() + text.size(), b.bias);
  if (v_err != std::errc() || v_end != text.data() + text.size()) throw bad();
  if (text[sign] == '-') b.bias = -b.bias;
  return b;
}

model::SamplerConfig SamplerOptions::resolve() const {
  model::SamplerConfig c = config;
  for (const std::string& t : logit_bias) c.logit_bias.push_back(parse_logit_bias(t));
  model::check_sampler(c);
  return c;
}

CLI::Option* add_sampler_options(CLI::App& cmd, SamplerOptions& o) {
  model::SamplerConfig& c = o.config;
  CLI::Option* temp =
      cmd.add_option("--temp", c.temp, "Temperature (0: greedy)")->capture_default_str();
  cmd.add_option("--top-k", c.top_k, "Top-k (0: off)")->capture_default_str();
  cmd.add_option("--top-p", c.top_p, "Top-p (1: off)")->capture_default_str();
  cmd.add_option("--min-p", c.min_p, "Min-p (0: off)")->capture_default_str();
  cmd.add_option("--repeat-penalty", c.repeat_penalty,
                 "Divide the positive logits (multiply the negative ones) of tokens seen among "
                 "the last --repeat-last-n by N (1: off)")
      ->capture_default_str();
  cmd.add_option("--repeat-last-n", c.repeat_last_n,
                 "Tokens the penalties look back on, the prompt's included (0: off, -1: the "
                 "whole context)")
      ->capture_default_str();
  cmd.add_option("--presence-penalty", c.presence_penalty,
                 "Subtract N from the logits of the tokens seen, in [-2, 2] (0: off)")
      ->capture_default_str();
  cmd.add_option("--frequency-penalty", c.frequency_penalty,
                 "Subtract N x (times seen) from the logits of the tokens seen, in [-2, 2] "
                 "(0: off)")
      ->capture_default_str();
  cmd.add_option("-l,--logit-bias", o.logit_bias,
                 "TOKEN+BIAS or TOKEN-BIAS: add BIAS (in [-100, 100], or -inf to ban) to the "
                 "logit of token id TOKEN, e.g. 15043+1 or 15043-inf; repeatable");
  cmd.add_option("-s,--seed", c.seed, "Random seed")->capture_default_str();
  return temp;
}

}  // namespace fairkv::app
