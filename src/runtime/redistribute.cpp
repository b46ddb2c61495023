// Moving cached rows between ranks when a unit's shares change, and the units' lengths summed
// over ranks that rebalancing reads.
#include <algorithm>
#include <stdexcept>
#include <utility>
#include <vector>

#include "runtime/rank_forward.h"

namespace fairkv::runtime {

using placement::ShareKind;

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

}  // namespace

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
                               const placement::Placement& old,
                               std::span<const char> whole_on_tail) {
  if (!whole_on_tail.empty() && whole_on_tail.size() != seqs.size())
    throw std::invalid_argument("redistribute: one whole_on_tail flag per sequence");
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
        const bool whole = !whole_on_tail.empty() && whole_on_tail[s] &&
                           now.front().share.kind == ShareKind::Tokens;
        const auto [b, e] = whole ? (is_tail(now, rank) ? std::pair<int64_t, int64_t>{0, total}
                                                        : std::pair<int64_t, int64_t>{0, 0})
                                  : rows_kept(now, rank, seqs[s]->slot, n_slots, total, granule());
        // A store on a reserved range keeps one of the same size: its rows change, its limit not.
        const int64_t reserved = store.reserved_rows();
        store.clear();
        if (reserved > 0) store.reserve_virtual(reserved);
        if (e > b) store.append(&keys[size_t(b * hd)], &vals[size_t(b * hd)], e - b);
      }
    }
}

}  // namespace fairkv::runtime
