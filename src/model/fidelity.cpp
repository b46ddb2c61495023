#include "model/fidelity.h"

#include <algorithm>
#include <cmath>
#include <stdexcept>
#include <vector>

#include "model/sampler.h"

namespace fairkv::model {

namespace {
// log softmax in double: the differences of nearly equal distributions are tiny.
std::vector<double> log_softmax(std::span<const float> x) {
  const double mx = *std::max_element(x.begin(), x.end());
  double sum = 0;
  for (float v : x) sum += std::exp(double(v) - mx);
  const double lse = mx + std::log(sum);
  std::vector<double> out(x.size());
  for (size_t i = 0; i < x.size(); ++i) out[i] = double(x[i]) - lse;
  return out;
}
}  // namespace

double kl_divergence(std::span<const float> ref_logits, std::span<const float> logits) {
  if (ref_logits.size() != logits.size() || logits.empty())
    throw std::invalid_argument("kl_divergence: rows of different sizes");
  const auto lp = log_softmax(ref_logits), lq = log_softmax(logits);
  double kl = 0;
  for (size_t i = 0; i < lp.size(); ++i) kl += std::exp(lp[i]) * (lp[i] - lq[i]);
  return std::max(0.0, kl);  // rounding can leave a tiny negative
}

Fidelity compare_rows(std::span<const float> ref, std::span<const float> got, int64_t n_vocab) {
  if (ref.size() != got.size() || n_vocab <= 0 || ref.size() % size_t(n_vocab) != 0)
    throw std::invalid_argument("compare_rows: row sets of different shapes");
  Fidelity f;
  f.rows = int64_t(ref.size()) / n_vocab;
  for (int64_t r = 0; r < f.rows; ++r) {
    auto a = ref.subspan(size_t(r * n_vocab), size_t(n_vocab));
    auto b = got.subspan(size_t(r * n_vocab), size_t(n_vocab));
    f.kl += kl_divergence(a, b);
    f.top1 += argmax(a) == argmax(b) ? 1 : 0;
  }
  if (f.rows > 0) {
    f.kl /= double(f.rows);
    f.top1 /= double(f.rows);
  }
  return f;
}

}  // namespace fairkv::model
