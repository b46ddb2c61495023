#include "kernels/ggml_ops.h"

#include <cmath>
#include <limits>

#include "kernels/simd.h"  // the intrinsics, with GCC 12's header warnings silenced

namespace fairkv::kernels {

namespace {

#if defined(__AVX512F__)
// ggml_v_expf (AVX-512): exp(x) = 2^n * e^b with n = round(x / ln2) found by adding 1.5 * 2^23,
// b = x - n ln2 in two parts, e^b by a degree-5 polynomial in b and b^2, scaled by vscalefps;
// |n| > 192 gives +inf (n > 0) or 0.
__m512 v_expf(__m512 x) {
  const __m512 r = _mm512_set1_ps(0x1.8p23f);
  const __m512 z = _mm512_fmadd_ps(x, _mm512_set1_ps(0x1.715476p+0f), r);
  const __m512 n = _mm512_sub_ps(z, r);
  const __m512 b = _mm512_fnmadd_ps(n, _mm512_set1_ps(0x1.7f7d1cp-20f),
                                    _mm512_fnmadd_ps(n, _mm512_set1_ps(0x1.62e4p-1f), x));
  const __mmask16 d = _mm512_cmp_ps_mask(_mm512_abs_ps(n), _mm512_set1_ps(192), _CMP_GT_OQ);
  const __m512 u = _mm512_mul_ps(b, b);
  const __m512 j = _mm512_fmadd_ps(
      _mm512_fmadd_ps(
          _mm512_fmadd_ps(_mm512_set1_ps(0x1.0e4020p-7f), b, _mm512_set1_ps(0x1.573e2ep-5f)), u,
          _mm512_fmadd_ps(_mm512_set1_ps(0x1.555e66p-3f), b, _mm512_set1_ps(0x1.fffdb6p-2f))),
      u, _mm512_fmadd_ps(_mm512_set1_ps(0x1.ffffecp-1f), b, _mm512_set1_ps(1.0f)));
  const __m512 res = _mm512_scalef_ps(j, n);
  if (_mm512_kortestz(d, d)) return res;
  const __m512 alt = _mm512_mask_blend_ps(_mm512_cmp_ps_mask(n, _mm512_setzero_ps(), _CMP_LE_OQ),
                                          _mm512_set1_ps(INFINITY), _mm512_setzero_ps());
  return _mm512_mask_blend_ps(d, res, alt);
}
#endif

}  // namespace

void rmsnorm_ggml(float* out, const float* x, const float* w, int64_t n, float eps) {
  double sum = 0.0;
  for (int64_t i = 0; i < n; ++i) sum += double(x[i] * x[i]);
  const float mean = float(sum / double(n));
  const float scale = 1.0f / std::sqrt(mean + eps);
  for (int64_t i = 0; i < n; ++i) out[i] = x[i] * scale * w[i];
}

void rope_ggml(float* x, int64_t head_dim, int64_t pos, float base, RopeStyle style) {
  const float theta_scale = std::pow(base, -2.0f / float(head_dim));
  const int64_t half = head_dim / 2;
  float theta = float(pos);
  for (int64_t i = 0; i < half; ++i) {
    const float c = std::cos(theta), s = std::sin(theta);
    theta *= theta_scale;
    float* a = style == RopeStyle::Interleaved ? x + 2 * i : x + i;
    float* b = style == RopeStyle::Interleaved ? x + 2 * i + 1 : x + i + half;
    const float x0 = *a, x1 = *b;
    *a = std::fma(x0, c, -(x1 * s));
    *b = std::fma(x0, s, x1 * c);
  }
}

void silu_mul_ggml(float* gate, const float* up, int64_t n) {
  int64_t i = 0;
#if defined(__AVX512F__)
  const __m512 one = _mm512_set1_ps(1.0f);
  for (; i + 16 <= n; i += 16) {
    const __m512 g = _mm512_loadu_ps(gate + i);
    const __m512 e = v_expf(_mm512_sub_ps(_mm512_setzero_ps(), g));
    const __m512 silu = _mm512_div_ps(g, _mm512_add_ps(one, e));
    _mm512_storeu_ps(gate + i, _mm512_mul_ps(silu, _mm512_loadu_ps(up + i)));
  }
#endif
  for (; i < n; ++i) gate[i] = gate[i] / (1.0f + std::exp(-gate[i])) * up[i];
}

float dot_f32_ggml(const float* x, const float* y, int64_t n) {
  int64_t i = 0;
  float sum = 0.0f;
#if defined(__AVX512F__)
  __m512 acc[4] = {_mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps(),
                   _mm512_setzero_ps()};
  for (; i + 64 <= n; i += 64)
    for (int j = 0; j < 4; ++j)
      acc[j] =
          _mm512_fmadd_ps(_mm512_loadu_ps(x + i + 16 * j), _mm512_loadu_ps(y + i + 16 * j), acc[j]);
  acc[0] = _mm512_add_ps(acc[0], acc[2]);
  acc[1] = _mm512_add_ps(acc[1], acc[3]);
  acc[0] = _mm512_add_ps(acc[0], acc[1]);
  sum = _mm512_reduce_add_ps(acc[0]);
#endif
  for (; i < n; ++i) sum += x[i] * y[i];
  return sum;
}

float dot_f32_tinyblas(const float* x, const float* y, int64_t n) {
#if defined(__AVX512F__)
  __m512 acc = _mm512_setzero_ps();
  for (int64_t i = 0; i < n; i += 16)
    acc = _mm512_fmadd_ps(_mm512_loadu_ps(x + i), _mm512_loadu_ps(y + i), acc);
  return _mm512_reduce_add_ps(acc);
#else
  float sum = 0.0f;
  for (int64_t i = 0; i < n; ++i) sum += x[i] * y[i];
  return sum;
#endif
}

void softmax_ggml(float* x, int64_t n) {
  float max = -std::numeric_limits<float>::infinity();
  for (int64_t i = 0; i < n; ++i) max = std::fmax(max, x[i]);
  double sum = 0.0;
  int64_t i = 0;
#if defined(__AVX512F__)
  for (; i + 16 <= n; i += 16) {
    const __m512 e = v_expf(_mm512_sub_ps(_mm512_loadu_ps(x + i), _mm512_set1_ps(max)));
    _mm512_storeu_ps(x + i, e);
    sum += double(_mm512_reduce_add_ps(e));
  }
#endif
  for (; i < n; ++i) {
    x[i] = std::exp(x[i] - max);
    sum += double(x[i]);
  }
  const float inv = float(1.0 / sum);
  for (i = 0; i < n; ++i) x[i] *= inv;
}

}  // namespace fairkv::kernels
