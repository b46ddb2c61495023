// Greedy generation of a batch of prompts under a placement: every rank runs its RankForward,
// the prompts are prefilled together, the token slices are dealt out (after rebalancing, when
// asked), then the batch decodes step by step. Sequences of different lengths share every step.
#pragma once

#include <cstdint>
#include <functional>
#include <optional>
#include <span>
#include <vector>

#include "comm/comm.h"
#include "kernels/matmul.h"
#include "kernels/threadpool.h"
#include "kv/cache.h"
#include "kv/compress.h"
#include "model/model.h"
#include "placement/cost.h"
#include "placement/placement.h"
#include "runtime/job_fingerprint.h"
#include "runtime/rank_forward.h"

namespace fairkv::runtime {

struct ExecOptions {
  int n_predict = 16;  // per sequence; a sequence also stops after an end-of-generation token
  kv::KvTypes kv_type = kv::KvType::F32;
  bool rebalance = false;  // recompute shares from the kept lengths after the prefill
  // The run's cost model (run_cost_model), which rebalancing weighs shares by; rebalance needs it.
  std::optional<placement::CostModel> cost;
  bool keep_logits = false;
  int threads = 1;  // per rank, for execute_threads
  kernels::Activations activations = kernels::Activations::Float32;  // see model::Forward
  // Compression of the prompts' caches (resolved here), run by the ranks that own each unit; the
  // selection equals the single-device one. Null: keep every token.
  const kv::CompressionConfig* compression = nullptr;
  // Runs on every rank after the prefill and compression, before rebalancing and redistribution,
  // while each unit's rows still sit whole on one rank (a token-sliced unit's on its tail).
  std::function<void(comm::Communicator&, RankForward&, std::span<RankSequence* const>)>
      after_prefill;
  // What this process was given; execute_job compares it across the ranks of an MPI job before
  // anything else (runtime/job_fingerprint.h). Null: not compared.
  const JobFingerprint* fingerprint = nullptr;
  // Seconds a collective of an MPI job may wait before the job ends naming the silent ranks.
  double comm_timeout = comm::Communicator::kDefaultCollectiveTimeout;
};

struct ExecResult {
  std::vector<std::vector<int32_t>> outputs;  // per prompt
  // keep_logits: per prompt, the logits row each output token was chosen from.
  std::vector<std::vector<float>> logits;
  placement::Placement placement;    // the shares used while decoding (rebalanced or not)
  std::vector<size_t> weight_bytes;  // per rank: its shard's slices
  std::vector<size_t> kv_bytes;      // per rank: its caches after the last step
  double prefill_ms = 0, decode_ms = 0;
  int64_t decode_steps = 0;
  int rank = 0;  // the rank that returned this result (mpi: this process's)
};

// The shares rebalance_layer gives every layer for the mean kept lengths (tokens per sequence),
// weighed by the run's cost model.
placement::Placement rebalanced(const placement::Placement& p, const model::ModelConfig& c,
                                const std::vector<std::vector<int64_t>>& lengths,
                                const placement::CostModel& cost);

// One rank's part: every rank calls it with the same arguments and gets the same outputs.
ExecResult execute(comm::Communicator& comm, const model::Model& m, const placement::Placement& p,
                   const std::vector<std::vector<int32_t>>& prompts, const ExecOptions& opt,
                   kernels::ThreadPool& pool);

// All p.devices ranks as threads of this process (opt.threads pool threads each).
ExecResult execute_threads(const model::Model& m, const placement::Placement& p,
                           const std::vector<std::vector<int32_t>>& prompts,
                           const ExecOptions& opt);

// The job as comm_kind runs it: "threads" (all ranks in this process, as execute_threads) or
// "mpi" (this process is one rank of the job mpirun started, which must have p.devices ranks;
// a failing rank ends the whole job). Every rank returns the same outputs.
ExecResult execute_job(const std::string& comm_kind, const model::Model& m,
                       const placement::Placement& p,
                       const std::vector<std::vector<int32_t>>& prompts, const ExecOptions& opt);

}  // namespace fairkv::runtime
