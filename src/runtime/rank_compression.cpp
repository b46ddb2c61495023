#include "runtime/rank_compression.h"

#include <fmt/format.h>

#include <algorithm>
#include <stdexcept>

#include "kernels/types.h"

namespace fairkv::runtime {

RankCompression::RankCompression(const kv::CompressionConfig& config, const model::ModelConfig& c,
                                 size_t n_items)
    : config_(config), c_(c), scores_(n_items), scored_(n_items), slices_(n_items) {
  const size_t units = size_t(c.n_layers) * size_t(c.n_kv_heads);
  for (size_t i = 0; i < n_items; ++i) {
    scores_[i].resize(units);
    scored_[i].assign(units, 0);
  }
  observer_.window = config_.window;
  observer_.observe = [this](size_t item, int layer, int head, int q0, int q1, const float* probs,
                             int64_t window, int64_t n) {
    const size_t u = size_t(layer) * size_t(c_.n_kv_heads) + size_t(head);
    if (q0 == 0 && q1 == c_.group()) {
      kv::HeadScores s = kv::score_head(config_, probs, q1 - q0, window, n);
      std::lock_guard lock(mu_);
      scores_[item][u] = std::move(s);
      scored_[item][u] = 1;
      return;
    }
    Slice s{layer, head, q0, q1, window, n, {}};
    s.probs.assign(probs, probs + int64_t(q1 - q0) * window * n);
    std::lock_guard lock(mu_);
    slices_[item].push_back(std::move(s));
  };
}

namespace {

// CriticalKV's sums of unit (layer, head) for the query heads [q0, q1) that this rank observed,
// over the first n rows of its store, from its shard's W_o columns of those heads: the observing
// rank projects the unit, so it holds them (whole blocks of the file's type, or float32 copies
// of the dequantized columns, which dequantize to the same floats either way).
std::vector<double> value_sums(const ShardedWeights& shard, const kv::SequenceCache& cache,
                               int layer, int head, int q0, int q1, int64_t n) {
  const ShardLayer& S = shard.layers.at(size_t(layer));
  const HeldUnit* u = S.find(head);
  if (!u || u->q0 != q0 || u->q1 != q1)
    throw std::logic_error(fmt::format(
        "compression: unit (layer {}, head {}) was observed for query heads [{}, {}) on rank {}, "
        "which does not hold their W_o columns",
        layer, head, q0, q1, shard.rank));
  const kv::HeadStore& st = cache.head(layer, head);
  if (st.size() < n)
    throw std::logic_error(
        fmt::format("compression: unit (layer {}, head {}) was scored on a rank holding {} of its "
                    "{} rows",
                    layer, head, st.size(), n));
  const kernels::WeightMatrix& wo = S.wo;
  const size_t skip = kernels::row_bytes(wo.type, u->q_row);
  const int64_t cols = u->q_rows;
  return kv::projected_value_sums(st, n, q1 - q0, wo.rows,
                                  [&wo, skip, cols](int64_t r, float* out) {
                                    kernels::dequantize_row(wo.type, wo.row(r) + skip, out, cols);
                                  });
}

}  // namespace

const RankWindowObserver* RankCompression::observer() const {
  return config_.needs_scores() ? &observer_ : nullptr;
}

void RankCompression::apply(comm::Communicator& comm, const ShardedWeights& shard,
                            std::span<RankSequence* const> items,
                            std::span<const int64_t> n_prompt) {
  if (items.size() != scores_.size() || n_prompt.size() != items.size())
    throw std::invalid_argument("RankCompression::apply: one sequence and length per item");
  const int L = c_.n_layers, H = c_.n_kv_heads, group = c_.group();
  const size_t units = size_t(L) * size_t(H);
  const bool norms = config_.needs_value_norms();
  for (size_t i = 0; i < items.size(); ++i) {
    kv::PromptScores ps;
    ps.n_layers = L;
    ps.n_kv_heads = H;
    ps.n_prompt = n_prompt[i];
    ps.window = std::min(config_.window, n_prompt[i]);
    if (config_.needs_scores()) {
      // CriticalKV's value norms of the whole groups observed here, over the scored prefix.
      if (norms)
        for (size_t u = 0; u < units; ++u) {
          if (!scored_[i][u]) continue;
          kv::HeadScores& h = scores_[i][u];
          h.value_norm =
              kv::mean_value_norms(value_sums(shard, items[i]->cache, int(u) / H, int(u) % H, 0,
                                              group, int64_t(h.score.size())),
                                   group);
        }
      // Query slices: the holders' heads summed into the whole group (zeros elsewhere), then
      // scored by the first holder, which is the one that owns the unit's scores below.
      std::vector<int> sliced(units, 0);
      for (const Slice& s : slices_[i]) sliced[size_t(s.layer * H + s.head)] = 1;
      std::vector<float> any(units);
      for (size_t u = 0; u < units; ++u) any[u] = float(sliced[u]);
      comm.all_reduce_sum(any.data(), units);
      const int64_t w = ps.window;
      for (size_t u = 0; u < units; ++u) {
        if (any[u] == 0.0f) continue;
        // The unit's rows (a block-wise prefill's heads differ): the holder of the group's first
        // query heads tells the others.
        float rows = 0;
        for (const Slice& s : slices_[i])
          if (size_t(s.layer * H + s.head) == u && s.q0 == 0) rows = float(s.n);
        comm.all_reduce_sum(&rows, 1);
        const int64_t n = int64_t(rows);
        std::vector<float> probs(size_t(group * w * n), 0.0f);
        int lowest = group;
        for (const Slice& s : slices_[i])
          if (size_t(s.layer * H + s.head) == u) {
            std::copy(s.probs.begin(), s.probs.end(), probs.begin() + s.q0 * w * n);
            lowest = s.q0;
          }
        comm.all_reduce_sum(probs.data(), probs.size());
        // The holder of the group's first query heads scores it.
        if (lowest == 0) {
          scores_[i][u] = kv::score_head(config_, probs.data(), group, w, n);
          scored_[i][u] = 1;
        }
        // CriticalKV: each holder's sums for its query heads, gathered; every query head's come
        // from one rank (zeros elsewhere), so summing over ranks picks them exactly.
        const int64_t prefix = n - w;
        if (norms && prefix > 0) {
          const size_t m = size_t(group) * size_t(prefix);
          std::vector<double> sums(m, 0.0), all(m * size_t(comm.size()));
          for (const Slice& s : slices_[i])
            if (size_t(s.layer * H + s.head) == u) {
              const auto part =
                  value_sums(shard, items[i]->cache, s.layer, s.head, s.q0, s.q1, prefix);
              std::copy(part.begin(), part.end(), sums.begin() + std::ptrdiff_t(s.q0 * prefix));
            }
          comm.all_gather(sums.data(), m * sizeof(double), all.data());
          if (lowest == 0) {
            std::fill(sums.begin(), sums.end(), 0.0);
            for (int r = 0; r < comm.size(); ++r)
              for (size_t k = 0; k < m; ++k) sums[k] += all[size_t(r) * m + k];
            scores_[i][u].value_norm = kv::mean_value_norms(sums, group);
          }
        }
      }
      // Every head's scores from the rank that scored it: lengths first, then the values.
      std::vector<float> len(units, 0.0f);
      for (size_t u = 0; u < units; ++u)
        if (scored_[i][u]) len[u] = float(scores_[i][u].score.size());
      comm.all_reduce_sum(len.data(), units);
      std::vector<size_t> at(units + 1, 0);
      for (size_t u = 0; u < units; ++u) at[u + 1] = at[u] + size_t(len[u]);
      std::vector<float> flat(at.back(), 0.0f);
      std::vector<double> terms(2 * units, 0.0), all_terms(2 * units * size_t(comm.size()));
      for (size_t u = 0; u < units; ++u) {
        if (!scored_[i][u]) continue;
        const kv::HeadScores& h = scores_[i][u];
        std::copy(h.score.begin(), h.score.end(), flat.begin() + std::ptrdiff_t(at[u]));
        terms[2 * u] = h.entropy;
        terms[2 * u + 1] = h.variance;
      }
      // Task-KV's semantic vectors, from the values of the rank that scored (and holds) the unit.
      std::vector<float> outputs;
      if (config_.policy == kv::Policy::TaskKV) {
        const int64_t D = c_.head_dim;
        outputs.assign(units * size_t(D), 0.0f);
        for (size_t u = 0; u < units; ++u) {
          if (!scored_[i][u]) continue;
          const kv::HeadStore& st = items[i]->cache.head(int(u) / H, int(u) % H);
          if (st.size() < int64_t(scores_[i][u].attention.size()))
            throw std::logic_error(fmt::format(
                "compression: unit (layer {}, head {}) was scored on a rank holding {} of its {} "
                "rows",
                u / size_t(H), u % size_t(H), st.size(), scores_[i][u].attention.size()));
          const auto o = kv::head_output(scores_[i][u], st);
          std::copy(o.begin(), o.end(), outputs.begin() + std::ptrdiff_t(u * size_t(D)));
        }
        comm.all_reduce_sum(outputs.data(), outputs.size());
      }
      // CriticalKV's value norms, one per scored prefix token as the scores.
      std::vector<float> vflat;
      if (norms) {
        vflat.assign(at.back(), 0.0f);
        for (size_t u = 0; u < units; ++u) {
          if (!scored_[i][u]) continue;
          const std::vector<float>& vn = scores_[i][u].value_norm;
          if (vn.size() != size_t(len[u]))
            throw std::logic_error(fmt::format(
                "compression: unit (layer {}, head {}) has {} value norms for {} scores",
                u / size_t(H), u % size_t(H), vn.size(), len[u]));
          std::copy(vn.begin(), vn.end(), vflat.begin() + std::ptrdiff_t(at[u]));
        }
        comm.all_reduce_sum(vflat.data(), vflat.size());
      }
      // Adding zeros changes no bit, so the sum is the scoring rank's value everywhere.
      comm.all_reduce_sum(flat.data(), flat.size());
      comm.all_gather(terms.data(), terms.size() * sizeof(double), all_terms.data());
      ps.heads.resize(units);
      for (size_t u = 0; u < units; ++u) {
        kv::HeadScores& h = ps.heads[u];
        h.score.assign(flat.begin() + std::ptrdiff_t(at[u]),
                       flat.begin() + std::ptrdiff_t(at[u + 1]));
        if (norms)
          h.value_norm.assign(vflat.begin() + std::ptrdiff_t(at[u]),
                              vflat.begin() + std::ptrdiff_t(at[u + 1]));
        if (!outputs.empty())
          h.head_output.assign(outputs.begin() + std::ptrdiff_t(u * size_t(c_.head_dim)),
                               outputs.begin() + std::ptrdiff_t((u + 1) * size_t(c_.head_dim)));
        for (int r = 0; r < comm.size(); ++r) {
          h.entropy += all_terms[size_t(r) * 2 * units + 2 * u];
          h.variance += all_terms[size_t(r) * 2 * units + 2 * u + 1];
        }
      }
    }
    const kv::Selection sel = kv::select_tokens(config_, ps);
    // Keep the selected rows of every store holding the prompt here.
    for (int l = 0; l < L; ++l)
      for (int h = 0; h < H; ++h) {
        kv::HeadStore& st = items[i]->cache.head(l, h);
        if (st.size() == 0) continue;
        // A block-wise prefill's heads hold what the blocks before kept, and this block.
        if (!config_.blockwise() && st.size() != n_prompt[i])
          throw std::logic_error(
              fmt::format("compression: unit (layer {}, head {}) holds {} of the prompt's {} rows",
                          l, h, st.size(), n_prompt[i]));
        st.keep(sel[size_t(l * H + h)]);
      }
  }
}

}  // namespace fairkv::runtime
