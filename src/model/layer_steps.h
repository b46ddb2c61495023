// The steps a Llama-family layer is made of, shared by every forward pass.
//
// model::Forward (one device, the whole model) and runtime::RankForward (one rank, its shard's
// slices of the weights) are both compositions of these steps; the rank adds only the collectives
// between them. Each step takes the weights it reads as arguments, so the same function runs over
// a layer's full matrices or over a rank's packed slices, and the float operations of a step are
// the same in both passes. Activations are row-major, one row per token of the batch.
//
// The vocabulary, in the order a layer uses it:
//  - embed: the rows of the batch's tokens;
//  - norm: RMS norm of rows (attention, MLP and final norms);
//  - qkv: the query, key and value projections with their (qwen2) biases;
//  - rope: rotary positions of one sequence's rows;
//  - unit_attention: one unit (a KV head and the query heads it serves) over its share of the
//    store for one sequence's new rows, with gather/scatter to move the unit's columns;
//  - the log-sum-exp merge of partial outputs over token slices: kv/attention_merge.h;
//  - output_projection and residual: Wo, then the sum into the residual stream;
//  - mlp: SwiGLU;
//  - logits: final norm of the rows that need them, then the vocabulary projection.
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include "kernels/matmul.h"
#include "kernels/threadpool.h"
#include "kv/attention.h"
#include "kv/cache.h"
#include "model/config.h"

namespace fairkv::model {

// Rows [begin, end) of the batch that one matmul call covers, and its batching mode.
struct RowSegment {
  int64_t begin = 0, end = 0;
  kernels::Batching batching = kernels::Batching::Fastest;
};

class LayerSteps {
 public:
  // act: how the linear layers treat their inputs; batching: whether a row's result may depend
  // on the other rows of its call (both kernels/matmul.h).
  LayerSteps(const ModelConfig& c, kernels::ThreadPool& pool, kernels::Activations act,
             kernels::Batching batching = kernels::Batching::Fastest);

  // Splits the rows of the matmul-calling steps (linear, qkv, output_projection, mlp, logits)
  // into one call per segment, each with its own batching mode; the segments must cover the
  // steps' rows in order. Empty (the default): one call over all rows with the constructor's
  // mode. Forward's Invariant mode makes the single-token (decode) rows Invariant segments and
  // each prefill item a Fastest segment of its own, so that no row depends on another item.
  // With segments (or an Invariant constructor mode) mlp's SwiGLU goes row by row too.
  void set_segments(std::vector<RowSegment> segments);
  // The segments of a batch whose item i holds rows [row_of_item[i], row_of_item[i + 1]): each
  // run of single-token items one Invariant segment, each item of several tokens one Fastest
  // segment of its own. What Forward and runtime::RankForward set in their Invariant mode.
  static std::vector<RowSegment> item_segments(std::span<const int64_t> row_of_item);

  // The dequantized embedding rows of `tokens` into x (tokens.size() x n_embd). Throws
  // std::out_of_range for a token outside the vocabulary.
  void embed(const kernels::WeightMatrix& tok_embd, std::span<const int32_t> tokens,
             float* x) const;

  // y[r] = rmsnorm(x[r]) * weight for `rows` rows of n_embd.
  void norm(const float* weight, const float* x, int64_t rows, float* y) const;

  // y = W x for `rows` rows of x (y: rows x W.rows).
  void linear(const kernels::WeightMatrix& w, const float* x, int64_t rows, float* y) const;
  // y[r] += bias for `rows` rows of `dim`; nothing when bias is null (no biases in the model).
  static void add_bias(float* y, const float* bias, int64_t rows, int64_t dim);

  // q, k, v = Wq xn, Wk xn, Wv xn, then their biases (null: none).
  void qkv(const kernels::WeightMatrix& wq, const kernels::WeightMatrix& wk,
           const kernels::WeightMatrix& wv, const float* bq, const float* bk, const float* bv,
           const float* xn, int64_t rows, float* q, float* k, float* v) const;

  // Rotates the n consecutive rows of one sequence, at positions pos0, pos0 + 1, ...: q_heads
  // heads per row of q and k_heads per row of k, head_dim each.
  void rope(float* q, int64_t q_heads, float* k, int64_t k_heads, int64_t n, int64_t pos0) const;

  // Copies n rows of `width` floats, src rows `stride` apart, into dst rows side by side (gather)
  // or back (scatter): a unit's columns of the layer's rows are contiguous only per token.
  static void gather(const float* src, int64_t stride, int64_t n, int64_t width, float* dst);
  static void scatter(const float* src, int64_t n, int64_t width, float* dst, int64_t stride);
  // n rows of `width` floats from src (rows src_stride apart) to dst (rows dst_stride apart).
  static void copy_rows(const float* src, int64_t src_stride, int64_t n, int64_t width, float* dst,
                        int64_t dst_stride);

  // One unit's share of attention for the n new rows of one sequence. When this share stores the
  // new rows (k and v non-null, n x head_dim each) they are appended first. Returns the call
  // that attends the queries q (n x heads x head_dim) over the rows the store holds: causal for
  // the rows it appended; a share that did not append holds only older rows, all visible. out
  // gets n x heads x head_dim floats, lse (optional) n x heads, when the call is run.
  kv::AttentionArgs unit_attention(kv::HeadStore& store, const float* q, int64_t n, int heads,
                                   const float* k, const float* v, float* out, float* lse) const;
  // Makes the call also write the softmax probabilities of its last `window` rows (at most its
  // n) into probs, which it sizes.
  static void request_window(kv::AttentionArgs& a, int64_t window, std::vector<float>& probs);
  // After the call ran: its window's probabilities head-major (heads x window x store size), the
  // layout observers read, from the token-major layout attend writes.
  static void window_by_head(const kv::AttentionArgs& a, const std::vector<float>& probs,
                             std::vector<float>& by_head);

  // y = Wo att (att: rows x Wo.cols).
  void output_projection(const kernels::WeightMatrix& wo, const float* att, int64_t rows,
                         float* y) const;
  // x += y over `rows` rows of n_embd.
  void residual(float* x, const float* y, int64_t rows) const;

  // g = silu(gate xn) * (up xn): rows x gate.rows, with u sized alike as scratch.
  void swiglu(const kernels::WeightMatrix& gate, const kernels::WeightMatrix& up, const float* xn,
              int64_t rows, std::vector<float>& g, std::vector<float>& u) const;
  // y = down(silu(gate xn) * (up xn)), with g and u sized to rows x gate.rows as scratch.
  void mlp(const kernels::WeightMatrix& gate, const kernels::WeightMatrix& up,
           const kernels::WeightMatrix& down, const float* xn, int64_t rows, std::vector<float>& g,
           std::vector<float>& u, float* y) const;

  // The final norm of x's rows `rows` into normed (sized rows.size() x n_embd), then
  // logits = output normed (rows.size() x output.rows).
  void logits(const float* output_norm, const kernels::WeightMatrix& output, const float* x,
              std::span<const int64_t> rows, std::vector<float>& normed, float* logits) const;

 private:
  // Activations::GgmlOrder: every step in llama.cpp's arithmetic (kernels/ggml_ops.h).
  bool ggml_order() const { return act_ == kernels::Activations::GgmlOrder; }
  // y = W x over `rows` rows, one call per segment of segs (all rows in one call when empty).
  void matmul_segments(const kernels::WeightMatrix& w, const float* x, int64_t rows, float* y,
                       std::span<const RowSegment> segs) const;

  const ModelConfig& c_;
  kernels::ThreadPool& pool_;
  kernels::Activations act_;
  kernels::Batching batching_;
  std::vector<RowSegment> segments_;
};

}  // namespace fairkv::model
