// The KV cache options shared by run, eval, profile and bench: --kv-type, --kv-policy,
// --kv-budget / --kv-ratio and every policy hyper-parameter (compression_options()).
#pragma once

#include <CLI/CLI.hpp>
#include <functional>
#include <map>
#include <string>
#include <vector>

#include "kv/cache.h"
#include "kv/compress.h"

namespace fairkv::app {

// The command-line options of a kv::CompressionConfig, registered as string options: set()
// parses the text strictly and throws std::invalid_argument naming the flag, e.g.
// "--kv-budget: expected a positive integer, got '-3'"; CompressionConfig::resolve() does the
// cross-field checks.
struct CompressionOption {
  const char* flag;  // "--kv-budget"
  const char* help;
  // Empty for --kv-head-importance: KvOptions::config() reads that file once the policy is
  // known, since only headkv uses it.
  std::function<void(kv::CompressionConfig&, const std::string&)> set;
};
const std::vector<CompressionOption>& compression_options();

struct KvOptions {
  std::string type = "f32";    // --kv-type: keys and values
  std::string type_k, type_v;  // --cache-type-k / --cache-type-v (-ctk / -ctv): override type
  std::string stats_out;
  std::map<std::string, std::string> raw;  // flag -> text, parsed by compression_options()

  kv::KvTypes kv_type() const;
  // The configuration given on the command line, with policy and budget overridden when given
  // (eval sweeps them), resolved: throws std::invalid_argument naming the flag, and
  // std::runtime_error naming the file for a bad --kv-head-importance.
  kv::CompressionConfig config(const std::string& policy = "", int64_t budget = 0) const;
};

// --kv-type, --cache-type-k and --cache-type-v alone.
void add_kv_type_options(CLI::App& cmd, KvOptions& o);
// The types and the compression options. with_policy: register --kv-policy/--kv-budget/--kv-ratio
// (eval sweeps them with its own flags instead).
void add_kv_options(CLI::App& cmd, KvOptions& o, bool with_policy = true);

}  // namespace fairkv::app
