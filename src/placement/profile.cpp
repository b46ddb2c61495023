#include "placement/profile.h"

#include <algorithm>
#include <cmath>
#include <fstream>
#include <numbers>
#include <random>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "placement/json_check.h"

namespace fairkv::placement {

namespace {

UnitTable table_from_json(const nlohmann::json& j, const std::string& where,
                          const std::string& path, int layers, int kv_heads) {
  const JsonCheck check{where};
  check.array_of_size(j, path, layers);
  UnitTable t(static_cast<size_t>(layers), std::vector<double>(static_cast<size_t>(kv_heads)));
  for (int l = 0; l < layers; ++l) {
    const std::string row = fmt::format("{}[{}]", path, l);
    check.array_of_size(j[size_t(l)], row, kv_heads);
    for (int h = 0; h < kv_heads; ++h) {
      const std::string cell = fmt::format("{}[{}]", row, h);
      const double v = check.non_negative(j[size_t(l)][size_t(h)], cell);
      if (v > kMaxUnitTokens)
        throw FormatError(fmt::format("{}: {}: expected at most {:g} cached tokens, got {:g}",
                                      where, cell, kMaxUnitTokens, v));
      t[size_t(l)][size_t(h)] = v;
    }
  }
  return t;
}

void check_table(const UnitTable& t, const std::string& where, const std::string& path, int layers,
                 int kv_heads) {
  if (int(t.size()) != layers)
    throw FormatError(
        fmt::format("{}: {}: expected {} layers, got {}", where, path, layers, t.size()));
  for (int l = 0; l < layers; ++l) {
    const auto& row = t[size_t(l)];
    if (int(row.size()) != kv_heads)
      throw FormatError(fmt::format("{}: {}[{}]: expected {} KV heads, got {}", where, path, l,
                                    kv_heads, row.size()));
    for (int h = 0; h < kv_heads; ++h)
      if (!(row[size_t(h)] >= 0) || !(row[size_t(h)] <= kMaxUnitTokens))
        throw FormatError(
            fmt::format("{}: {}[{}][{}]: expected a number of cached tokens in [0, "
                        "{:g}], got {}",
                        where, path, l, h, kMaxUnitTokens, row[size_t(h)]));
  }
}

// Standard normal variates from raw 64-bit draws (Box-Muller), so that a seed gives the same
// profile with every standard library (std::normal_distribution is implementation-defined).
class Normal {
 public:
  explicit Normal(uint64_t seed) : rng_(seed) {}
  double operator()() {
    if (has_spare_) {
      has_spare_ = false;
      return spare_;
    }
    const double u1 = uniform_open();
    const double u2 = uniform_open();
    const double r = std::sqrt(-2.0 * std::log(u1));
    const double a = 2.0 * std::numbers::pi * u2;
    spare_ = r * std::sin(a);
    has_spare_ = true;
    return r * std::cos(a);
  }

 private:
  double uniform_open() {  // in (0, 1]
    return double((rng_() >> 11) + 1) * 0x1.0p-53;
  }
  std::mt19937_64 rng_;
  double spare_ = 0;
  bool has_spare_ = false;
};

}  // namespace

void check_profile(const Profile& p, const std::string& where) {
  auto positive = [&](int64_t v, const char* name) {
    if (v <= 0)
      throw FormatError(fmt::format("{}: {}: expected a positive integer, got {}", where, name, v));
  };
  positive(p.layers, "layers");
  positive(p.kv_heads, "kv_heads");
  positive(p.query_heads, "query_heads");
  positive(p.head_dim, "head_dim");
  if (p.query_heads % p.kv_heads != 0)
    throw FormatError(fmt::format("{}: query_heads: {} is not a multiple of kv_heads ({})", where,
                                  p.query_heads, p.kv_heads));
  if (p.embd < 0 || p.ffn < 0)
    throw FormatError(fmt::format("{}: embd and ffn must be positive when given", where));
  check_table(p.tokens, where, "tokens", p.layers, p.kv_heads);
  for (size_t s = 0; s < p.samples.size(); ++s)
    check_table(p.samples[s], where, fmt::format("samples[{}]", s), p.layers, p.kv_heads);
}

Profile profile_from_json(const nlohmann::json& j, const std::string& where) {
  const JsonCheck check{where};
  check.object(j, "profile");
  Profile p;
  p.model = check.string(check.field(j, "model"), "model");
  p.layers = check.positive_int(check.field(j, "layers"), "layers");
  p.kv_heads = check.positive_int(check.field(j, "kv_heads"), "kv_heads");
  p.query_heads = check.positive_int(check.field(j, "query_heads"), "query_heads");
  p.head_dim = check.positive_int(check.field(j, "head_dim"), "head_dim");
  if (j.contains("embd")) p.embd = check.positive_int(j["embd"], "embd");
  if (j.contains("ffn")) p.ffn = check.positive_int(j["ffn"], "ffn");
  if (j.contains("source")) p.source = check.string(j["source"], "source");
  if (p.query_heads % p.kv_heads != 0)
    throw FormatError(fmt::format("{}: query_heads: {} is not a multiple of kv_heads ({})", where,
                                  p.query_heads, p.kv_heads));
  p.tokens = table_from_json(check.field(j, "tokens"), where, "tokens", p.layers, p.kv_heads);
  if (j.contains("samples")) {
    const auto& s = j["samples"];
    if (!s.is_array())
      throw FormatError(
          fmt::format("{}: samples: expected an array of L x H arrays, got {}", where, brief(s)));
    for (size_t i = 0; i < s.size(); ++i)
      p.samples.push_back(
          table_from_json(s[i], where, fmt::format("samples[{}]", i), p.layers, p.kv_heads));
  }
  return p;
}

nlohmann::json profile_to_json(const Profile& p) {
  nlohmann::json j;
  j["model"] = p.model;
  j["layers"] = p.layers;
  j["kv_heads"] = p.kv_heads;
  j["query_heads"] = p.query_heads;
  j["head_dim"] = p.head_dim;
  if (p.embd > 0) j["embd"] = p.embd;
  if (p.ffn > 0) j["ffn"] = p.ffn;
  if (!p.source.empty()) j["source"] = p.source;
  j["tokens"] = p.tokens;
  if (!p.samples.empty()) j["samples"] = p.samples;
  return j;
}

Profile read_profile(const std::string& path) {
  return profile_from_json(read_json_file(path), path);
}

void write_profile(const Profile& p, const std::string& path) {
  check_profile(p, path);
  write_json_file(profile_to_json(p), path);
}

Profile uniform_profile(const ProfileShape& shape, double tokens) {
  Profile p;
  p.model = shape.model;
  p.layers = shape.layers;
  p.kv_heads = shape.kv_heads;
  p.query_heads = shape.query_heads;
  p.head_dim = shape.head_dim;
  p.embd = shape.embd;
  p.ffn = shape.ffn;
  p.tokens.assign(size_t(std::max(p.layers, 0)),
                  std::vector<double>(size_t(std::max(p.kv_heads, 0)), tokens));
  return p;
}

Profile profile_from_samples(Profile shape, std::vector<UnitTable> samples) {
  if (samples.empty()) throw FormatError("profile_from_samples: no samples");
  shape.tokens.assign(size_t(shape.layers), std::vector<double>(size_t(shape.kv_heads), 0.0));
  shape.samples = std::move(samples);
  check_table(shape.samples[0], "profile_from_samples", "samples[0]", shape.layers, shape.kv_heads);
  for (const auto& s : shape.samples) {
    check_table(s, "profile_from_samples", "sample", shape.layers, shape.kv_heads);
    for (int l = 0; l < shape.layers; ++l)
      for (int h = 0; h < shape.kv_heads; ++h) shape.tokens[size_t(l)][size_t(h)] += s[l][h];
  }
  for (auto& row : shape.tokens)
    for (double& t : row) t /= double(shape.samples.size());
  check_profile(shape, "profile_from_samples");
  return shape;
}

Profile synthetic_lognormal(const SyntheticSpec& spec) {
  if (!(spec.sigma >= 0) || !(spec.sample_sigma >= 0) || !(spec.mean_tokens >= 0))
    throw FormatError("synthetic profile: sigma and mean tokens must be non-negative");
  Profile p = uniform_profile({spec.model, spec.layers, spec.kv_heads, spec.query_heads,
                               spec.head_dim, spec.embd, spec.ffn},
                              0.0);
  p.source = fmt::format("synthetic lognormal sigma={} mean={} seed={}", spec.sigma,
                         spec.mean_tokens, spec.seed);
  Normal normal(spec.seed);
  auto lognormal = [&](double mean, double sigma) {
    return mean * std::exp(sigma * normal() - 0.5 * sigma * sigma);
  };
  for (auto& row : p.tokens)
    for (double& t : row) t = lognormal(spec.mean_tokens, spec.sigma);
  for (int s = 0; s < spec.samples; ++s) {
    UnitTable sample = p.tokens;
    for (auto& row : sample)
      for (double& t : row) t = std::round(lognormal(t, spec.sample_sigma));
    p.samples.push_back(std::move(sample));
  }
  check_profile(p, "synthetic profile");
  return p;
}

}  // namespace fairkv::placement
