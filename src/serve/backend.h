// What the serving engine needs from the devices that run the model: per-sequence KV caches and
// one forward step over a mixed batch of decode tokens and prefill chunks.
//
// The engine decides (who runs, which chunk, who is preempted); a backend executes: SoloBackend
// on one device (model::Forward), RanksBackend on R ranks under a placement (runtime::RankForward).
// Sequences are named by the engine's ids; every call is made from the engine's thread.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "kv/compress.h"
#include "placement/cost.h"

namespace fairkv::serve {

using SeqId = uint64_t;

struct StepItem {
  SeqId seq = 0;
  std::span<const int32_t> tokens;  // one decode token, or a chunk of the prompt
  // Set on a prompt's last chunk when its policy scores tokens (and, for a block-wise policy, on
  // the last chunk of every block): the chunk's observation window is collected and the cache
  // compressed by it right after the step (the chunk holds at least the window, so the window's
  // attention sees every row held). A block-wise policy's size is then a budget, not a ratio.
  const kv::CompressionConfig* compress = nullptr;
  bool full_prompt_done = false;  // the prompt's last chunk (compress or not)
};

// Where a preempted sequence's cache went.
enum class SwapPlace { Host, File, None };  // None: no room, the cache was dropped

// What re-dividing the shares would change (Backend::estimate_replan), by the cost model: the
// step's predicted time (the sum over layers of the slowest rank's) before and after, and the
// cached bytes that would move to other ranks.
struct ReplanEstimate {
  double step_ms_now = 0, step_ms_after = 0;
  double move_bytes = 0;
};

struct RankLoad {
  size_t kv_bytes = 0;      // committed bytes of every cache on the rank
  double step_ms = 0;       // the last step's time on the rank
  double predicted_ms = 0;  // the cost model's prediction of it (0: no model)
};

class Backend {
 public:
  virtual ~Backend() = default;
  virtual int ranks() const = 0;
  virtual int64_t n_vocab() const = 0;
  // Bytes one cached row of every head of the model costs (K and V, all layers and KV heads).
  virtual size_t row_bytes() const = 0;

  // A new, empty cache for seq, whose rows may grow to max_rows per head.
  virtual void open(SeqId seq, int64_t max_rows) = 0;
  virtual void close(SeqId seq) = 0;  // frees the cache (and any swapped copy)

  // Runs the items (each sequence at most once) and returns one logits row per item, that of its
  // last token: items.size() x n_vocab floats, valid until the next call.
  virtual std::span<const float> run(std::span<const StepItem> items) = 0;

  // Rows kept by seq's cache, summed over every head (after compression, the policy's choice).
  virtual int64_t rows(SeqId seq) const = 0;
  // Bytes a new cache holding `rows` rows in every head would commit (page rounding included),
  // of one reserved for max_rows: what admission weighs a request by.
  virtual size_t bytes_for(int64_t rows, int64_t /*max_rows*/) const {
    return size_t(rows) * row_bytes();
  }
  // Bytes appending new_rows rows to every head of seq's cache would add on its fullest rank:
  // what a step is checked against the memory limit with. prompt_done: the rows end seq's
  // prompt, whose rows ranks then deal out to token slices (RanksBackend).
  virtual size_t growth_bytes(SeqId /*seq*/, int64_t new_rows, bool /*prompt_done*/) const {
    return size_t(new_rows) * row_bytes();
  }
  // Committed KV bytes per rank (what --kv-memory limits), and the largest.
  virtual std::vector<RankLoad> loads() const = 0;
  size_t max_rank_bytes() const;

  // Moves seq's cache out of the KV memory (to host memory or a spill file, as room allows) and
  // back. swap_in restores it bit for bit.
  virtual SwapPlace swap_out(SeqId seq) = 0;
  virtual void swap_in(SeqId seq) = 0;
  // Bytes a swap_out would move, and those held by swapped caches (host, file).
  virtual size_t swap_bytes_host() const = 0;
  virtual size_t swap_bytes_file() const = 0;

  // A line about the placement in force (ranks) or the device (one), for logs and stats.
  virtual std::string describe() const = 0;

  // Recomputes the shares of replicated units from the running sequences' kept lengths, weighed
  // by `cost`, and moves the caches to match (FAIRKV.md's rebalancing within holders). Returns
  // whether the placement changed; one device has nothing to rebalance.
  virtual bool replan(const placement::CostModel& /*cost*/) { return false; }
  // What replan(cost) would gain and move now; one device: nothing.
  virtual ReplanEstimate estimate_replan(const placement::CostModel& /*cost*/) const { return {}; }
};

inline size_t Backend::max_rank_bytes() const {
  size_t m = 0;
  for (const RankLoad& l : loads()) m = l.kv_bytes > m ? l.kv_bytes : m;
  return m;
}

}  // namespace fairkv::serve
