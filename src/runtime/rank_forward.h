// One rank's part of a tensor-parallel forward pass that executes a placement.
//
// Per layer a rank serves the shares the placement gives it: whole units, batch slices (some of
// the sequences: Fair-Copying), token slices (part of every sequence's cached tokens, merged across
// ranks by log-sum-exp, or folded in one device's order) and query slices (tp's replication when
// devices outnumber KV heads). The attention and MLP partial outputs meet in an all-reduce, as in
// standard tensor parallelism, so the replicated activations stay identical on every rank and
// greedy outputs equal the single-device engine's up to float summation order; or, with
// Reduction::Canonical, each rank computes whole rows of Wo and of the down projection over the
// gathered attention and SwiGLU rows, so that every float is the single-device engine's. The layer
// is a composition of the same steps as model::Forward's (model/layer_steps.h) over the rank's
// slices of the weights, with the collectives between them.
//
// The pass is cut by job: rank_forward.cpp (this class's layer loop, its logits and the timed
// collectives), rank_projection.cpp (the projections of the units it projects),
// rank_attention.cpp (the attention phases and the merge of token slices), redistribute.cpp
// (moving cached rows when shares change), unit_parts.h (who serves and stores what).
//
// Rules that every rank applies the same way (unit_parts.h), so no extra messages are needed:
//  - batch slice: the sequence in slot i of n is served by the part whose [offset, offset+share)
//    holds (i + 0.5) / n, during prefill and decode alike;
//  - token slice: new rows (prompt and decode tokens) are appended by the unit's last part in
//    device order (its tail); redistribute() then gives every part its slice of the rows. The
//    tail alone reads the unit's weights: it projects the queries, which reach the other parts in
//    an all-reduce, and applies Wo to the parts' outputs merged by log-sum-exp (their lses
//    all-gathered, the scaled outputs all-reduced) or, under the canonical reduction, folded
//    from the partials of their 256-row blocks (all-gathered); slices then start at multiples of
//    256 rows (kv::kCanonicalRows). The other parts read only their KV (placement/cost.h counts
//    it so);
//  - query slice: every holder keeps the unit's whole KV and attends its query heads.
#pragma once

#include <cstdint>
#include <functional>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include "comm/comm.h"
#include "kernels/matmul.h"
#include "kernels/threadpool.h"
#include "kv/attention.h"
#include "kv/cache.h"
#include "model/config.h"
#include "model/layer_steps.h"
#include "model/weights.h"
#include "placement/placement.h"
#include "runtime/shard.h"
#include "runtime/unit_parts.h"

namespace fairkv::runtime {

// A sequence's cache on one rank: the stores of the units it serves (the others stay empty).
struct RankSequence {
  RankSequence(const model::ModelConfig& c, kv::KvTypes type, int slot);
  kv::SequenceCache cache;
  int slot = 0;  // the sequence's index in the batch, which decides batch-slice ownership
};

struct RankItem {
  RankSequence* seq = nullptr;
  std::span<const int32_t> tokens;
};

// Sees a prefill's observation window on the rank that stores each unit's prompt rows: for
// sequence item `item` of the batch, unit (layer, kv_head), the softmax probabilities of the last
// `window` tokens over the unit's n rows, for the query heads [q0, q1) of the group this rank
// serves: (q1 - q0) x window x n floats, query head first (model::WindowObserver's layout).
struct RankWindowObserver {
  int64_t window = 32;
  std::function<void(size_t item, int layer, int kv_head, int q0, int q1, const float* probs,
                     int64_t window, int64_t n)>
      observe;
};

// Time spent between collectives, per layer: what the emulated bench compares across ranks.
struct SegmentTimes {
  std::vector<double> attention_ms, mlp_ms;  // per layer, summed over runs
  double collective_ms = 0;                  // inside the communicator
  void clear(int layers);
};

// How a layer's attention and MLP outputs are summed over the ranks.
//  Partial: as tensor parallelism does it: each rank applies Wo to its units' outputs and the
//    down projection to its MLP slice, and one all-reduce per block sums the partial vectors, so
//    the float order of every output depends on R and on the placement.
//  Canonical: one device's order, whatever R and the placement: the units' attention outputs
//    (disjoint columns) and the SwiGLU activations (disjoint slices) are gathered, which is exact,
//    and each rank computes whole dot products for its ceil(E / R) output rows of Wo and of the
//    down projection (read from the full weights), which are gathered too. Every float of the
//    residual stream is then the one model::Forward computes, and so are the logits. It moves
//    more (the attention and SwiGLU rows besides the output rows) over four collectives per layer
//    instead of two. Token slices (`split`, and re-planning's) start at multiples of
//    kv::kCanonicalRows rows, and their parts' partials are folded in one device's order.
enum class Reduction { Partial, Canonical };
const char* reduction_name(Reduction r);
// "partial" or "canonical"; throws std::invalid_argument naming `option` otherwise.
Reduction reduction_from_name(const std::string& name, const std::string& option);

class RankForward {
 public:
  // `full` provides the replicated tensors (embeddings, output norm, output matrix); `shard` the
  // rank's slices, made for the same placement's holders. Throws std::invalid_argument when the
  // placement does not match the model or the communicator.
  // act, batching: the linear layers' activation and batching modes (kernels/matmul.h), as
  // model::Forward takes them: with Invariant, an item's results do not depend on the others in
  // its batch (each rank's partial sums are batch-invariant, and the collectives sum them in
  // rank order). With Invariant or a Canonical reduction, decode attention calls are never cut
  // into token slices (kv::attend_batch), whose merge would depend on the batch and the threads.
  // reduction: see Reduction; Canonical with the model::Forward's act and batching gives its
  // logits bit for bit on any R under any placement, token slices included.
  RankForward(const model::ModelConfig& c, const model::Weights& full, const ShardedWeights& shard,
              const placement::Placement& p, comm::Communicator& comm, kernels::ThreadPool& pool,
              kernels::Activations act = kernels::Activations::Float32,
              kernels::Batching batching = kernels::Batching::Fastest,
              Reduction reduction = Reduction::Partial);

  // Runs the batch (the same items in the same order on every rank; n_slots sequences in all)
  // and returns the logits of each item's last token, item by item, identical on every rank.
  const std::vector<float>& run(std::span<RankItem> batch, int n_slots,
                                const RankWindowObserver* observer = nullptr);

  // New shares for the same holders (rebalancing); the caches must be redistributed after.
  void set_placement(const placement::Placement& p);
  const placement::Placement& placement() const { return p_; }

  // Moves cached rows so that every unit's rows sit where the current placement wants them,
  // given that they sit as `old` placed them. A collective: every rank calls it with the same
  // sequences (same slots) in the same order. whole_on_tail[s] (when given) keeps sequence s's
  // token-sliced rows whole on each unit's tail instead of dealing them out: a prompt still
  // arriving in chunks, whose last chunk observes every row there for compression.
  void redistribute(std::span<RankSequence* const> seqs, int n_slots,
                    const placement::Placement& old, std::span<const char> whole_on_tail = {});

  // Current cached lengths of every unit of every sequence, summed over ranks: [seq][l * H + h].
  // A collective.
  std::vector<std::vector<int64_t>> unit_lengths(std::span<RankSequence* const> seqs);

  // When set, run() adds the time of each layer's segments between collectives.
  SegmentTimes* timing = nullptr;

 private:
  void build_parts();
  // The communicator's collectives, timed into `timing` when it is set.
  void all_reduce_sum(float* data, size_t n);
  void all_gather(const void* send, size_t bytes_per_rank, void* recv);
  void attention(std::span<RankItem> batch, int layer, int n_slots,
                 const RankWindowObserver* observer);
  // Token slices' outputs on their tails (rank_attention.cpp): merged by log-sum-exp (Partial),
  // or (Canonical) the parts' partials of the canonical order's blocks gathered and folded in
  // row order, one device's pass bit for bit, since slices start at multiples of
  // kv::kCanonicalRows (granule()).
  void merge_slices_lse(int layer, int64_t rows);
  void fold_slices(std::span<RankItem> batch, int layer);
  // The multiple of rows at which token slices start (unit_parts.h's rows_kept).
  int64_t granule() const;
  struct UnitView;
  // The view of unit `head` in `layer` that this rank serves, or null; where its attention
  // output of row r sits (att_, or attk_ for a KV-only slice).
  const UnitView* view(int layer, int head) const;
  float* att_row(const UnitView& u, int layer, int64_t r);

  const model::ModelConfig& c_;
  const model::Weights& full_;
  const ShardedWeights& shard_;
  placement::Placement p_;
  comm::Communicator& comm_;
  kernels::ThreadPool& pool_;
  kernels::Batching batching_;
  Reduction reduction_;
  model::LayerSteps steps_;
  std::vector<std::pair<int64_t, int64_t>> ff_ranges_;     // [rank]: its SwiGLU slice (shard.h)
  std::vector<std::vector<std::vector<UnitPart>>> parts_;  // [layer][head]
  std::vector<std::vector<int>> split_heads_;              // [layer]: heads with token slices
  // A unit this rank serves in a layer. Held units' queries and outputs sit in q_ / att_ at
  // column q_col (the shard's packing); KV-only token slices (no weights held) in qk_ / attk_.
  struct UnitView {
    int head = 0, q0 = 0, q1 = 0;
    int64_t q_rows = 0, q_col = 0, kv_row = -1;
    bool held = true;
  };
  std::vector<std::vector<UnitView>> views_;  // [layer], held units first
  std::vector<int64_t> kv_only_cols_;         // [layer]: columns of qk_ / attk_
  // [layer][index in the shard's units]: this rank projects the unit and applies its Wo: it
  // serves it, and not as a token slice other than the tail (a unit whose weights it holds but
  // does not serve after rebalancing is left out too).
  std::vector<std::vector<char>> projects_;
  // [layer]: the runs [first, last) of consecutive units of the shard that this rank projects.
  std::vector<std::vector<std::pair<int, int>>> runs_;
  // Per (sequence, unit) of a layer: its gathered queries, outputs and attention call.
  struct Task {
    std::vector<float> q, k, v, out, lse, probs, by_head;
    std::vector<float> blocks;  // a token slice's canonical partials (Reduction::Canonical)
    int64_t n_blocks = 0;       // per query row
    kv::AttentionArgs args;
    bool served = false, active = false;
  };
  std::vector<Task> tasks_;
  std::vector<std::vector<float>> group_q_;  // [view of the layer]: see group_queries
  std::vector<kv::AttentionArgs> calls_;
  std::vector<int64_t> row0_;
  std::vector<int64_t> out_rows_;  // the last row of each item, which gets logits
  void project(const ShardLayer& S, int layer, int64_t rows);
  void apply_wo(const ShardLayer& S, int layer, int64_t rows);
  // Canonical reduction (rank_projection.cpp): the layer's whole attention output rows on every
  // rank (att_ in the model's column order into attg_), the whole SwiGLU rows (ff_gate_'s slices
  // into ffg_), and y_ = w x computed as rows [e0, e1) per rank of the full matrix w, gathered.
  void gather_attention(const ShardLayer& S, int layer, int64_t rows);
  // Canonical reduction, a query slice: the whole group's queries (rows x group x head_dim, from
  // the full Wq's rows of the group, roped) into group_q_[view], so that the slice attends the
  // group as one device does (the attention kernel's sums for a head depend on the group's size)
  // and keeps its own heads' outputs.
  void group_queries(std::span<RankItem> batch, int layer, int64_t rows);
  bool whole_group(const UnitView& u) const {
    return reduction_ == Reduction::Canonical && u.held && u.q1 - u.q0 < c_.group();
  }
  void gather_swiglu(int64_t nf, int64_t rows);
  void canonical_product(const kernels::WeightMatrix& w, const float* x, int64_t rows);
  std::vector<float> x_, xn_, y_, q_, k_, v_, att_, lse_, lse_all_, ff_gate_, ff_up_, logits_,
      rows_out_, qx_, tmp_, qk_, attk_, gathered_, attg_, ffg_, part_, fold_;
  std::vector<int64_t> fold_counts_;
};

}  // namespace fairkv::runtime
