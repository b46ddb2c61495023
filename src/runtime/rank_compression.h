// KV compression when a unit's heads sit on other ranks than its neighbours.
//
// Compression runs on the ranks that own each unit: during the prefill every rank scores the
// units whose prompt rows it stores (from its own window probabilities). Policies that choose
// across heads (Ada-KV's layer-wide top-k, PyramidKV's and CAKE's budgets) then need every head's
// scores: they are summed over ranks (each head's come from exactly one rank, so the sum is the
// value itself, bit for bit), every rank runs the same selection, and each rank keeps the
// selected rows of the stores it holds. A unit split by query heads (tp's replication) first
// assembles its group's probabilities from the holders. Task-KV's semantic vectors come from the
// values of the rank that scored each unit (it holds the unit's rows), summed over ranks as the
// scores are. DefensiveKV's CriticalKV value norms of a unit need only its own values and the W_o
// columns of its own group's query heads: the rank that observed each query head (it projects
// the unit, so its shard holds those columns, and it holds the unit's rows) sums that head's
// |W_o^q v_j| over W_o's rows; a query-sliced unit's per-head sums are gathered by the first
// holder, which finishes the norms as one device does (kv::mean_value_norms); the norms then
// travel with the scores. A block-wise policy (EpiCache) applies after every block: the heads
// then hold different numbers of rows. The result equals the single-device compression exactly.
#pragma once

#include <memory>
#include <mutex>
#include <span>
#include <vector>

#include "comm/comm.h"
#include "kv/compress.h"
#include "model/config.h"
#include "runtime/rank_forward.h"
#include "runtime/shard.h"

namespace fairkv::runtime {

class RankCompression {
 public:
  // config must be resolved (CompressionConfig::resolve()); n_items: sequences of the prefill.
  RankCompression(const kv::CompressionConfig& config, const model::ModelConfig& c, size_t n_items);
  // Pass to RankForward::run for the prefill (null when the policy reads no attention).
  const RankWindowObserver* observer() const;
  // After the prefill, on every rank (a collective): selects and keeps the rows. shard: this
  // rank's weights (CriticalKV's value norms read its W_o columns); items[i] is the sequence of
  // the prefill's item i, n_prompt[i] its prompt length.
  void apply(comm::Communicator& comm, const ShardedWeights& shard,
             std::span<RankSequence* const> items, std::span<const int64_t> n_prompt);

 private:
  struct Slice {
    int layer, head, q0, q1;
    int64_t window, n;
    std::vector<float> probs;
  };
  kv::CompressionConfig config_;
  const model::ModelConfig& c_;
  RankWindowObserver observer_;
  std::mutex mu_;
  std::vector<std::vector<kv::HeadScores>> scores_;  // [item][layer * H + head]
  std::vector<std::vector<char>> scored_;            // [item][layer * H + head]: scored here
  std::vector<std::vector<Slice>> slices_;           // [item]: query slices, scored after merging
};

}  // namespace fairkv::runtime
