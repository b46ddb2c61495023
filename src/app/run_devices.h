// `fairkv run` on several devices (ranks): --devices, --placement, --profile, --comm, --rebalance
// and a batch of prompts (--batch-file), executed by runtime::execute_job.
#pragma once

#include <CLI/CLI.hpp>
#include <string>
#include <vector>

#include "comm/comm.h"
#include "kernels/matmul.h"
#include "kv/cache.h"
#include "kv/compress.h"

namespace fairkv::app {

struct DeviceOptions {
  int devices = 1;
  double comm_timeout = comm::Communicator::kDefaultCollectiveTimeout;
  std::string placement = "tp";  // a planner name or a `fairkv plan --json` file
  std::string profile;           // per-unit loads the planners place by
  std::string comm = "threads";  // threads (ranks in this process) or mpi (ranks under mpirun)
  bool rebalance = false;
  std::string batch_file;  // prompts decoded together, one per line (or .jsonl / folder)

  // Whether the run goes through the runtime rather than the single-device engine.
  bool wanted() const { return devices != 1 || comm != "threads" || !batch_file.empty(); }
};

// --devices, --placement, --profile, --comm and --comm-timeout: the ranks a model runs on.
void add_rank_options(CLI::App& cmd, DeviceOptions& o);
// add_rank_options, and run's --rebalance and --batch-file.
void add_device_options(CLI::App& cmd, DeviceOptions& o);

struct DeviceRun {
  std::string model;
  std::vector<std::string> prompts;  // texts, in batch order
  bool add_bos = true;
  int n_predict = 64;
  int64_t ctx_size = 0;  // -c: prompt + continuation must fit (0: no limit)
  int threads = 1;       // of the machine; the ranks of --comm threads share them
  kv::KvTypes kv_type = kv::KvType::F32;
  const kv::CompressionConfig* compression = nullptr;  // null: keep every token
  kernels::Activations activations = kernels::Activations::Float32;
  DeviceOptions dev;
  bool greedy_note = false;  // say that --temp's default was overridden by greedy decoding
};

// Greedy generation of every prompt under the placement. Rank 0 prints the continuations on
// stdout and the timings and per-rank memory on stderr; the other ranks of an MPI job print
// nothing. Throws (std::invalid_argument, comm::CommError, gguf::Error) with a message that
// names the option or file at fault.
void run_on_devices(const DeviceRun& run);

}  // namespace fairkv::app
