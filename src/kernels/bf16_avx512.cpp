// BF16 weights times bf16-rounded activations with AVX512-BF16's vdpbf16ps, which multiplies
// pairs of bf16 exactly and adds both products into a float32 lane: twice the float32 FMA rate
// and no conversion of the weights at all. This is matmul's Activations::LikeGgml path for BF16
// (llama.cpp rounds the activations to bf16 too).
//
// Few tokens: dot-product tiles, one token's bf16 row against 32 weights per instruction.
// Many tokens: tokens along the lanes as in gemm.cpp; activations packed as [k pair][token][2],
// weights broadcast two at a time (one 32-bit pair) from a copied tile.
#include "kernels/matmul_kernels.h"
#include "kernels/simd.h"

#if defined(FAIRKV_HAVE_BF16_KERNELS)

#include <algorithm>
#include <vector>

namespace fairkv::kernels::detail {

namespace {

constexpr int64_t kFewTokens = 8;  // below this, dot-product tiles
constexpr int kRows = 12;          // gemm tile: 12 rows x 32 tokens
constexpr int kNv = 2;
constexpr int kPanel = kNv * 16;
constexpr int64_t kKc = 256;  // columns per block (even)
constexpr int64_t kTilesPerBlock = 8;

int64_t padded_cols(int64_t cols) {
  return (cols + 31) / 32 * 32;
}
int64_t pairs(int64_t cols) {
  return (cols + 1) / 2;
}

// 16 floats rounded to bf16 (round to nearest even, as ggml's fp32_to_bf16 for normal numbers).
__m256i to_bf16(__m512 v) {
  return __m256i(_mm512_cvtneps_pbh(v));
}

// --- few tokens

// One row (a thread's rows are then one sequential stream, see gemv.cpp) against NT tokens, U
// independent accumulators per token to cover vdpbf16ps's latency.
template <int NT, int U>
void gemv_row(const uint16_t* row, int64_t cols, const uint16_t* xb, int64_t xstride, float* y,
              int64_t y_stride) {
  __m512 acc[NT][U];
  FAIRKV_UNROLL
  for (auto& a : acc) {
    FAIRKV_UNROLL
    for (auto& v : a) v = _mm512_setzero_ps();
  }
  const int64_t kfull = cols - cols % 32;
  int64_t k = 0;
  for (; k + 32 * U <= kfull; k += 32 * U) {
    FAIRKV_UNROLL
    for (int u = 0; u < U; ++u) {
      const __m512bh wv = __m512bh(_mm512_loadu_si512(row + k + 32 * u));
      FAIRKV_UNROLL
      for (int t = 0; t < NT; ++t) {
        const __m512bh xv = __m512bh(_mm512_loadu_si512(xb + t * xstride + k + 32 * u));
        acc[t][u] = _mm512_dpbf16_ps(acc[t][u], wv, xv);
      }
    }
  }
  for (; k < cols; k += 32) {  // whole vectors, then the tail (x is zero-padded; the weights
                               // must not be over-read)
    const int64_t left = cols - k;
    const __mmask32 m = left >= 32 ? __mmask32(0xffffffffu) : _cvtu32_mask32((1u << left) - 1);
    const __m512bh wv = __m512bh(_mm512_maskz_loadu_epi16(m, row + k));
    FAIRKV_UNROLL
    for (int t = 0; t < NT; ++t) {
      const __m512bh xv = __m512bh(_mm512_loadu_si512(xb + t * xstride + k));
      acc[t][0] = _mm512_dpbf16_ps(acc[t][0], wv, xv);
    }
  }
  FAIRKV_UNROLL
  for (int t = 0; t < NT; ++t) {
    __m512 sum = acc[t][0];
    FAIRKV_UNROLL
    for (int u = 1; u < U; ++u) sum = _mm512_add_ps(sum, acc[t][u]);
    y[t * y_stride] = _mm512_reduce_add_ps(sum);
  }
}

// Accumulators per token: four for one token (decode), one for several.
constexpr int kOneTokenU = 4;

template <int NT>
void gemv_rows(const WeightMatrix& w, const uint16_t* xb, int64_t xstride, float* y,
               int64_t r_begin, int64_t r_end) {
  const size_t stride = w.stride();
  const uint8_t* row = w.row(r_begin);
  for (int64_t r = r_begin; r < r_end; ++r, row += stride) {
    gemv_row<NT, NT == 1 ? kOneTokenU : 1>(reinterpret_cast<const uint16_t*>(row), w.cols, xb,
                                           xstride, y + r, w.rows);
  }
}

void gemv(const WeightMatrix& w, const uint16_t* xb, int64_t n_tokens, float* y, int64_t r_begin,
          int64_t r_end) {
  const int64_t xstride = padded_cols(w.cols);
  for (int64_t t = 0; t < n_tokens; t += 4) {
    const uint16_t* xt = xb + t * xstride;
    float* yt = y + t * w.rows;
    switch (std::min<int64_t>(4, n_tokens - t)) {
      case 1:
        gemv_rows<1>(w, xt, xstride, yt, r_begin, r_end);
        break;
      case 2:
        gemv_rows<2>(w, xt, xstride, yt, r_begin, r_end);
        break;
      case 3:
        gemv_rows<3>(w, xt, xstride, yt, r_begin, r_end);
        break;
      default:
        gemv_rows<4>(w, xt, xstride, yt, r_begin, r_end);
        break;
    }
  }
}

// --- many tokens

// acc[r][j] (+)= sum over kp pairs of wb[r][pair] . xp[pair][token j*16 + lane].
template <int R, int NV>
void micro(const uint32_t* wb, int64_t kp, const uint32_t* xp, float* c, bool first) {
  __m512 acc[R][NV];
  FAIRKV_UNROLL
  for (int r = 0; r < R; ++r) {
    FAIRKV_UNROLL
    for (int j = 0; j < NV; ++j) {
      acc[r][j] = first ? _mm512_setzero_ps() : _mm512_loadu_ps(c + r * kPanel + j * 16);
    }
  }
  for (int64_t k = 0; k < kp; ++k) {
    __m512bh xv[NV];
    FAIRKV_UNROLL
    for (int j = 0; j < NV; ++j) xv[j] = __m512bh(_mm512_loadu_si512(xp + k * kPanel + j * 16));
    FAIRKV_UNROLL
    for (int r = 0; r < R; ++r) {
      const __m512bh b = __m512bh(_mm512_set1_epi32(int(wb[r * (kKc / 2) + k])));
      FAIRKV_UNROLL
      for (int j = 0; j < NV; ++j) acc[r][j] = _mm512_dpbf16_ps(acc[r][j], b, xv[j]);
    }
  }
  FAIRKV_UNROLL
  for (int r = 0; r < R; ++r) {
    FAIRKV_UNROLL
    for (int j = 0; j < NV; ++j) _mm512_storeu_ps(c + r * kPanel + j * 16, acc[r][j]);
  }
}

void gemm(const WeightMatrix& w, const uint32_t* xp, int64_t n_tokens, float* y, int64_t r_begin,
          int64_t r_end) {
  const int64_t cols = w.cols;
  const size_t stride = w.stride();
  const int64_t kpairs = pairs(cols);
  const int64_t n_panels = (n_tokens + kPanel - 1) / kPanel;
  const int64_t last_panel_tokens = n_tokens - (n_panels - 1) * kPanel;
  thread_local std::vector<uint32_t> wbuf_v;
  thread_local std::vector<float> cbuf_v;
  if (wbuf_v.size() < size_t(kRows * kKc / 2)) wbuf_v.resize(size_t(kRows * kKc / 2));
  const size_t cbuf_size = size_t(kTilesPerBlock * n_panels * kRows * kPanel);
  if (cbuf_v.size() < cbuf_size) cbuf_v.resize(cbuf_size);
  uint32_t* wbuf = wbuf_v.data();
  float* cbuf = cbuf_v.data();

  for (int64_t rb = r_begin; rb < r_end; rb += kTilesPerBlock * kRows) {
    const int64_t n_tiles = std::min(kTilesPerBlock, (r_end - rb + kRows - 1) / kRows);
    for (int64_t k0 = 0; k0 < cols; k0 += kKc) {
      const int64_t kc = std::min(kKc, cols - k0);
      const int64_t kp = (kc + 1) / 2;
      for (int64_t i = 0; i < n_tiles; ++i) {
        const int64_t r0 = rb + i * kRows;
        for (int r = 0; r < kRows; ++r) {
          auto* dst = reinterpret_cast<uint16_t*>(wbuf + r * (kKc / 2));
          if (r0 + r < r_end) {
            const auto* src = reinterpret_cast<const uint16_t*>(w.row(0) + (r0 + r) * stride) + k0;
            std::copy(src, src + kc, dst);
            if (kc % 2) dst[kc] = 0;  // odd column count: the last pair's second weight
          } else {
            std::fill(dst, dst + 2 * kp, uint16_t(0));
          }
        }
        for (int64_t p = 0; p < n_panels; ++p) {
          const uint32_t* xpp = xp + p * kpairs * kPanel + (k0 / 2) * kPanel;
          float* c = cbuf + (i * n_panels + p) * kRows * kPanel;
          if (p == n_panels - 1 && last_panel_tokens <= 16) {
            micro<kRows, 1>(wbuf, kp, xpp, c, k0 == 0);
          } else {
            micro<kRows, kNv>(wbuf, kp, xpp, c, k0 == 0);
          }
        }
      }
    }
    store_tiles<kRows, kPanel>(cbuf, n_tiles, n_panels, last_panel_tokens, rb, r_end, y, w.rows);
  }
}

}  // namespace

int64_t bf16_panels(int64_t n_tokens) {
  return n_tokens < kFewTokens ? n_tokens : (n_tokens + kPanel - 1) / kPanel;
}

int64_t bf16_row_tile() {
  return kRows;
}

size_t bf16_packed_bytes(int64_t n_tokens, int64_t cols) {
  if (n_tokens < kFewTokens) return size_t(n_tokens * padded_cols(cols) * 2);
  return size_t(bf16_panels(n_tokens) * pairs(cols) * kPanel * 4);
}

void bf16_pack(const float* x, int64_t n_tokens, int64_t cols, uint8_t* out, int64_t p_begin,
               int64_t p_end) {
  if (n_tokens < kFewTokens) {  // one zero-padded bf16 row per token
    const int64_t pc = padded_cols(cols);
    for (int64_t t = p_begin; t < p_end; ++t) {
      auto* dst = reinterpret_cast<uint16_t*>(out) + t * pc;
      const float* src = x + t * cols;
      int64_t k = 0;
      for (; k + 16 <= cols; k += 16) {
        _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst + k), to_bf16(_mm512_loadu_ps(src + k)));
      }
      for (; k < cols; ++k) dst[k] = fp32_to_bf16(src[k]);
      for (; k < pc; ++k) dst[k] = 0;
    }
    return;
  }
  // Panels: [pair][token][2]; a missing token or the odd column's partner is zero.
  const int64_t kpairs = pairs(cols);
  std::vector<uint16_t> row(size_t(2 * kpairs));
  for (int64_t p = p_begin; p < p_end; ++p) {
    auto* dst = reinterpret_cast<uint32_t*>(out) + p * kpairs * kPanel;
    for (int64_t tt = 0; tt < kPanel; ++tt) {
      const int64_t t = p * kPanel + tt;
      if (t < n_tokens) {
        const float* src = x + t * cols;
        int64_t k = 0;
        for (; k + 16 <= cols; k += 16) {
          _mm256_storeu_si256(reinterpret_cast<__m256i*>(row.data() + k),
                              to_bf16(_mm512_loadu_ps(src + k)));
        }
        for (; k < cols; ++k) row[size_t(k)] = fp32_to_bf16(src[k]);
        if (cols % 2) row[size_t(cols)] = 0;
      } else {
        std::fill(row.begin(), row.end(), uint16_t(0));
      }
      const auto* pr = reinterpret_cast<const uint32_t*>(row.data());
      for (int64_t k = 0; k < kpairs; ++k) dst[k * kPanel + tt] = pr[k];
    }
  }
}

void bf16_matmul(const WeightMatrix& w, const uint8_t* xpacked, int64_t n_tokens, float* y,
                 int64_t r_begin, int64_t r_end) {
  if (n_tokens < kFewTokens) {
    gemv(w, reinterpret_cast<const uint16_t*>(xpacked), n_tokens, y, r_begin, r_end);
  } else {
    gemm(w, reinterpret_cast<const uint32_t*>(xpacked), n_tokens, y, r_begin, r_end);
  }
}

void bf16_matmul_apart(const WeightMatrix& w, const uint8_t* xpacked, int64_t n_tokens, float* y,
                       int64_t r_begin, int64_t r_end) {
  // gemv_row never mixes tokens: at the 1-token U, each token of a group of 4 gets its 1-token
  // sums, and each weight vector is loaded once per group.
  const auto* xb = reinterpret_cast<const uint16_t*>(xpacked);
  const int64_t xstride = padded_cols(w.cols);
  const size_t stride = w.stride();
  const uint8_t* row = w.row(r_begin);
  for (int64_t r = r_begin; r < r_end; ++r, row += stride) {
    const auto* wr = reinterpret_cast<const uint16_t*>(row);
    for (int64_t t = 0; t < n_tokens; t += 4) {
      const uint16_t* xt = xb + t * xstride;
      float* yt = y + t * w.rows + r;
      switch (std::min<int64_t>(4, n_tokens - t)) {
        case 1:
          gemv_row<1, kOneTokenU>(wr, w.cols, xt, xstride, yt, w.rows);
          break;
        case 2:
          gemv_row<2, kOneTokenU>(wr, w.cols, xt, xstride, yt, w.rows);
          break;
        case 3:
          gemv_row<3, kOneTokenU>(wr, w.cols, xt, xstride, yt, w.rows);
          break;
        default:
          gemv_row<4, kOneTokenU>(wr, w.cols, xt, xstride, yt, w.rows);
          break;
      }
    }
  }
}

}  // namespace fairkv::kernels::detail

#endif  // FAIRKV_HAVE_BF16_KERNELS
