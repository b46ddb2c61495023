// One rank's side of RanksBackend: its shard of the model, its RankForward and the caches of the
// open sequences. Every rank (rank 0 included) decodes the same command bytes and executes them
// in the same order, so the collectives inside line up; the results (logits, rows, where a swap
// went, the per-rank reports) come out the same on every rank.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <span>
#include <vector>

#include "comm/comm.h"
#include "kernels/threadpool.h"
#include "kv/cache_swap.h"
#include "model/model.h"
#include "placement/placement.h"
#include "runtime/rank_forward.h"
#include "runtime/shard.h"
#include "serve/backend.h"
#include "serve/ranks_backend.h"
#include "serve/ranks_wire.h"

namespace fairkv::serve {

enum class Op : uint8_t { Open, Close, Run, Rows, SwapOut, SwapIn, Replan, Shutdown };

// The commands' bytes, built on rank 0 (run_command resolves the items' configs).
std::vector<uint8_t> seq_command(Op op, SeqId seq);
// Open: the sequence's rows per head at most (what its stores reserve).
std::vector<uint8_t> open_command(SeqId seq, int64_t max_rows);
std::vector<uint8_t> run_command(std::span<const StepItem> items);
std::vector<uint8_t> replan_command(const placement::CostModel& cost);
std::vector<uint8_t> shutdown_command();

// What a rank reports after each command that changed its caches, gathered on every rank.
struct RankReport {
  double kv_bytes = 0;    // committed bytes of its live caches (what --kv-memory limits)
  double host_bytes = 0;  // its swapped-out copies in host memory
  double file_bytes = 0;  // and in spill files
  double step_ms = 0;     // its last run
  // [layer * H + head]: rows of the running sequences it keeps and that count towards the
  // unit's length (runtime::counts), so that the ranks' sum is each unit's total.
  std::vector<double> unit_rows;
  // [i * L * H + layer * H + head] for the i-th running sequence (RankWorker::reported()): the
  // rows of the store it appends new rows to, -1 where it appends none, so that rank 0 can say
  // what a step's rows will commit on every rank (RanksBackend::growth_bytes).
  std::vector<double> append_rows;
};

class RankWorker {
 public:
  // Shards the model for this rank (no collective). The pool runs this rank's kernels.
  RankWorker(comm::Communicator& comm, const model::Model& m, const placement::Placement& p,
             const RanksOptions& o, kernels::ThreadPool& pool);

  // Rank 0: broadcasts *msg and executes it; the others (msg null): wait for rank 0's next
  // command, however long the engine idles, and execute it. Returns false after Shutdown.
  bool step(std::vector<uint8_t>* msg);

  // Results of the last command of each kind.
  std::span<const float> logits() const { return logits_; }
  int64_t rows_result() const { return rows_; }
  SwapPlace swap_result() const { return swap_; }
  bool replanned() const { return replanned_; }
  const std::vector<RankReport>& reports() const { return reports_; }
  // The running sequences in the order of RankReport::append_rows.
  const std::vector<SeqId>& reported() const { return reported_; }
  int running() const { return running_; }

  struct Seq {
    std::unique_ptr<runtime::RankSequence> rs;
    bool prompt_open = true;  // no chunk with full_prompt_done yet (or dropped since)
    std::optional<kv::SwappedCache> swapped;  // in host memory, bit for bit
    placement::Placement swapped_under;       // the shares that laid out the swapped rows
    int64_t swapped_rows = 0;
    int64_t max_rows = 0;  // per head, what its stores reserve
  };
  // Rank 0 checks the engine's calls against these before sending them.
  const Seq* find(SeqId seq) const;
  bool slot_free() const;
  const runtime::RankForward& forward() const { return *fwd_; }

 private:
  void open(SeqId seq, int64_t max_rows);
  // Reserves an address range of s.max_rows rows for each store of a unit this rank holds
  // (kv::HeadStore::reserve_virtual): they grow in place and commit pages as rows arrive.
  void reserve(Seq& s);
  void run(wire::Reader& in);
  void swap_out(Seq& s);
  void swap_in(Seq& s);
  void replan(const placement::CostModel& cost);
  // Sums every rank's unit lengths of s (a collective).
  int64_t kept_rows(Seq& s);
  // Gathers every rank's report (a collective).
  void publish();
  int choose_slot() const;
  std::vector<runtime::RankSequence*> running_seqs(std::vector<char>* prompt_open);

  comm::Communicator& comm_;
  const model::Model& m_;
  RanksOptions o_;
  runtime::ShardedWeights shard_;
  std::unique_ptr<runtime::RankForward> fwd_;
  std::map<SeqId, Seq> seqs_;  // ordered: every rank walks them in the same order
  std::vector<char> slot_used_;
  std::vector<std::vector<std::vector<runtime::UnitPart>>> parts_;  // of fwd_'s placement
  bool has_token_slices_ = false;
  std::span<const float> logits_;
  int64_t rows_ = 0;
  SwapPlace swap_ = SwapPlace::None;
  bool replanned_ = false;
  double step_ms_ = 0;
  std::vector<RankReport> reports_;
  std::vector<SeqId> reported_;
  int running_ = 0;
};

}  // namespace fairkv::serve
