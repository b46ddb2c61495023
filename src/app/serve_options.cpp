#include "app/serve_options.h"

#include <cctype>
#include <cmath>
#include <stdexcept>

#include <fmt/format.h>

#include "app/commands.h"
#include "comm/comm.h"
#include "runtime/model_placement.h"
#include "serve/ranks_backend.h"
#include "serve/solo_backend.h"

namespace fairkv::app {

size_t parse_bytes(const std::string& text, const std::string& option) {
  const std::string expected = "a size such as 512M, 2G or a byte count";
  size_t used = 0;
  double v = -1;
  try {
    v = std::stod(text, &used);
  } catch (const std::exception&) {
    used = 0;
  }
  std::string unit = text.substr(used);
  for (char& c : unit) c = char(std::toupper(static_cast<unsigned char>(c)));
  if (unit.ends_with("IB"))
    unit.resize(unit.size() - 2);
  else if (unit.ends_with("B"))
    unit.pop_back();
  double scale = 0;
  if (unit.empty())
    scale = 1;
  else if (unit == "K")
    scale = 1024.0;
  else if (unit == "M")
    scale = 1024.0 * 1024;
  else if (unit == "G")
    scale = 1024.0 * 1024 * 1024;
  else if (unit == "T")
    scale = 1024.0 * 1024 * 1024 * 1024;
  if (used == 0 || scale == 0 || !(v >= 0) || !std::isfinite(v * scale) || v * scale > 1e18)
    throw std::invalid_argument(fmt::format("{}: expected {}, got '{}'", option, expected, text));
  return size_t(v * scale);
}

serve::Request ServeOptions::request_defaults() const {
  serve::Request r;
  r.max_tokens = n_predict;
  r.sampling = sampling.resolve();
  return r;
}

serve::EngineOptions ServeOptions::engine_options(const KvOptions& kv) const {
  serve::EngineOptions eo;
  eo.parallel = parallel;
  eo.step_tokens = batch_size;
  eo.prefill_chunk = ubatch_size;
  eo.ctx_size = ctx_size;
  eo.kv_memory = parse_bytes(kv_memory, "--kv-memory");
  eo.queue_limit = queue_size;
  eo.compression = kv.config();
  return eo;
}

std::unique_ptr<serve::Backend> ServeOptions::make_backend(const model::Model& m,
                                                           kernels::ThreadPool& pool,
                                                           const EngineOptions& e,
                                                           const KvOptions& kv,
                                                           serve::EngineOptions& eo) const {
  const size_t swap = parse_bytes(swap_space, "--swap-space");
  if (dev.devices < 1) throw UsageError("--devices: expected at least 1");
  if (dev.comm != "threads" && dev.comm != "mpi")
    throw UsageError("--comm: expected threads or mpi, got '" + dev.comm + "'");
  // Each reserved store costs up to 4 of the process's map entries (vm.max_map_count is 65530
  // by default): beyond that, ordinary stores. Ranks as threads share one process, and each
  // may hold every unit.
  const int64_t stores =
      int64_t(m.config.n_layers) * m.config.n_kv_heads * serve::Engine::open_limit(parallel);
  const int64_t stores_per_process = stores * (dev.comm == "threads" ? dev.devices : 1);
  try {  // a head size the cache types cannot hold is refused now, not at the first request
    kv::check_kv_types(kv.kv_type(), m.config.head_dim);
  } catch (const std::invalid_argument& e) {
    throw UsageError(e.what());
  }
  if (dev.devices == 1 && dev.comm == "threads") {
    serve::SoloOptions so;
    so.kv_type = kv.kv_type();
    so.activations = e.act();
    so.batch_invariant = !fast_batching;
    so.reserve_address_space = stores_per_process * 4 < 48000;
    so.swap_host_bytes = swap;
    so.swap_dir = swap_dir;
    so.swap_file_bytes = swap_dir.empty() ? 0 : swap * 4;
    return std::make_unique<serve::SoloBackend>(m, pool, so);
  }
  const placement::CostModel cost = runtime::run_cost_model(m.config, m.weights.layers[0].wq.type,
                                                            kv.kv_type(), std::max(1, parallel));
  const placement::Placement p =
      runtime::resolve_placement(dev.placement, dev.profile, m.config, dev.devices, cost);
  if (!p.note.empty()) std::fprintf(stderr, "note: %s\n", p.note.c_str());
  serve::RanksOptions ro;
  ro.comm = dev.comm;
  ro.threads = dev.comm == "threads" ? std::max(1, e.n_threads() / dev.devices) : e.n_threads();
  ro.kv_type = kv.kv_type();
  ro.activations = e.act();
  ro.batching = fast_batching ? kernels::Batching::Fastest : kernels::Batching::Invariant;
  try {
    ro.reduction = runtime::reduction_from_name(reduction, "--reduction");
  } catch (const std::invalid_argument& e) {
    throw UsageError(e.what());
  }
  ro.n_slots = serve::Engine::open_limit(parallel);
  ro.reserve_address_space = stores_per_process * 4 < 48000;
  ro.cost = cost;
  ro.host_swap_bytes = swap;
  ro.swap_dir = swap_dir;
  ro.file_swap_bytes = swap_dir.empty() ? 0 : swap * 4;
  ro.comm_timeout = dev.comm_timeout;
  if (replan) eo.replan_cost = cost;
  return std::make_unique<serve::RanksBackend>(m, p, ro);
}

bool ServeOptions::follow_if_not_rank0(const model::Model& m, const EngineOptions& e) const {
  if (dev.comm != "mpi" || !comm::launched_by_mpirun()) return false;
  if (comm::launch_rank() <= 0) return false;
  serve::follow_rank0(m, e.n_threads());
  return true;
}

void add_serve_options(CLI::App& cmd, ServeOptions& o) {
  cmd.add_option("--parallel", o.parallel, "Requests running at once")->capture_default_str();
  cmd.add_option("-b,--batch-size", o.batch_size,
                 "Tokens per step at most: decode rows and prompt chunks")
      ->capture_default_str();
  cmd.add_option("--ubatch-size", o.ubatch_size, "Prompt tokens per chunk (chunked prefill)")
      ->capture_default_str();
  cmd.add_option("-c,--ctx-size", o.ctx_size,
                 "Tokens per request, prompt and output (0: the model's training context)")
      ->capture_default_str();
  cmd.add_option("--kv-memory", o.kv_memory,
                 "KV cache memory per rank, e.g. 512M (0: no limit); requests wait for room and "
                 "running ones are preempted when it runs out")
      ->capture_default_str();
  cmd.add_option("--queue-size", o.queue_size, "Waiting requests beyond which new ones are refused")
      ->capture_default_str();
  cmd.add_option("--swap-space", o.swap_space,
                 "Host memory for the caches of preempted requests (beyond it: recomputed)")
      ->capture_default_str();
  cmd.add_option("--swap-dir", o.swap_dir,
                 "Folder for spill files of preempted caches when host swap space is full");
  cmd.add_flag("--no-batch-invariance", o.fast_batching,
               "Faster batched decode whose rows may differ by float rounding with the batch "
               "(a seeded request's output may then depend on its neighbours)");
  cmd.add_option("--reduction", o.reduction,
                 "With --devices: 'canonical' sums every layer's output in one device's order, so "
                 "R ranks give one device's bits under any placement, token slices included; "
                 "'partial' all-reduces the ranks' partial sums and merges token slices by "
                 "log-sum-exp (tensor parallelism: fewer bytes moved, outputs may differ with R "
                 "by float rounding)")
      ->capture_default_str();
  cmd.add_option("-n,--n-predict", o.n_predict, "Default max_tokens of a request")
      ->capture_default_str();
  add_rank_options(cmd, o.dev);
  cmd.add_flag("!--no-replan", o.replan,
               "With --devices: keep the shares fixed instead of re-dividing them as requests "
               "join and leave (dynamic FairKV)");
  add_sampler_options(cmd, o.sampling);  // the requests' defaults
}

}  // namespace fairkv::app
