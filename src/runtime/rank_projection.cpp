// A rank's linear projections of its units: the query, key and value rows and the Wo columns of
// the units it projects, which are all of its shard's units unless some are token slices it
// serves without projecting them (or units it holds but no longer serves after rebalancing).
#include <algorithm>
#include <utility>
#include <vector>

#include "kernels/ops.h"
#include "runtime/rank_forward.h"

namespace fairkv::runtime {

using model::LayerSteps;

namespace {

// The rows [r0, r1) of m as a matrix of their own.
kernels::WeightMatrix row_block(const kernels::WeightMatrix& m, int64_t r0, int64_t r1) {
  kernels::WeightMatrix b = m;
  b.data = m.row(r0);
  b.rows = r1 - r0;
  b.row_stride = m.stride();
  return b;
}

// The columns [c0, c1) of m as a matrix of their own, when they start on a block boundary.
bool column_block(const kernels::WeightMatrix& m, int64_t c0, int64_t c1,
                  kernels::WeightMatrix* b) {
  const int64_t blk = kernels::block_size(m.type);
  if (c0 % blk != 0 || (c1 - c0) % blk != 0) return false;
  *b = m;
  b->data = static_cast<const uint8_t*>(m.data) + kernels::row_bytes(m.type, c0);
  b->cols = c1 - c0;
  b->row_stride = m.stride();
  return true;
}

// The packed biases of a shard layer, null when the model has none.
const float* bias(const std::vector<float>& b) {
  return b.empty() ? nullptr : b.data();
}

}  // namespace

// q, k, v of the units this rank projects (all of its units unless some are KV-only slices),
// with their biases. The rows of units it does not project stay zero (plus their biases).
void RankForward::project(const ShardLayer& S, int layer, int64_t rows) {
  const auto& runs = runs_[size_t(layer)];
  const bool all = runs.size() == 1 && runs[0].first == 0 && runs[0].second == int(S.units.size());
  if (all) {
    steps_.qkv(S.wq, S.wk, S.wv, bias(S.bq), bias(S.bk), bias(S.bv), xn_.data(), rows, q_.data(),
               k_.data(), v_.data());
    return;
  }
  std::fill(q_.begin(), q_.end(), 0.0f);
  std::fill(k_.begin(), k_.end(), 0.0f);
  std::fill(v_.begin(), v_.end(), 0.0f);
  const int64_t hd = c_.head_dim;
  for (const auto& [i, j] : runs) {
    const HeldUnit& a = S.units[size_t(i)];
    const HeldUnit& b = S.units[size_t(j - 1)];
    auto run = [&](const kernels::WeightMatrix& w, int64_t r0, int64_t r1, std::vector<float>& y) {
      const int64_t n = r1 - r0;
      tmp_.resize(size_t(rows * n));
      steps_.linear(row_block(w, r0, r1), xn_.data(), rows, tmp_.data());
      LayerSteps::scatter(tmp_.data(), rows, n, &y[size_t(r0)], w.rows);
    };
    run(S.wq, a.q_row, b.q_row + b.q_rows, q_);
    run(S.wk, a.kv_row, b.kv_row + hd, k_);
    run(S.wv, a.kv_row, b.kv_row + hd, v_);
  }
  LayerSteps::add_bias(q_.data(), bias(S.bq), rows, int64_t(S.bq.size()));
  LayerSteps::add_bias(k_.data(), bias(S.bk), rows, int64_t(S.bk.size()));
  LayerSteps::add_bias(v_.data(), bias(S.bv), rows, int64_t(S.bv.size()));
}

// y = Wo att over the units this rank projects (a KV-only slice's columns are not read).
void RankForward::apply_wo(const ShardLayer& S, int layer, int64_t rows) {
  const auto& runs = runs_[size_t(layer)];
  const bool all = runs.size() == 1 && runs[0].first == 0 && runs[0].second == int(S.units.size());
  const int64_t E = S.wo.rows, nq = S.wq.rows;
  std::vector<kernels::WeightMatrix> blocks;
  std::vector<std::pair<int64_t, int64_t>> cols;
  bool aligned = !all;
  for (const auto& [i, j] : runs) {
    const int64_t c0 = S.units[size_t(i)].q_row;
    const int64_t c1 = S.units[size_t(j - 1)].q_row + S.units[size_t(j - 1)].q_rows;
    kernels::WeightMatrix b;
    aligned = aligned && column_block(S.wo, c0, c1, &b);
    blocks.push_back(b);
    cols.push_back({c0, c1});
  }
  if (!aligned) {  // the whole Wo: KV-only columns of att_ are zero, so they add nothing
    steps_.output_projection(S.wo, att_.data(), rows, y_.data());
    return;
  }
  std::fill(y_.begin(), y_.end(), 0.0f);
  std::vector<float> x;
  for (size_t k = 0; k < blocks.size(); ++k) {
    const auto [c0, c1] = cols[k];
    x.resize(size_t(rows * (c1 - c0)));
    LayerSteps::gather(&att_[size_t(c0)], nq, rows, c1 - c0, x.data());
    tmp_.resize(size_t(rows * E));
    steps_.output_projection(blocks[k], x.data(), rows, tmp_.data());
    kernels::add(y_.data(), tmp_.data(), rows * E);
  }
}

// The units' attention outputs of every row, in the model's column order (unit by unit, query
// head by query head), on every rank. Each column is written by one rank alone (a batch slice by
// the one serving that row's sequence; a token slice by its tail, after the merge), the others
// add zeros, so the all-reduce moves exact values and its order does not matter.
void RankForward::gather_attention(const ShardLayer& S, int layer, int64_t rows) {
  const int64_t qd = c_.q_dim(), hd = c_.head_dim, nq = S.wq.rows;
  attg_.assign(size_t(rows * qd), 0.0f);
  const auto& projects = projects_[size_t(layer)];
  for (size_t i = 0; i < S.units.size(); ++i) {
    if (!projects[i]) continue;
    const HeldUnit& u = S.units[i];
    const int64_t col = (int64_t(u.head) * c_.group() + u.q0) * hd;
    for (int64_t r = 0; r < rows; ++r)
      std::copy_n(&att_[size_t(r * nq + u.q_row)], u.q_rows, &attg_[size_t(r * qd + col)]);
  }
  all_reduce_sum(attg_.data(), attg_.size());
}

void RankForward::group_queries(std::span<RankItem> batch, int layer, int64_t rows) {
  const auto& views = views_[size_t(layer)];
  const model::LayerWeights& L = full_.layers[size_t(layer)];
  const int64_t hd = c_.head_dim, width = c_.group() * hd;
  group_q_.resize(views.size());
  for (size_t v = 0; v < views.size(); ++v) {
    const UnitView& u = views[v];
    if (!whole_group(u)) continue;
    const int64_t r0 = u.head * width;
    std::vector<float>& q = group_q_[v];
    q.resize(size_t(rows * width));
    steps_.linear(row_block(L.wq, r0, r0 + width), xn_.data(), rows, q.data());
    LayerSteps::add_bias(q.data(), L.bq ? L.bq + r0 : nullptr, rows, width);
    for (size_t i = 0; i < batch.size(); ++i)
      steps_.rope(&q[size_t(row0_[i] * width)], c_.group(), nullptr, 0,
                  int64_t(batch[i].tokens.size()), batch[i].seq->cache.n_past);
  }
}

// The whole SwiGLU rows (rows x n_ff) from every rank's slice of them (ff_ranges_), gathered in
// blocks of the largest slice.
void RankForward::gather_swiglu(int64_t nf, int64_t rows) {
  const int R = comm_.size();
  int64_t block = 0;
  for (const auto& [f0, f1] : ff_ranges_) block = std::max(block, f1 - f0);
  part_.assign(size_t(rows * block), 0.0f);
  if (nf > 0) LayerSteps::copy_rows(ff_gate_.data(), nf, rows, nf, part_.data(), block);
  gathered_.resize(size_t(R) * part_.size());
  all_gather(part_.data(), part_.size() * sizeof(float), gathered_.data());
  ffg_.resize(size_t(rows * c_.n_ff));
  for (int q = 0; q < R; ++q) {
    const auto [f0, f1] = ff_ranges_[size_t(q)];
    LayerSteps::copy_rows(&gathered_[size_t(q) * part_.size()], block, rows, f1 - f0,
                          &ffg_[size_t(f0)], c_.n_ff);
  }
}

// y_ = w x (rows x w.rows) with each output row a whole dot product, as one device computes it:
// rank q computes rows [q * b, (q + 1) * b) of w, b = ceil(w.rows / R) (the last ones fewer), and
// the blocks are all-gathered. Batching and activation rounding are the LayerSteps' own, so a row
// of y is bitwise model::Forward's (kernels::matmul gives a block of rows the whole product's
// bits).
void RankForward::canonical_product(const kernels::WeightMatrix& w, const float* x, int64_t rows) {
  const int R = comm_.size();
  const int64_t E = w.rows, block = (E + R - 1) / R;
  const int64_t e0 = std::min(E, comm_.rank() * block), e1 = std::min(E, e0 + block);
  part_.assign(size_t(rows * block), 0.0f);
  if (e1 > e0) {
    tmp_.resize(size_t(rows * (e1 - e0)));
    steps_.linear(row_block(w, e0, e1), x, rows, tmp_.data());
    LayerSteps::copy_rows(tmp_.data(), e1 - e0, rows, e1 - e0, part_.data(), block);
  }
  gathered_.resize(size_t(R) * part_.size());
  all_gather(part_.data(), part_.size() * sizeof(float), gathered_.data());
  y_.resize(size_t(rows * E));
  for (int q = 0; q < R; ++q) {
    const int64_t q0 = std::min(E, q * block), q1 = std::min(E, q0 + block);
    LayerSteps::copy_rows(&gathered_[size_t(q) * part_.size()], block, rows, q1 - q0,
                          &y_[size_t(q0)], E);
  }
}

}  // namespace fairkv::runtime
