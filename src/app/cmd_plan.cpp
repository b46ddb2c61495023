// `fairkv plan`: place every unit (KV head of a layer with its query heads) on devices by load,
// print the per-layer loads and the predicted speed-up over tp, and write the placement JSON that
// the runtime reads. Profiles come from a file (`--profile`) or from the synthetic log-normal
// generator (`--synthetic lognormal:SIGMA`), which can also be saved (`--write-profile`).
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include <fmt/format.h>

#include "app/commands.h"
#include "app/engine_options.h"
#include "formats/gguf_synth.h"
#include "placement/evaluate.h"
#include "placement/planners.h"

namespace fairkv::app {

namespace {

namespace pl = fairkv::placement;

struct PlanArgs {
  std::string profile, synthetic, shape = "llama-3.3-70b", planner = "tp", json, write_profile;
  std::string weight_type = "f16", kv_type = "f16", device_memory;
  std::vector<int> devices;
  int batch = 1;
  int replicas = -1;
  int64_t node_limit = pl::PlanOptions{}.node_limit;
  double mean_tokens = 4096;
  uint64_t seed = 1;
  int samples = 0;
  bool compare = false, summary = false, markdown = false;
};

constexpr double kGiB = 1024.0 * 1024.0 * 1024.0;
constexpr double kMiB = 1024.0 * 1024.0;

// A synthetic profile's model shape: one of the synth presets, so that a plan and a synthesized
// GGUF of the same name have the same shape.
pl::SyntheticSpec shape_spec(const std::string& name) {
  const gguf::SynthShape* shape = nullptr;
  try {
    shape = &gguf::synth_shape(name);
  } catch (const gguf::Error& e) {
    throw UsageError(e.what());
  }
  pl::SyntheticSpec s;
  s.model = name + "-shape";
  s.layers = int(shape->n_layer);
  s.kv_heads = int(shape->n_head_kv);
  s.query_heads = int(shape->n_head);
  s.head_dim = int(shape->head_dim);
  s.embd = shape->n_embd;
  s.ffn = shape->n_ff;
  return s;
}

// Bytes of `tables` tables of L x H loads (a profile's mean and each of its samples).
double table_bytes(double layers, double kv_heads, double tables) {
  return tables * layers * (kv_heads * sizeof(double) + sizeof(std::vector<double>));
}

// The profile's memory, refused before it is read or generated when it cannot fit: a file is
// parsed into a JSON tree first (16 bytes per number, at most ~8 per byte of text, then the
// tables); a synthetic profile holds its mean and --samples tables.
void check_profile_memory(const PlanArgs& a) {
  if (!a.profile.empty()) {
    std::error_code ec;
    const auto size = std::filesystem::file_size(a.profile, ec);
    if (!ec) check_fits(12.0 * double(size), fmt::format("reading the profile {}", a.profile));
    return;
  }
  const pl::SyntheticSpec s = shape_spec(a.shape);
  check_fits(table_bytes(s.layers, s.kv_heads, 1.0 + a.samples),
             fmt::format("--samples {}: a synthetic profile of {} layers x {} KV heads per sample",
                         a.samples, s.layers, s.kv_heads));
}

// A plan's memory at its peak, refused before planning when it cannot fit: a layer holds at most
// every unit once plus the replica budget, the planner keeps about three plans (the result, tp's
// reference and the memory fit's) and weighs up to min(budget, units) + 6 candidates of one
// layer at a time.
void check_plan_memory(const pl::Profile& prof, pl::PlannerKind kind, int devices, int replicas) {
  pl::PlanOptions o;
  o.planner = kind;
  o.devices = devices;
  o.replicas = replicas;
  const double k = pl::replica_budget(o, prof.kv_heads), units = prof.kv_heads;
  const double layer = (units + k) * sizeof(pl::Share) + devices * sizeof(std::vector<pl::Share>);
  check_fits((3.0 * prof.layers + std::min(k, units) + 6) * layer,
             fmt::format("--planner {} --devices {}: a plan of {} layers x {} KV heads with up to "
                         "{} replicas per layer",
                         pl::planner_name(kind), devices, prof.layers, prof.kv_heads, k));
}

pl::Profile load_profile(const PlanArgs& a) {
  if (a.profile.empty() == a.synthetic.empty())
    throw UsageError("give the loads with exactly one of --profile FILE or --synthetic SPEC");
  if (!a.profile.empty()) return pl::read_profile(a.profile);
  const std::string prefix = "lognormal:";
  if (a.synthetic.rfind(prefix, 0) != 0)
    throw UsageError(fmt::format("--synthetic: expected lognormal:SIGMA, got \"{}\"", a.synthetic));
  pl::SyntheticSpec s = shape_spec(a.shape);
  try {
    size_t used = 0;
    s.sigma = std::stod(a.synthetic.substr(prefix.size()), &used);
    if (used != a.synthetic.size() - prefix.size()) throw std::invalid_argument("trailing text");
  } catch (const std::exception&) {
    throw UsageError(
        fmt::format("--synthetic: expected lognormal:SIGMA with SIGMA a number, got "
                    "\"{}\"",
                    a.synthetic));
  }
  if (!(s.sigma >= 0)) throw UsageError("--synthetic: SIGMA must be >= 0");
  if (!(a.mean_tokens >= 0)) throw UsageError("--mean-tokens: must be >= 0");
  s.mean_tokens = a.mean_tokens;
  s.seed = a.seed;
  s.samples = a.samples;
  return pl::synthetic_lognormal(s);
}

// "80G", "80GiB", "512M", "1e9", "85899345920": bytes (suffixes are binary).
double parse_bytes(const std::string& text) {
  size_t used = 0;
  double v = 0;
  try {
    v = std::stod(text, &used);
  } catch (const std::exception&) {
    used = 0;
  }
  std::string unit = text.substr(used);
  if (unit.size() > 1 && (unit.back() == 'B' || unit.back() == 'b')) unit.pop_back();
  if (unit.size() > 1 && unit.back() == 'i') unit.pop_back();
  double scale = 0;
  if (unit.empty()) scale = 1;
  if (unit == "K" || unit == "k") scale = 1024.0;
  if (unit == "M" || unit == "m") scale = kMiB;
  if (unit == "G" || unit == "g") scale = kGiB;
  if (unit == "T" || unit == "t") scale = 1024.0 * kGiB;
  if (used == 0 || scale == 0 || !(v > 0) || !std::isfinite(v))
    throw UsageError(fmt::format(
        "--device-memory: expected a positive size in bytes (suffix K, M, G or T), got \"{}\"",
        text));
  return v * scale;
}

// Bytes in the largest binary unit that keeps the number >= 1.
std::string format_bytes(double b) {
  if (b >= kGiB) return fmt::format("{:.2f} GiB", b / kGiB);
  if (b >= kMiB) return fmt::format("{:.2f} MiB", b / kMiB);
  return fmt::format("{:.2f} KiB", b / 1024.0);
}

// tp's plan as the reference for speed-ups, or nothing when tp cannot place the heads.
std::unique_ptr<pl::Placement> tp_reference(const pl::Profile& prof, const pl::CostModel& cost,
                                            int devices) {
  pl::PlanOptions o;
  o.planner = pl::PlannerKind::Tp;
  o.devices = devices;
  try {
    return std::make_unique<pl::Placement>(pl::plan(prof, cost, o));
  } catch (const std::invalid_argument&) {
    return nullptr;
  }
}

std::string describe_profile(const pl::Profile& p) {
  return fmt::format("{}: {} layers x {} KV heads ({} query heads, head size {}, embd {}{}){}",
                     p.model, p.layers, p.kv_heads, p.query_heads, p.head_dim, p.embedding(),
                     p.ffn > 0 ? fmt::format(", ffn {}", p.ffn) : "",
                     p.source.empty() ? "" : fmt::format(" [{}]", p.source));
}

void print_layers(const pl::Placement& p, const pl::Profile& prof, const pl::CostModel& cost) {
  std::string head = fmt::format("{:>5} |", "layer");
  for (int d = 0; d < p.devices; ++d) head += fmt::format(" {:>9}", fmt::format("dev{}", d));
  head += fmt::format(" | {:>8} | {:>11} | {:>8} | weights per device", "max/mean", "lower bound",
                      "replicas");
  std::puts(head.c_str());
  for (size_t l = 0; l < p.layers.size(); ++l) {
    const auto loads = pl::device_loads(p.layers[l], prof.tokens[l], cost, p.devices);
    const auto w = pl::layer_weight_bytes(p.layers[l], cost, p.devices);
    std::string row = fmt::format("{:>5} |", l);
    for (double x : loads) row += fmt::format(" {:>9.1f}", x);
    const std::string ratio =
        p.lower_bound[l] > 0 ? fmt::format("{:.4f}", p.max_load[l] / p.lower_bound[l]) : "-";
    row += fmt::format(" | {:>8} | {:>11.1f} | {:>8} |", ratio, p.lower_bound[l], p.replicas[l]);
    for (double x : w) row += " " + format_bytes(x);
    if (p.planner == "balanced" && !p.proven[l]) row += "  (best found, not proven optimal)";
    std::puts(row.c_str());
  }
}

void print_memory(const pl::Placement& p, const pl::Profile& prof, const pl::CostModel& cost,
                  double limit) {
  const auto mem = pl::device_memory(p, prof.tokens, cost);
  std::string line = "memory per device (weights + KV):";
  for (const auto& m : mem)
    line += fmt::format(" [{} + {}]", format_bytes(m.weight_bytes), format_bytes(m.kv_bytes));
  if (limit > 0) line += fmt::format("; limit {}: fits", format_bytes(limit));
  std::puts(line.c_str());
}

pl::Placement make_plan(const pl::Profile& prof, const pl::CostModel& cost, pl::PlannerKind kind,
                        int devices, const PlanArgs& a, double memory) {
  pl::PlanOptions o;
  o.planner = kind;
  o.devices = devices;
  o.replicas = a.replicas;
  o.device_memory = memory;
  o.node_limit = a.node_limit;
  return pl::plan(prof, cost, o);
}

// What the "exact" column says: balanced's layers proven optimal; for the replicating planners,
// the layers that reach the lower bound (no plan can do better there).
std::string exact_cell(pl::PlannerKind kind, const pl::PlanSummary& s, size_t layers) {
  if (kind == pl::PlannerKind::Tp) return "-";
  if (kind == pl::PlannerKind::Balanced)
    return fmt::format("{}/{} proven", s.proven_layers, layers);
  return fmt::format("{}/{} at bound", s.bound_layers, layers);
}

std::string speedup_cell(double x) {
  return std::isnan(x) ? "n/a" : fmt::format("{:.3f}", x);
}

void print_compare(const pl::Profile& prof, const pl::CostModel& cost, const PlanArgs& a,
                   double memory) {
  const bool samples = !prof.samples.empty();
  std::vector<std::string> head{"R",         "planner",  "attention x", "step x",     "max/mean",
                                "worst gap", "replicas", "exact",       "peak memory"};
  if (samples) {
    head.push_back("samples: static x");
    head.push_back("samples: rebalanced x");
  }
  std::vector<std::vector<std::string>> rows;
  for (int r : a.devices) {
    const auto tp = tp_reference(prof, cost, r);
    for (auto kind : {pl::PlannerKind::Tp, pl::PlannerKind::Balanced, pl::PlannerKind::FairCopy,
                      pl::PlannerKind::Split}) {
      std::vector<std::string> row{std::to_string(r), pl::planner_name(kind)};
      try {
        const auto p = make_plan(prof, cost, kind, r, a, memory);
        const auto s = pl::summarize_plan(p, tp.get(), prof, cost);
        row.push_back(speedup_cell(s.attention_speedup));
        row.push_back(speedup_cell(s.step_speedup));
        row.push_back(fmt::format("{:.3f}", s.mean_imbalance));
        row.push_back(fmt::format("{:.1f}%", 100 * s.worst_gap));
        row.push_back(fmt::format("{:.2f} / {}", s.mean_replicas, s.max_replicas));
        row.push_back(exact_cell(kind, s, p.layers.size()));
        row.push_back(format_bytes(s.peak_memory));
        if (samples) {
          const auto e = pl::evaluate_samples(p, tp.get(), prof, cost);
          row.push_back(speedup_cell(e.static_speedup));
          row.push_back(speedup_cell(e.rebalanced_speedup));
        }
      } catch (const std::exception& e) {  // does not fit, or tp cannot place the heads
        row.push_back(e.what());
      }
      rows.push_back(std::move(row));
    }
  }
  if (a.markdown) {
    auto line = [](const std::vector<std::string>& cells) {
      std::string out = "|";
      for (const auto& c : cells) out += " " + c + " |";
      std::puts(out.c_str());
    };
    line(head);
    line(std::vector<std::string>(head.size(), "---"));
    for (const auto& row : rows) line(row);
    return;
  }
  std::vector<size_t> width(head.size(), 0);
  for (size_t c = 0; c < head.size(); ++c) width[c] = head[c].size();
  for (const auto& row : rows)
    if (row.size() == head.size())
      for (size_t c = 0; c < row.size(); ++c) width[c] = std::max(width[c], row[c].size());
  auto line = [&](const std::vector<std::string>& cells) {
    std::string out;
    for (size_t c = 0; c < cells.size(); ++c)
      out += c + 1 < cells.size() || cells.size() == head.size()
                 ? fmt::format("{:>{}}  ", cells[c], width[c])
                 : cells[c];
    std::puts(out.c_str());
  };
  line(head);
  for (const auto& row : rows) line(row);
}

void run(const PlanArgs& a) {
  if (a.devices.empty()) throw UsageError("--devices: give the number of devices");
  for (int r : a.devices)
    if (r < 1) throw UsageError(fmt::format("--devices: expected a count >= 1, got {}", r));
  if (a.devices.size() > 1 && !a.compare)
    throw UsageError("--devices: several counts need --compare");
  if (a.batch < 1) throw UsageError("--batch: expected a batch size >= 1");
  if (a.samples < 0) throw UsageError("--samples: expected a count >= 0");
  if (a.node_limit < 1) throw UsageError("--node-limit: expected a count >= 1");
  check_profile_memory(a);
  set_activity(a.profile.empty()
                   ? fmt::format("generating a synthetic profile ({} samples)", a.samples)
                   : fmt::format("reading the profile {}", a.profile));
  const pl::Profile prof = load_profile(a);
  if (!a.write_profile.empty()) pl::write_profile(prof, a.write_profile);
  pl::CostModel cost;
  try {
    cost = pl::cost_model_for(prof, a.batch, a.weight_type, a.kv_type);
  } catch (const std::invalid_argument& e) {
    throw UsageError(fmt::format("--weight-type / --kv-type: {}", e.what()));
  }
  pl::PlannerKind kind;
  try {
    kind = pl::planner_from_name(a.planner);
  } catch (const std::invalid_argument& e) {
    throw UsageError(fmt::format("--planner: {}", e.what()));
  }
  const double memory = a.device_memory.empty() ? 0.0 : parse_bytes(a.device_memory);

  std::puts(fmt::format("profile {}", describe_profile(prof)).c_str());
  std::puts(fmt::format("cost: batch {}, weights {}, KV {}; loads in tokens per sequence; one "
                        "unit's weights read = {:.1f}, one layer's MLP = {:.1f}",
                        a.batch, a.weight_type, a.kv_type, cost.unit_weight_load(), cost.mlp_load())
                .c_str());
  if (a.compare) {
    if (!a.json.empty()) throw UsageError("--json writes one plan: leave out --compare");
    for (int r : a.devices)
      for (auto k : {pl::PlannerKind::FairCopy, pl::PlannerKind::Split})
        check_plan_memory(prof, k, r, a.replicas);
    set_activity("comparing the planners");
    print_compare(prof, cost, a, memory);
    return;
  }
  const int r = a.devices[0];
  check_plan_memory(prof, kind, r, a.replicas);
  set_activity(fmt::format("planning {} on {} devices", a.planner, r));
  const auto tp = tp_reference(prof, cost, r);
  const auto p = make_plan(prof, cost, kind, r, a, memory);
  pl::PlanOptions budget;
  budget.planner = kind;
  budget.devices = r;
  budget.replicas = a.replicas;
  std::puts(fmt::format("planner {} on {} devices{}", a.planner, r,
                        kind == pl::PlannerKind::FairCopy || kind == pl::PlannerKind::Split
                            ? fmt::format(", up to {} extra replicas per layer",
                                          pl::replica_budget(budget, prof.kv_heads))
                            : "")
                .c_str());
  if (!p.note.empty()) std::puts(fmt::format("note: {}", p.note).c_str());
  if (!a.summary) print_layers(p, prof, cost);
  const auto s = pl::summarize_plan(p, tp.get(), prof, cost);
  if (tp) {
    std::puts(fmt::format("total: sum over layers of the max load {:.1f} (tp {:.1f}); predicted "
                          "speed-up over tp: attention {:.3f}x, step {:.3f}x{}",
                          s.attention, pl::attention_time(tp->max_load), s.attention_speedup,
                          s.step_speedup, prof.ffn > 0 ? "" : " (MLP size unknown: not counted)")
                  .c_str());
  } else {
    std::puts(fmt::format("total: sum over layers of the max load {:.1f}; tp cannot place {} KV "
                          "heads on {} devices, so there is no speed-up to report",
                          s.attention, prof.kv_heads, r)
                  .c_str());
  }
  std::puts(fmt::format("balance: max/mean {:.4f} on average, worst gap to the lower bound "
                        "{:.2f}%, {} of {} layers proven optimal, replicas {:.2f} per layer "
                        "(max {})",
                        s.mean_imbalance, 100 * s.worst_gap, s.proven_layers, p.layers.size(),
                        s.mean_replicas, s.max_replicas)
                .c_str());
  print_memory(p, prof, cost, memory);
  if (!prof.samples.empty()) {
    const auto e = pl::evaluate_samples(p, tp.get(), prof, cost);
    std::puts(fmt::format("samples: {} requests; attention speed-up over tp {:.3f}x with the "
                          "plan's shares, {:.3f}x rebalanced per request (max/mean {:.4f} -> "
                          "{:.4f})",
                          e.samples, e.static_speedup, e.rebalanced_speedup, e.static_imbalance,
                          e.rebalanced_imbalance)
                  .c_str());
  }
  if (!a.json.empty()) {
    pl::write_placement(p, a.json);
    std::puts(fmt::format("wrote {}", a.json).c_str());
  }
}

}  // namespace

void add_plan_command(CLI::App& app) {
  auto a = std::make_shared<PlanArgs>();
  CLI::App* cmd = app.add_subcommand(
      "plan", "Place units (KV heads with their query heads) on devices by load");
  cmd->add_option("--profile", a->profile, "Load profile (JSON, see docs/placement.md)");
  cmd->add_option("--synthetic", a->synthetic,
                  "Synthetic profile instead: lognormal:SIGMA (unit loads log-normal, mean "
                  "--mean-tokens)");
  cmd->add_option("--shape", a->shape,
                  "Model shape of a synthetic profile: a synth preset (llama-3.3-70b, "
                  "mistral-24b, llama-2-7b, stories260K, ...)")
      ->capture_default_str();
  cmd->add_option("--mean-tokens", a->mean_tokens, "Synthetic: mean cached tokens of a unit")
      ->capture_default_str();
  cmd->add_option("--seed", a->seed, "Synthetic: random seed")->capture_default_str();
  cmd->add_option("--samples", a->samples, "Synthetic: per-request samples to add")
      ->capture_default_str();
  cmd->add_option("--write-profile", a->write_profile, "Write the profile used to FILE");
  cmd->add_option("-R,--devices", a->devices, "Devices (several, comma-separated, with --compare)")
      ->delimiter(',')
      ->check(CLI::Range(1, placement::kMaxDevices))
      ->required();
  cmd->add_option("--planner", a->planner, "tp, balanced, fair-copy or split")
      ->capture_default_str();
  cmd->add_option("-b,--batch", a->batch, "Sequences per batch")->capture_default_str();
  cmd->add_option(
      "--replicas", a->replicas,
      "Extra replicas per layer for fair-copy and split (default: devices - 1 for fair-copy, "
      "2 (devices - 1) for split)");
  cmd->add_option("--device-memory", a->device_memory,
                  "Memory per device in bytes (K, M, G, T suffixes): plans must fit");
  cmd->add_option("--weight-type", a->weight_type,
                  "Weight element type for weight reads and memory: f32, f16, bf16, q8_0, q4_0, "
                  "none")
      ->capture_default_str();
  cmd->add_option("--kv-type", a->kv_type, "KV element type: f32, f16, bf16, q8_0, q4_0")
      ->capture_default_str();
  cmd->add_option("--node-limit", a->node_limit, "balanced: search nodes per layer")
      ->capture_default_str();
  cmd->add_option("--json", a->json, "Write the placement to FILE (the runtime's input)");
  cmd->add_flag("--compare", a->compare, "Run every planner and print a table");
  cmd->add_flag("--markdown", a->markdown, "With --compare: a Markdown table");
  cmd->add_flag("--summary", a->summary, "Leave out the per-layer table");
  cmd->callback([a] { run(*a); });
}

}  // namespace fairkv::app
