#include "app/run_devices.h"

#include <cstdio>
#include <filesystem>

#include <fmt/format.h>

#include "app/commands.h"
#include "model/model.h"
#include "placement/planners.h"
#include "runtime/exec.h"
#include "runtime/model_placement.h"

namespace fairkv::app {

std::vector<std::string>& command_line() {
  static std::vector<std::string> args;
  return args;
}

void add_rank_options(CLI::App& cmd, DeviceOptions& o) {
  cmd.add_option("--devices", o.devices, "Devices (ranks) that share the model: tensor parallel")
      ->check(CLI::Range(0, placement::kMaxDevices))
      ->capture_default_str();
  cmd.add_option("--placement", o.placement,
                 "With --devices: tp, balanced, fair-copy, split, or a `fairkv plan --json` file")
      ->capture_default_str();
  cmd.add_option("--profile", o.profile,
                 "With --devices: per-unit loads (JSON) the planner places by (default: equal)");
  cmd.add_option("--comm", o.comm,
                 "With --devices: threads (ranks in this process) or mpi (one rank per process "
                 "under mpirun -np R)")
      ->capture_default_str();
  cmd.add_option("--comm-timeout", o.comm_timeout,
                 "With --comm mpi: seconds a collective waits for the other ranks before the job "
                 "ends, naming the ranks that do not answer")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
}

void add_device_options(CLI::App& cmd, DeviceOptions& o) {
  add_rank_options(cmd, o);
  cmd.add_flag("--rebalance", o.rebalance,
               "With --devices: re-divide shares by the kept lengths after the prefill");
  cmd.add_option("--batch-file,--batch", o.batch_file,
                 "Decode a batch of prompts together on the devices: one per line (or a .jsonl "
                 "file / folder, as eval reads them)");
}

void run_on_devices(const DeviceRun& run) {
  const DeviceOptions& d = run.dev;
  if (d.devices < 1) throw UsageError("--devices: expected at least 1");
  if (d.comm != "threads" && d.comm != "mpi")
    throw UsageError("--comm: expected threads or mpi, got '" + d.comm + "'");
  if (run.prompts.empty()) throw UsageError("no prompts to run");
  if (!placement::is_planner_name(d.placement) && !std::filesystem::exists(d.placement))
    throw UsageError("--placement: '" + d.placement +
                     "' is neither a planner (tp, balanced, fair-copy, split) nor a file");
  // Ranks copy only their slices out of the mapping: no rank reads the whole file.
  const auto m = model::Model::load(run.model, gguf::Load::Map);
  std::vector<std::vector<int32_t>> prompts;
  for (const std::string& text : run.prompts) {
    prompts.push_back(m->tokenizer.encode(text, run.add_bos && m->tokenizer.add_bos()));
    if (prompts.back().empty())
      throw UsageError(fmt::format("prompt {} has no tokens", prompts.size() - 1));
    const int64_t need = int64_t(prompts.back().size()) + run.n_predict;
    if (run.ctx_size > 0 && need > run.ctx_size)
      throw UsageError(fmt::format(
          "-c/--ctx-size: prompt {} has {} tokens; with -n {} it needs a "
          "context of {}, more than {}",
          prompts.size() - 1, prompts.back().size(), run.n_predict, need, run.ctx_size));
  }
  // The run's one cost model: the planner places by it and rebalancing re-divides by it.
  const placement::CostModel cost = runtime::run_cost_model(m->config, m->weights.layers[0].wq.type,
                                                            run.kv_type, int(prompts.size()));
  const placement::Placement p =
      runtime::resolve_placement(d.placement, d.profile, m->config, d.devices, cost);
  if (!p.note.empty()) std::fprintf(stderr, "note: %s\n", p.note.c_str());
  if (run.greedy_note) std::fprintf(stderr, "note: decoding on devices is greedy (--temp 0)\n");
  runtime::ExecOptions o;
  o.n_predict = run.n_predict;
  o.kv_type = run.kv_type;
  o.rebalance = d.rebalance;
  o.comm_timeout = d.comm_timeout;
  o.cost = cost;
  o.compression = run.compression;
  o.activations = run.activations;
  // Threads: the ranks share this machine's cores; MPI: each process has its own.
  o.threads = d.comm == "threads" ? std::max(1, run.threads / d.devices) : std::max(1, run.threads);
  // Ranks as threads share one command line and one model; processes each have their own.
  runtime::JobFingerprint fp;
  if (d.comm == "mpi") {
    fp = runtime::job_fingerprint(command_line(), m->file);
    o.fingerprint = &fp;
  }
  const runtime::ExecResult res = runtime::execute_job(d.comm, *m, p, prompts, o);
  if (res.rank != 0) return;

  for (size_t i = 0; i < res.outputs.size(); ++i) {
    if (res.outputs.size() > 1) std::printf("%s[%zu] %s", i ? "\n" : "", i, run.prompts[i].c_str());
    for (int32_t tok : res.outputs[i])
      if (!m->tokenizer.is_eog(tok)) std::fputs(m->tokenizer.decode_token(tok).c_str(), stdout);
    std::fputc('\n', stdout);
  }
  std::fflush(stdout);
  int64_t prompt_tokens = 0, decoded = 0;
  for (const auto& pr : prompts) prompt_tokens += int64_t(pr.size());
  for (const auto& out : res.outputs) decoded += std::max<int64_t>(0, int64_t(out.size()) - 1);
  auto rate = [](int64_t n, double ms) { return ms > 0 ? 1000.0 * double(n) / ms : 0.0; };
  int replicas = 0;
  for (const auto& layer : res.placement.layers)
    replicas += placement::replica_count(layer, res.placement.kv_heads);
  std::fprintf(stderr, "devices: %d (%s), placement %s, %d replicas over %zu layers%s\n", d.devices,
               d.comm.c_str(), res.placement.planner.c_str(), replicas, res.placement.layers.size(),
               d.rebalance ? ", rebalanced after the prefill" : "");
  for (size_t r = 0; r < res.weight_bytes.size(); ++r)
    std::fprintf(stderr, "rank %zu: weights %.2f MiB, KV cache %.2f MiB\n", r,
                 double(res.weight_bytes[r]) / (1 << 20), double(res.kv_bytes[r]) / (1 << 20));
  std::fprintf(stderr, "prefill: %lld tokens, %.2f ms, %.2f tok/s\n",
               static_cast<long long>(prompt_tokens), res.prefill_ms,
               rate(prompt_tokens, res.prefill_ms));
  std::fprintf(stderr, "decode: %lld tokens, %.2f ms, %.2f tok/s\n",
               static_cast<long long>(decoded), res.decode_ms, rate(decoded, res.decode_ms));
}

}  // namespace fairkv::app
