#include "placement/partition.h"

#include <algorithm>
#include <bit>
#include <limits>
#include <numeric>
#include <stdexcept>

#include <fmt/format.h>

namespace fairkv::placement {

namespace {

std::vector<double> bin_loads(std::span<const double> load, std::span<const int> bin, int bins) {
  std::vector<double> l(size_t(bins), 0.0);
  for (size_t i = 0; i < load.size(); ++i) l[size_t(bin[i])] += load[i];
  return l;
}

double max_bin_load(std::span<const double> load, std::span<const int> bin, int bins) {
  const auto l = bin_loads(load, bin, bins);
  return l.empty() ? 0.0 : *std::max_element(l.begin(), l.end());
}

bool fits_counts(std::span<const int> bin, std::span<const int> count) {
  std::vector<int> used(count.size(), 0);
  for (int b : bin) {
    if (b < 0 || size_t(b) >= count.size()) return false;
    ++used[size_t(b)];
  }
  return std::equal(used.begin(), used.end(), count.begin());
}

// Items by decreasing load, ties by index, so that the search is deterministic.
std::vector<int> decreasing_order(std::span<const double> load) {
  std::vector<int> order(load.size());
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(),
                   [&](int a, int b) { return load[size_t(a)] > load[size_t(b)]; });
  return order;
}

class BranchAndBound {
 public:
  BranchAndBound(std::span<const double> sorted, std::span<const int> count, double upper,
                 std::span<const int> upper_bins, int64_t node_limit)
      : x_(sorted),
        left_(count.begin(), count.end()),
        loads_(count.size(), 0.0),
        cur_(sorted.size(), -1),
        best_(upper),
        best_bins_(upper_bins.begin(), upper_bins.end()),
        limit_(node_limit) {
    const size_t n = x_.size();
    suffix_.assign(n + 1, 0.0);
    for (size_t i = n; i-- > 0;) suffix_[i] = suffix_[i + 1] + x_[i];
    tol_ = 1e-12 * std::max(suffix_[0], 1e-300);
    // Global bound: the mean, and the heaviest item plus the fewest, lightest companions it can
    // have in any bin.
    lower_ = suffix_[0] / double(count.size());
    if (n > 0) {
      int min_count = int(n);
      for (int c : count)
        if (c > 0) min_count = std::min(min_count, c);
      lower_ = std::max(lower_, x_[0] + smallest(min_count - 1));
    }
  }

  void run() {
    if (best_ > lower_ + tol_) dfs(0);
  }
  double best() const { return best_; }
  const std::vector<int>& best_bins() const { return best_bins_; }
  bool aborted() const { return aborted_; }
  int64_t nodes() const { return nodes_; }

 private:
  // Sum of the r lightest items not yet placed (they are the last r of the sorted list).
  double smallest(int r) const { return suffix_[x_.size() - size_t(r)]; }
  // Sum of the r heaviest items from item k on (the first r of them).
  double largest(size_t k, int r) const { return suffix_[k] - suffix_[k + size_t(r)]; }

  void dfs(size_t k) {
    const size_t n = x_.size();
    if (k == n) {
      const double m = *std::max_element(loads_.begin(), loads_.end());
      if (m < best_ - tol_) {
        best_ = m;
        best_bins_ = cur_;
      }
      return;
    }
    if (++nodes_ > limit_) {
      aborted_ = true;
      return;
    }
    // Bins with free slots, lightest first; bins in the same state (load, free slots) are
    // interchangeable, so only the first of them is tried.
    std::vector<int> cand;
    for (size_t b = 0; b < loads_.size(); ++b)
      if (left_[b] > 0) cand.push_back(int(b));
    std::stable_sort(cand.begin(), cand.end(),
                     [&](int a, int b) { return loads_[size_t(a)] < loads_[size_t(b)]; });
    for (size_t i = 0; i < cand.size(); ++i) {
      const size_t b = size_t(cand[i]);
      bool twin = false;
      for (size_t j = 0; j < i && !twin; ++j)
        twin = loads_[size_t(cand[j])] == loads_[b] && left_[size_t(cand[j])] == left_[b];
      if (twin) continue;
      const double old = loads_[b];
      const double nl = old + x_[k];
      if (nl >= best_ - tol_) break;  // later bins are heavier still
      loads_[b] = nl;
      --left_[b];
      // Each bin must still take its lightest possible companions, and the bins together must
      // absorb what is left although each can take at most its heaviest possible ones.
      double bound = 0, room = 0;
      for (size_t c = 0; c < loads_.size(); ++c) {
        bound = std::max(bound, loads_[c] + (left_[c] > 0 ? smallest(left_[c]) : 0.0));
        room += std::min(best_ - tol_ - loads_[c], largest(k + 1, left_[c]));
      }
      if (bound < best_ - tol_ && room >= suffix_[k + 1] - tol_) {
        cur_[k] = int(b);
        dfs(k + 1);
      }
      ++left_[b];
      loads_[b] = old;  // restored exactly, so that twin detection stays reliable
      if (aborted_ || best_ <= lower_ + tol_) return;
    }
  }

  std::span<const double> x_;
  std::vector<int> left_;
  std::vector<double> loads_;
  std::vector<int> cur_;
  std::vector<double> suffix_;
  double best_;
  std::vector<int> best_bins_;
  int64_t limit_;
  int64_t nodes_ = 0;
  bool aborted_ = false;
  double tol_ = 0;
  double lower_ = 0;
};

// Exact by dynamic programming over the set S of items still to place (n <= 16): bins are filled
// in order, bin j taking count[j] items, and g(S) = min over T in S with |T| = count[j] of
// max(sum T, g(S \ T)). When all bins left have the same size, the lightest-numbered item of S
// may be put in bin j without loss, which divides the choices by |S| / count[j].
class SubsetSearch {
 public:
  SubsetSearch(std::span<const double> load, std::span<const int> count) : n_(int(load.size())) {
    for (int c : count)
      if (c > 0) count_.push_back(c);
    const uint32_t full = 1u << n_;
    sum_.assign(full, 0.0);
    for (uint32_t m = 1; m < full; ++m) {
      const int low = std::countr_zero(m);
      sum_[m] = sum_[m & (m - 1)] + load[size_t(low)];
    }
    memo_.assign(full, -1.0);
    choice_.assign(full, 0);
    // same_[j]: bins j.. all have the same size.
    same_.assign(count_.size() + 1, true);
    for (size_t j = count_.size(); j-- > 1;) same_[j - 1] = same_[j] && count_[j - 1] == count_[j];
  }

  // Bin of every item (bins numbered as in `count`, skipping none: empty bins get nothing).
  std::vector<int> solve(std::span<const int> count, double* max_load) {
    const uint32_t all = (1u << n_) - 1;
    *max_load = g(all, 0);
    std::vector<int> bin(size_t(n_), -1);
    std::vector<int> bin_ids;
    for (size_t b = 0; b < count.size(); ++b)
      if (count[b] > 0) bin_ids.push_back(int(b));
    uint32_t rest = all;
    for (size_t j = 0; rest != 0; ++j) {
      const uint32_t t = choice_[rest];
      for (int i = 0; i < n_; ++i)
        if (t >> i & 1) bin[size_t(i)] = bin_ids[j];
      rest &= ~t;
    }
    return bin;
  }

 private:
  double g(uint32_t s, size_t j) {
    if (s == 0) return 0;
    if (memo_[s] >= 0) return memo_[s];
    int elems[32];
    int r = 0;
    for (uint32_t m = s; m != 0; m &= m - 1) elems[r++] = std::countr_zero(m);
    const int c = count_[j];
    // With equal bins left, fix the first item in this bin and choose its c - 1 companions.
    const bool fix_first = same_[j];
    const int k = fix_first ? c - 1 : c;
    const int* pool = fix_first ? elems + 1 : elems;
    const int pool_size = fix_first ? r - 1 : r;
    const uint32_t fixed = fix_first ? 1u << elems[0] : 0u;
    double best = std::numeric_limits<double>::infinity();
    uint32_t pick = 0;
    auto visit = [&](uint32_t comb) {
      uint32_t t = fixed;
      for (uint32_t m = comb; m != 0; m &= m - 1) t |= 1u << pool[std::countr_zero(m)];
      const double here = sum_[t];
      if (here >= best) return;
      const double v = std::max(here, g(s & ~t, j + 1));
      if (v < best) {
        best = v;
        pick = t;
      }
    };
    if (k == 0) {
      visit(0);
    } else {
      // Gosper's hack: every k-of-pool_size combination in increasing order.
      for (uint32_t comb = (1u << k) - 1; comb < (1u << pool_size);) {
        visit(comb);
        const uint32_t low = comb & (~comb + 1);
        const uint32_t ripple = comb + low;
        comb = (((ripple ^ comb) >> 2) / low) | ripple;
      }
    }
    memo_[s] = best;
    choice_[s] = pick;
    return best;
  }

  int n_;
  std::vector<int> count_;
  std::vector<double> sum_, memo_;
  std::vector<uint32_t> choice_;
  std::vector<bool> same_;
};

}  // namespace

std::vector<int> partition_greedy(std::span<const double> load, std::span<const int> count) {
  std::vector<int> bin(load.size(), -1);
  std::vector<double> l(count.size(), 0.0);
  std::vector<int> left(count.begin(), count.end());
  for (int i : decreasing_order(load)) {
    int pick = -1;
    for (size_t b = 0; b < l.size(); ++b)
      if (left[b] > 0 && (pick < 0 || l[b] < l[size_t(pick)])) pick = int(b);
    bin[size_t(i)] = pick;
    l[size_t(pick)] += load[size_t(i)];
    --left[size_t(pick)];
  }
  return bin;
}

void improve_by_swaps(std::span<const double> load, std::vector<int>& bin, int bins) {
  const size_t n = load.size();
  // Each accepted swap lowers the heaviest bin and leaves its partner below the old maximum, so
  // the sorted load vector decreases; the cap only guards against float ties.
  for (int round = 0; round < 100000; ++round) {
    const auto l = bin_loads(load, bin, bins);
    const size_t top = size_t(std::max_element(l.begin(), l.end()) - l.begin());
    double best = l[top];
    size_t bi = n, bj = n;
    for (size_t i = 0; i < n; ++i) {
      if (size_t(bin[i]) != top) continue;
      for (size_t j = 0; j < n; ++j) {
        if (size_t(bin[j]) == top || load[j] >= load[i]) continue;
        const size_t other = size_t(bin[j]);
        const double d = load[i] - load[j];
        const double pair = std::max(l[top] - d, l[other] + d);
        if (pair < best - 1e-12 * l[top]) {
          best = pair;
          bi = i;
          bj = j;
        }
      }
    }
    if (bi == n) return;
    std::swap(bin[bi], bin[bj]);
  }
}

PartitionResult partition_balanced(std::span<const double> load, std::span<const int> count,
                                   int64_t node_limit, std::span<const int> initial) {
  const int bins = int(count.size());
  if (bins < 1) throw std::invalid_argument("partition_balanced: no bins");
  int64_t slots = 0;
  for (int c : count) {
    if (c < 0) throw std::invalid_argument("partition_balanced: negative bin size");
    slots += c;
  }
  if (slots != int64_t(load.size()))
    throw std::invalid_argument(fmt::format(
        "partition_balanced: bin sizes add up to {}, but there are {} items", slots, load.size()));

  PartitionResult r;
  r.bin = partition_greedy(load, count);
  improve_by_swaps(load, r.bin, bins);
  r.max_load = max_bin_load(load, r.bin, bins);
  if (!initial.empty() && fits_counts(initial, count)) {
    const double m = max_bin_load(load, initial, bins);
    if (m <= r.max_load) {
      r.bin.assign(initial.begin(), initial.end());
      r.max_load = m;
    }
  }

  const auto order = decreasing_order(load);
  std::vector<double> sorted(load.size());
  std::vector<int> sorted_bins(load.size());
  for (size_t i = 0; i < order.size(); ++i) {
    sorted[i] = load[size_t(order[i])];
    sorted_bins[i] = r.bin[size_t(order[i])];
  }
  BranchAndBound bb(sorted, count, r.max_load, sorted_bins, node_limit);
  bb.run();
  r.nodes = bb.nodes();
  r.proven = !bb.aborted();
  if (bb.best() < r.max_load) {
    r.max_load = bb.best();
    for (size_t i = 0; i < order.size(); ++i) r.bin[size_t(order[i])] = bb.best_bins()[i];
  }
  if (!r.proven && load.size() <= size_t(kSubsetSearchItems)) {
    // The search ran out of nodes on a small instance: settle it over subsets.
    SubsetSearch dp(load, count);
    double m = 0;
    auto bins_dp = dp.solve(count, &m);
    if (m < r.max_load - 1e-12 * r.max_load) {
      r.bin = std::move(bins_dp);
      r.max_load = max_bin_load(load, r.bin, bins);
    }
    r.proven = true;
  }
  return r;
}

}  // namespace fairkv::placement
