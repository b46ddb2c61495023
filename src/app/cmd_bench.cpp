// `fairkv bench`: one decode workload under several placements, side by side in one run.
#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <memory>
#include <thread>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "app/commands.h"
#include "app/engine_options.h"
#include "app/kv_options.h"
#include "app/measure_profile.h"
#include "app/prompts.h"
#include "app/svg_plot.h"
#include "model/model.h"
#include "placement/placement.h"
#include "placement/planners.h"
#include "placement/profile.h"
#include "runtime/emulated_bench.h"

namespace fairkv::app {

namespace {

struct BenchArgs {
  std::string profile, prompts, model, json_out, svg_out,
      placements = "tp,balanced,fair-copy,split", devices = "4";
  int batch = 8, steps = 3, rounds = 2, layers = 0, threads = 0;
  int64_t ffn = 0;
  bool no_wall = false;
  bool no_calibrate = false;
  int replicas = -1;
  KvOptions kv;  // --prompts: the compression whose kept lengths are benched
};

void progress_bar(int done, int total, const std::string& what) {
  const int width = 30, fill = total > 0 ? done * width / total : width;
  fmt::print(stderr, "\r[{}{}] {:3}% {:<48.48}", std::string(size_t(fill), '#'),
             std::string(size_t(width - fill), '.'), total > 0 ? 100 * done / total : 100, what);
  if (done == total) fmt::print(stderr, "\n");
  std::fflush(stderr);
}

double mib(size_t b) {
  return double(b) / double(1 << 20);
}

void print_table(const std::vector<runtime::BenchRow>& rows, bool wall) {
  fmt::print("{:<10} {:>11} {:>9} {:>9} {:>10} {:>9} {:>9} {:>8} {:>9} {:>9} {:>8} {:>10} {:>10}\n",
             "placement", "emul. ms", "pred. ms", "tok/s", "bound ms", "ideal ms", "vs tp",
             "imbal.", "plan imb.", "replicas", "KV MiB", "wall ms", "wall vs tp");
  for (const auto& r : rows) {
    if (!r.refused.empty()) {
      fmt::print("{:<10} cannot place: {}\n", r.planner, r.refused);
      continue;
    }
    fmt::print(
        "{:<10} {:>11.2f} {:>9} {:>9.1f} {:>10.2f} {:>9.2f} {:>9} {:>8.3f} {:>9.3f} {:>9} "
        "{:>8.1f} {:>10} {:>10}\n",
        r.planner, r.step_ms_emulated,
        r.predicted_ms > 0 ? fmt::format("{:.2f}", r.predicted_ms) : std::string("-"),
        r.tok_s_emulated, r.lower_bound_ms, r.ideal_ms,
        // 0 when tp could not place the heads: there is no baseline to compare with
        r.speedup_vs_tp > 0 ? fmt::format("{:.3f}x", r.speedup_vs_tp) : std::string("-"),
        r.imbalance, r.planned_imbalance, r.replicas, mib(r.max_kv_bytes),
        wall ? fmt::format("{:.2f}", r.step_ms_wall) : std::string("-"),
        wall && r.speedup_wall_vs_tp > 0 ? fmt::format("{:.3f}x", r.speedup_wall_vs_tp)
                                         : std::string("-"));
  }
}

nlohmann::json row_json(const runtime::BenchRow& r, bool wall) {
  if (!r.refused.empty())
    return {
        {"planner", r.planner}, {"devices", r.devices}, {"batch", r.batch}, {"refused", r.refused}};
  return {{"planner", r.planner},
          {"devices", r.devices},
          {"batch", r.batch},
          {"step_ms_emulated", r.step_ms_emulated},
          {"step_ms_wall", wall ? nlohmann::json(r.step_ms_wall) : nlohmann::json()},
          {"lower_bound_ms", r.lower_bound_ms},
          {"ideal_ms", r.ideal_ms},
          {"collective_ms", r.collective_ms},
          {"predicted_ms", r.predicted_ms > 0 ? nlohmann::json(r.predicted_ms) : nlohmann::json()},
          {"kv_time_factor", r.calibration.kv_time_factor},
          {"part_load", r.calibration.part_load},
          {"split_layer_load", r.calibration.split_layer_load},
          {"model_error", r.calibration.error},
          {"note", r.placement.note},
          {"imbalance", r.imbalance},
          {"planned_imbalance", r.planned_imbalance},
          {"tok_s_emulated", r.tok_s_emulated},
          {"tok_s_wall", wall ? nlohmann::json(r.tok_s_wall) : nlohmann::json()},
          {"speedup_vs_tp", r.speedup_vs_tp},
          {"speedup_wall_vs_tp", wall ? nlohmann::json(r.speedup_wall_vs_tp) : nlohmann::json()},
          {"max_kv_bytes", r.max_kv_bytes},
          {"max_weight_bytes", r.max_weight_bytes},
          {"replicas", r.replicas},
          {"layer_rank_ms", r.layer_rank_ms},
          {"placement", placement::placement_to_json(r.placement)}};
}

// Per layer: the slowest, mean and fastest device of tp and of the fastest placement.
std::string chart(const std::vector<runtime::BenchRow>& rows) {
  const runtime::BenchRow* tp = nullptr;
  const runtime::BenchRow* best = nullptr;
  for (const auto& r : rows) {
    if (!r.refused.empty()) continue;
    if (r.planner == "tp") tp = &r;
    if (!best || r.step_ms_emulated < best->step_ms_emulated) best = &r;
  }
  std::vector<Series> series;
  for (const auto* r : {tp, best}) {
    if (!r || (r == best && best == tp && !series.empty())) continue;
    Series hi{r->planner + ": slowest device", {}}, mean{r->planner + ": mean", {}},
        lo{r->planner + ": fastest device", {}};
    for (size_t l = 0; l < r->layer_rank_ms.size(); ++l) {
      const auto& v = r->layer_rank_ms[l];
      double s = 0;
      for (double x : v) s += x;
      hi.points.push_back({double(l), *std::max_element(v.begin(), v.end())});
      mean.points.push_back({double(l), s / double(v.size())});
      lo.points.push_back({double(l), *std::min_element(v.begin(), v.end())});
    }
    series.push_back(hi);
    series.push_back(mean);
    series.push_back(lo);
  }
  return svg_line_chart(fmt::format("Attention time per device and layer, R = {}: tp vs {}",
                                    rows.front().devices, best->planner),
                        "layer", "ms per decode step (emulated)", series);
}

void run(const BenchArgs& a) {
  if (a.profile.empty() == a.prompts.empty())
    throw UsageError("give the lengths with exactly one of --profile FILE or --prompts FILE");
  if (!a.prompts.empty() && a.model.empty())
    throw UsageError("--prompts: the lengths come from prefills of a model: give -m MODEL");
  std::unique_ptr<model::Model> m;
  set_activity("loading the model " + a.model);
  if (!a.model.empty()) m = model::Model::load(a.model);
  placement::Profile prof;
  if (!a.prompts.empty()) {
    // Real prefills and compression, as `fairkv run` would do them, give the lengths.
    kernels::ThreadPool pool(
        a.threads > 0 ? a.threads : int(std::max(1u, std::thread::hardware_concurrency())));
    prof = measure_profile(*m, read_prompts(a.prompts), a.kv.config(), a.kv.kv_type(),
                           kernels::Activations::Float32, pool, a.prompts);
  } else {
    prof = placement::read_profile(a.profile);
  }
  if (a.layers > 0) {
    if (a.layers > prof.layers)
      throw UsageError(fmt::format("--layers {}: the profile {} has only {} layers", a.layers,
                                   a.profile, prof.layers));
    prof.layers = a.layers;
    prof.tokens.resize(size_t(a.layers));
    prof.samples.clear();
  }
  // The caches of the batch at the profile's lengths, divided over the most devices asked for:
  // no rank can hold less, and the emulated bench holds one rank's at a time.
  if (a.batch < 1) throw UsageError("--batch: expected at least 1 sequence");
  double kv = 0;
  for (const auto& row : prof.tokens)
    for (double t : row) kv += t;
  int most = 1;
  for (const auto& d : split_list(a.devices)) most = std::max(most, std::atoi(d.c_str()));
  check_fits(kv * a.batch * double(a.kv.kv_type().token_bytes(prof.head_dim)) / most,
             fmt::format("bench: the KV caches of batch {} at the profile's lengths over {} "
                         "devices",
                         a.batch, most));
  runtime::RandomModel synth;
  const model::ModelConfig* c;
  const model::Weights* w;
  if (m) {
    c = &m->config;
    w = &m->weights;
  } else {
    const int64_t ffn = a.ffn > 0 ? a.ffn : prof.ffn > 0 ? prof.ffn : 4 * prof.embedding();
    // F16 weights of every layer (q, k, v, o, gate, up, down) and the 256-row embedding.
    const double embd = double(prof.embedding()), hd = prof.head_dim;
    check_fits(2.0 * embd *
                   (256.0 + prof.layers * (2.0 * prof.query_heads * hd + 2.0 * prof.kv_heads * hd +
                                           3.0 * double(ffn))),
               fmt::format("bench: random F16 weights of the profile's shape ({} layers, embd {}, "
                           "ffn {})",
                           prof.layers, prof.embedding(), ffn));
    fmt::print(stderr,
               "bench: random F16 weights of the profile's shape ({} layers, {} query / {} KV "
               "heads, head size {}, embd {}, ffn {})\n",
               prof.layers, prof.query_heads, prof.kv_heads, prof.head_dim, prof.embedding(), ffn);
    set_activity("making random weights of the profile's shape");
    synth = runtime::random_model(prof, ffn);
    c = &synth.config;
    w = &synth.weights;
  }
  const int cores = int(std::max(1u, std::thread::hardware_concurrency()));
  nlohmann::json records = nlohmann::json::array();
  for (const auto& d : split_list(a.devices)) {
    runtime::BenchSpec s;
    try {
      s.devices = std::stoi(d);
    } catch (const std::exception&) {
      throw UsageError(fmt::format("--devices: expected comma-separated counts, got '{}'", d));
    }
    if (s.devices < 1 || s.devices > placement::kMaxDevices)
      throw UsageError(
          fmt::format("--devices: expected 1 to {}, got {}", placement::kMaxDevices, s.devices));
    s.batch = a.batch;
    s.steps = a.steps;
    s.rounds = a.rounds;
    s.threads = a.threads > 0 ? a.threads : cores;
    s.wall = !a.no_wall && s.devices <= cores;
    s.calibrate = !a.no_calibrate;
    s.replicas = a.replicas;
    s.planners = split_list(a.placements);
    fmt::print(stderr, "bench: R = {}, batch {}, {} layers, {} threads\n", s.devices, s.batch,
               c->n_layers, s.threads);
    set_activity(fmt::format("benchmarking the placements on {} devices", s.devices));
    const auto rows = runtime::bench_placements(*c, *w, prof, s, progress_bar);
    fmt::print(
        "\nR = {} devices, batch {}, {} timed decode steps per placement x {} rounds; lengths: "
        "{}\n",
        s.devices, s.batch, s.steps, s.rounds, prof.source.empty() ? a.profile : prof.source);
    print_table(rows, s.wall);
    // Every timed placement has the same base collectives; a refused row has none measured.
    double collectives = 0;
    for (const auto& r : rows)
      if (r.refused.empty()) {
        collectives = r.collective_ms;
        break;
      }
    fmt::print(
        "emulated: each rank's step timed alone on the whole machine ({} threads); step = sum "
        "over layers of the slowest rank + the collectives measured among {} threads ({:.3f} "
        "ms/step). bound: the same with every layer at its mean rank time; ideal: every layer "
        "at tp's mean rank time (no replicas, no extra collectives).\n",
        s.threads, s.devices, collectives);
    if (s.calibrate && !rows.empty() && rows[0].calibration.ms_per_load <= 0) {
      fmt::print(
          "plans: the calibration's timings did not fit a cost model (a busy machine?): planned "
          "in bytes, as with --no-calibrate\n");
    } else if (s.calibrate && !rows.empty()) {
      const runtime::Calibration& k = rows[0].calibration;
      fmt::print(
          "plans: calibrated on this machine: a KV byte of attention takes {:.2f}x the time of a "
          "weight byte of a projection, a part {:.1f} and a split layer's collectives {:.1f} "
          "token-loads, predictions within {:.1f}%; a plan replaces tp only when predicted "
          "faster by more than that (--no-calibrate: bytes, parts free). pred.: the model's "
          "attention and split collectives + the rest of the step as measured\n",
          k.kv_time_factor, k.part_load, k.split_layer_load, 100.0 * k.error);
    }
    for (const auto& r : rows)
      if (!r.placement.note.empty()) fmt::print("note: {}\n", r.placement.note);
    fmt::print("wall: {}\n",
               s.wall ? fmt::format("{} ranks as threads in parallel, {} threads each", s.devices,
                                    std::max(1, s.threads / s.devices))
                      : fmt::format("not run (R = {} > {} cores, or --no-wall)", s.devices, cores));
    for (const auto& r : rows) records.push_back(row_json(r, s.wall));
    const bool any_timed = std::any_of(
        rows.begin(), rows.end(), [](const runtime::BenchRow& r) { return r.refused.empty(); });
    if (!a.svg_out.empty() && any_timed) {
      std::string path = a.svg_out;
      if (split_list(a.devices).size() > 1) {
        const size_t dot = path.rfind('.');
        path = path.substr(0, dot) + fmt::format("-R{}", s.devices) +
               (dot == std::string::npos ? "" : path.substr(dot));
      }
      std::ofstream out(path);
      if (!out) throw std::runtime_error(path + ": cannot write (--svg)");
      out << chart(rows);
      fmt::print("chart: {}\n", path);
    }
  }
  if (!a.json_out.empty()) {
    std::ofstream out(a.json_out);
    if (!out) throw std::runtime_error(a.json_out + ": cannot write (--json)");
    out << records.dump(2) << "\n";
  }
}

}  // namespace

void add_bench_command(CLI::App& app) {
  auto a = std::make_shared<BenchArgs>();
  CLI::App* cmd = app.add_subcommand("bench", "Decode one workload under several placements");
  cmd->add_option("--profile", a->profile, "Load profile: cached tokens per unit");
  cmd->add_option("--prompts", a->prompts,
                  "Instead of --profile: prefill these prompts on -m MODEL and compress them "
                  "(--kv-policy ...): the kept lengths are the profile");
  add_kv_options(*cmd, a->kv);
  cmd->add_option("-m,--model", a->model, "GGUF of the profile's shape (default: random weights)");
  cmd->add_option("-R,--devices", a->devices, "Device counts, comma-separated")
      ->capture_default_str();
  cmd->add_option("-b,--batch", a->batch, "Sequences decoded together")->capture_default_str();
  cmd->add_option("--placements", a->placements, "Planners to compare, comma-separated")
      ->capture_default_str();
  cmd->add_option("--steps", a->steps, "Timed decode steps per placement")->capture_default_str();
  cmd->add_option("--rounds", a->rounds,
                  "Emulated timing: measure every placement this many times, in turn (the fastest "
                  "segment times count)")
      ->capture_default_str();
  cmd->add_option("--layers", a->layers, "Use the profile's first N layers");
  cmd->add_option("--ffn", a->ffn,
                  "Feed-forward size of the random-weight model (default: the profile's, else "
                  "4 x embd)");
  cmd->add_option("-t,--threads", a->threads, "Threads of the machine (default: all cores)");
  cmd->add_flag("--no-wall", a->no_wall, "Skip the wall-clock timing");
  cmd->add_option(
      "--replicas", a->replicas,
      "Extra replicas per layer for fair-copy and split (default: devices - 1 for fair-copy, "
      "2 (devices - 1) for split)");
  cmd->add_flag("--no-calibrate", a->no_calibrate,
                "Plan with loads in bytes (FAIRKV.md's model) instead of measuring how much "
                "slower attention is per byte than a projection on this machine");
  cmd->add_option("--json", a->json_out, "Write the results as JSON (a list, one per placement)");
  cmd->add_option("--svg", a->svg_out, "Write a chart of per-device time per layer, tp vs best");
  cmd->callback([a] { run(*a); });
}

}  // namespace fairkv::app
