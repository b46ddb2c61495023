#include "runtime/placed_forward.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <limits>
#include <stdexcept>
#include <string>

#include "kernels/matmul.h"
#include "kernels/ops.h"
#include "kv/attention.h"

namespace fairkv::runtime {

using kernels::WeightMatrix;
using placement::ShareKind;

namespace {

// Rows [r0, r0 + n) of a weight matrix (a unit's rows of Wq, Wk, Wv; a slice of gate/up).
WeightMatrix row_view(const WeightMatrix& m, int64_t r0, int64_t n) {
  WeightMatrix v = m;
  v.rows = n;
  v.data = m.row(r0);
  v.row_stride = m.stride();
  return v;
}

// Columns [c0, c0 + n) (a unit's columns of Wo, a slice of down): quantized blocks cannot be cut.
WeightMatrix col_view(const WeightMatrix& m, int64_t c0, int64_t n, const char* what) {
  const int64_t b = kernels::block_size(m.type);
  if (c0 % b != 0 || n % b != 0)
    throw std::invalid_argument(std::string(what) + ": a column slice at " + std::to_string(c0) +
                                " of " + std::to_string(n) + " is not aligned to the " +
                                kernels::dtype_name(m.type) + " block of " + std::to_string(b));
  WeightMatrix v = m;
  v.cols = n;
  v.data = static_cast<const uint8_t*>(m.data) + kernels::row_bytes(m.type, c0);
  v.row_stride = m.stride();
  return v;
}

int64_t part(double fraction, int64_t n) {
  return int64_t(std::llround(fraction * double(n)));
}

bool is_tail(const placement::Share& s) {
  return s.offset + s.share >= 1 - 1e-9;
}

}  // namespace

PlacedSequence::PlacedSequence(const model::ModelConfig& c, kv::KvType type)
    : cache(c.n_layers, c.n_kv_heads, c.head_dim, type),
      slice_begin(size_t(c.n_layers) * size_t(c.n_kv_heads), 0) {}

PlacedForward::PlacedForward(const model::ModelConfig& c, const model::Weights& w,
                             const placement::Placement& p, Communicator& comm,
                             kernels::ThreadPool& pool)
    : c_(c), w_(w), p_(p), comm_(comm), pool_(pool) {
  if (p.devices != comm.size())
    throw std::invalid_argument("placement: " + std::to_string(p.devices) + " devices, but " +
                                std::to_string(comm.size()) + " ranks run");
  if (int(p.layers.size()) != c.n_layers || p.kv_heads != c.n_kv_heads)
    throw std::invalid_argument("placement: " + std::to_string(p.layers.size()) + " layers x " +
                                std::to_string(p.kv_heads) + " KV heads, but the model has " +
                                std::to_string(c.n_layers) + " x " + std::to_string(c.n_kv_heads));
  const int R = comm.size(), r = comm.rank();
  // The MLP by the usual split: a contiguous run of the hidden units, cut at block boundaries.
  const int64_t blk = kernels::block_size(w.layers[0].w_down.type);
  const int64_t nb = c.n_ff / blk;
  ff_begin_ = nb * r / R * blk;
  ff_end_ = r + 1 == R ? c.n_ff : nb * (r + 1) / R * blk;
  const int64_t nf = ff_end_ - ff_begin_;
  for (const auto& L : w.layers) {
    gate_.push_back(row_view(L.w_gate, ff_begin_, nf));
    up_.push_back(row_view(L.w_up, ff_begin_, nf));
    down_.push_back(col_view(L.w_down, ff_begin_, nf, "ffn_down"));
    weight_bytes_ += 2 * kernels::row_bytes(L.w_gate.type, c.n_embd) * size_t(nf) +
                     kernels::row_bytes(L.w_down.type, nf) * size_t(c.n_embd);
  }
  const int64_t G = c.group(), hd = c.head_dim;
  for (int l = 0; l < c.n_layers; ++l) {
    const auto& L = w.layers[size_t(l)];
    for (const auto& s : p.layers[size_t(l)].devices[size_t(r)]) {
      const int64_t nq =
          s.kind == ShareKind::Query ? part(s.offset + s.share, G) - part(s.offset, G) : G;
      weight_bytes_ += kernels::row_bytes(L.wq.type, c.n_embd) * size_t(nq * hd) +
                       2 * kernels::row_bytes(L.wk.type, c.n_embd) * size_t(hd) +
                       kernels::row_bytes(L.wo.type, nq * hd) * size_t(c.n_embd);
    }
  }
}

void PlacedForward::attention(std::span<PlacedItem> batch, int layer) {
  const auto& L = w_.layers[size_t(layer)];
  const int64_t G = c_.group(), hd = c_.head_dim, E = c_.n_embd, H = c_.n_kv_heads;
  const int64_t B = int64_t(batch.size()), rows = row0_.back();
  const float scale = 1.0f / std::sqrt(float(hd));
  const auto& shares = p_.layers[size_t(layer)].devices[size_t(comm_.rank())];
  bool any_tokens = false;
  for (const auto& dev : p_.layers[size_t(layer)].devices)
    for (const auto& s : dev) any_tokens |= s.kind == ShareKind::Tokens;

  struct Part {
    const placement::Share* s;
    int64_t qb, nq, sb, se;
    std::vector<float> out;  // rows of sequences [sb, se) x nq x hd
  };
  std::vector<Part> parts;
  const float ninf = -std::numeric_limits<float>::infinity();
  std::vector<float> lse_mine(any_tokens ? size_t(H * rows * G) : 0, ninf);
  std::vector<float> q, k, v, lse;
  for (const auto& s : shares) {
    Part pt{&s, 0, G, 0, B, {}};
    if (s.kind == ShareKind::Query) {
      pt.qb = part(s.offset, G);
      pt.nq = part(s.offset + s.share, G) - pt.qb;
    }
    if (s.kind == ShareKind::Batch) {
      pt.sb = part(s.offset, B);
      pt.se = part(s.offset + s.share, B);
    }
    const int64_t r0 = row0_[size_t(pt.sb)], n = row0_[size_t(pt.se)] - r0;
    if (pt.nq <= 0 || n <= 0) continue;
    const int h = s.head;
    q.resize(size_t(n * pt.nq * hd));
    k.resize(size_t(n * hd));
    v.resize(size_t(n * hd));
    const float* xin = &xn_[size_t(r0 * E)];
    kernels::matmul(row_view(L.wq, (h * G + pt.qb) * hd, pt.nq * hd), xin, n, q.data(), pool_);
    kernels::matmul(row_view(L.wk, h * hd, hd), xin, n, k.data(), pool_);
    kernels::matmul(row_view(L.wv, h * hd, hd), xin, n, v.data(), pool_);
    for (int64_t t = 0; t < n; ++t) {
      if (L.bq) kernels::add(&q[size_t(t * pt.nq * hd)], L.bq + (h * G + pt.qb) * hd, pt.nq * hd);
      if (L.bk) kernels::add(&k[size_t(t * hd)], L.bk + h * hd, hd);
      if (L.bv) kernels::add(&v[size_t(t * hd)], L.bv + h * hd, hd);
    }
    pt.out.assign(size_t(n * pt.nq * hd), 0.0f);
    lse.resize(size_t(n * pt.nq));
    for (int64_t i = pt.sb; i < pt.se; ++i) {
      PlacedSequence& seq = *batch[size_t(i)].seq;
      const int64_t past = seq.cache.n_past, t0 = row0_[size_t(i)] - r0;
      const int64_t nt = row0_[size_t(i) + 1] - row0_[size_t(i)];
      for (int64_t t = 0; t < nt; ++t) {
        for (int64_t g = 0; g < pt.nq; ++g)
          kernels::rope(&q[size_t(((t0 + t) * pt.nq + g) * hd)], hd, past + t, c_.rope_base,
                        c_.rope_style);
        kernels::rope(&k[size_t((t0 + t) * hd)], hd, past + t, c_.rope_base, c_.rope_style);
      }
      kv::HeadStore& store = seq.cache.head(layer, h);
      int64_t& begin = seq.slice_begin[size_t(layer * H + h)];
      // Which new rows this rank keeps: a token slice takes its part of the prompt, and later
      // tokens go to the tail slice; every other kind keeps them all.
      int64_t keep_from = 0, keep_to = nt;
      if (s.kind == ShareKind::Tokens) {
        if (past == 0) {
          keep_from = part(s.offset, nt);
          keep_to = is_tail(s) ? nt : part(s.offset + s.share, nt);
          begin = keep_from;
        } else if (!is_tail(s)) {
          keep_to = 0;
        }
      }
      if (keep_to > keep_from)
        store.append(&k[size_t((t0 + keep_from) * hd)], &v[size_t((t0 + keep_from) * hd)],
                     keep_to - keep_from);
      kv::AttentionArgs a;
      a.store = &store;
      a.q = &q[size_t(t0 * pt.nq * hd)];
      a.n_tokens = nt;
      a.group = int(pt.nq);
      a.scale = scale;
      a.visible = past - begin;  // the store's row j holds position begin + j
      a.out = &pt.out[size_t(t0 * pt.nq * hd)];
      a.lse = &lse[size_t(t0 * pt.nq)];
      kv::attend(a);
      if (s.kind == ShareKind::Tokens)
        for (int64_t t = 0; t < nt; ++t)
          for (int64_t g = 0; g < pt.nq; ++g)
            lse_mine[size_t((h * rows + row0_[size_t(i)] + t) * G + pt.qb + g)] =
                lse[size_t((t0 + t) * pt.nq + g)];
    }
    parts.push_back(std::move(pt));
  }

  // Token slices: each rank scales its partial output by exp(lse_mine - L), L the log-sum-exp
  // over the ranks, so that the Wo products summed by the all-reduce are the exact attention.
  if (any_tokens) {
    const int R = comm_.size();
    std::vector<float> all(lse_mine.size() * size_t(R));
    comm_.all_gather(lse_mine.data(), lse_mine.size() * sizeof(float), all.data());
    for (auto& pt : parts) {
      if (pt.s->kind != ShareKind::Tokens) continue;
      const int h = pt.s->head;
      for (int64_t row = 0; row < rows; ++row)
        for (int64_t g = 0; g < G; ++g) {
          const size_t idx = size_t((h * rows + row) * G + g);
          float mx = ninf;
          for (int r = 0; r < R; ++r) mx = std::max(mx, all[size_t(r) * lse_mine.size() + idx]);
          double sum = 0;
          for (int r = 0; r < R; ++r)
            sum += std::exp(double(all[size_t(r) * lse_mine.size() + idx]) - mx);
          const float w =
              lse_mine[idx] == ninf ? 0.0f : float(std::exp(double(lse_mine[idx]) - mx) / sum);
          float* o = &pt.out[size_t((row * G + g) * hd)];
          for (int64_t d = 0; d < hd; ++d) o[d] *= w;
        }
    }
  }

  // This rank's share of the attention output projection.
  std::fill(y_.begin(), y_.end(), 0.0f);
  std::vector<float> tmp;
  for (const auto& pt : parts) {
    const int64_t r0 = row0_[size_t(pt.sb)], n = row0_[size_t(pt.se)] - r0;
    tmp.resize(size_t(n * E));
    kernels::matmul(col_view(L.wo, (pt.s->head * G + pt.qb) * hd, pt.nq * hd, "attn_output"),
                    pt.out.data(), n, tmp.data(), pool_);
    kernels::add(&y_[size_t(r0 * E)], tmp.data(), n * E);
  }
}

const std::vector<float>& PlacedForward::run(std::span<PlacedItem> batch) {
  const int64_t E = c_.n_embd, nf = ff_end_ - ff_begin_;
  row0_.assign(batch.size() + 1, 0);
  for (size_t i = 0; i < batch.size(); ++i) {
    if (batch[i].tokens.empty()) throw std::invalid_argument("a batch item has no tokens");
    row0_[i + 1] = row0_[i] + int64_t(batch[i].tokens.size());
  }
  const int64_t rows = row0_.back();
  x_.resize(size_t(rows * E));
  xn_.resize(size_t(rows * E));
  y_.resize(size_t(rows * E));
  ff_gate_.resize(size_t(rows * nf));
  ff_up_.resize(size_t(rows * nf));
  for (size_t i = 0; i < batch.size(); ++i)
    for (size_t t = 0; t < batch[i].tokens.size(); ++t) {
      const int32_t tok = batch[i].tokens[t];
      if (tok < 0 || tok >= c_.n_vocab)
        throw std::out_of_range("token id " + std::to_string(tok) + " outside the vocabulary");
      kernels::dequantize_row(w_.tok_embd.type, w_.tok_embd.row(tok),
                              &x_[size_t((row0_[i] + int64_t(t)) * E)], E);
    }
  for (int l = 0; l < c_.n_layers; ++l) {
    const auto t0 = std::chrono::steady_clock::now();
    const auto& L = w_.layers[size_t(l)];
    for (int64_t r = 0; r < rows; ++r)
      kernels::rmsnorm(&xn_[size_t(r * E)], &x_[size_t(r * E)], L.attn_norm, E, c_.norm_eps);
    attention(batch, l);
    comm_.all_reduce_sum(y_.data(), y_.size());
    kernels::add(x_.data(), y_.data(), rows * E);
    for (int64_t r = 0; r < rows; ++r)
      kernels::rmsnorm(&xn_[size_t(r * E)], &x_[size_t(r * E)], L.ffn_norm, E, c_.norm_eps);
    kernels::matmul(gate_[size_t(l)], xn_.data(), rows, ff_gate_.data(), pool_);
    kernels::matmul(up_[size_t(l)], xn_.data(), rows, ff_up_.data(), pool_);
    kernels::silu_mul(ff_gate_.data(), ff_up_.data(), rows * nf);
    kernels::matmul(down_[size_t(l)], ff_gate_.data(), rows, y_.data(), pool_);
    comm_.all_reduce_sum(y_.data(), y_.size());
    kernels::add(x_.data(), y_.data(), rows * E);
    if (layer_ms_)
      (*layer_ms_)[size_t(l)] +=
          std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
  }
  for (size_t i = 0; i < batch.size(); ++i)
    batch[i].seq->cache.n_past += int64_t(batch[i].tokens.size());
  // Every rank computes the same logits (replicated output layer).
  rows_out_.resize(batch.size() * size_t(E));
  for (size_t i = 0; i < batch.size(); ++i)
    kernels::rmsnorm(&rows_out_[i * size_t(E)], &x_[size_t((row0_[i + 1] - 1) * E)], w_.output_norm,
                     E, c_.norm_eps);
  logits_.resize(batch.size() * size_t(c_.n_vocab));
  kernels::matmul(w_.output, rows_out_.data(), int64_t(batch.size()), logits_.data(), pool_);
  return logits_;
}

}  // namespace fairkv::runtime
