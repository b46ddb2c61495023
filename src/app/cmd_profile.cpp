// `fairkv profile`: measure a load profile by running a compression policy over prompts.
//
// Each prompt is prefilled and compressed exactly as `fairkv run` would; the lengths every unit
// (layer, KV head) keeps are one sample, and the profile's `tokens` is their mean: what the
// planner balances before serving.
#include <cstdio>
#include <memory>

#include <fmt/format.h>

#include "app/commands.h"
#include "app/engine_options.h"
#include "app/kv_options.h"
#include "app/measure_profile.h"
#include "app/prompts.h"
#include "placement/profile.h"

namespace fairkv::app {

namespace {

struct ProfileArgs {
  std::string model, prompts, out;
  EngineOptions engine;
  KvOptions kv;
};

void run(const ProfileArgs& a) {
  const auto m = model::Model::load(a.model, a.engine.load(a.model));
  const auto prompts = read_prompts(a.prompts);
  const kv::CompressionConfig kc = a.kv.config();
  kernels::ThreadPool pool(a.engine.n_threads());
  const auto& c = m->config;
  const placement::Profile p =
      measure_profile(*m, prompts, kc, a.kv.kv_type(), a.engine.act(), pool, a.prompts);
  placement::write_profile(p, a.out);
  // Spread of the per-head lengths, per layer: what the planner has to balance.
  fmt::print("{:>6} {:>10} {:>10} {:>10}\n", "layer", "mean", "max", "max/mean");
  for (int l = 0; l < c.n_layers; ++l) {
    double sum = 0, mx = 0;
    for (double t : p.tokens[size_t(l)]) sum += t, mx = std::max(mx, t);
    const double mean = sum / c.n_kv_heads;
    fmt::print("{:>6} {:>10.1f} {:>10.1f} {:>10.3f}\n", l, mean, mx, mean > 0 ? mx / mean : 0.0);
  }
  fmt::print("wrote {}\n", a.out);
}

}  // namespace

void add_profile_command(CLI::App& app) {
  auto a = std::make_shared<ProfileArgs>();
  CLI::App* cmd =
      app.add_subcommand("profile", "Measure per-unit cached lengths of a compression policy");
  cmd->add_option("-m,--model", a->model, "GGUF model file")->required();
  cmd->add_option("--prompts", a->prompts,
                  "Text file (one prompt per line), folder of .txt, or .jsonl")
      ->required();
  cmd->add_option("-o,--output", a->out, "Profile JSON to write")->required();
  add_engine_options(*cmd, a->engine);
  add_kv_options(*cmd, a->kv);
  cmd->callback([a] { run(*a); });
}

}  // namespace fairkv::app
