// Options of the commands that run the serving engine (batch, serve): the engine's limits
// (--parallel, --batch-size, --ubatch-size, --ctx-size, --kv-memory, --queue-size, swap space),
// the requests' defaults (-n, sampling), and the backend (one device, or --devices R ranks).
#pragma once

#include <CLI/CLI.hpp>
#include <cstddef>
#include <memory>
#include <string>

#include "app/engine_options.h"
#include "app/kv_options.h"
#include "app/run_devices.h"
#include "app/sampler_options.h"
#include "kernels/threadpool.h"
#include "model/model.h"
#include "model/sampler.h"
#include "serve/backend.h"
#include "serve/engine.h"

namespace fairkv::app {

struct ServeOptions {
  int parallel = 4;
  int64_t batch_size = 512, ubatch_size = 256, ctx_size = 0;
  std::string kv_memory = "0", swap_space = "1G", swap_dir;
  size_t queue_size = 256;
  bool fast_batching = false;  // --no-batch-invariance
  // --reduction: how ranks sum a layer's output (runtime::Reduction): "canonical" (one device's
  // order, the same bits on any R) or "partial" (tensor parallelism's all-reduce).
  std::string reduction = "canonical";
  int n_predict = 128;
  // Ranks: --devices R under --placement, ranks as threads or the processes of an mpirun job.
  DeviceOptions dev;
  bool replan = true;  // dynamic FairKV: re-divide shares as the running batch changes
  SamplerOptions sampling;

  serve::Request request_defaults() const;
  serve::EngineOptions engine_options(const KvOptions& kv) const;
  // The backend the options ask for, on the pool (threads) of this process (one device), or R
  // ranks. eo gets the cost model the engine re-plans by. Throws UsageError naming the option.
  std::unique_ptr<serve::Backend> make_backend(const model::Model& m, kernels::ThreadPool& pool,
                                               const EngineOptions& e, const KvOptions& kv,
                                               serve::EngineOptions& eo) const;
  // With --comm mpi on a rank other than 0: follows rank 0 until it shuts down and returns true
  // (the command then ends); false on rank 0 and without MPI.
  bool follow_if_not_rank0(const model::Model& m, const EngineOptions& e) const;
};

void add_serve_options(CLI::App& cmd, ServeOptions& o);

// "512M", "2G", "1.5GiB", "300000" (bytes): a byte count; throws std::invalid_argument naming
// `option` and what was expected.
size_t parse_bytes(const std::string& text, const std::string& option);

}  // namespace fairkv::app
