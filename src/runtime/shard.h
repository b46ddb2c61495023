// One rank's shard of a model: the weight slices of the units a placement gives it, and its part
// of every MLP.
//
// For every unit (layer l, KV head h) that rank r holds, the shard keeps the Wq rows of the query
// heads it serves (the whole GQA group, or a query slice under tp replication), the Wk and Wv rows
// of head h and the matching Wo columns; the units of a layer are packed side by side so that the
// rank's attention is one product per matrix. The MLP is split as standard TP splits it: gate and
// up rows [f0, f1), down columns [f0, f1), with f0, f1 on quantization block boundaries when ff
// allows it. The output matrix is split by vocabulary as vLLM's ParallelLMHead splits it: rank r
// holds rows [v0, v1), ceil(vocab / R) of them (the last rank fewer), and the ranks all-gather
// their logits. Embeddings and norms stay views of the mapping, shared by all ranks (a lookup
// reads only the rows of the tokens). Only the slices' pages of a mapped file are read.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "kernels/matmul.h"
#include "model/config.h"
#include "model/weights.h"
#include "placement/placement.h"

namespace fairkv::runtime {

// A unit whose weights this rank holds, and where they sit in the layer's packed matrices.
struct HeldUnit {
  int head = 0;
  int q0 = 0, q1 = 0;  // query heads of the group it serves, [q0, q1) of [0, group)
  int64_t q_row = 0;   // first row of its queries in wq (and first column in wo)
  int64_t q_rows = 0;  // (q1 - q0) * head_dim
  int64_t kv_row = 0;  // first row of its keys in wk and values in wv
};

struct ShardLayer {
  std::vector<HeldUnit> units;  // sorted by head
  kernels::WeightMatrix wq, wk, wv, wo;
  std::vector<float> bq, bk, bv;  // packed qwen2 biases, empty when the model has none
  kernels::WeightMatrix gate, up, down;
  const float* attn_norm = nullptr;
  const float* ffn_norm = nullptr;
  const HeldUnit* find(int head) const;
};

struct ShardedWeights {
  int rank = 0, ranks = 1;
  int64_t ff_begin = 0, ff_end = 0;
  std::vector<ShardLayer> layers;
  kernels::WeightMatrix output;  // rows [vocab_begin, vocab_end) of the output matrix
  int64_t vocab_begin = 0, vocab_end = 0;
  size_t bytes = 0;                // bytes of the slices this rank holds (its own copies)
  std::vector<std::string> notes;  // slices stored in another type than the file's, and why
  std::vector<std::vector<uint8_t>> owned;
};

// The units rank `rank` holds in each layer with its query range, from the placement (shares
// do not matter: rebalancing changes them without moving weights). A token slice that is not its
// unit's tail holds no weights: the tail projects for it.
std::vector<std::vector<HeldUnit>> held_units(const placement::Placement& p, int rank, int group);

// The output rows [v0, v1) of rank r out of R: ceil(vocab / R) each, the last ones fewer (or
// none), so that every rank's logits fit one all-gather block of that size.
void vocab_range(int64_t vocab, int rank, int ranks, int64_t* v0, int64_t* v1);

// The MLP rows [f0, f1) of rank r out of R: even parts, boundaries rounded to `align`.
void mlp_range(int64_t ff, int rank, int ranks, int64_t align, int64_t* f0, int64_t* f1);

// Copies rank `rank`'s slices out of w. Throws std::invalid_argument when the placement does not
// match the model (layers, KV heads) or the rank is out of range.
ShardedWeights shard_weights(const model::ModelConfig& c, const model::Weights& w,
                             const placement::Placement& p, int rank);

}  // namespace fairkv::runtime
