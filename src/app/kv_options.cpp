#include "app/kv_options.h"

#include <cmath>
#include <stdexcept>

#include "app/head_importance_file.h"

namespace fairkv::app {

namespace {

[[noreturn]] void bad(std::string_view option, const std::string& what) {
  throw std::invalid_argument(std::string(option) + ": " + what);
}

int64_t parse_int(std::string_view option, const std::string& text, const char* expected) {
  try {
    size_t used = 0;
    const long long v = std::stoll(text, &used);
    if (used == text.size()) return v;
  } catch (const std::exception&) {
  }
  bad(option, std::string("expected ") + expected + ", got '" + text + "'");
}

double parse_double(std::string_view option, const std::string& text, const char* expected) {
  try {
    size_t used = 0;
    const double v = std::stod(text, &used);
    if (used == text.size() && std::isfinite(v)) return v;
  } catch (const std::exception&) {
  }
  bad(option, std::string("expected ") + expected + ", got '" + text + "'");
}

}  // namespace

const std::vector<CompressionOption>& compression_options() {
  static const std::vector<CompressionOption> opts = {
      {"--kv-policy",
       "KV compression after prefill: full, streaming, snapkv, pyramidkv, adakv, "
       "headkv, cake, defensivekv, zipvl, compresskv, taskkv, epicache",
       [](kv::CompressionConfig& c, const std::string& v) { c.policy = kv::parse_policy(v); }},
      {"--kv-budget", "Tokens kept per KV head on average, observation window included",
       [](kv::CompressionConfig& c, const std::string& v) {
         const int64_t b = parse_int("--kv-budget", v, "a positive integer");
         if (b <= 0) bad("--kv-budget", "expected a positive integer, got " + v);
         c.budget = b;
       }},
      {"--kv-ratio", "Share of the prompt's tokens kept per KV head on average, in (0, 1]",
       [](kv::CompressionConfig& c, const std::string& v) {
         const double r = parse_double("--kv-ratio", v, "a number in (0, 1]");
         if (!(r > 0 && r <= 1)) bad("--kv-ratio", "expected a number in (0, 1], got " + v);
         c.ratio = r;
       }},
      {"--kv-window", "Observation window: the last W prompt tokens, always kept (32)",
       [](kv::CompressionConfig& c, const std::string& v) {
         const int64_t w = parse_int("--kv-window", v, "a positive integer");
         if (w <= 0) bad("--kv-window", "expected a positive integer, got " + v);
         c.window = w;
       }},
      {"--kv-pool-kernel", "Pooling kernel over token scores (Ada-KV, HeadKV 7; others 5)",
       [](kv::CompressionConfig& c, const std::string& v) {
         const int64_t k = parse_int("--kv-pool-kernel", v, "an odd positive integer");
         if (k < 1 || k % 2 == 0 || k > 1001)
           bad("--kv-pool-kernel", "expected an odd positive integer, got " + v);
         c.pool_kernel = int(k);
       }},
      {"--kv-pooling", "Pooling of token scores: avg, max, none (Ada-KV, HeadKV max; others avg)",
       [](kv::CompressionConfig& c, const std::string& v) { c.pooling = kv::parse_pooling(v); }},
      {"--kv-alpha", "Ada-KV safeguard: every head keeps at least alpha x the average (0.2)",
       [](kv::CompressionConfig& c, const std::string& v) {
         const double a = parse_double("--kv-alpha", v, "a number in [0, 1]");
         if (!(a >= 0 && a <= 1)) bad("--kv-alpha", "expected a number in [0, 1], got " + v);
         c.alpha = a;
       }},
      {"--kv-pyramid-beta", "PyramidKV: the last layer keeps 1/beta of the average (20)",
       [](kv::CompressionConfig& c, const std::string& v) {
         const double b = parse_double("--kv-pyramid-beta", v, "a number >= 1");
         if (!(b >= 1)) bad("--kv-pyramid-beta", "expected a number >= 1, got " + v);
         c.pyramid_beta = b;
       }},
      {"--kv-gqa", "Combine scores over a GQA group's query heads: mean, max",
       [](kv::CompressionConfig& c, const std::string& v) { c.gqa = kv::parse_gqa_combine(v); }},
      {"--kv-sinks", "Streaming: attention-sink tokens kept at the start (4)",
       [](kv::CompressionConfig& c, const std::string& v) {
         const int64_t k = parse_int("--kv-sinks", v, "a non-negative integer");
         if (k < 0) bad("--kv-sinks", "expected a non-negative integer, got " + v);
         c.sinks = k;
       }},
      {"--kv-head-importance",
       "HeadKV / CompressKV head-importance JSON {layers, kv_heads, importance}", nullptr},
      {"--kv-headkv-beta", "HeadKV: share of the budget pooled by importance is 1/beta (1.01)",
       [](kv::CompressionConfig& c, const std::string& v) {
         const double b = parse_double("--kv-headkv-beta", v, "a number >= 1");
         if (!(b >= 1)) bad("--kv-headkv-beta", "expected a number >= 1, got " + v);
         c.headkv_beta = b;
       }},
      {"--kv-cake-tau1", "CAKE: temperature of the entropy term (1)",
       [](kv::CompressionConfig& c, const std::string& v) {
         const double t = parse_double("--kv-cake-tau1", v, "a positive number");
         if (!(t > 0)) bad("--kv-cake-tau1", "expected a positive number, got " + v);
         c.cake_tau1 = t;
       }},
      {"--kv-cake-tau2", "CAKE: temperature of the variance term (1)",
       [](kv::CompressionConfig& c, const std::string& v) {
         const double t = parse_double("--kv-cake-tau2", v, "a positive number");
         if (!(t > 0)) bad("--kv-cake-tau2", "expected a positive number, got " + v);
         c.cake_tau2 = t;
       }},
      {"--kv-cake-gamma", "CAKE: weight of the variance in the eviction indicator (200)",
       [](kv::CompressionConfig& c, const std::string& v) {
         const double g = parse_double("--kv-cake-gamma", v, "a non-negative number");
         if (!(g >= 0)) bad("--kv-cake-gamma", "expected a non-negative number, got " + v);
         c.cake_gamma = g;
       }},
      {"--kv-zipvl-tau",
       "ZipVL: the share of the window's attention each layer's kept tokens hold, in (0, 1] "
       "(0.975)",
       [](kv::CompressionConfig& c, const std::string& v) {
         const double t = parse_double("--kv-zipvl-tau", v, "a number in (0, 1]");
         if (!(t > 0 && t <= 1)) bad("--kv-zipvl-tau", "expected a number in (0, 1], got " + v);
         c.zipvl_tau = t;
       }},
      {"--kv-compresskv-heads",
       "CompressKV: semantic retrieval KV heads per layer (by --kv-head-importance) that choose "
       "the layer's tokens (1)",
       [](kv::CompressionConfig& c, const std::string& v) {
         const int64_t h = parse_int("--kv-compresskv-heads", v, "a positive integer");
         if (h < 1 || h > 1 << 20)
           bad("--kv-compresskv-heads", "expected a positive integer, got " + v);
         c.compresskv_heads = int(h);
       }},
      {"--kv-taskkv-share", "Task-KV: share of each layer's heads that keep the full budget (0.5)",
       [](kv::CompressionConfig& c, const std::string& v) {
         const double s = parse_double("--kv-taskkv-share", v, "a number in [0, 1]");
         if (!(s >= 0 && s <= 1)) bad("--kv-taskkv-share", "expected a number in [0, 1], got " + v);
         c.taskkv_share = s;
       }},
      {"--kv-taskkv-middle",
       "Task-KV: middle tokens (highest scored) the other heads keep besides sinks and window (8)",
       [](kv::CompressionConfig& c, const std::string& v) {
         const int64_t m = parse_int("--kv-taskkv-middle", v, "a non-negative integer");
         if (m < 0) bad("--kv-taskkv-middle", "expected a non-negative integer, got " + v);
         c.taskkv_middle = m;
       }},
      {"--kv-epicache-block",
       "EpiCache: prompt tokens per prefill block, compressed after each (512)",
       [](kv::CompressionConfig& c, const std::string& v) {
         const int64_t b = parse_int("--kv-epicache-block", v, "a positive integer");
         if (b < 1) bad("--kv-epicache-block", "expected a positive integer, got " + v);
         c.epicache_block = b;
       }},
      {"--kv-epicache-power",
       "EpiCache: sharpness of the layer budgets by sensitivity, 0 = uniform (0)",
       [](kv::CompressionConfig& c, const std::string& v) {
         const double p = parse_double("--kv-epicache-power", v, "a non-negative number");
         if (!(p >= 0)) bad("--kv-epicache-power", "expected a non-negative number, got " + v);
         c.epicache_power = p;
       }},
      {"--kv-layer-sensitivity",
       "EpiCache layer-sensitivity JSON {layers, key_similarity} (eval --sensitivity-out)",
       nullptr},
      {"--kv-critical",
       "DefensiveKV: CriticalKV's value-norm stage, on or off (on, as DefensiveKV's reference)",
       [](kv::CompressionConfig& c, const std::string& v) {
         if (v == "on" || v == "1" || v == "true")
           c.critical = true;
         else if (v == "off" || v == "0" || v == "false")
           c.critical = false;
         else
           bad("--kv-critical", "expected on or off, got '" + v + "'");
       }},
      {"--kv-critical-mass",
       "DefensiveKV with --kv-critical-share mass: stage 1 keeps the top tokens holding this share "
       "of the window's attention (0.9)",
       [](kv::CompressionConfig& c, const std::string& v) {
         const double m = parse_double("--kv-critical-mass", v, "a number in (0, 1]");
         if (!(m > 0 && m <= 1)) bad("--kv-critical-mass", "expected a number in (0, 1], got " + v);
         c.critical_mass = m;
       }},
      {"--kv-critical-share",
       "DefensiveKV: CriticalKV's fixed split, the share of each head's budget chosen by "
       "attention x value norm (0.5, as kvpress), or 'mass' for stage 1 by --kv-critical-mass",
       [](kv::CompressionConfig& c, const std::string& v) {
         if (v == "mass") {
           c.critical_share.reset();
           return;
         }
         const double m = parse_double("--kv-critical-share", v, "a number in [0, 1] or mass");
         if (!(m >= 0 && m <= 1))
           bad("--kv-critical-share", "expected a number in [0, 1], got " + v);
         c.critical_share = m;
       }},
  };
  return opts;
}

kv::KvTypes KvOptions::kv_type() const {
  const kv::KvType both = kv::parse_kv_type(type, "--kv-type");
  return {type_k.empty() ? both : kv::parse_kv_type(type_k, "--cache-type-k"),
          type_v.empty() ? both : kv::parse_kv_type(type_v, "--cache-type-v")};
}

kv::CompressionConfig KvOptions::config(const std::string& policy, int64_t budget) const {
  kv::CompressionConfig c;
  for (const auto& opt : compression_options()) {
    auto it = raw.find(opt.flag);
    if (it != raw.end() && opt.set) opt.set(c, it->second);
  }
  if (!policy.empty()) {
    c.policy = kv::parse_policy(policy, "--policies");
    if (budget > 0) {
      c.budget = budget;
      c.ratio = 0;
    }
  }
  if (c.policy == kv::Policy::HeadKV || c.policy == kv::Policy::CompressKV) {
    auto it = raw.find("--kv-head-importance");
    if (it != raw.end()) c.head_importance = read_head_importance(it->second);
  }
  if (c.policy == kv::Policy::EpiCache) {
    auto it = raw.find("--kv-layer-sensitivity");
    if (it != raw.end()) c.layer_sensitivity = read_layer_sensitivity(it->second);
  }
  c.resolve();
  return c;
}

void add_kv_type_options(CLI::App& cmd, KvOptions& o) {
  cmd.add_option("--kv-type", o.type,
                 "KV cache element type of keys and values: f32, f16, bf16, q8_0 or q4_0")
      ->capture_default_str();
  // llama.cpp's -ctk / -ctv are many letters behind one dash, which CLI11 cannot declare: main()
  // spells them as these long forms before parsing.
  cmd.add_option("--cache-type-k", o.type_k,
                 "KV cache type of keys (-ctk): f32, f16, bf16, q8_0, q4_0 (default: --kv-type); "
                 "q8_0 / q4_0 need a head size that is a multiple of 32");
  cmd.add_option("--cache-type-v", o.type_v, "KV cache type of values (-ctv), as --cache-type-k");
}

void add_kv_options(CLI::App& cmd, KvOptions& o, bool with_policy) {
  add_kv_type_options(cmd, o);
  for (const auto& opt : compression_options()) {
    const std::string flag = opt.flag;
    if (!with_policy && (flag == "--kv-policy" || flag == "--kv-budget" || flag == "--kv-ratio"))
      continue;
    cmd.add_option_function<std::string>(
        flag, [&o, flag](const std::string& v) { o.raw[flag] = v; }, opt.help);
  }
  if (with_policy)
    cmd.add_option("--kv-stats-out", o.stats_out,
                   "Write per-head kept lengths after compression as JSON");
}

}  // namespace fairkv::app
