// The KV cache options shared by run, eval, profile and bench: --kv-type, --kv-policy,
// --kv-budget / --kv-ratio and every policy hyper-parameter (kv::compression_options()).
#pragma once

#include <CLI/CLI.hpp>
#include <map>
#include <string>

#include "kv/cache.h"
#include "kv/compress.h"

namespace fairkv::app {

struct KvOptions {
  std::string type = "f32";
  std::string stats_out;
  std::map<std::string, std::string> raw;  // flag -> text, parsed by kv::compression_options()

  kv::KvType kv_type() const;
  // The configuration given on the command line, with policy and budget overridden when given
  // (eval sweeps them), resolved: throws std::invalid_argument naming the flag.
  kv::CompressionConfig config(const std::string& policy = "", int64_t budget = 0) const;
  bool compressing() const;  // a policy other than full was asked for
};

// with_policy: register --kv-policy/--kv-budget/--kv-ratio (eval sweeps them with its own
// flags instead).
void add_kv_options(CLI::App& cmd, KvOptions& o, bool with_policy = true);

}  // namespace fairkv::app
