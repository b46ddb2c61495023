#include "app/kv_options.h"

#include <stdexcept>

namespace fairkv::app {

kv::KvType KvOptions::kv_type() const {
  if (type == "f32") return kv::KvType::F32;
  if (type == "f16") return kv::KvType::F16;
  throw std::invalid_argument("--kv-type: expected f32 or f16, got '" + type + "'");
}

kv::CompressionConfig KvOptions::config(const std::string& policy, int64_t budget) const {
  kv::CompressionConfig c;
  for (const auto& opt : kv::compression_options()) {
    auto it = raw.find(opt.flag);
    if (it != raw.end()) opt.set(c, it->second);
  }
  if (!policy.empty()) {
    c.policy = kv::parse_policy(policy, "--policies");
    if (budget > 0) {
      c.budget = budget;
      c.ratio = 0;
    }
  }
  c.resolve();
  return c;
}

bool KvOptions::compressing() const {
  auto it = raw.find("--kv-policy");
  return it != raw.end() && it->second != "full";
}

void add_kv_options(CLI::App& cmd, KvOptions& o, bool with_policy) {
  cmd.add_option("--kv-type", o.type, "KV cache element type: f32 or f16")->capture_default_str();
  for (const auto& opt : kv::compression_options()) {
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
