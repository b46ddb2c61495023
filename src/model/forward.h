// The forward pass of a Llama-family model over a batch of sequences.
//
// One call runs any mix of prefill (many tokens of one sequence) and decode (one token each of
// many sequences): the linear layers see all rows of the batch as one matrix, attention runs per
// (sequence, KV head) over that head's own ragged store. Attention is organised by unit (one KV
// head and its GQA group of query heads), the same unit that runtime::RankForward serves a share
// of on each rank. The layer is a composition of model/layer_steps.h, the steps the ranks'
// forward pass composes too: this is the pass of one device holding the whole model.
#pragma once

#include <cstdint>
#include <functional>
#include <span>
#include <string>
#include <vector>

#include "kernels/matmul.h"
#include "kernels/threadpool.h"
#include "kv/cache.h"
#include "model/config.h"
#include "model/layer_steps.h"
#include "model/weights.h"

namespace fairkv::model {

struct BatchItem {
  kv::SequenceCache* cache = nullptr;  // consumed tokens: cache->n_past, advanced by the call
  std::span<const int32_t> tokens;
  bool all_logits = false;  // logits for every token, else for the last one only
};

// Called during a prefill for every (item, layer, KV head) with the softmax probabilities of the
// last `window` tokens of the item over every row of that head's store: group x window x n rows,
// query head of the group first. Compression methods score tokens by these.
struct WindowObserver {
  int64_t window = 32;
  std::function<void(size_t item, int layer, int kv_head, const float* probs, int group,
                     int64_t window, int64_t n)>
      observe;
};

class Forward {
 public:
  // act: how the linear layers treat their inputs (kernels/matmul.h). Float32 is exact against
  // the dequantized weights; LikeGgml rounds activations as llama.cpp does and is faster.
  // batching: Fastest runs each linear layer as one call over all rows of the batch. Invariant
  // makes every item's results independent of the rest of the batch: the single-token (decode)
  // items' rows go through kernels::Batching::Invariant, so a decode row is bitwise what it
  // would be alone, and each item of several tokens (a prefill chunk) is a Fastest call of its
  // own rows.
  Forward(const ModelConfig& config, const Weights& weights, kernels::ThreadPool& pool,
          kernels::Activations act = kernels::Activations::Float32,
          kernels::Batching batching = kernels::Batching::Fastest);

  // Runs the batch and returns the logits rows, item by item: n_tokens rows for an item with
  // all_logits, else one. Each row has config.n_vocab floats.
  const std::vector<float>& run(std::span<BatchItem> batch,
                                const WindowObserver* observer = nullptr);

  // Called with every intermediate result of run() (all rows of the batch), under the name
  // llama.cpp's graph gives it with the layer (attn_norm-3, Qcur-3 after rope, kqv_out-3,
  // ffn_out-3, l_out-3, result_norm, result_output, ...), as its eval callback (cb_eval) sees
  // them, and Qcur_norope-3 (the queries before rope, which llama.cpp's dump overwrites): for
  // comparing the two engines' arithmetic layer by layer (model/layer_compare_main.cpp).
  // Empty: nothing is called.
  using Tap =
      std::function<void(const std::string& name, const float* data, int64_t rows, int64_t cols)>;
  void set_tap(Tap tap) { tap_ = std::move(tap); }

 private:
  void attention(std::span<BatchItem> batch, int layer, const WindowObserver* observer);

  const ModelConfig& c_;
  const Weights& w_;
  kernels::ThreadPool& pool_;
  kernels::Batching batching_;
  LayerSteps steps_;
  Tap tap_;
  // Activations, rows = all tokens of the batch.
  std::vector<float> x_, xn_, q_, k_, v_, att_, ff_gate_, ff_up_, logits_, rows_out_;
  std::vector<int64_t> row_of_item_;  // first row of each item
  std::vector<int64_t> out_rows_;     // the rows that get logits
};

}  // namespace fairkv::model
