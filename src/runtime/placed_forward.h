// One rank's part of a tensor-parallel forward pass that executes a placement.
//
// Per layer a rank serves the shares the placement gives it: whole units, batch slices (some of
// the sequences: Fair-Copying), token slices (part of every sequence's cached tokens, merged across
// ranks by log-sum-exp) and query slices (tp's replication when devices outnumber KV heads). Its
// weights are views of exactly those rows of Wq/Wk/Wv and columns of Wo, and its 1/R of the MLP;
// the attention and MLP outputs meet in an all-reduce, as in standard tensor parallelism. Greedy
// outputs therefore equal the single-device engine's, up to float summation order.
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include "kernels/threadpool.h"
#include "kv/cache.h"
#include "model/config.h"
#include "model/weights.h"
#include "placement/placement.h"
#include "runtime/comm.h"

namespace fairkv::runtime {

// A sequence's cache on one rank: the stores of the units it serves, and for a token slice the
// position of its first row (the slices of a unit tile the positions; the tail slice grows).
struct PlacedSequence {
  PlacedSequence(const model::ModelConfig& c, kv::KvType type);
  kv::SequenceCache cache;
  std::vector<int64_t> slice_begin;  // [layer * kv_heads + head]
};

struct PlacedItem {
  PlacedSequence* seq = nullptr;
  std::span<const int32_t> tokens;
};

class PlacedForward {
 public:
  // The placement must have as many devices as comm has ranks and the model's layers and heads;
  // throws std::invalid_argument naming what does not match.
  PlacedForward(const model::ModelConfig& c, const model::Weights& w, const placement::Placement& p,
                Communicator& comm, kernels::ThreadPool& pool);

  // Runs the batch (the same items, in the same order, on every rank) and returns the logits of
  // each item's last token, item by item. A sequence's first run is its prompt.
  const std::vector<float>& run(std::span<PlacedItem> batch);

  // Bytes of the weights this rank reads: its units' slices and its part of the MLP.
  size_t weight_bytes() const { return weight_bytes_; }

  // When set, run() adds each layer's milliseconds to (*t)[layer] (the bench's emulated timing).
  void time_layers(std::vector<double>* t) { layer_ms_ = t; }

 private:
  void attention(std::span<PlacedItem> batch, int layer);

  const model::ModelConfig& c_;
  const model::Weights& w_;
  const placement::Placement& p_;
  Communicator& comm_;
  kernels::ThreadPool& pool_;
  int64_t ff_begin_ = 0, ff_end_ = 0;
  std::vector<kernels::WeightMatrix> gate_, up_, down_;  // per layer, this rank's slice
  size_t weight_bytes_ = 0;
  std::vector<double>* layer_ms_ = nullptr;
  std::vector<int64_t> row0_;
  std::vector<float> x_, xn_, y_, ff_gate_, ff_up_, logits_, rows_out_;
};

}  // namespace fairkv::runtime
