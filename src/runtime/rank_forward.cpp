#include "runtime/rank_forward.h"

#include <fmt/format.h>

#include <algorithm>
#include <stdexcept>

#include "kernels/clock.h"

namespace fairkv::runtime {

using kernels::Clock;
using kernels::ms_between;
using placement::ShareKind;

RankSequence::RankSequence(const model::ModelConfig& c, kv::KvTypes type, int slot)
    : cache(c.n_layers, c.n_kv_heads, c.head_dim, type), slot(slot) {}

const char* reduction_name(Reduction r) {
  return r == Reduction::Canonical ? "canonical" : "partial";
}

Reduction reduction_from_name(const std::string& name, const std::string& option) {
  if (name == "partial") return Reduction::Partial;
  if (name == "canonical") return Reduction::Canonical;
  throw std::invalid_argument(
      fmt::format("{}: '{}' is not a reduction; expected 'partial' or 'canonical'", option, name));
}

void SegmentTimes::clear(int layers) {
  attention_ms.assign(size_t(layers), 0.0);
  mlp_ms.assign(size_t(layers), 0.0);
  collective_ms = 0;
}

RankForward::RankForward(const model::ModelConfig& c, const model::Weights& full,
                         const ShardedWeights& shard, const placement::Placement& p,
                         comm::Communicator& comm, kernels::ThreadPool& pool,
                         kernels::Activations act, kernels::Batching batching, Reduction reduction)
    : c_(c),
      full_(full),
      shard_(shard),
      comm_(comm),
      pool_(pool),
      batching_(batching),
      reduction_(reduction),
      steps_(c, pool, act, batching) {
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
  // Every rank's SwiGLU slice, as shard_weights cut it.
  for (int q = 0; q < comm.size(); ++q) {
    int64_t f0 = 0, f1 = 0;
    mlp_range(c.n_ff, q, comm.size(), kernels::block_size(full.layers[0].w_down.type), &f0, &f1);
    ff_ranges_.push_back({f0, f1});
  }
  if (ff_ranges_[size_t(comm.rank())] != std::pair{shard.ff_begin, shard.ff_end})
    throw std::logic_error("rank forward: the shard's MLP slice is not mlp_range's");
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
      if (mine->share.kind != ShareKind::Tokens || is_tail(parts_[size_t(l)][size_t(h)], rank))
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
    for (size_t i = 0; i < units.size(); ++i)
      projects[i] = projects_unit(parts_[size_t(l)][size_t(units[i].head)], rank);
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

void RankForward::all_reduce_sum(float* data, size_t n) {
  const auto t0 = Clock::now();
  comm_.all_reduce_sum(data, n);
  if (timing) timing->collective_ms += ms_between(t0, Clock::now());
}

void RankForward::all_gather(const void* send, size_t bytes_per_rank, void* recv) {
  const auto t0 = Clock::now();
  comm_.all_gather(send, bytes_per_rank, recv);
  if (timing) timing->collective_ms += ms_between(t0, Clock::now());
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
  if (batching_ == kernels::Batching::Invariant)
    steps_.set_segments(model::LayerSteps::item_segments(row0_));
  x_.resize(size_t(rows * E));
  xn_.resize(size_t(rows * E));
  y_.resize(size_t(rows * E));

  for (size_t i = 0; i < batch.size(); ++i)
    steps_.embed(full_.tok_embd, batch[i].tokens, &x_[row0_[i] * E]);

  auto reduce_into_x = [&](bool any) {
    if (!any) std::fill(y_.begin(), y_.end(), 0.0f);
    all_reduce_sum(y_.data(), size_t(rows * E));
    steps_.residual(x_.data(), y_.data(), rows);
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
      steps_.norm(S.attn_norm, x_.data(), rows, xn_.data());
      project(S, l, rows);
      for (size_t i = 0; i < batch.size(); ++i)
        steps_.rope(&q_[row0_[i] * nq], nq / c_.head_dim, &k_[row0_[i] * nkv], nkv / c_.head_dim,
                    int64_t(batch[i].tokens.size()), batch[i].seq->cache.n_past);
    }
    if (reduction_ == Reduction::Canonical) group_queries(batch, l, rows);
    // Every rank takes part in the layer's collectives, with or without units.
    attention(batch, l, n_slots, observer);
    const int64_t nf = S.gate.rows;
    if (reduction_ == Reduction::Canonical) {
      const model::LayerWeights& L = full_.layers[size_t(l)];
      gather_attention(S, l, rows);
      canonical_product(L.wo, attg_.data(), rows);
      steps_.residual(x_.data(), y_.data(), rows);
      if (timing) timing->attention_ms[size_t(l)] += ms_between(t0, Clock::now());
      t0 = Clock::now();
      steps_.norm(L.ffn_norm, x_.data(), rows, xn_.data());
      if (nf > 0) steps_.swiglu(S.gate, S.up, xn_.data(), rows, ff_gate_, ff_up_);
      gather_swiglu(nf, rows);
      canonical_product(L.w_down, ffg_.data(), rows);
      steps_.residual(x_.data(), y_.data(), rows);
      if (timing) timing->mlp_ms[size_t(l)] += ms_between(t0, Clock::now());
      continue;
    }
    if (projects) apply_wo(S, l, rows);
    if (timing) timing->attention_ms[size_t(l)] += ms_between(t0, Clock::now());
    reduce_into_x(projects);

    t0 = Clock::now();
    if (nf > 0) {
      steps_.norm(S.ffn_norm, x_.data(), rows, xn_.data());
      steps_.mlp(S.gate, S.up, S.down, xn_.data(), rows, ff_gate_, ff_up_, y_.data());
    }
    if (timing) timing->mlp_ms[size_t(l)] += ms_between(t0, Clock::now());
    reduce_into_x(nf > 0);
  }
  for (RankItem& it : batch) it.seq->cache.n_past += int64_t(it.tokens.size());

  // Every rank holds the same final rows; each computes the logits of its vocabulary slice and
  // the slices are all-gathered (blocks of ceil(V / R) per rank, the last ones padded).
  const int64_t n_out = int64_t(batch.size()), V = c_.n_vocab;
  const int R = comm_.size();
  const int64_t block = (V + R - 1) / R, nv = shard_.vocab_end - shard_.vocab_begin;
  tmp_.assign(size_t(n_out * block), 0.0f);
  if (nv > 0) {
    out_rows_.resize(size_t(n_out));
    for (int64_t i = 0; i < n_out; ++i) out_rows_[size_t(i)] = row0_[size_t(i) + 1] - 1;
    logits_.resize(size_t(n_out * nv));
    steps_.logits(full_.output_norm, shard_.output, x_.data(), out_rows_, rows_out_,
                  logits_.data());
    for (int64_t i = 0; i < n_out; ++i)
      std::copy_n(&logits_[size_t(i * nv)], nv, &tmp_[size_t(i * block)]);
  }
  gathered_.resize(size_t(R) * tmp_.size());
  all_gather(tmp_.data(), tmp_.size() * sizeof(float), gathered_.data());
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

}  // namespace fairkv::runtime
