#include "runtime/shard.h"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <stdexcept>
#include <tuple>

#include "kernels/types.h"

namespace fairkv::runtime {

using kernels::DType;
using kernels::WeightMatrix;

const HeldUnit* ShardLayer::find(int head) const {
  for (const HeldUnit& u : units)
    if (u.head == head) return &u;
  return nullptr;
}

std::vector<std::vector<HeldUnit>> held_units(const placement::Placement& p, int rank, int group) {
  std::vector<std::vector<HeldUnit>> out(p.layers.size());
  for (size_t l = 0; l < p.layers.size(); ++l) {
    const auto tail = placement::tail_devices(p.layers[l], p.kv_heads);
    for (const placement::Share& s : p.layers[l].devices[size_t(rank)]) {
      // A token slice other than the tail reads no weights (rank_forward.h): none to hold. Tails
      // never move (rebalancing keeps them), so it never needs them later either.
      if (s.kind == placement::ShareKind::Tokens && tail[size_t(s.head)] != rank) continue;
      HeldUnit u;
      u.head = s.head;
      if (s.kind == placement::ShareKind::Query) {
        std::tie(u.q0, u.q1) = placement::query_heads(s, group);
      } else {
        u.q0 = 0;
        u.q1 = group;
      }
      if (u.q1 > u.q0) out[l].push_back(u);
    }
    std::sort(out[l].begin(), out[l].end(),
              [](const HeldUnit& a, const HeldUnit& b) { return a.head < b.head; });
  }
  return out;
}

void mlp_range(int64_t ff, int rank, int ranks, int64_t align, int64_t* f0, int64_t* f1) {
  // Rounding every boundary to the block keeps quantized down columns whole; when ff is not a
  // whole number of blocks the split is by element and the slices may need dequantizing.
  const int64_t a = (ff % align == 0) ? align : 1;
  const int64_t blocks = ff / a;
  *f0 = blocks * rank / ranks * a;
  *f1 = blocks * (rank + 1) / ranks * a;
}

void vocab_range(int64_t vocab, int rank, int ranks, int64_t* v0, int64_t* v1) {
  const int64_t block = (vocab + ranks - 1) / ranks;
  *v0 = std::min(vocab, block * rank);
  *v1 = std::min(vocab, *v0 + block);
}

namespace {

// Copies rows [r0, r0 + n) of m into dst (same type); returns bytes copied.
size_t copy_rows(const WeightMatrix& m, int64_t r0, int64_t n, uint8_t* dst) {
  const size_t rb = kernels::row_bytes(m.type, m.cols);
  for (int64_t r = 0; r < n; ++r) std::memcpy(dst + size_t(r) * rb, m.row(r0 + r), rb);
  return size_t(n) * rb;
}

bool block_aligned(DType t, int64_t c0, int64_t n) {
  const int64_t b = kernels::block_size(t);
  return c0 % b == 0 && n % b == 0;
}

struct Builder {
  ShardedWeights& s;

  uint8_t* alloc(size_t bytes) {
    s.owned.emplace_back(bytes);
    s.bytes += bytes;
    return s.owned.back().data();
  }

  // Rows (a list of [r0, r0 + n) ranges) of m packed into one matrix of m's type.
  WeightMatrix pack_rows(const WeightMatrix& m,
                         const std::vector<std::pair<int64_t, int64_t>>& rs) {
    int64_t total = 0;
    for (auto [r0, n] : rs) total += n;
    WeightMatrix out{m.type, total, m.cols, nullptr, 0};
    uint8_t* dst = alloc(kernels::row_bytes(m.type, m.cols) * size_t(total));
    out.data = dst;
    for (auto [r0, n] : rs) dst += copy_rows(m, r0, n, dst);
    return out;
  }

  // Column ranges of m packed side by side. Whole quantization blocks are copied as they are;
  // otherwise every row is dequantized and the slice kept in float32.
  WeightMatrix pack_cols(const WeightMatrix& m, const std::vector<std::pair<int64_t, int64_t>>& cs,
                         const std::string& what) {
    int64_t total = 0;
    bool aligned = true;
    for (auto [c0, n] : cs) {
      total += n;
      aligned = aligned && block_aligned(m.type, c0, n);
    }
    if (aligned) {
      WeightMatrix out{m.type, m.rows, total, nullptr, 0};
      const size_t rb = kernels::row_bytes(m.type, total);
      uint8_t* dst = alloc(rb * size_t(m.rows));
      out.data = dst;
      const size_t elt_num = kernels::row_bytes(m.type, kernels::block_size(m.type));
      const int64_t bs = kernels::block_size(m.type);
      for (int64_t r = 0; r < m.rows; ++r) {
        uint8_t* d = dst + size_t(r) * rb;
        for (auto [c0, n] : cs) {
          const size_t len = size_t(n / bs) * elt_num;
          std::memcpy(d, m.row(r) + size_t(c0 / bs) * elt_num, len);
          d += len;
        }
      }
      return out;
    }
    s.notes.push_back(fmt::format("{}: columns are not whole {} blocks of {}; kept as f32", what,
                                  kernels::dtype_name(m.type), kernels::block_size(m.type)));
    WeightMatrix out{DType::F32, m.rows, total, nullptr, 0};
    float* dst = reinterpret_cast<float*>(alloc(sizeof(float) * size_t(m.rows * total)));
    out.data = dst;
    std::vector<float> row(size_t(m.cols));
    for (int64_t r = 0; r < m.rows; ++r) {
      kernels::dequantize_row(m.type, m.row(r), row.data(), m.cols);
      float* d = dst + r * total;
      for (auto [c0, n] : cs) d = std::copy_n(row.data() + c0, n, d);
    }
    return out;
  }
};

}  // namespace

ShardedWeights shard_weights(const model::ModelConfig& c, const model::Weights& w,
                             const placement::Placement& p, int rank) {
  if (int(p.layers.size()) != c.n_layers || p.kv_heads != c.n_kv_heads)
    throw std::invalid_argument(fmt::format(
        "placement '{}' is for {} layers and {} KV heads; the model has {} layers and {} KV heads",
        p.planner, p.layers.size(), p.kv_heads, c.n_layers, c.n_kv_heads));
  if (rank < 0 || rank >= p.devices)
    throw std::invalid_argument(
        fmt::format("rank {} outside the placement's {} devices", rank, p.devices));
  ShardedWeights s;
  s.rank = rank;
  s.ranks = p.devices;
  Builder b{s};
  const int64_t hd = c.head_dim, group = c.group();
  const auto held = held_units(p, rank, int(group));
  const WeightMatrix& down0 = w.layers[0].w_down;
  mlp_range(c.n_ff, rank, p.devices, kernels::block_size(down0.type), &s.ff_begin, &s.ff_end);
  const int64_t f0 = s.ff_begin, nf = s.ff_end - s.ff_begin;
  s.layers.resize(size_t(c.n_layers));
  for (int l = 0; l < c.n_layers; ++l) {
    const model::LayerWeights& L = w.layers[size_t(l)];
    ShardLayer& S = s.layers[size_t(l)];
    S.attn_norm = L.attn_norm;
    S.ffn_norm = L.ffn_norm;
    S.units = held[size_t(l)];
    std::vector<std::pair<int64_t, int64_t>> q_rows, kv_rows;
    int64_t q_at = 0, kv_at = 0;
    for (HeldUnit& u : S.units) {
      u.q_row = q_at;
      u.q_rows = int64_t(u.q1 - u.q0) * hd;
      u.kv_row = kv_at;
      q_rows.emplace_back((u.head * group + u.q0) * hd, u.q_rows);
      kv_rows.emplace_back(u.head * hd, hd);
      q_at += u.q_rows;
      kv_at += hd;
    }
    S.wq = b.pack_rows(L.wq, q_rows);
    S.wk = b.pack_rows(L.wk, kv_rows);
    S.wv = b.pack_rows(L.wv, kv_rows);
    S.wo = b.pack_cols(L.wo, q_rows, fmt::format("blk.{}.attn_output", l));
    auto pack_bias = [&](const float* bias, const std::vector<std::pair<int64_t, int64_t>>& rs,
                         std::vector<float>& out) {
      if (!bias) return;
      for (auto [r0, n] : rs) out.insert(out.end(), bias + r0, bias + r0 + n);
      s.bytes += out.size() * sizeof(float);
    };
    pack_bias(L.bq, q_rows, S.bq);
    pack_bias(L.bk, kv_rows, S.bk);
    pack_bias(L.bv, kv_rows, S.bv);
    S.gate = b.pack_rows(L.w_gate, {{f0, nf}});
    S.up = b.pack_rows(L.w_up, {{f0, nf}});
    S.down = b.pack_cols(L.w_down, {{f0, nf}}, fmt::format("blk.{}.ffn_down", l));
  }
  vocab_range(w.output.rows, rank, p.devices, &s.vocab_begin, &s.vocab_end);
  s.output = b.pack_rows(w.output, {{s.vocab_begin, s.vocab_end - s.vocab_begin}});
  return s;
}

}  // namespace fairkv::runtime
