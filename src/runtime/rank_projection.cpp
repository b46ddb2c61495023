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

}  // namespace fairkv::runtime
