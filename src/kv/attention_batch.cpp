// attend_batch (attention.h): many independent attend calls on a pool, long decode calls cut
// into token slices whose partials merge exactly (attention_merge.h).
#include <algorithm>
#include <atomic>
#include <vector>

#include "kv/attention.h"

namespace fairkv::kv {

void attend_batch(std::span<const AttentionArgs> calls, kernels::ThreadPool& pool, bool slice) {
  const int T = pool.size();
  const int64_t n = int64_t(calls.size());
  // Decode calls over long stores are cut into token slices when the calls alone cannot keep
  // every thread busy; slices shorter than kMinSlice keys are not worth their merge.
  constexpr int64_t kMinSlice = 2048;
  struct Task {
    int64_t call, begin, end;
  };
  std::vector<Task> tasks;
  std::vector<int64_t> first_task(size_t(n) + 1, 0);
  const int64_t want = n < T ? (2 * T + n - 1) / std::max<int64_t>(n, 1) : 1;
  for (int64_t i = 0; i < n; ++i) {
    const AttentionArgs& a = calls[size_t(i)];
    first_task[size_t(i)] = int64_t(tasks.size());
    const int64_t lo = a.begin, hi = std::min<int64_t>({a.end, a.store->size(), a.visible + 1});
    // ggml_order calls stay whole: their softmax is one row, as llama.cpp's.
    const bool sliceable = slice && a.n_tokens == 1 && !a.probs && !a.blocks && !a.ggml_order &&
                           hi - lo >= 2 * kMinSlice;
    const int64_t slices = sliceable ? std::clamp<int64_t>((hi - lo) / kMinSlice, 1, want) : 1;
    for (int64_t s = 0; s < slices; ++s)
      tasks.push_back({i, slices == 1 ? a.begin : lo + (hi - lo) * s / slices,
                       slices == 1 ? a.end : lo + (hi - lo) * (s + 1) / slices});
  }
  first_task[size_t(n)] = int64_t(tasks.size());
  // Longest first (keys times query rows, plus a few rows' worth for the read), so that ragged
  // lengths end together instead of one long call starting last.
  std::vector<int64_t> order(tasks.size());
  std::vector<double> cost(tasks.size());
  for (size_t k = 0; k < tasks.size(); ++k) {
    const AttentionArgs& a = calls[size_t(tasks[k].call)];
    const int64_t hi = std::min<int64_t>({tasks[k].end, a.store->size(), a.visible + a.n_tokens});
    cost[k] = double(std::max<int64_t>(0, hi - tasks[k].begin)) * double(a.n_tokens * a.group + 4);
    order[k] = int64_t(k);
  }
  std::stable_sort(order.begin(), order.end(),
                   [&](int64_t x, int64_t y) { return cost[size_t(x)] > cost[size_t(y)]; });
  // Partial outputs of sliced calls: group x head_dim and group floats per task.
  std::vector<std::vector<float>> part_out(tasks.size()), part_lse(tasks.size());
  auto sliced = [&](int64_t call) {
    return first_task[size_t(call) + 1] - first_task[size_t(call)] > 1;
  };
  std::atomic<int64_t> next{0};
  pool.parallel_for(T, [&](int64_t, int64_t, int) {
    for (int64_t i; (i = next.fetch_add(1)) < int64_t(tasks.size());) {
      const int64_t k = order[size_t(i)];
      const Task& t = tasks[size_t(k)];
      AttentionArgs a = calls[size_t(t.call)];
      if (sliced(t.call)) {
        const int64_t d = a.store->head_dim();
        part_out[size_t(k)].resize(size_t(a.group * d));
        part_lse[size_t(k)].resize(size_t(a.group));
        a.begin = t.begin;
        a.end = t.end;
        a.out = part_out[size_t(k)].data();
        a.lse = part_lse[size_t(k)].data();
      }
      attend(a);
    }
  });
  for (int64_t i = 0; i < n; ++i) {
    if (!sliced(i)) continue;
    const AttentionArgs& a = calls[size_t(i)];
    const int64_t f = first_task[size_t(i)], cnt = first_task[size_t(i) + 1] - f;
    std::vector<const float*> outs, lses;
    for (int64_t k = f; k < f + cnt; ++k) {
      outs.push_back(part_out[size_t(k)].data());
      lses.push_back(part_lse[size_t(k)].data());
    }
    merge_partials(int(cnt), outs.data(), lses.data(), a.group, a.store->head_dim(), a.out, a.lse);
  }
}

}  // namespace fairkv::kv
