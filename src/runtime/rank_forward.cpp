#include "runtime/rank_forward.h"

#include <fmt/format.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <limits>
#include <stdexcept>

#include "kernels/clock.h"
#include "kernels/matmul.h"
#include "kernels/ops.h"
#include "kv/attention.h"

namespace fairkv::runtime {

using placement::ShareKind;

RankSequence::RankSequence(const model::ModelConfig& c, kv::KvType type, int slot)
    : cache(c.n_layers, c.n_kv_heads, c.head_dim, type), slot(slot) {}

void SegmentTimes::clear(int layers) {
  attention_ms.assign(size_t(layers), 0.0);
  mlp_ms.assign(size_t(layers), 0.0);
  collective_ms = 0;
}

namespace {

using kernels::Clock;
using kernels::ms_between;

constexpr float kNegInf = -std::numeric_limits<float>::infinity();

// [layer][head] -> the unit's parts in device order.
std::vector<std::vector<std::vector<UnitPart>>> unit_parts(const placement::Placement& p) {
  std::vector<std::vector<std::vector<UnitPart>>> parts(p.layers.size());
  for (size_t l = 0; l < p.layers.size(); ++l) {
    parts[l].resize(size_t(p.kv_heads));
    for (int d = 0; d < p.devices; ++d)
      for (const placement::Share& s : p.layers[l].devices[size_t(d)])
        parts[l][size_t(s.head)].push_back({d, s});
  }
  return parts;
}

const UnitPart* part_of(const std::vector<UnitPart>& parts, int device) {
  for (const UnitPart& u : parts)
    if (u.device == device) return &u;
  return nullptr;
}

// The device that serves batch slot `slot` of a unit split by sequences.
int batch_owner(const std::vector<UnitPart>& parts, int slot, int n_slots) {
  const double x = (slot + 0.5) / n_slots;
  int owner = parts.front().device;
  for (const UnitPart& u : parts)
    if (u.share.offset <= x) owner = u.device;
  return owner;
}

// What a rank does for one unit and one sequence.
struct Role {
  bool serve = false;   // computes attention over its rows
  bool append = false;  // stores the new tokens' keys and values
};

Role role_of(const std::vector<UnitPart>& parts, int rank, int slot, int n_slots) {
  const UnitPart* mine = part_of(parts, rank);
  if (!mine) return {};
  switch (mine->share.kind) {
    case ShareKind::Whole:
    case ShareKind::Query:
      return {true, true};
    case ShareKind::Batch: {
      const bool own = batch_owner(parts, slot, n_slots) == rank;
      return {own, own};
    }
    case ShareKind::Tokens:
      return {true, parts.back().device == rank};
  }
  return {};
}

void add_bias(float* y, const std::vector<float>& b, int64_t rows) {
  if (b.empty()) return;
  const int64_t dim = int64_t(b.size());
  for (int64_t r = 0; r < rows; ++r) kernels::add(y + r * dim, b.data(), dim);
}

}  // namespace

RankForward::RankForward(const model::ModelConfig& c, const model::Weights& full,
                         const ShardedWeights& shard, const placement::Placement& p,
                         comm::Communicator& comm, kernels::ThreadPool& pool,
                         kernels::Activations act)
    : c_(c), full_(full), shard_(shard), comm_(comm), pool_(pool), act_(act) {
  if (p.devices != comm.size())
    throw std::invalid_argument(
        fmt::format("placement '{}' is for {} devices, the job has {} ranks", p.planner, p.devices,
                    comm.size()));
  if (shard.rank != comm.rank() || shard.ranks != comm.size())
    throw std::invalid_argument(fmt::format("shard of rank {} of {} used by rank {} of {}",
                                            shard.rank, shard.ranks, comm.rank(), comm.size()));
  if (int(p.layers.size()) != c.n_layers || p.kv_heads != c.n_kv_heads)
    throw std::invalid_argument(fmt::format(
        "placement '{}' is for {} layers and {} KV heads; the model has {} layers and {} KV heads",
        p.planner, p.layers.size(), p.kv_heads, c.n_layers, c.n_kv_heads));
  set_placement(p);
}

void RankForward::set_placement(const placement::Placement& p) {
  const auto held = held_units(p, comm_.rank(), c_.group());
  for (int l = 0; l < c_.n_layers; ++l)
    for (const HeldUnit& u : held[size_t(l)]) {
      const HeldUnit* w = shard_.layers[size_t(l)].find(u.head);
      if (!w || w->q0 != u.q0 || w->q1 != u.q1)
        throw std::invalid_argument(fmt::format(
            "placement '{}' gives rank {} unit (layer {}, head {}) whose weights it does not hold",
            p.planner, comm_.rank(), l, u.head));
    }
  p_ = p;
  build_parts();
}

void RankForward::build_parts() {
  parts_ = unit_parts(p_);
  split_heads_.assign(size_t(c_.n_layers), {});
  for (int l = 0; l < c_.n_layers; ++l)
    for (int h = 0; h < c_.n_kv_heads; ++h) {
      const auto& parts = parts_[size_t(l)][size_t(h)];
      if (parts.empty())
        throw std::invalid_argument(
            fmt::format("placement '{}': unit (layer {}, head {}) is "
                        "served by no device",
                        p_.planner, l, h));
      if (std::any_of(parts.begin(), parts.end(),
                      [](const UnitPart& u) { return u.share.kind == ShareKind::Tokens; }))
        split_heads_[size_t(l)].push_back(h);
    }
  const int rank = comm_.rank();
  views_.assign(size_t(c_.n_layers), {});
  kv_only_cols_.assign(size_t(c_.n_layers), 0);
  for (int l = 0; l < c_.n_layers; ++l) {
    const ShardLayer& S = shard_.layers[size_t(l)];
    auto& views = views_[size_t(l)];
    for (const HeldUnit& u : S.units)
      views.push_back({u.head, u.q0, u.q1, u.q_rows, u.q_row, u.kv_row, true});
    for (int h = 0; h < c_.n_kv_heads; ++h) {
      const UnitPart* mine = part_of(parts_[size_t(l)][size_t(h)], rank);
      if (!mine || S.find(h)) continue;
      // Served without weights: a token slice that is not the tail (held_units leaves it out).
      if (mine->share.kind != ShareKind::Tokens ||
          parts_[size_t(l)][size_t(h)].back().device == rank)
        throw std::logic_error(
            fmt::format("rank {} serves unit (layer {}, head {}) without its weights", rank, l, h));
      const int64_t qr = c_.group() * c_.head_dim;
      views.push_back({h, 0, c_.group(), qr, kv_only_cols_[size_t(l)], -1, false});
      kv_only_cols_[size_t(l)] += qr;
    }
  }
  projects_.assign(size_t(c_.n_layers), {});
  runs_.assign(size_t(c_.n_layers), {});
  for (int l = 0; l < c_.n_layers; ++l) {
    const auto& units = shard_.layers[size_t(l)].units;
    auto& projects = projects_[size_t(l)];
    projects.assign(units.size(), 0);
    for (size_t i = 0; i < units.size(); ++i) {
      const auto& parts = parts_[size_t(l)][size_t(units[i].head)];
      const UnitPart* mine = part_of(parts, rank);
      projects[i] = mine && (mine->share.kind != ShareKind::Tokens || parts.back().device == rank);
    }
    for (size_t i = 0; i < units.size();) {
      if (!projects[i]) {
        ++i;
        continue;
      }
      size_t j = i;
      while (j < units.size() && projects[j]) ++j;
      runs_[size_t(l)].push_back({int(i), int(j)});
      i = j;
    }
  }
}

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

}  // namespace

// q, k, v of the units this rank projects (all of its units unless some are KV-only slices).
void RankForward::project(const ShardLayer& S, int layer, int64_t rows) {
  const auto& runs = runs_[size_t(layer)];
  const bool all = runs.size() == 1 && runs[0].first == 0 && runs[0].second == int(S.units.size());
  if (all) {
    kernels::matmul(S.wq, xn_.data(), rows, q_.data(), pool_, act_);
    kernels::matmul(S.wk, xn_.data(), rows, k_.data(), pool_, act_);
    kernels::matmul(S.wv, xn_.data(), rows, v_.data(), pool_, act_);
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
      kernels::matmul(row_block(w, r0, r1), xn_.data(), rows, tmp_.data(), pool_, act_);
      for (int64_t t = 0; t < rows; ++t)
        std::copy_n(&tmp_[size_t(t * n)], n, &y[size_t(t * w.rows + r0)]);
    };
    run(S.wq, a.q_row, b.q_row + b.q_rows, q_);
    run(S.wk, a.kv_row, b.kv_row + hd, k_);
    run(S.wv, a.kv_row, b.kv_row + hd, v_);
  }
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
    kernels::matmul(S.wo, att_.data(), rows, y_.data(), pool_, act_);
    return;
  }
  std::fill(y_.begin(), y_.end(), 0.0f);
  std::vector<float> x;
  for (size_t k = 0; k < blocks.size(); ++k) {
    const auto [c0, c1] = cols[k];
    x.resize(size_t(rows * (c1 - c0)));
    for (int64_t t = 0; t < rows; ++t)
      std::copy_n(&att_[size_t(t * nq + c0)], c1 - c0, &x[size_t(t * (c1 - c0))]);
    tmp_.resize(size_t(rows * E));
    kernels::matmul(blocks[k], x.data(), rows, tmp_.data(), pool_, act_);
    kernels::add(y_.data(), tmp_.data(), rows * E);
  }
}

void RankForward::attention(std::span<RankItem> batch, int layer, int n_slots,
                            const RankWindowObserver* observer) {
  const ShardLayer& S = shard_.layers[size_t(layer)];
  const int64_t hd = c_.head_dim, group = c_.group();
  const int64_t nq = S.wq.rows, nkv = S.wk.rows;
  const int64_t rows = row0_.back();
  const float scale = 1.0f / std::sqrt(float(hd));
  const auto& splits = split_heads_[size_t(layer)];
  const int64_t n_split = int64_t(splits.size());
  const int rank = comm_.rank();
  const auto& views = views_[size_t(layer)];
  const int64_t nk = kv_only_cols_[size_t(layer)];
  std::fill(att_.begin(), att_.end(), 0.0f);
  qk_.assign(size_t(rows * nk), 0.0f);
  attk_.assign(size_t(rows * nk), 0.0f);
  // A unit's queries and outputs of row r, wherever the view keeps them.
  auto q_at = [&](const UnitView& u, int64_t r) {
    return u.held ? &q_[r * nq + u.q_col] : &qk_[r * nk + u.q_col];
  };
  auto att_at = [&](const UnitView& u, int64_t r) {
    return u.held ? &att_[r * nq + u.q_col] : &attk_[r * nk + u.q_col];
  };
  auto view_of = [&](int head) -> const UnitView* {
    for (const UnitView& u : views)
      if (u.head == head) return &u;
    return nullptr;
  };
  auto is_tail = [&](int head) {
    return parts_[size_t(layer)][size_t(head)].back().device == rank;
  };
  // Token slices' queries: the tail projected them; the other slices receive them.
  if (n_split > 0) {
    const int64_t qrow = group * hd;  // a token slice serves the whole group
    qx_.assign(size_t(n_split * rows * qrow), 0.0f);
    for (int64_t si = 0; si < n_split; ++si) {
      const UnitView* u = view_of(splits[size_t(si)]);
      if (!u || !is_tail(u->head)) continue;
      for (int64_t r = 0; r < rows; ++r)
        std::copy_n(q_at(*u, r), qrow, &qx_[size_t((si * rows + r) * qrow)]);
    }
    const auto t0 = Clock::now();
    comm_.all_reduce_sum(qx_.data(), qx_.size());
    if (timing) timing->collective_ms += ms_between(t0, Clock::now());
    for (int64_t si = 0; si < n_split; ++si) {
      const UnitView* u = view_of(splits[size_t(si)]);
      if (!u || is_tail(u->head)) continue;
      for (int64_t r = 0; r < rows; ++r)
        std::copy_n(&qx_[size_t((si * rows + r) * qrow)], qrow, q_at(*u, r));
    }
  }
  lse_.assign(size_t(n_split * rows * group), kNegInf);
  const int64_t n_units = int64_t(views.size());
  const int64_t n_tasks = int64_t(batch.size()) * n_units;
  if (int64_t(tasks_.size()) < n_tasks) tasks_.resize(size_t(n_tasks));
  // Phase 1: each (sequence, unit) gathers its queries and appends its new keys and values.
  // Decode attention then runs as one batch over the pool (attend_batch cuts long single-token
  // calls into token slices when there are fewer calls than threads); a prefill that is observed
  // attends in place, since the observer needs the window's probabilities.
  pool_.parallel_for(n_tasks, [&](int64_t begin, int64_t end, int) {
    for (int64_t task = begin; task < end; ++task) {
      const size_t item = size_t(task / n_units);
      const UnitView& u = views[size_t(task % n_units)];
      const auto& parts = parts_[size_t(layer)][size_t(u.head)];
      RankItem& it = batch[item];
      Task& s = tasks_[size_t(task)];
      s.active = false;
      const Role role = role_of(parts, rank, it.seq->slot, n_slots);
      if (!role.serve) continue;
      const int64_t n = int64_t(it.tokens.size());
      const int64_t row0 = row0_[item];
      const int64_t qh = u.q1 - u.q0;
      kv::HeadStore& store = it.seq->cache.head(layer, u.head);
      s.q.resize(size_t(n * u.q_rows));
      s.out.assign(size_t(n * u.q_rows), 0.0f);
      s.lse.assign(size_t(n * qh), kNegInf);
      for (int64_t t = 0; t < n; ++t) std::copy_n(q_at(u, row0 + t), u.q_rows, &s.q[t * u.q_rows]);
      const int64_t before = store.size();
      if (role.append) {  // never a KV-only view: appending is the tail's (or a whole unit's)
        s.k.resize(size_t(n * hd));
        s.v.resize(size_t(n * hd));
        for (int64_t t = 0; t < n; ++t) {
          std::copy_n(&k_[(row0 + t) * nkv + u.kv_row], hd, &s.k[t * hd]);
          std::copy_n(&v_[(row0 + t) * nkv + u.kv_row], hd, &s.v[t * hd]);
        }
        store.append(s.k.data(), s.v.data(), n);
      }
      s.served = true;
      s.active = store.size() > 0;
      if (!s.active) continue;  // holds no rows yet: output 0, lse -inf
      kv::AttentionArgs& a = s.args;
      a = kv::AttentionArgs{};
      a.store = &store;
      a.q = s.q.data();
      a.n_tokens = n;
      a.group = int(qh);
      a.scale = scale;
      // A part that did not append holds only rows older than every new token.
      a.visible = role.append ? before : store.size();
      a.out = s.out.data();
      a.lse = s.lse.data();
      // The prompt's rows all sit on the rank that appended them: it observes the window.
      const bool observe = observer && observer->observe && role.append && n > 1;
      if (!observer) continue;
      s.active = false;  // attended here
      if (observe) {
        a.probs_tokens = std::min(observer->window, n);
        s.probs.assign(size_t(a.probs_tokens * qh * store.size()), 0.0f);
        a.probs = s.probs.data();
      }
      kv::attend(a);
      if (observe) {
        // attend writes token-major (window x heads x n); observers want head-major.
        const int64_t w = a.probs_tokens, len = store.size();
        s.by_head.resize(size_t(qh * w * len));
        for (int64_t t = 0; t < w; ++t)
          for (int64_t g = 0; g < qh; ++g)
            std::copy_n(&s.probs[size_t((t * qh + g) * len)], len,
                        &s.by_head[size_t((g * w + t) * len)]);
        observer->observe(item, layer, u.head, u.q0, u.q1, s.by_head.data(), w, len);
      }
    }
  });
  calls_.clear();
  for (int64_t task = 0; task < n_tasks; ++task)
    if (tasks_[size_t(task)].active) calls_.push_back(tasks_[size_t(task)].args);
  if (!calls_.empty()) kv::attend_batch(calls_, pool_);
  // Phase 3: outputs (and log-sum-exps of token slices) into the layer's rows.
  pool_.parallel_for(n_tasks, [&](int64_t begin, int64_t end, int) {
    for (int64_t task = begin; task < end; ++task) {
      Task& s = tasks_[size_t(task)];
      if (!s.served) continue;
      s.served = false;
      const size_t item = size_t(task / n_units);
      const UnitView& u = views[size_t(task % n_units)];
      const int64_t n = int64_t(batch[item].tokens.size()), row0 = row0_[item];
      const int64_t qh = u.q1 - u.q0;
      for (int64_t t = 0; t < n; ++t)
        std::copy_n(&s.out[t * u.q_rows], u.q_rows, att_at(u, row0 + t));
      const auto at = std::find(splits.begin(), splits.end(), u.head);
      if (at != splits.end()) {
        const int64_t si = at - splits.begin();
        for (int64_t t = 0; t < n; ++t)
          std::copy_n(&s.lse[t * qh], qh, &lse_[(si * rows + row0 + t) * group]);
      }
    }
  });
  if (n_split == 0) return;
  // Token slices: each part's output is exact for its rows. The parts' log-sum-exps are gathered
  // (one float per split unit, row and query head), so that every rank knows L, the log-sum-exp
  // over parts; each part scales its output by exp(lse_r - L) and one all-reduce sums them into
  // the attention over all rows, to which the tail alone applies Wo. (Gathering the outputs
  // instead moves R times the bytes.)
  const int R = comm_.size();
  const size_t n_lse = size_t(n_split * rows * group);
  lse_all_.resize(n_lse * size_t(R));
  auto t0 = Clock::now();
  comm_.all_gather(lse_.data(), n_lse * sizeof(float), lse_all_.data());
  if (timing) timing->collective_ms += ms_between(t0, Clock::now());
  const int64_t qrow = group * hd;
  tmp_.assign(size_t(n_split * rows * qrow), 0.0f);
  for (int64_t si = 0; si < n_split; ++si) {
    const UnitView* u = view_of(splits[size_t(si)]);
    if (!u) continue;
    for (int64_t r = 0; r < rows; ++r)
      for (int64_t g = 0; g < group; ++g) {
        const size_t at = size_t((si * rows + r) * group + g);
        float* out = att_at(*u, r) + g * hd;
        const float mine = lse_[at];
        if (mine != kNegInf) {
          float m = kNegInf;
          for (int q = 0; q < R; ++q) m = std::max(m, lse_all_[size_t(q) * n_lse + at]);
          double sum = 0;
          for (int q = 0; q < R; ++q) sum += std::exp(double(lse_all_[size_t(q) * n_lse + at] - m));
          const float w = float(std::exp(double(mine - m)) / sum);
          float* dst = &tmp_[at * size_t(hd)];
          for (int64_t e = 0; e < hd; ++e) dst[e] = w * out[e];
        }
        if (u->held) std::fill_n(out, hd, 0.0f);
      }
  }
  t0 = Clock::now();
  comm_.all_reduce_sum(tmp_.data(), tmp_.size());
  if (timing) timing->collective_ms += ms_between(t0, Clock::now());
  for (int64_t si = 0; si < n_split; ++si) {
    const UnitView* u = view_of(splits[size_t(si)]);
    if (!u || !u->held || !is_tail(u->head)) continue;  // the tail applies Wo to the merged output
    for (int64_t r = 0; r < rows; ++r)
      std::copy_n(&tmp_[size_t((si * rows + r) * qrow)], qrow, att_at(*u, r));
  }
}

const std::vector<float>& RankForward::run(std::span<RankItem> batch, int n_slots,
                                           const RankWindowObserver* observer) {
  const int64_t E = c_.n_embd;
  row0_.assign(batch.size() + 1, 0);
  for (size_t i = 0; i < batch.size(); ++i) {
    if (batch[i].tokens.empty()) throw std::invalid_argument("forward: a batch item has no tokens");
    if (batch[i].seq->slot < 0 || batch[i].seq->slot >= n_slots)
      throw std::invalid_argument(
          fmt::format("forward: slot {} outside the batch of {}", batch[i].seq->slot, n_slots));
    row0_[i + 1] = row0_[i] + int64_t(batch[i].tokens.size());
  }
  const int64_t rows = row0_.back();
  x_.resize(size_t(rows * E));
  xn_.resize(size_t(rows * E));
  y_.resize(size_t(rows * E));

  const size_t emb_row = full_.tok_embd.stride();
  for (size_t i = 0; i < batch.size(); ++i)
    for (size_t t = 0; t < batch[i].tokens.size(); ++t) {
      const int32_t tok = batch[i].tokens[t];
      if (tok < 0 || tok >= c_.n_vocab)
        throw std::out_of_range(
            fmt::format("forward: token id {} outside the vocabulary of {}", tok, c_.n_vocab));
      kernels::dequantize_row(full_.tok_embd.type,
                              static_cast<const uint8_t*>(full_.tok_embd.data) + tok * emb_row,
                              &x_[(row0_[i] + int64_t(t)) * E], E);
    }

  auto reduce_into_x = [&](bool any) {
    if (!any) std::fill(y_.begin(), y_.end(), 0.0f);
    const auto t0 = Clock::now();
    comm_.all_reduce_sum(y_.data(), size_t(rows * E));
    if (timing) timing->collective_ms += ms_between(t0, Clock::now());
    kernels::add(x_.data(), y_.data(), rows * E);
  };

  for (int l = 0; l < c_.n_layers; ++l) {
    const ShardLayer& S = shard_.layers[size_t(l)];
    auto t0 = Clock::now();
    const int64_t nq = S.wq.rows, nkv = S.wk.rows;
    q_.resize(size_t(rows * nq));
    k_.resize(size_t(rows * nkv));
    v_.resize(size_t(rows * nkv));
    att_.resize(size_t(rows * nq));
    const bool has_units = !S.units.empty();
    const bool projects = !runs_[size_t(l)].empty();
    if (has_units) {
      for (int64_t r = 0; r < rows; ++r)
        kernels::rmsnorm(&xn_[r * E], &x_[r * E], S.attn_norm, E, c_.norm_eps);
      project(S, l, rows);
      add_bias(q_.data(), S.bq, rows);
      add_bias(k_.data(), S.bk, rows);
      add_bias(v_.data(), S.bv, rows);
      for (size_t i = 0; i < batch.size(); ++i) {
        const int64_t pos0 = batch[i].seq->cache.n_past;
        for (int64_t t = 0; t < int64_t(batch[i].tokens.size()); ++t) {
          const int64_t r = row0_[i] + t;
          for (int64_t j = 0; j < nq / c_.head_dim; ++j)
            kernels::rope(&q_[r * nq + j * c_.head_dim], c_.head_dim, pos0 + t, c_.rope_base,
                          c_.rope_style);
          for (int64_t j = 0; j < nkv / c_.head_dim; ++j)
            kernels::rope(&k_[r * nkv + j * c_.head_dim], c_.head_dim, pos0 + t, c_.rope_base,
                          c_.rope_style);
        }
      }
    }
    // Every rank takes part in the layer's collectives, with or without units.
    attention(batch, l, n_slots, observer);
    if (projects) apply_wo(S, l, rows);
    if (timing) timing->attention_ms[size_t(l)] += ms_between(t0, Clock::now());
    reduce_into_x(projects);

    t0 = Clock::now();
    const int64_t nf = S.gate.rows;
    if (nf > 0) {
      ff_gate_.resize(size_t(rows * nf));
      ff_up_.resize(size_t(rows * nf));
      for (int64_t r = 0; r < rows; ++r)
        kernels::rmsnorm(&xn_[r * E], &x_[r * E], S.ffn_norm, E, c_.norm_eps);
      kernels::matmul(S.gate, xn_.data(), rows, ff_gate_.data(), pool_, act_);
      kernels::matmul(S.up, xn_.data(), rows, ff_up_.data(), pool_, act_);
      kernels::silu_mul(ff_gate_.data(), ff_up_.data(), rows * nf);
      kernels::matmul(S.down, ff_gate_.data(), rows, y_.data(), pool_, act_);
    }
    if (timing) timing->mlp_ms[size_t(l)] += ms_between(t0, Clock::now());
    reduce_into_x(nf > 0);
  }
  for (RankItem& it : batch) it.seq->cache.n_past += int64_t(it.tokens.size());

  // Every rank holds the same final rows; each computes the logits of its vocabulary slice and
  // the slices are all-gathered (blocks of ceil(V / R) per rank, the last ones padded).
  const int64_t n_out = int64_t(batch.size()), V = c_.n_vocab;
  rows_out_.resize(size_t(n_out * E));
  for (int64_t i = 0; i < n_out; ++i)
    kernels::rmsnorm(&rows_out_[i * E], &x_[(row0_[size_t(i) + 1] - 1) * E], full_.output_norm, E,
                     c_.norm_eps);
  const int R = comm_.size();
  const int64_t block = (V + R - 1) / R, nv = shard_.vocab_end - shard_.vocab_begin;
  tmp_.assign(size_t(n_out * block), 0.0f);
  if (nv > 0) {
    logits_.resize(size_t(n_out * nv));
    kernels::matmul(shard_.output, rows_out_.data(), n_out, logits_.data(), pool_, act_);
    for (int64_t i = 0; i < n_out; ++i)
      std::copy_n(&logits_[size_t(i * nv)], nv, &tmp_[size_t(i * block)]);
  }
  gathered_.resize(size_t(R) * tmp_.size());
  const auto t0 = Clock::now();
  comm_.all_gather(tmp_.data(), tmp_.size() * sizeof(float), gathered_.data());
  if (timing) timing->collective_ms += ms_between(t0, Clock::now());
  logits_.resize(size_t(n_out * V));
  for (int q = 0; q < R; ++q) {
    int64_t v0 = 0, v1 = 0;
    vocab_range(V, q, R, &v0, &v1);
    for (int64_t i = 0; i < n_out; ++i)
      std::copy_n(&gathered_[size_t(q) * tmp_.size() + size_t(i * block)], v1 - v0,
                  &logits_[size_t(i * V + v0)]);
  }
  return logits_;
}

namespace {

// Every rank's cached length of every unit of every sequence: [rank][(s * L + l) * H + h].
std::vector<int64_t> gather_lengths(comm::Communicator& comm, std::span<RankSequence* const> seqs,
                                    int L, int H) {
  const size_t n = seqs.size() * size_t(L) * size_t(H);
  std::vector<int64_t> mine(n), all(n * size_t(comm.size()));
  for (size_t s = 0; s < seqs.size(); ++s)
    for (int l = 0; l < L; ++l)
      for (int h = 0; h < H; ++h)
        mine[(s * size_t(L) + size_t(l)) * size_t(H) + size_t(h)] =
            seqs[s]->cache.head(l, h).size();
  comm.all_gather(mine.data(), n * sizeof(int64_t), all.data());
  return all;
}

// Ranks whose rows count for a unit: a query slice's holders keep copies, so only the first.
bool counts(const std::vector<UnitPart>& parts, int rank) {
  const UnitPart* p = part_of(parts, rank);
  if (!p) return true;  // holds nothing of it, or leftovers from an older placement
  return p->share.kind != ShareKind::Query || &parts.front() == p;
}

// The rows a device keeps of a unit's `total` rows; see rows_held.
std::pair<int64_t, int64_t> rows_kept(const std::vector<UnitPart>& now, int rank, int slot,
                                      int n_slots, int64_t total) {
  const UnitPart* mine = part_of(now, rank);
  if (!mine) return {0, 0};
  switch (mine->share.kind) {
    case ShareKind::Whole:
    case ShareKind::Query:
      return {0, total};
    case ShareKind::Batch:
      return batch_owner(now, slot, n_slots) == rank ? std::pair<int64_t, int64_t>{0, total}
                                                     : std::pair<int64_t, int64_t>{0, 0};
    case ShareKind::Tokens: {
      // A part ends where the next begins, so the slices tile the rows exactly.
      int64_t b = std::llround(mine->share.offset * double(total));
      int64_t e =
          (&now.back() == mine) ? total : std::llround((mine + 1)->share.offset * double(total));
      b = std::clamp<int64_t>(b, 0, total);
      e = std::clamp<int64_t>(e, b, total);
      return {b, e};
    }
  }
  return {0, 0};
}

}  // namespace

std::pair<int64_t, int64_t> rows_held(const placement::Placement& p, int layer, int head,
                                      int device, int slot, int n_slots, int64_t total) {
  std::vector<UnitPart> parts;
  for (int d = 0; d < p.devices; ++d)
    for (const placement::Share& s : p.layers[size_t(layer)].devices[size_t(d)])
      if (s.head == head) parts.push_back({d, s});
  if (parts.empty()) return {0, 0};
  return rows_kept(parts, device, slot, n_slots, total);
}

std::vector<std::vector<int64_t>> RankForward::unit_lengths(std::span<RankSequence* const> seqs) {
  const int L = c_.n_layers, H = c_.n_kv_heads, R = comm_.size();
  const auto all = gather_lengths(comm_, seqs, L, H);
  const size_t n = seqs.size() * size_t(L) * size_t(H);
  std::vector<std::vector<int64_t>> out(seqs.size(), std::vector<int64_t>(size_t(L * H), 0));
  for (size_t s = 0; s < seqs.size(); ++s)
    for (int l = 0; l < L; ++l)
      for (int h = 0; h < H; ++h)
        for (int r = 0; r < R; ++r)
          if (counts(parts_[size_t(l)][size_t(h)], r))
            out[s][size_t(l * H + h)] +=
                all[size_t(r) * n + (s * size_t(L) + size_t(l)) * size_t(H) + size_t(h)];
  return out;
}

void RankForward::redistribute(std::span<RankSequence* const> seqs, int n_slots,
                               const placement::Placement& old) {
  const int L = c_.n_layers, H = c_.n_kv_heads, R = comm_.size(), rank = comm_.rank();
  const int64_t hd = c_.head_dim;
  const auto old_parts = unit_parts(old);
  const auto all = gather_lengths(comm_, seqs, L, H);
  const size_t n = seqs.size() * size_t(L) * size_t(H);
  std::vector<float> send, recv, keys, vals;
  for (int l = 0; l < L; ++l)
    for (int h = 0; h < H; ++h) {
      const auto& was = old_parts[size_t(l)][size_t(h)];
      const auto& now = parts_[size_t(l)][size_t(h)];
      const bool same = was.size() == now.size() &&
                        std::equal(was.begin(), was.end(), now.begin(), [](auto& a, auto& b) {
                          return a.device == b.device && a.share.kind == b.share.kind &&
                                 a.share.share == b.share.share && a.share.offset == b.share.offset;
                        });
      // Rows only move for units with several parts (or whose holder changed); a token-split
      // unit right after prefill holds all rows on its tail and needs its slices dealt out.
      if (same && (now.size() == 1 || now.front().share.kind != ShareKind::Tokens)) continue;
      for (size_t s = 0; s < seqs.size(); ++s) {
        const size_t at = (s * size_t(L) + size_t(l)) * size_t(H) + size_t(h);
        int64_t longest = 0, total = 0;
        for (int r = 0; r < R; ++r) {
          const int64_t len = all[size_t(r) * n + at];
          longest = std::max(longest, len);
          if (counts(was, r)) total += len;
        }
        if (longest == 0) continue;
        kv::HeadStore& store = seqs[s]->cache.head(l, h);
        const size_t block = size_t(longest * 2 * hd);
        send.assign(block, 0.0f);
        for (int64_t i = 0; i < store.size(); ++i) {
          store.k_row(i, &send[size_t(i * hd)]);
          store.v_row(i, &send[size_t((longest + i) * hd)]);
        }
        recv.resize(block * size_t(R));
        comm_.all_gather(send.data(), block * sizeof(float), recv.data());
        // The unit's rows in order: the old parts follow device order.
        keys.clear();
        vals.clear();
        for (int r = 0; r < R; ++r) {
          if (!counts(was, r)) continue;
          const int64_t len = all[size_t(r) * n + at];
          const float* src = &recv[size_t(r) * block];
          keys.insert(keys.end(), src, src + len * hd);
          vals.insert(vals.end(), src + longest * hd, src + (longest + len) * hd);
        }
        const auto [b, e] = rows_kept(now, rank, seqs[s]->slot, n_slots, total);
        store.clear();
        if (e > b) store.append(&keys[size_t(b * hd)], &vals[size_t(b * hd)], e - b);
      }
    }
}

}  // namespace fairkv::runtime
