// Greedy generation of a batch of prompts under a placement: every rank runs its RankForward,
// the prompts are prefilled together, the token slices are dealt out (after rebalancing, when
// asked), then the batch decodes step by step. Sequences of different lengths share every step.
#pragma once

#include <cstdint>
#include <functional>
#include <span>
#include <vector>

#include "kernels/matmul.h"
#include "kernels/threadpool.h"
#include "kv/cache.h"
#include "kv/compress.h"
#include "model/model.h"
#include "placement/placement.h"
#include "placement/profile.h"
#include "runtime/comm.h"
#include "runtime/rank_forward.h"

namespace fairkv::runtime {

struct ExecOptions {
  int n_predict = 16;  // per sequence; a sequence also stops after an end-of-generation token
  kv::KvType kv_type = kv::KvType::F32;
  bool rebalance = false;  // recompute shares from the kept lengths after the prefill
  bool keep_logits = false;
  int threads = 1;  // per rank, for execute_threads
  kernels::Activations activations = kernels::Activations::Float32;  // see model::Forward
  // Compression of the prompts' caches (resolved here), run by the ranks that own each unit; the
  // selection equals the single-device one. Null: keep every token.
  const kv::CompressionConfig* compression = nullptr;
  // Runs on every rank after the prefill and compression, before rebalancing and redistribution:
  // each unit's
  // rows then sit whole on one rank (token slices on their tail), where compression can run.
  std::function<void(Communicator&, RankForward&, std::span<RankSequence* const>)> after_prefill;
};

struct ExecResult {
  std::vector<std::vector<int32_t>> outputs;  // per prompt
  // keep_logits: per prompt, the logits row each output token was chosen from.
  std::vector<std::vector<float>> logits;
  placement::Placement placement;         // the shares used while decoding (rebalanced or not)
  std::vector<kv::Selection> selections;  // compression: kept rows per prompt
  std::vector<size_t> weight_bytes;       // per rank: its shard's slices
  std::vector<size_t> kv_bytes;           // per rank: its caches after the last step
  double prefill_ms = 0, decode_ms = 0;
  int64_t decode_steps = 0;
  int rank = 0;  // the rank that returned this result (mpi: this process's)
};

// A profile with the model's shape (layers, heads, sizes) and every unit at `tokens`.
placement::Profile model_profile(const model::ModelConfig& c, double tokens = 1.0);

// Throws std::invalid_argument, prefixed with `where`, unless the profile has the model's shape
// (layers, query and KV heads, head size).
void check_profile_shape(const placement::Profile& prof, const model::ModelConfig& c,
                         const std::string& where);

// The placement `what` names for the model: a planner name (tp, balanced, fair-copy, split),
// planned on the fly from the profile at profile_path (when empty: every unit equally long, so
// only tp's layout matters), or the path of a `fairkv plan --json` file. Throws
// std::invalid_argument naming the file and what does not match the model or the devices.
placement::Placement resolve_placement(const std::string& what, const std::string& profile_path,
                                       const model::ModelConfig& c, int devices, int batch);

// The shares rebalance_layer gives every layer for the mean kept lengths (tokens per sequence).
placement::Placement rebalanced(const placement::Placement& p, const model::ModelConfig& c,
                                const std::vector<std::vector<int64_t>>& lengths,
                                kernels::DType weight_type, kv::KvType kv_type);

// One rank's part: every rank calls it with the same arguments and gets the same outputs.
ExecResult execute(Communicator& comm, const model::Model& m, const placement::Placement& p,
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
