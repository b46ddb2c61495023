#include "model/forward.h"

#include <stdexcept>
#include <string>
#include <utility>

#include "kv/attention.h"

namespace fairkv::model {

Forward::Forward(const ModelConfig& config, const Weights& weights, kernels::ThreadPool& pool,
                 kernels::Activations act, kernels::Batching batching)
    : c_(config),
      w_(weights),
      pool_(pool),
      batching_(batching),
      steps_(config, pool, act, batching) {}

namespace {

// Per-thread scratch of one unit's attention: its queries, keys, values and output, gathered
// contiguous because the projections interleave the units of a layer.
struct UnitScratch {
  std::vector<float> q, k, v, out, probs, by_head;
};

}  // namespace

// Every (sequence, unit) attends in place, one task each: the device serves every unit whole.
void Forward::attention(std::span<BatchItem> batch, int layer, const WindowObserver* observer) {
  const int64_t hd = c_.head_dim, group = c_.group(), qd = c_.q_dim(), kvd = c_.kv_dim();
  const int n_kv = c_.n_kv_heads;
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
      LayerSteps::gather(&q_[row0 * qd + h * group * hd], qd, n, group * hd, s.q.data());
      LayerSteps::gather(&k_[row0 * kvd + h * hd], kvd, n, hd, s.k.data());
      LayerSteps::gather(&v_[row0 * kvd + h * hd], kvd, n, hd, s.v.data());
      kv::AttentionArgs a = steps_.unit_attention(store, s.q.data(), n, int(group), s.k.data(),
                                                  s.v.data(), s.out.data(), nullptr);
      const bool observe = observer && observer->observe && n > 1;
      if (observe) LayerSteps::request_window(a, observer->window, s.probs);
      kv::attend(a);
      if (observe) {
        LayerSteps::window_by_head(a, s.probs, s.by_head);
        observer->observe(item, layer, h, s.by_head.data(), int(group), a.probs_tokens,
                          store.size());
      }
      LayerSteps::scatter(s.out.data(), n, group * hd, &att_[row0 * qd + h * group * hd], qd);
    }
  });
}

const std::vector<float>& Forward::run(std::span<BatchItem> batch, const WindowObserver* observer) {
  const int64_t E = c_.n_embd, qd = c_.q_dim(), kvd = c_.kv_dim(), ff = c_.n_ff;
  row_of_item_.assign(batch.size() + 1, 0);
  out_rows_.clear();
  for (size_t i = 0; i < batch.size(); ++i) {
    if (batch[i].tokens.empty()) throw std::invalid_argument("forward: a batch item has no tokens");
    row_of_item_[i + 1] = row_of_item_[i] + int64_t(batch[i].tokens.size());
    for (int64_t r = batch[i].all_logits ? row_of_item_[i] : row_of_item_[i + 1] - 1;
         r < row_of_item_[i + 1]; ++r)
      out_rows_.push_back(r);
  }
  const int64_t rows = row_of_item_.back();
  if (batching_ == kernels::Batching::Invariant) {
    steps_.set_segments(LayerSteps::item_segments(row_of_item_));
  }
  x_.resize(size_t(rows * E));
  xn_.resize(size_t(rows * E));
  q_.resize(size_t(rows * qd));
  k_.resize(size_t(rows * kvd));
  v_.resize(size_t(rows * kvd));
  att_.resize(size_t(rows * qd));
  ff_gate_.resize(size_t(rows * ff));
  ff_up_.resize(size_t(rows * ff));

  for (size_t i = 0; i < batch.size(); ++i)
    steps_.embed(w_.tok_embd, batch[i].tokens, &x_[row_of_item_[i] * E]);

  auto tap = [&](const char* name, int l, const std::vector<float>& v, int64_t cols) {
    if (tap_) tap_(l < 0 ? name : name + ("-" + std::to_string(l)), v.data(), rows, cols);
  };
  tap("inp_embd", -1, x_, E);
  for (int l = 0; l < c_.n_layers; ++l) {
    const LayerWeights& L = w_.layers[size_t(l)];
    // Attention block.
    steps_.norm(L.attn_norm, x_.data(), rows, xn_.data());
    tap("attn_norm", l, xn_, E);
    steps_.qkv(L.wq, L.wk, L.wv, L.bq, L.bk, L.bv, xn_.data(), rows, q_.data(), k_.data(),
               v_.data());
    tap("Qcur_norope", l, q_, qd);
    for (size_t i = 0; i < batch.size(); ++i) {
      const int64_t row0 = row_of_item_[i];
      steps_.rope(&q_[row0 * qd], c_.n_heads, &k_[row0 * kvd], c_.n_kv_heads,
                  int64_t(batch[i].tokens.size()), batch[i].cache->n_past);
    }
    tap("Qcur", l, q_, qd);
    tap("Kcur", l, k_, kvd);
    tap("Vcur", l, v_, kvd);
    attention(batch, l, observer);
    tap("kqv_out", l, att_, qd);
    steps_.output_projection(L.wo, att_.data(), rows, xn_.data());
    tap("attn_out", l, xn_, E);
    steps_.residual(x_.data(), xn_.data(), rows);
    tap("ffn_inp", l, x_, E);
    // MLP block (SwiGLU).
    steps_.norm(L.ffn_norm, x_.data(), rows, xn_.data());
    tap("ffn_norm", l, xn_, E);
    steps_.mlp(L.w_gate, L.w_up, L.w_down, xn_.data(), rows, ff_gate_, ff_up_, xn_.data());
    if (tap_) {
      tap("ffn_swiglu", l, ff_gate_, ff);  // silu(gate) * up, in place of gate
      tap("ffn_up", l, ff_up_, ff);
    }
    tap("ffn_out", l, xn_, E);
    steps_.residual(x_.data(), xn_.data(), rows);
    tap("l_out", l, x_, E);
  }
  for (size_t i = 0; i < batch.size(); ++i)
    batch[i].cache->n_past += int64_t(batch[i].tokens.size());

  // Output rows: final norm of the rows that need logits, then the vocabulary projection.
  logits_.resize(out_rows_.size() * size_t(c_.n_vocab));
  steps_.logits(w_.output_norm, w_.output, x_.data(), out_rows_, rows_out_, logits_.data());
  if (tap_) {
    tap_("result_norm", rows_out_.data(), int64_t(out_rows_.size()), E);
    tap_("result_output", logits_.data(), int64_t(out_rows_.size()), c_.n_vocab);
  }
  return logits_;
}

}  // namespace fairkv::model
