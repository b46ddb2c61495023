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
#include "app/prompts.h"
#include "model/generate.h"
#include "model/prefill_compression.h"
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
  auto comp = model::make_prefill_compression(kc, *m);
  const auto& c = m->config;
  std::vector<placement::UnitTable> samples;
  for (size_t i = 0; i < prompts.size(); ++i) {
    const auto ids = m->tokenizer.encode(prompts[i].text, m->tokenizer.add_bos());
    fmt::print(stderr, "\rprofile: prompt {}/{} ({} tokens)    ", i + 1, prompts.size(),
               ids.size());
    model::GenerateOptions opt;
    opt.n_predict = 0;
    opt.kv_type = a.kv.kv_type();
    opt.activations = a.engine.act();
    placement::UnitTable kept(size_t(c.n_layers), std::vector<double>(size_t(c.n_kv_heads)));
    comp->attach(opt);
    opt.after_prefill = [compress = opt.after_prefill, &kept, &c](kv::SequenceCache& cache) {
      compress(cache);
      for (int l = 0; l < c.n_layers; ++l)
        for (int h = 0; h < c.n_kv_heads; ++h)
          kept[size_t(l)][size_t(h)] = double(cache.head(l, h).size());
    };
    model::generate(*m, pool, ids, opt);
    samples.push_back(std::move(kept));
  }
  fmt::print(stderr, "\n");
  placement::Profile shape;
  shape.model = c.name;
  shape.layers = c.n_layers;
  shape.kv_heads = c.n_kv_heads;
  shape.query_heads = c.n_heads;
  shape.head_dim = c.head_dim;
  shape.embd = c.n_embd;
  shape.ffn = c.n_ff;
  shape.source = fmt::format("fairkv profile: {} over {} prompts of {}", kc.describe(),
                             prompts.size(), a.prompts);
  const placement::Profile p = placement::profile_from_samples(shape, std::move(samples));
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
