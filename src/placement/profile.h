// Load profiles: the expected number of cached tokens of every unit (layer, KV head), which is
// what a planner balances.
//
// A profile is a JSON file with fixed field names so that other tools (another engine, a script)
// can write one:
//   {"model": NAME, "layers": L, "kv_heads": H, "query_heads": Q, "head_dim": D,
//    "tokens": [[t_00, t_01, ...], ...],            L arrays of H non-negative numbers
//    "samples": [ <L x H array per request> ],     optional: per-request lengths
//    "embd": E, "ffn": F,                           optional: embedding and feed-forward sizes
//    "source": TEXT}                                optional: how it was measured
// tokens[l][h] is the expected number of cached tokens per sequence of unit (l, h); it need not be
// whole, since it is usually an average over requests.
#pragma once

#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

#include <nlohmann/json_fwd.hpp>

namespace fairkv::placement {

// Bad input in a profile or placement file; the message names the file and the field.
struct FormatError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

// Per-unit values of one model: [layer][kv head].
using UnitTable = std::vector<std::vector<double>>;

// The most cached tokens per sequence a unit of a profile may hold: far past any context a model
// is trained for, and small enough that every count, byte size and rounding stays exact.
inline constexpr double kMaxUnitTokens = 1e9;

struct Profile {
  std::string model;
  int layers = 0;
  int kv_heads = 0;
  int query_heads = 0;
  int head_dim = 0;
  int64_t embd = 0;                // 0: not given, taken as query_heads * head_dim
  int64_t ffn = 0;                 // 0: not given (the step-time estimate then leaves the MLP out)
  UnitTable tokens;                // expected cached tokens per sequence
  std::vector<UnitTable> samples;  // per-request cached tokens, optional
  std::string source;

  int group() const { return query_heads / kv_heads; }  // query heads per KV head
  int64_t embedding() const { return embd > 0 ? embd : int64_t(query_heads) * head_dim; }
};

// Parses and checks a profile. `where` prefixes every error (usually the file name), e.g.
// "p.json: tokens[3][2]: expected a non-negative number, got \"abc\"".
Profile profile_from_json(const nlohmann::json& j, const std::string& where);
nlohmann::json profile_to_json(const Profile& p);

// File versions; errors name the path.
Profile read_profile(const std::string& path);
void write_profile(const Profile& p, const std::string& path);

// Checks shapes and values of a profile built in code (the writer's side of the contract).
void check_profile(const Profile& p, const std::string& where);

// A profile of a model's shape with every unit at `tokens` expected cached tokens per sequence: the
// shape fields of every profile that is made in code rather than read or measured.
struct ProfileShape {
  std::string model;
  int layers = 0, kv_heads = 0, query_heads = 0, head_dim = 0;
  int64_t embd = 0, ffn = 0;  // 0: not given (as in Profile)
};
Profile uniform_profile(const ProfileShape& shape, double tokens);

// A profile measured over requests: `shape` gives the model fields; tokens become the mean of the
// samples, which are kept. This is what `fairkv profile` calls after compressing each prompt.
Profile profile_from_samples(Profile shape, std::vector<UnitTable> samples);

// Synthetic profiles with log-normal unit loads, for studying planners without a model.
struct SyntheticSpec {
  std::string model = "llama-3.3-70b-shape";
  int layers = 80;
  int kv_heads = 8;
  int query_heads = 64;
  int head_dim = 128;
  int64_t embd = 8192;
  int64_t ffn = 28672;
  double mean_tokens = 4096;  // expected tokens of a unit, over units
  double sigma = 0.5;         // log-normal shape of the unit loads
  uint64_t seed = 1;
  int samples = 0;             // per-request samples to add
  double sample_sigma = 0.25;  // log-normal noise of a request around its unit's mean
};
// tokens[l][h] = mean_tokens * exp(sigma * z - sigma^2 / 2), z standard normal, so the expected
// load is mean_tokens whatever sigma. Deterministic for a given seed on every platform.
Profile synthetic_lognormal(const SyntheticSpec& spec);

}  // namespace fairkv::placement
