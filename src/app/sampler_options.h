// The sampling options of `fairkv run`, spelled as llama.cpp spells them: --temp, --top-k,
// --top-p, --min-p, --repeat-penalty, --repeat-last-n, --presence-penalty, --frequency-penalty,
// -l/--logit-bias TOKEN(+|-)BIAS (repeatable) and -s/--seed.
#pragma once

#include <CLI/CLI.hpp>
#include <string>
#include <vector>

#include "model/sampler.h"

namespace fairkv::app {

struct SamplerOptions {
  model::SamplerConfig config;          // every option but --logit-bias
  std::vector<std::string> logit_bias;  // as given; resolve() parses them

  // config with the --logit-bias values added, checked by model::check_sampler (without the
  // vocabulary, which the model gives later): throws std::invalid_argument naming the flag.
  model::SamplerConfig resolve() const;
};

// Returns the --temp option, so that a command can tell whether it was given.
CLI::Option* add_sampler_options(CLI::App& cmd, SamplerOptions& o);

// One --logit-bias value as llama.cpp reads it: "15043+1", "15043-0.5", "15043-inf" (bans the
// token). Throws std::invalid_argument naming --logit-bias; the ranges are check_sampler's.
model::LogitBias parse_logit_bias(const std::string& text);

}  // namespace fairkv::app
