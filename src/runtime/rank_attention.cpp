// A rank's attention in a layer: the phases over the (sequence, unit) shares it serves, and the
// merge of token slices across ranks: by log-sum-exp, or folded in the canonical order.
#include <algorithm>
#include <limits>

#include "kv/attention.h"
#include "kv/attention_merge.h"
#include "runtime/rank_forward.h"

namespace fairkv::runtime {

using model::LayerSteps;

namespace {
constexpr float kNegInf = -std::numeric_limits<float>::infinity();
}  // namespace

void RankForward::attention(std::span<RankItem> batch, int layer, int n_slots,
                            const RankWindowObserver* observer) {
  const ShardLayer& S = shard_.layers[size_t(layer)];
  const int64_t hd = c_.head_dim, group = c_.group();
  const int64_t nq = S.wq.rows, nkv = S.wk.rows;
  const int64_t rows = row0_.back();
  const auto& splits = split_heads_[size_t(layer)];
  const int64_t n_split = int64_t(splits.size());
  const int rank = comm_.rank();
  const auto& views = views_[size_t(layer)];
  const int64_t nk = kv_only_cols_[size_t(layer)];
  const bool fold = reduction_ == Reduction::Canonical;  // token slices: fold_slices
  std::fill(att_.begin(), att_.end(), 0.0f);
  qk_.assign(size_t(rows * nk), 0.0f);
  attk_.assign(size_t(rows * nk), 0.0f);
  // A unit's queries and outputs of row r, wherever the view keeps them.
  auto q_at = [&](const UnitView& u, int64_t r) {
    return u.held ? &q_[r * nq + u.q_col] : &qk_[r * nk + u.q_col];
  };
  auto att_at = [&](const UnitView& u, int64_t r) { return att_row(u, layer, r); };
  auto stride_of = [&](const UnitView& u) { return u.held ? nq : nk; };
  auto view_of = [&](int head) { return view(layer, head); };
  auto tail_here = [&](int head) { return is_tail(parts_[size_t(layer)][size_t(head)], rank); };
  // Token slices' queries: the tail projected them; the other slices receive them.
  if (n_split > 0) {
    const int64_t qrow = group * hd;  // a token slice serves the whole group
    qx_.assign(size_t(n_split * rows * qrow), 0.0f);
    for (int64_t si = 0; si < n_split; ++si) {
      const UnitView* u = view_of(splits[size_t(si)]);
      if (!u || !tail_here(u->head)) continue;
      LayerSteps::gather(q_at(*u, 0), stride_of(*u), rows, qrow, &qx_[size_t(si * rows * qrow)]);
    }
    all_reduce_sum(qx_.data(), qx_.size());
    for (int64_t si = 0; si < n_split; ++si) {
      const UnitView* u = view_of(splits[size_t(si)]);
      if (!u || tail_here(u->head)) continue;
      LayerSteps::scatter(&qx_[size_t(si * rows * qrow)], rows, qrow, q_at(*u, 0), stride_of(*u));
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
      s.n_blocks = 0;
      const Role role = role_of(parts, rank, it.seq->slot, n_slots);
      if (!role.serve) continue;
      const int64_t n = int64_t(it.tokens.size());
      const int64_t row0 = row0_[item];
      // A query slice under the canonical reduction attends its whole group (group_queries).
      const bool whole = whole_group(u);
      const int64_t qh = whole ? group : u.q1 - u.q0, width = qh * hd;
      kv::HeadStore& store = it.seq->cache.head(layer, u.head);
      s.q.resize(size_t(n * width));
      s.out.assign(size_t(n * width), 0.0f);
      s.lse.assign(size_t(n * qh), kNegInf);
      if (whole)
        LayerSteps::gather(&group_q_[size_t(task % n_units)][size_t(row0 * width)], width, n, width,
                           s.q.data());
      else
        LayerSteps::gather(q_at(u, row0), stride_of(u), n, u.q_rows, s.q.data());
      if (role.append) {  // never a KV-only view: appending is the tail's (or a whole unit's)
        s.k.resize(size_t(n * hd));
        s.v.resize(size_t(n * hd));
        LayerSteps::gather(&k_[row0 * nkv + u.kv_row], nkv, n, hd, s.k.data());
        LayerSteps::gather(&v_[row0 * nkv + u.kv_row], nkv, n, hd, s.v.data());
      }
      // A part that did not append holds only rows older than every new token.
      s.args =
          steps_.unit_attention(store, s.q.data(), n, int(qh), role.append ? s.k.data() : nullptr,
                                role.append ? s.v.data() : nullptr, s.out.data(), s.lse.data());
      s.served = true;
      s.active = store.size() > 0;
      if (!s.active) continue;  // holds no rows yet: output 0, lse -inf
      kv::AttentionArgs& a = s.args;
      if (fold && std::find(splits.begin(), splits.end(), u.head) != splits.end()) {
        s.n_blocks = kv::attend_blocks(a);
        s.blocks.resize(size_t(n * qh * s.n_blocks * (kv::kPartialHeader + hd)));
        a.blocks = s.blocks.data();
      }
      // The prompt's rows all sit on the rank that appended them: it observes the window.
      const bool observe = observer && observer->observe && role.append && n > 1;
      if (!observer) continue;
      s.active = false;  // attended here
      if (observe) LayerSteps::request_window(a, observer->window, s.probs);
      kv::attend(a);
      if (observe) {
        LayerSteps::window_by_head(a, s.probs, s.by_head);
        const int64_t w = a.probs_tokens, len = store.size();
        const int64_t first = whole ? u.q0 : 0;  // its own heads' rows, head-major
        observer->observe(item, layer, u.head, u.q0, u.q1, &s.by_head[size_t(first * w * len)], w,
                          len);
      }
    }
  });
  calls_.clear();
  for (int64_t task = 0; task < n_tasks; ++task)
    if (tasks_[size_t(task)].active) calls_.push_back(tasks_[size_t(task)].args);
  // Cut into token slices only when rows may depend on their batch and on R (see the header).
  const bool slice = batching_ == kernels::Batching::Fastest && reduction_ == Reduction::Partial;
  if (!calls_.empty()) kv::attend_batch(calls_, pool_, slice);
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
      if (whole_group(u))  // its own heads of the group's outputs
        LayerSteps::copy_rows(&s.out[size_t(u.q0 * hd)], group * hd, n, u.q_rows, att_at(u, row0),
                              stride_of(u));
      else
        LayerSteps::scatter(s.out.data(), n, u.q_rows, att_at(u, row0), stride_of(u));
      const auto at = std::find(splits.begin(), splits.end(), u.head);
      if (at != splits.end()) {
        const int64_t si = at - splits.begin();
        LayerSteps::scatter(s.lse.data(), n, qh, &lse_[(si * rows + row0) * group], group);
      }
    }
  });
  if (n_split == 0) return;
  if (fold)
    fold_slices(batch, layer);
  else
    merge_slices_lse(layer, rows);
}

const RankForward::UnitView* RankForward::view(int layer, int head) const {
  for (const UnitView& u : views_[size_t(layer)])
    if (u.head == head) return &u;
  return nullptr;
}

float* RankForward::att_row(const UnitView& u, int layer, int64_t r) {
  const int64_t nq = shard_.layers[size_t(layer)].wq.rows, nk = kv_only_cols_[size_t(layer)];
  return u.held ? &att_[size_t(r * nq + u.q_col)] : &attk_[size_t(r * nk + u.q_col)];
}

// The canonical fold. Each part's partials are in its tasks' blocks (token row, query head,
// block). The other parts' counts are gathered first (a part's count per row depends on its
// rows), then their partials, in blocks of the largest part's; the tail folds every row's
// partials part by part in device order, which is row order, its own from its task, and
// finishes them into its attention rows. Where the other parts hold no rows of a sequence (its
// prompt, whole on the tail until it ends) nothing moves: the tail's own pass folded the same
// partials in the same order.
void RankForward::fold_slices(std::span<RankItem> batch, int layer) {
  const auto& splits = split_heads_[size_t(layer)];
  const int64_t n_split = int64_t(splits.size()), n_items = int64_t(batch.size());
  const int64_t n_units = int64_t(views_[size_t(layer)].size());
  const int64_t hd = c_.head_dim, G = c_.group(), P = kv::kPartialHeader + hd;
  const int R = comm_.size(), rank = comm_.rank();
  const size_t n_pairs = size_t(n_split * n_items);
  auto task_of = [&](int64_t si, int64_t i) -> const Task* {
    const UnitView* u = view(layer, splits[size_t(si)]);
    return u ? &tasks_[size_t(i * n_units + (u - views_[size_t(layer)].data()))] : nullptr;
  };
  auto floats = [&](int64_t count, int64_t i) {
    return count * int64_t(batch[size_t(i)].tokens.size()) * G * P;
  };
  fold_counts_.assign(n_pairs * size_t(R + 1), 0);
  for (int64_t si = 0; si < n_split; ++si) {
    if (is_tail(parts_[size_t(layer)][size_t(splits[size_t(si)])], rank)) continue;
    for (int64_t i = 0; i < n_items; ++i)
      if (const Task* t = task_of(si, i)) fold_counts_[size_t(si * n_items + i)] = t->n_blocks;
  }
  int64_t* counts = &fold_counts_[n_pairs];  // [rank][pair]; 0 for the tails
  all_gather(fold_counts_.data(), n_pairs * sizeof(int64_t), counts);
  // Where each rank's partials of a pair start in its block, and the largest block.
  std::vector<int64_t> at(n_pairs * size_t(R));
  int64_t most = 0;
  for (int q = 0; q < R; ++q) {
    int64_t off = 0;
    for (size_t k = 0; k < n_pairs; ++k) {
      at[size_t(q) * n_pairs + k] = off;
      off += floats(counts[size_t(q) * n_pairs + k], int64_t(k % size_t(n_items)));
    }
    most = std::max(most, off);
  }
  if (most == 0) return;
  fold_.assign(size_t(most), 0.0f);
  for (size_t k = 0; k < n_pairs; ++k)
    if (const int64_t cnt = fold_counts_[k]; cnt > 0)
      std::copy_n(task_of(int64_t(k) / n_items, int64_t(k) % n_items)->blocks.data(),
                  floats(cnt, int64_t(k) % n_items),
                  &fold_[size_t(at[size_t(rank) * n_pairs + k])]);
  gathered_.resize(size_t(R) * size_t(most));
  all_gather(fold_.data(), size_t(most) * sizeof(float), gathered_.data());
  std::vector<float> o(static_cast<size_t>(hd));
  for (int64_t si = 0; si < n_split; ++si) {
    const int head = splits[size_t(si)];
    const UnitView* u = view(layer, head);
    const auto& parts = parts_[size_t(layer)][size_t(head)];
    if (!u || !u->held || !is_tail(parts, rank)) continue;  // the tail applies Wo to the unit
    for (int64_t i = 0; i < n_items; ++i) {
      const size_t pair = size_t(si * n_items + i);
      bool others = false;
      for (int q = 0; q < R; ++q) others = others || counts[size_t(q) * n_pairs + pair] > 0;
      if (!others) continue;  // its own output stands
      const Task& mine = *task_of(si, i);
      const int64_t n = int64_t(batch[size_t(i)].tokens.size()), row0 = row0_[size_t(i)];
      for (int64_t r = 0; r < n * G; ++r) {
        float m = -std::numeric_limits<float>::infinity(), l = 0.0f;
        for (const UnitPart& part : parts) {
          const int q = part.device;
          const int64_t cnt = q == rank ? mine.n_blocks : counts[size_t(q) * n_pairs + pair];
          if (cnt == 0) continue;
          const float* p = q == rank
                               ? &mine.blocks[size_t(r * cnt * P)]
                               : &gathered_[size_t(q) * size_t(most) +
                                            size_t(at[size_t(q) * n_pairs + pair] + r * cnt * P)];
          for (int64_t k = 0; k < cnt; ++k, p += P)
            kv::merge_block(m, l, o.data(), p[0], p[1], p + kv::kPartialHeader, hd);
        }
        kv::finish_partial(m, l, o.data(), hd, att_row(*u, layer, row0 + r / G) + (r % G) * hd,
                           nullptr);
      }
    }
  }
}

int64_t RankForward::granule() const {
  return reduction_ == Reduction::Canonical ? kv::kCanonicalRows : 1;
}

void RankForward::merge_slices_lse(int layer, int64_t rows) {
  const auto& splits = split_heads_[size_t(layer)];
  const int64_t n_split = int64_t(splits.size()), hd = c_.head_dim, group = c_.group();
  const int64_t nq = shard_.layers[size_t(layer)].wq.rows, nk = kv_only_cols_[size_t(layer)];
  auto att_at = [&](const UnitView& u, int64_t r) { return att_row(u, layer, r); };
  auto stride_of = [&](const UnitView& u) { return u.held ? nq : nk; };
  auto view_of = [&](int head) { return view(layer, head); };
  auto tail_here = [&](int head) {
    return is_tail(parts_[size_t(layer)][size_t(head)], comm_.rank());
  };
  // Token slices: each part's output is exact for its rows. The parts' log-sum-exps are gathered
  // (one float per split unit, row and query head), so that every rank knows L, the log-sum-exp
  // over parts; each part scales its output by exp(lse_r - L) and one all-reduce sums them into
  // the attention over all rows, to which the tail alone applies Wo. (Gathering the outputs
  // instead moves R times the bytes.)
  const int R = comm_.size();
  const size_t n_lse = size_t(n_split * rows * group);
  lse_all_.resize(n_lse * size_t(R));
  all_gather(lse_.data(), n_lse * sizeof(float), lse_all_.data());
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
          const float w = kv::merge_weight(mine, &lse_all_[at], R, n_lse);
          float* dst = &tmp_[at * size_t(hd)];
          for (int64_t e = 0; e < hd; ++e) dst[e] = w * out[e];
        }
        if (u->held) std::fill_n(out, hd, 0.0f);
      }
  }
  all_reduce_sum(tmp_.data(), tmp_.size());
  for (int64_t si = 0; si < n_split; ++si) {
    const UnitView* u = view_of(splits[size_t(si)]);
    if (!u || !u->held || !tail_here(u->head))
      continue;  // the tail applies Wo to the merged output
    LayerSteps::scatter(&tmp_[size_t(si * rows * qrow)], rows, qrow, att_at(*u, 0), stride_of(*u));
  }
}

}  // namespace fairkv::runtime
