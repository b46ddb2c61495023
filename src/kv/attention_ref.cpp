// Reference attention: every score materialised, a plain two-pass softmax, double accumulation.
// Slow on purpose; the fast kernel is tested against it.
#include <algorithm>
#include <cmath>
#include <limits>
#include <stdexcept>
#include <vector>

#include "kv/attention.h"

namespace fairkv::kv {

void attend_ref(const AttentionArgs& a) {
  if (!a.store || !a.q || !a.out || a.group < 1 || a.n_tokens < 0 || a.begin < 0)
    throw std::invalid_argument(
        "attend_ref: store, q and out are required, group >= 1, begin >= 0");
  const HeadStore& s = *a.store;
  const int64_t d = s.head_dim(), G = a.group, len = s.size();
  const int64_t end = std::min<int64_t>(a.end, len);
  const int64_t first_probs = a.n_tokens - (a.probs ? a.probs_tokens : 0);
  std::vector<float> k(static_cast<size_t>(d)), v(static_cast<size_t>(d));
  for (int64_t t = 0; t < a.n_tokens; ++t) {
    const int64_t lo = a.begin, lim = std::min(end, a.visible + t + 1);
    for (int64_t g = 0; g < G; ++g) {
      const int64_t row = t * G + g;
      const float* q = a.q + row * d;
      std::vector<double> p;
      double mx = -std::numeric_limits<double>::infinity();
      for (int64_t j = lo; j < lim; ++j) {
        s.k_row(j, k.data());
        double x = 0;
        for (int64_t i = 0; i < d; ++i) x += double(q[i]) * double(k[size_t(i)]);
        p.push_back(x * double(a.scale));
        mx = std::max(mx, p.back());
      }
      double sum = 0;
      for (double& x : p) sum += x = std::exp(x - mx);
      std::vector<double> o(size_t(d), 0.0);
      for (int64_t j = lo; j < lim; ++j) {
        s.v_row(j, v.data());
        const double w = p[size_t(j - lo)] / sum;
        for (int64_t i = 0; i < d; ++i) o[size_t(i)] += w * double(v[size_t(i)]);
      }
      for (int64_t i = 0; i < d; ++i) a.out[row * d + i] = float(o[size_t(i)]);
      if (a.lse)
        a.lse[row] =
            p.empty() ? -std::numeric_limits<float>::infinity() : float(mx + std::log(sum));
      if (a.probs && t >= first_probs) {
        float* dst = a.probs + (row - first_probs * G) * len;
        std::fill(dst, dst + len, 0.0f);
        for (int64_t j = lo; j < lim; ++j) dst[j] = float(p[size_t(j - lo)] / sum);
      }
    }
  }
}

}  // namespace fairkv::kv
