// Element-wise and row-wise operations of the transformer, float32 in and out.
#include "kernels/ops.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "kernels/simd.h"

namespace fairkv::kernels {

using simd::kLanes;
using simd::V;

void rmsnorm(float* out, const float* x, const float* w, int64_t n, float eps) {
  // The sum of squares in double, as ggml does: at n = 8192 a float sum would lose ~1e-4.
  // Four partial sums so that the adds do not wait on each other.
  double s4[4] = {0.0, 0.0, 0.0, 0.0};
  int64_t j = 0;
  for (; j + 4 <= n; j += 4) {
    for (int u = 0; u < 4; ++u) s4[u] += double(x[j + u] * x[j + u]);
  }
  for (; j < n; ++j) s4[0] += double(x[j] * x[j]);
  const double ss = (s4[0] + s4[1]) + (s4[2] + s4[3]);
  const float scale = 1.0f / std::sqrt(float(ss / double(n)) + eps);
  const V vs = simd::set1(scale);
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes) {
    simd::store(out + i, simd::mul(simd::mul(simd::load(x + i), vs), simd::load(w + i)));
  }
  for (; i < n; ++i) out[i] = (x[i] * scale) * w[i];
}

namespace {

// cos and sin of theta_i = pos * base^(-2i/head_dim), i < head_dim/2, computed in double.
// Every head of a token uses the same angles, so the last table is kept per thread.
struct RopeTable {
  int64_t head_dim = -1, pos = -1;
  float base = 0.0f;
  std::vector<float> cos, sin;
  void update(int64_t d, int64_t p, float b) {
    if (d == head_dim && p == pos && b == base) return;
    head_dim = d;
    pos = p;
    base = b;
    cos.resize(size_t(d / 2));
    sin.resize(size_t(d / 2));
    for (int64_t i = 0; i < d / 2; ++i) {
      const double theta = double(p) * std::pow(double(b), -2.0 * double(i) / double(d));
      cos[size_t(i)] = float(std::cos(theta));
      sin[size_t(i)] = float(std::sin(theta));
    }
  }
};

}  // namespace

void rope(float* x, int64_t head_dim, int64_t pos, float base, RopeStyle style) {
  thread_local RopeTable table;
  table.update(head_dim, pos, base);
  const int64_t half = head_dim / 2;
  for (int64_t i = 0; i < half; ++i) {
    const float c = table.cos[size_t(i)], s = table.sin[size_t(i)];
    float* a = style == RopeStyle::Interleaved ? x + 2 * i : x + i;
    float* b = style == RopeStyle::Interleaved ? x + 2 * i + 1 : x + i + half;
    const float x0 = *a, x1 = *b;
    *a = x0 * c - x1 * s;
    *b = x0 * s + x1 * c;
  }
}

float softmax(float* x, int64_t n) {
  if (n <= 0) return -std::numeric_limits<float>::infinity();
  int64_t i = 0;
  float m = -std::numeric_limits<float>::infinity();
  if (n >= kLanes) {
    V vm = simd::load(x);
    for (i = kLanes; i + kLanes <= n; i += kLanes) vm = simd::max(vm, simd::load(x + i));
    m = simd::reduce_max(vm);
  }
  for (; i < n; ++i) m = std::fmax(m, x[i]);
  if (m == -std::numeric_limits<float>::infinity()) {  // nothing to attend to: no mass anywhere
    for (i = 0; i < n; ++i) x[i] = 0.0f;
    return m;
  }
  // exp in float32 (vectorised, ~2 ulp), the sum in double (the normaliser of long rows).
  const V vm = simd::set1(m);
  double sum = 0.0;
  for (i = 0; i + kLanes <= n; i += kLanes) {
    const V e = simd::exp(simd::sub(simd::load(x + i), vm));
    simd::store(x + i, e);
    sum += double(simd::reduce(e));
  }
  for (; i < n; ++i) {
    x[i] = std::exp(x[i] - m);
    sum += double(x[i]);
  }
  const float inv = float(1.0 / sum);
  const V vi = simd::set1(inv);
  for (i = 0; i + kLanes <= n; i += kLanes) simd::store(x + i, simd::mul(simd::load(x + i), vi));
  for (; i < n; ++i) x[i] *= inv;
  return m + float(std::log(sum));
}

void silu_mul(float* gate, const float* up, int64_t n) {
  const V one = simd::set1(1.0f), zero = simd::zero();
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes) {
    const V g = simd::load(gate + i);
    const V e = simd::exp(simd::sub(zero, g));
    simd::store(gate + i, simd::mul(simd::div(g, simd::add(one, e)), simd::load(up + i)));
  }
  // The tail through the same vector formula (simd::exp rounds otherwise than std::exp), so an
  // element's result does not depend on where its row or slice starts: tensor-parallel ranks
  // apply SwiGLU to their slices of the rows that one device does at once.
  if (i < n) {
    alignas(64) float g[kLanes] = {}, u[kLanes] = {};
    std::copy_n(gate + i, n - i, g);
    std::copy_n(up + i, n - i, u);
    const V e = simd::exp(simd::sub(zero, simd::load(g)));
    simd::store(g, simd::mul(simd::div(simd::load(g), simd::add(one, e)), simd::load(u)));
    std::copy_n(g, n - i, gate + i);
  }
}

void add(float* y, const float* x, int64_t n) {
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes) {
    simd::store(y + i, simd::add(simd::load(y + i), simd::load(x + i)));
  }
  for (; i < n; ++i) y[i] += x[i];
}

}  // namespace fairkv::kernels
