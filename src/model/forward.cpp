#include "model/forward.h"

#include <algorithm>
#include <cmath>
#include <stdexcept>

#include "kernels/matmul.h"
#include "kernels/ops.h"
#include "kv/attention.h"

namespace fairkv::model {

using kernels::WeightMatrix;

Forward::Forward(const ModelConfig& config, const Weights& weights, kernels::ThreadPool& pool,
                 kernels::Activations act)
    : c_(config), w_(weights), pool_(pool), act_(act) {}

namespace {

// Per-thread scratch of one unit's attention: its queries, keys, values and output, gathered
// contiguous because the projections interleave the units of a layer.
struct UnitScratch {
  std::vector<float> q, k, v, out, probs;
};

void add_bias(float* y, const float* b, int64_t rows, int64_t dim) {
  if (!b) return;
  for (int64_t r = 0; r < rows; ++r) kernels::add(y + r * dim, b, dim);
}

}  // namespace

void Forward::attention(std::span<BatchItem> batch, int layer, const WindowObserver* observer) {
  const int64_t hd = c_.head_dim, group = c_.group(), qd = c_.q_dim(), kvd = c_.kv_dim();
  const int n_kv = c_.n_kv_heads;
  const float scale = 1.0f / std::sqrt(float(hd));
  const int64_t n_tasks = int64_t(batch.size()) * n_kv;
  static thread_local UnitScratch s;
  pool_.parallel_for(n_tasks, [&](int64_t begin, int64_t end, int) {
    for (int64_t task = begin; task < end; ++task) {
      const size_t item = size_t(task / n_kv);
      const int h = int(task % n_kv);
      BatchItem& it = batch[item];
      const int64_t n = int64_t(it.tokens.size());
      const int64_t row0 = row_of_item_[item];
      kv::HeadStore& store = it.cache->head(layer, h);
      s.q.resize(size_t(n * group * hd));
      s.k.resize(size_t(n * hd));
      s.v.resize(size_t(n * hd));
      s.out.resize(size_t(n * group * hd));
      for (int64_t t = 0; t < n; ++t) {
        std::copy_n(&q_[(row0 + t) * qd + h * group * hd], group * hd, &s.q[t * group * hd]);
        std::copy_n(&k_[(row0 + t) * kvd + h * hd], hd, &s.k[t * hd]);
        std::copy_n(&v_[(row0 + t) * kvd + h * hd], hd, &s.v[t * hd]);
      }
      const int64_t visible = store.size();
      store.append(s.k.data(), s.v.data(), n);
      kv::AttentionArgs a;
      a.store = &store;
      a.q = s.q.data();
      a.n_tokens = n;
      a.group = int(group);
      a.scale = scale;
      a.visible = visible;
      a.out = s.out.data();
      const bool observe = observer && observer->observe && n > 1;
      if (observe) {
        a.probs_tokens = std::min(observer->window, n);
        s.probs.assign(size_t(a.probs_tokens * group * store.size()), 0.0f);
        a.probs = s.probs.data();
      }
      kv::attend(a);
      if (observe) {
        // attend writes token-major (window x group x n); observers want group-major.
        const int64_t w = a.probs_tokens, len = store.size();
        std::vector<float> by_head(size_t(group * w * len));
        for (int64_t t = 0; t < w; ++t)
          for (int64_t g = 0; g < group; ++g)
            std::copy_n(&s.probs[(t * group + g) * len], len, &by_head[(g * w + t) * len]);
        observer->observe(item, layer, h, by_head.data(), int(group), w, len);
      }
      for (int64_t t = 0; t < n; ++t)
        std::copy_n(&s.out[t * group * hd], group * hd, &att_[(row0 + t) * qd + h * group * hd]);
    }
  });
}

const std::vector<float>& Forward::run(std::span<BatchItem> batch, const WindowObserver* observer) {
  const int64_t E = c_.n_embd, qd = c_.q_dim(), kvd = c_.kv_dim(), ff = c_.n_ff;
  row_of_item_.assign(batch.size() + 1, 0);
  int64_t n_out = 0;
  for (size_t i = 0; i < batch.size(); ++i) {
    if (batch[i].tokens.empty()) throw std::invalid_argument("forward: a batch item has no tokens");
    row_of_item_[i + 1] = row_of_item_[i] + int64_t(batch[i].tokens.size());
    n_out += batch[i].all_logits ? int64_t(batch[i].tokens.size()) : 1;
  }
  const int64_t rows = row_of_item_.back();
  x_.resize(size_t(rows * E));
  xn_.resize(size_t(rows * E));
  q_.resize(size_t(rows * qd));
  k_.resize(size_t(rows * kvd));
  v_.resize(size_t(rows * kvd));
  att_.resize(size_t(rows * qd));
  ff_gate_.resize(size_t(rows * ff));
  ff_up_.resize(size_t(rows * ff));

  // Embedding rows.
  const size_t emb_row = w_.tok_embd.stride();
  for (size_t i = 0; i < batch.size(); ++i)
    for (size_t t = 0; t < batch[i].tokens.size(); ++t) {
      const int32_t tok = batch[i].tokens[t];
      if (tok < 0 || tok >= c_.n_vocab)
        throw std::out_of_range("forward: token id " + std::to_string(tok) +
                                " outside the vocabulary of " + std::to_string(c_.n_vocab));
      kernels::dequantize_row(w_.tok_embd.type,
                              static_cast<const uint8_t*>(w_.tok_embd.data) + tok * emb_row,
                              &x_[(row_of_item_[i] + int64_t(t)) * E], E);
    }

  for (int l = 0; l < c_.n_layers; ++l) {
    const LayerWeights& L = w_.layers[size_t(l)];
    // Attention block.
    for (int64_t r = 0; r < rows; ++r)
      kernels::rmsnorm(&xn_[r * E], &x_[r * E], L.attn_norm, E, c_.norm_eps);
    kernels::matmul(L.wq, xn_.data(), rows, q_.data(), pool_, act_);
    kernels::matmul(L.wk, xn_.data(), rows, k_.data(), pool_, act_);
    kernels::matmul(L.wv, xn_.data(), rows, v_.data(), pool_, act_);
    add_bias(q_.data(), L.bq, rows, qd);
    add_bias(k_.data(), L.bk, rows, kvd);
    add_bias(v_.data(), L.bv, rows, kvd);
    for (size_t i = 0; i < batch.size(); ++i) {
      const int64_t pos0 = batch[i].cache->n_past;
      for (int64_t t = 0; t < int64_t(batch[i].tokens.size()); ++t) {
        const int64_t r = row_of_item_[i] + t;
        for (int h = 0; h < c_.n_heads; ++h)
          kernels::rope(&q_[r * qd + h * c_.head_dim], c_.head_dim, pos0 + t, c_.rope_base,
                        c_.rope_style);
        for (int h = 0; h < c_.n_kv_heads; ++h)
          kernels::rope(&k_[r * kvd + h * c_.head_dim], c_.head_dim, pos0 + t, c_.rope_base,
                        c_.rope_style);
      }
    }
    attention(batch, l, observer);
    kernels::matmul(L.wo, att_.data(), rows, xn_.data(), pool_, act_);
    kernels::add(x_.data(), xn_.data(), rows * E);
    // MLP block (SwiGLU).
    for (int64_t r = 0; r < rows; ++r)
      kernels::rmsnorm(&xn_[r * E], &x_[r * E], L.ffn_norm, E, c_.norm_eps);
    kernels::matmul(L.w_gate, xn_.data(), rows, ff_gate_.data(), pool_, act_);
    kernels::matmul(L.w_up, xn_.data(), rows, ff_up_.data(), pool_, act_);
    kernels::silu_mul(ff_gate_.data(), ff_up_.data(), rows * ff);
    kernels::matmul(L.w_down, ff_gate_.data(), rows, xn_.data(), pool_, act_);
    kernels::add(x_.data(), xn_.data(), rows * E);
  }
  for (size_t i = 0; i < batch.size(); ++i)
    batch[i].cache->n_past += int64_t(batch[i].tokens.size());

  // Output rows: final norm of the rows that need logits, then the vocabulary projection.
  rows_out_.resize(size_t(n_out * E));
  int64_t o = 0;
  for (size_t i = 0; i < batch.size(); ++i) {
    const int64_t first = batch[i].all_logits ? row_of_item_[i] : row_of_item_[i + 1] - 1;
    for (int64_t r = first; r < row_of_item_[i + 1]; ++r, ++o)
      kernels::rmsnorm(&rows_out_[o * E], &x_[r * E], w_.output_norm, E, c_.norm_eps);
  }
  logits_.resize(size_t(n_out) * size_t(c_.n_vocab));
  kernels::matmul(w_.output, rows_out_.data(), n_out, logits_.data(), pool_, act_);
  return logits_;
}

}  // namespace fairkv::model
