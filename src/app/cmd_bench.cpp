// `fairkv bench`: one decode workload under several placements, side by side in one run.
#include <cstdio>
#include <fstream>
#include <memory>
#include <thread>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "app/commands.h"
#include "app/svg_plot.h"
#include "model/model.h"
#include "placement/profile.h"
#include "runtime/side_by_side.h"

namespace fairkv::app {

namespace {

struct BenchArgs {
  std::string profile, model, json_out, svg_out, placements = "tp,balanced,fair-copy,split",
                                                 devices = "4";
  int batch = 8, steps = 3, layers = 0, threads = 0;
  int64_t ffn = 1024;
};

std::vector<std::string> split_list(const std::string& s) {
  std::vector<std::string> out;
  size_t b = 0;
  while (b <= s.size()) {
    size_t e = s.find(',', b);
    if (e == std::string::npos) e = s.size();
    if (e > b) out.push_back(s.substr(b, e - b));
    b = e + 1;
  }
  return out;
}

void progress_bar(int done, int total, const std::string& what) {
  const int width = 30, fill = total > 0 ? done * width / total : width;
  fmt::print(stderr, "\r[{}{}] {:3}% {:<40}", std::string(size_t(fill), '#'),
             std::string(size_t(width - fill), '.'), total > 0 ? 100 * done / total : 100, what);
  if (done == total) fmt::print(stderr, "\n");
  std::fflush(stderr);
}

void run(const BenchArgs& a) {
  placement::Profile prof = placement::read_profile(a.profile);
  if (a.layers > 0) {
    if (a.layers > prof.layers)
      throw UsageError(fmt::format("--layers: the profile has only {} layers", prof.layers));
    prof.layers = a.layers;
    prof.tokens.resize(size_t(a.layers));
    prof.samples.clear();
  }
  std::unique_ptr<model::Model> m;
  runtime::SyntheticModel synth;
  const model::ModelConfig* c;
  const model::Weights* w;
  if (!a.model.empty()) {
    m = model::Model::load(a.model);
    c = &m->config;
    w = &m->weights;
  } else {
    fmt::print(stderr,
               "bench: random F16 weights of the profile's shape ({} layers, {} / {} heads, "
               "head size {}, ffn {})\n",
               prof.layers, prof.query_heads, prof.kv_heads, prof.head_dim, a.ffn);
    synth = runtime::synthetic_model(prof, a.ffn);
    c = &synth.config;
    w = &synth.weights;
  }
  const int cores = int(std::max(1u, std::thread::hardware_concurrency()));
  nlohmann::json records = nlohmann::json::array();
  std::vector<runtime::BenchResult> all;
  for (const auto& d : split_list(a.devices)) {
    runtime::BenchOptions o;
    o.devices = std::stoi(d);
    o.batch = a.batch;
    o.steps = a.steps;
    o.threads = a.threads > 0 ? a.threads : cores;
    o.wall = o.devices <= cores;
    o.placements = split_list(a.placements);
    fmt::print(stderr, "bench: R = {}, batch {}, {} layers\n", o.devices, o.batch, c->n_layers);
    auto res = runtime::run_bench(*c, *w, prof, o, progress_bar);
    fmt::print("\nR = {} devices, batch {}, {} decode steps per placement ({})\n", o.devices,
               o.batch, o.steps, prof.source.empty() ? a.profile : prof.source);
    fmt::print("{:<10} {:>12} {:>10} {:>12} {:>10} {:>12} {:>9} {:>10} {:>12}\n", "placement",
               "emulated ms", "tok/s", "bound ms", "imbalance", "max KV MiB", "replicas", "vs tp",
               o.wall ? "wall ms" : "wall (R>cores)");
    for (const auto& r : res) {
      fmt::print(
          "{:<10} {:>12.2f} {:>10.1f} {:>12.2f} {:>10.3f} {:>12.1f} {:>9} {:>9.3f}x {:>12}\n",
          r.planner, r.step_ms_emulated, r.tok_s_emulated, r.lower_bound_ms, r.imbalance,
          double(r.max_kv_bytes) / (1 << 20), r.replicas, r.speedup_vs_tp,
          o.wall ? fmt::format("{:.2f}", r.step_ms_wall) : std::string("-"));
      records.push_back(
          {{"planner", r.planner},
           {"devices", r.devices},
           {"batch", o.batch},
           {"step_ms_emulated", r.step_ms_emulated},
           {"step_ms_wall", o.wall ? nlohmann::json(r.step_ms_wall) : nlohmann::json()},
           {"lower_bound_ms", r.lower_bound_ms},
           {"allreduce_ms", r.allreduce_ms},
           {"imbalance", r.imbalance},
           {"tok_s_emulated", r.tok_s_emulated},
           {"max_kv_bytes", r.max_kv_bytes},
           {"replicas", r.replicas},
           {"speedup_vs_tp", r.speedup_vs_tp},
           {"layer_rank_ms", r.layer_rank_ms}});
      all.push_back(r);
    }
    fmt::print(
        "emulated: each rank timed alone on the whole machine, per layer; step = sum over "
        "layers of the slowest rank + 2 all-reduces ({:.3f} ms each, measured)\n",
        res.empty() ? 0.0 : res[0].allreduce_ms);
  }
  if (!a.json_out.empty()) {
    std::ofstream out(a.json_out);
    if (!out) throw std::runtime_error(a.json_out + ": cannot write (--json)");
    out << records.dump(2) << "\n";
  }
  if (!a.svg_out.empty() && !all.empty()) {
    // Per-layer slowest and mean rank time of tp against the fastest placement (last R run).
    const int R = all.back().devices;
    const runtime::BenchResult* tp = nullptr;
    const runtime::BenchResult* best = nullptr;
    for (const auto& r : all)
      if (r.devices == R) {
        if (r.planner == "tp") tp = &r;
        if (!best || r.step_ms_emulated < best->step_ms_emulated) best = &r;
      }
    std::vector<Series> series;
    for (const auto* r : {tp, best}) {
      if (!r) continue;
      Series mx{r->planner + " slowest device", {}}, mean{r->planner + " mean", {}};
      for (size_t l = 0; l < r->layer_rank_ms.size(); ++l) {
        double m1 = 0, s = 0;
        for (double x : r->layer_rank_ms[l]) m1 = std::max(m1, x), s += x / R;
        mx.points.push_back({double(l), m1});
        mean.points.push_back({double(l), s});
      }
      series.push_back(mx);
      series.push_back(mean);
    }
    std::ofstream out(a.svg_out);
    if (!out) throw std::runtime_error(a.svg_out + ": cannot write (--svg)");
    out << svg_line_chart(
        fmt::format("Per-layer device time, R = {}: tp vs {}", R, best ? best->planner : "-"),
        "layer", "ms per decode step (emulated)", series);
  }
}

}  // namespace

void add_bench_command(CLI::App& app) {
  auto a = std::make_shared<BenchArgs>();
  CLI::App* cmd = app.add_subcommand("bench", "Decode one workload under several placements");
  cmd->add_option("--profile", a->profile, "Load profile (cache lengths per unit)")->required();
  cmd->add_option("-m,--model", a->model, "GGUF of the profile's shape (default: random weights)");
  cmd->add_option("-R,--devices", a->devices, "Device counts, comma-separated")
      ->capture_default_str();
  cmd->add_option("-b,--batch", a->batch, "Sequences decoded together")->capture_default_str();
  cmd->add_option("--placements", a->placements, "Planners to compare")->capture_default_str();
  cmd->add_option("--steps", a->steps, "Timed decode steps per placement")->capture_default_str();
  cmd->add_option("--layers", a->layers, "Use the profile's first N layers");
  cmd->add_option("--ffn", a->ffn,
                  "Feed-forward size of the random-weight model (the MLP is split evenly by "
                  "every placement)")
      ->capture_default_str();
  cmd->add_option("-t,--threads", a->threads, "Threads for the emulated timing (default: all)");
  cmd->add_option("--json", a->json_out, "Write the results as JSON");
  cmd->add_option("--svg", a->svg_out, "Write a chart of per-layer device time, tp vs best");
  cmd->callback([a] { run(*a); });
}

}  // namespace fairkv::app
