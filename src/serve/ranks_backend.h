// The serving engine's backend on R ranks under a placement (runtime::RankForward).
//
// Rank 0 is the engine's side: every Backend call made there becomes a command that rank 0
// broadcasts, and every rank executes the commands in the same order on its own RankForward and
// its own per-sequence caches, so that their collectives line up. With "threads" the other ranks
// are threads that the constructor starts; with "mpi" they are the other processes of the mpirun
// job, which call follow_rank0 instead of running the engine.
//
// What every rank does with a command (rank_worker.h):
//  - open gives the sequence the lowest free batch slot, kept until close: RankForward's
//    batch-slice ownership follows the slot, so it never changes while the sequence lives;
//  - run executes one step; a prompt's rows stay whole on the rank that appends them until its
//    last chunk, whose observation window is collected where each unit's rows sit and compressed
//    after the step by the sequence's own config (runtime/rank_compression.h); token slices are
//    then dealt out (RankForward::redistribute), as runtime::execute does after its prefill;
//  - swap_out moves each rank's stores of the sequence to host memory (kv/cache_swap.h);
//  - replan recomputes the shares from the kept lengths (runtime::rebalanced) and moves rows.
#pragma once

#include <cstdint>
#include <limits>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <thread>
#include <vector>

#include "comm/comm.h"
#include "comm/comm_threads.h"
#include "kernels/matmul.h"
#include "kernels/threadpool.h"
#include "kv/cache.h"
#include "model/model.h"
#include "placement/cost.h"
#include "placement/placement.h"
#include "runtime/rank_forward.h"
#include "serve/backend.h"

namespace fairkv::serve {

class RankWorker;

struct RanksOptions {
  std::string comm = "threads";  // "threads": ranks as threads here; "mpi": the mpirun job's
  int threads = 1;               // pool threads per rank
  kv::KvTypes kv_type = kv::KvType::F32;
  kernels::Activations activations = kernels::Activations::Float32;  // see model::Forward
  // Invariant: each sequence's results independent of the others in its step (see
  // runtime::RankForward), so that a request's output does not depend on its neighbours.
  kernels::Batching batching = kernels::Batching::Invariant;
  // Canonical: every float as one device computes it, on any R under any placement but token
  // slices (runtime::Reduction), so a request's output does not depend on the rank count either.
  runtime::Reduction reduction = runtime::Reduction::Canonical;
  // Batch slots: the most sequences open at once, swapped out or not (a sequence keeps its slot
  // from open to close). The engine's maximum number of concurrent sequences.
  int n_slots = 1;
  // As SoloOptions's: each rank's stores of a sequence sit on address ranges reserved for its
  // max rows, committed as rows arrive (kv::HeadStore::reserve_virtual), and committed bytes are
  // what --kv-memory counts on every rank. Off: ordinary stores that grow by a quarter.
  bool reserve_address_space = true;
  // loads()'s predicted step time per rank; none: predicted_ms stays 0.
  std::optional<placement::CostModel> cost;
  // The time of one load of `cost` (runtime::Calibration::ms_per_load); 0: FAIRKV.md's model,
  // the bytes a rank reads over bandwidth_gbs.
  double ms_per_load = 0;
  double bandwidth_gbs = 20;
  // Bytes swapped-out caches may hold in host memory, all ranks together; a swap_out beyond it
  // drops the cache instead (SwapPlace::None).
  size_t host_swap_bytes = std::numeric_limits<size_t>::max();
  // Beyond it, spill files in swap_dir (on every rank's host), up to file_swap_bytes in all.
  std::string swap_dir;
  size_t file_swap_bytes = 0;
  // mpi: seconds a collective inside a command may wait (ranks waiting for rank 0's next
  // command wait as long as the engine idles).
  double comm_timeout = comm::Communicator::kDefaultCollectiveTimeout;
};

class RanksBackend final : public Backend {
 public:
  // Shards the model for p.devices ranks and starts them ("threads"), or joins the mpirun job as
  // its rank 0 ("mpi": the job must have p.devices ranks, the others in follow_rank0). Throws
  // std::invalid_argument when the placement does not fit the model or o.n_slots < 1.
  RanksBackend(const model::Model& m, const placement::Placement& p, const RanksOptions& o);
  ~RanksBackend() override;  // shuts the other ranks down
  RanksBackend(const RanksBackend&) = delete;
  RanksBackend& operator=(const RanksBackend&) = delete;

  int ranks() const override { return R_; }
  int64_t n_vocab() const override;
  size_t row_bytes() const override;
  // Throws std::invalid_argument when seq is open already or every slot is taken. Each rank
  // reserves max_rows rows for every store of seq in a unit it holds (0: unknown, ordinary
  // stores).
  void open(SeqId seq, int64_t max_rows) override;
  void close(SeqId seq) override;
  std::span<const float> run(std::span<const StepItem> items) override;
  // A collective. A swapped-out sequence: the rows it had; a dropped one: 0.
  int64_t rows(SeqId seq) const override;
  // As of the last command that changed a cache: kv_bytes counts each rank's committed bytes
  // (kv::SequenceCache::committed_bytes(): the pages its rows touch on reserved ranges), step_ms
  // the last run() on each rank.
  std::vector<RankLoad> loads() const override;
  // The most one rank would commit for a new sequence holding `rows` rows per head, under the
  // placement in force: whole units, query slices, batch slices (the sequence may be the
  // part's) and a token slice's tail (which appends every new row) hold them all, the other
  // token slices their share; pages counted as reserved stores of max_rows rows commit them.
  size_t bytes_for(int64_t rows, int64_t max_rows) const override;
  // The most of growth_by_rank.
  size_t growth_bytes(SeqId seq, int64_t new_rows, bool prompt_done) const override;
  // Per rank, from every rank's reported store sizes of seq: the pages its appending stores
  // would add (exact), and with prompt_done, those of the token slices that the prompt's rows
  // are dealt out to after the step, uncompressed (compression only drops rows), beside the
  // tail that held them all.
  std::vector<size_t> growth_by_rank(SeqId seq, int64_t new_rows, bool prompt_done) const;
  // Host (a copy in this process's memory on every rank) or None (over host_swap_bytes: the
  // caches are cleared, and the sequence stays open, empty, to be recomputed from its tokens).
  SwapPlace swap_out(SeqId seq) override;
  void swap_in(SeqId seq) override;
  size_t swap_bytes_host() const override;
  size_t swap_bytes_file() const override;
  std::string describe() const override;
  bool replan(const placement::CostModel& cost) override;
  // From the gathered lengths (no collective): each layer's shares as replan would re-divide them
  // (placement::rebalance_layer on the running sequences' mean kept lengths).
  ReplanEstimate estimate_replan(const placement::CostModel& cost) const override;

  // The shares in force (they change with replan).
  const placement::Placement& placement() const;

 private:
  // Bytes a store of `rows` rows commits (reserved for max_rows, or ordinary).
  size_t store_bytes(int64_t rows, int64_t max_rows) const;
  // Broadcasts a command and executes it here. A failure inside the ranks' collectives breaks
  // the backend: later calls throw.
  void command(std::vector<uint8_t> msg) const;
  void check_usable() const;

  const model::Model& m_;
  RanksOptions o_;
  int R_ = 1;
  std::unique_ptr<comm::ThreadGroup> group_;  // threads
  std::unique_ptr<comm::Communicator> mpi_;   // mpi
  std::vector<std::thread> followers_;
  std::unique_ptr<kernels::ThreadPool> pool_;
  std::unique_ptr<RankWorker> worker_;  // rank 0's
  mutable std::string broken_;          // why the backend can no longer run, once it cannot
  int replans_ = 0;
};

// For the ranks != 0 of an mpirun job whose rank 0 constructs RanksBackend("mpi"): loads this
// rank's part (placement and options come from rank 0) and executes rank 0's commands until
// rank 0's backend shuts down. threads: this rank's pool. A failure ends the whole job.
void follow_rank0(const model::Model& m, int threads = 1);

}  // namespace fairkv::serve
