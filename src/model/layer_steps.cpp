#include "model/layer_steps.h"

#include <algorithm>
#include <cmath>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "kernels/ggml_ops.h"
#include "kernels/ops.h"

namespace fairkv::model {

LayerSteps::LayerSteps(const ModelConfig& c, kernels::ThreadPool& pool, kernels::Activations act,
                       kernels::Batching batching)
    : c_(c), pool_(pool), act_(act), batching_(batching) {}

void LayerSteps::set_segments(std::vector<RowSegment> segments) {
  for (size_t i = 0; i < segments.size(); ++i) {
    const int64_t begin = i ? segments[i - 1].end : 0;
    if (segments[i].begin != begin || segments[i].end <= begin)
      throw std::invalid_argument("layer steps: segment " + std::to_string(i) + " is [" +
                                  std::to_string(segments[i].begin) + ", " +
                                  std::to_string(segments[i].end) + "), should start at " +
                                  std::to_string(begin) + " and not be empty");
  }
  segments_ = std::move(segments);
}

std::vector<RowSegment> LayerSteps::item_segments(std::span<const int64_t> row_of_item) {
  std::vector<RowSegment> segments;
  for (size_t i = 0; i + 1 < row_of_item.size(); ++i) {
    const bool single = row_of_item[i + 1] - row_of_item[i] == 1;
    if (single && !segments.empty() && segments.back().batching == kernels::Batching::Invariant)
      segments.back().end = row_of_item[i + 1];
    else
      segments.push_back({row_of_item[i], row_of_item[i + 1],
                          single ? kernels::Batching::Invariant : kernels::Batching::Fastest});
  }
  return segments;
}

void LayerSteps::matmul_segments(const kernels::WeightMatrix& w, const float* x, int64_t rows,
                                 float* y, std::span<const RowSegment> segs) const {
  if (segs.empty()) {
    kernels::matmul(w, x, rows, y, pool_, act_, batching_);
    return;
  }
  if (segs.back().end != rows)
    throw std::logic_error("layer steps: the segments cover " + std::to_string(segs.back().end) +
                           " rows, the step has " + std::to_string(rows));
  for (const RowSegment& s : segs)
    kernels::matmul(w, x + s.begin * w.cols, s.end - s.begin, y + s.begin * w.rows, pool_, act_,
                    s.batching);
}

void LayerSteps::embed(const kernels::WeightMatrix& tok_embd, std::span<const int32_t> tokens,
                       float* x) const {
  const int64_t E = c_.n_embd;
  const size_t emb_row = tok_embd.stride();
  for (size_t t = 0; t < tokens.size(); ++t) {
    const int32_t tok = tokens[t];
    if (tok < 0 || tok >= c_.n_vocab)
      throw std::out_of_range("forward: token id " + std::to_string(tok) +
                              " outside the vocabulary of " + std::to_string(c_.n_vocab));
    kernels::dequantize_row(tok_embd.type,
                            static_cast<const uint8_t*>(tok_embd.data) + size_t(tok) * emb_row,
                            x + int64_t(t) * E, E);
  }
}

void LayerSteps::norm(const float* weight, const float* x, int64_t rows, float* y) const {
  const int64_t E = c_.n_embd;
  const auto rmsnorm = ggml_order() ? kernels::rmsnorm_ggml : kernels::rmsnorm;
  for (int64_t r = 0; r < rows; ++r) rmsnorm(y + r * E, x + r * E, weight, E, c_.norm_eps);
}

void LayerSteps::linear(const kernels::WeightMatrix& w, const float* x, int64_t rows,
                        float* y) const {
  matmul_segments(w, x, rows, y, segments_);
}

void LayerSteps::add_bias(float* y, const float* bias, int64_t rows, int64_t dim) {
  if (!bias) return;
  for (int64_t r = 0; r < rows; ++r) kernels::add(y + r * dim, bias, dim);
}

void LayerSteps::qkv(const kernels::WeightMatrix& wq, const kernels::WeightMatrix& wk,
                     const kernels::WeightMatrix& wv, const float* bq, const float* bk,
                     const float* bv, const float* xn, int64_t rows, float* q, float* k,
                     float* v) const {
  linear(wq, xn, rows, q);
  linear(wk, xn, rows, k);
  linear(wv, xn, rows, v);
  add_bias(q, bq, rows, wq.rows);
  add_bias(k, bk, rows, wk.rows);
  add_bias(v, bv, rows, wv.rows);
}

void LayerSteps::rope(float* q, int64_t q_heads, float* k, int64_t k_heads, int64_t n,
                      int64_t pos0) const {
  const int64_t hd = c_.head_dim;
  const auto rope = ggml_order() ? kernels::rope_ggml : kernels::rope;
  for (int64_t t = 0; t < n; ++t) {
    for (int64_t j = 0; j < q_heads; ++j)
      rope(q + (t * q_heads + j) * hd, hd, pos0 + t, c_.rope_base, c_.rope_style);
    for (int64_t j = 0; j < k_heads; ++j)
      rope(k + (t * k_heads + j) * hd, hd, pos0 + t, c_.rope_base, c_.rope_style);
  }
}

void LayerSteps::gather(const float* src, int64_t stride, int64_t n, int64_t width, float* dst) {
  for (int64_t t = 0; t < n; ++t) std::copy_n(src + t * stride, width, dst + t * width);
}

void LayerSteps::scatter(const float* src, int64_t n, int64_t width, float* dst, int64_t stride) {
  for (int64_t t = 0; t < n; ++t) std::copy_n(src + t * width, width, dst + t * stride);
}

void LayerSteps::copy_rows(const float* src, int64_t src_stride, int64_t n, int64_t width,
                           float* dst, int64_t dst_stride) {
  if (width <= 0) return;
  for (int64_t t = 0; t < n; ++t) std::copy_n(src + t * src_stride, width, dst + t * dst_stride);
}

kv::AttentionArgs LayerSteps::unit_attention(kv::HeadStore& store, const float* q, int64_t n,
                                             int heads, const float* k, const float* v, float* out,
                                             float* lse) const {
  const int64_t before = store.size();
  const bool append = k && v;
  if (append) store.append(k, v, n);
  kv::AttentionArgs a;
  a.store = &store;
  a.q = q;
  a.n_tokens = n;
  a.group = heads;
  a.scale = 1.0f / std::sqrt(float(c_.head_dim));
  // llama.cpp's attention where it applies: an f32 store, the whole softmax here (no lse).
  a.ggml_order = ggml_order() && store.types().k == kv::KvType::F32 &&
                 store.types().v == kv::KvType::F32 && !lse;
  a.visible = append ? before : store.size();
  a.out = out;
  a.lse = lse;
  if (append) a.fresh_keys = k;
  return a;
}

void LayerSteps::request_window(kv::AttentionArgs& a, int64_t window, std::vector<float>& probs) {
  a.ggml_order = false;  // the fast kernel writes the window's probabilities
  a.probs_tokens = std::min(window, a.n_tokens);
  probs.assign(size_t(a.probs_tokens * a.group * a.store->size()), 0.0f);
  a.probs = probs.data();
}

void LayerSteps::window_by_head(const kv::AttentionArgs& a, const std::vector<float>& probs,
                                std::vector<float>& by_head) {
  const int64_t w = a.probs_tokens, heads = a.group, len = a.store->size();
  by_head.resize(size_t(heads * w * len));
  for (int64_t t = 0; t < w; ++t)
    for (int64_t g = 0; g < heads; ++g)
      std::copy_n(&probs[size_t((t * heads + g) * len)], len, &by_head[size_t((g * w + t) * len)]);
}

void LayerSteps::output_projection(const kernels::WeightMatrix& wo, const float* att, int64_t rows,
                                   float* y) const {
  linear(wo, att, rows, y);
}

void LayerSteps::residual(float* x, const float* y, int64_t rows) const {
  kernels::add(x, y, rows * c_.n_embd);
}

void LayerSteps::mlp(const kernels::WeightMatrix& gate, const kernels::WeightMatrix& up,
                     const kernels::WeightMatrix& down, const float* xn, int64_t rows,
                     std::vector<float>& g, std::vector<float>& u, float* y) const {
  swiglu(gate, up, xn, rows, g, u);
  linear(down, g.data(), rows, y);
}

void LayerSteps::swiglu(const kernels::WeightMatrix& gate, const kernels::WeightMatrix& up,
                        const float* xn, int64_t rows, std::vector<float>& g,
                        std::vector<float>& u) const {
  const int64_t nf = gate.rows;
  g.resize(size_t(rows * nf));
  u.resize(size_t(rows * nf));
  linear(gate, xn, rows, g.data());
  linear(up, xn, rows, u.data());
  if (ggml_order()) {  // row by row, as ggml_vec_swiglu_f32 runs
    for (int64_t r = 0; r < rows; ++r)
      kernels::silu_mul_ggml(&g[size_t(r * nf)], &u[size_t(r * nf)], nf);
  } else if (segments_.empty() && batching_ == kernels::Batching::Fastest) {
    kernels::silu_mul(g.data(), u.data(), rows * nf);
  } else {
    // silu_mul's scalar tail rounds otherwise than its vector body: row by row, each element
    // takes the same path wherever its row sits in the batch.
    for (int64_t r = 0; r < rows; ++r)
      kernels::silu_mul(&g[size_t(r * nf)], &u[size_t(r * nf)], nf);
  }
}

void LayerSteps::logits(const float* output_norm, const kernels::WeightMatrix& output,
                        const float* x, std::span<const int64_t> rows, std::vector<float>& normed,
                        float* logits) const {
  const int64_t E = c_.n_embd, n = int64_t(rows.size());
  normed.resize(size_t(n * E));
  for (int64_t i = 0; i < n; ++i)
    (ggml_order() ? kernels::rmsnorm_ggml : kernels::rmsnorm)(
        &normed[size_t(i * E)], x + rows[size_t(i)] * E, output_norm, E, c_.norm_eps);
  // The segments in logits rows: consecutive rows whose x rows lie in the same segment.
  std::vector<RowSegment> segs;
  if (!segments_.empty()) {
    size_t s = 0;
    for (int64_t i = 0; i < n; ++i) {
      const int64_t r = rows[size_t(i)];
      if (i > 0 && r <= rows[size_t(i - 1)])
        throw std::invalid_argument("layer steps: logits rows must be increasing");
      while (s < segments_.size() && r >= segments_[s].end) ++s;
      if (s == segments_.size())
        throw std::out_of_range("layer steps: logits row " + std::to_string(r) +
                                " is past the segments");
      if (segs.empty() || rows[size_t(segs.back().end - 1)] < segments_[s].begin)
        segs.push_back({i, i, segments_[s].batching});
      segs.back().end = i + 1;
    }
  }
  matmul_segments(output, normed.data(), n, logits, segs);
}

}  // namespace fairkv::model
