#include "serve/logprobs.h"

#include <algorithm>
#include <cmath>
#include <limits>

namespace fairkv::serve {

TokenLogprob token_logprob(std::span<const float> row, int32_t chosen, int top_n) {
  float mx = -std::numeric_limits<float>::infinity();
  for (float x : row) mx = std::max(mx, x);
  double sum = 0;
  for (float x : row) sum += std::exp(double(x) - double(mx));
  const double lse = double(mx) + std::log(sum);
  TokenLogprob out;
  out.token = chosen;
  out.logprob = float(double(row[size_t(chosen)]) - lse);
  const size_t n = std::min(size_t(std::max(top_n, 0)), row.size());
  if (n == 0) return out;
  // One pass keeping the n best in order: n <= 20, so insertion beats a heap or a full sort.
  auto better = [&](int32_t a, int32_t b) {
    return row[size_t(a)] > row[size_t(b)] || (row[size_t(a)] == row[size_t(b)] && a < b);
  };
  std::vector<int32_t> best;
  best.reserve(n + 1);
  for (size_t i = 0; i < row.size(); ++i) {
    const auto id = int32_t(i);
    if (best.size() == n && !better(id, best.back())) continue;
    best.insert(std::upper_bound(best.begin(), best.end(), id, better), id);
    if (best.size() > n) best.pop_back();
  }
  for (int32_t id : best) out.top.push_back({id, float(double(row[size_t(id)]) - lse), {}});
  return out;
}

}  // namespace fairkv::serve
