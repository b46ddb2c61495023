// Register-blocked matrix product for many tokens (prefill), float32 activations, any weight type.
//
// The shape is GotoBLAS's: tokens run along the vector lanes, so a micro-kernel step loads
// kNv vectors of activations (kPanel tokens at one column k) and, for each of kRows weight rows,
// broadcasts one float32 weight and does kNv FMAs. kRows x kNv accumulators stay in registers
// for a whole block of kKc columns, there is no horizontal reduction, and the broadcast is a
// plain load (no shuffle). Weights are converted to float32 once per (row tile, column block) into
// a small buffer and reused by every panel of tokens, so fp16 / bf16 / Q8_0 / Q4_0 all run at the
// float32 FMA rate. Activations are packed once per call into panels [k][kPanel tokens].
#include <algorithm>
#include <vector>

#include "kernels/matmul_kernels.h"
#include "kernels/simd.h"

namespace fairkv::kernels::detail {

namespace {

using simd::kLanes;
using simd::V;

#if defined(FAIRKV_AVX512)
constexpr int kRows = 12;  // 12 x 2 accumulators + 2 activation vectors of 32 registers
constexpr int kNv = 2;
#elif defined(FAIRKV_AVX2)
constexpr int kRows = 6;  // 6 x 2 accumulators + 2 activations + 1 broadcast of 16 registers
constexpr int kNv = 2;
#else
constexpr int kRows = 4;
constexpr int kNv = 1;
#endif
constexpr int kPanel = kNv * kLanes;  // tokens per panel
constexpr int64_t kKc = 256;  // columns per block: a tile's weights (kRows x kKc) stay in L1
constexpr int64_t kTilesPerBlock = 8;  // row tiles sharing one pass over the activations
static_assert(kKc % kQK == 0 && kKc % kQK_K == 0, "column blocks must hold whole quantized blocks");

// acc[r][j] (+)= sum_k wb[r * kKc + k] * xp[k * kPanel + j * kLanes + lane], for kc columns.
template <int R, int NV>
void micro(const float* wb, int64_t kc, const float* xp, float* c, bool first) {
  V acc[R][NV];
  FAIRKV_UNROLL
  for (int r = 0; r < R; ++r) {
    FAIRKV_UNROLL
    for (int j = 0; j < NV; ++j) {
      acc[r][j] = first ? simd::zero() : simd::load(c + r * kPanel + j * kLanes);
    }
  }
  for (int64_t k = 0; k < kc; ++k) {
    V xv[NV];
    FAIRKV_UNROLL
    for (int j = 0; j < NV; ++j) xv[j] = simd::load(xp + k * kPanel + j * kLanes);
    FAIRKV_UNROLL
    for (int r = 0; r < R; ++r) {
      const V b = simd::set1(wb[r * kKc + k]);
      FAIRKV_UNROLL
      for (int j = 0; j < NV; ++j) acc[r][j] = simd::fma(b, xv[j], acc[r][j]);
    }
  }
  FAIRKV_UNROLL
  for (int r = 0; r < R; ++r) {
    FAIRKV_UNROLL
    for (int j = 0; j < NV; ++j) simd::store(c + r * kPanel + j * kLanes, acc[r][j]);
  }
}

// Columns [k0, k0 + kc) of one row as float32 into dst.
template <DType T>
void convert(const uint8_t* row, int64_t k0, int64_t kc, float* dst) {
  if constexpr (is_ggml_quant(T)) {
    // kKc is a whole number of blocks of every type, so [k0, k0 + kc) is whole blocks.
    dequantize_row(T, row + row_bytes(T, k0), dst, kc);
  } else {
    int64_t k = 0;
    for (; k + kLanes <= kc; k += kLanes) simd::store(dst + k, simd::load_weights<T>(row, k0 + k));
    if constexpr (T == DType::F32 || T == DType::F16 || T == DType::BF16) {
      for (; k < kc; ++k) dst[k] = simd::weight_at<T>(row, k0 + k);
    }
  }
}

template <DType T>
void gemm_type(const WeightMatrix& w, const float* xp, int64_t n_tokens, float* y, int64_t r_begin,
               int64_t r_end) {
  const int64_t cols = w.cols;
  const size_t stride = w.stride();
  const auto* base = static_cast<const uint8_t*>(w.data);
  const int64_t n_panels = gemm_panels(n_tokens);
  const int64_t last_panel_tokens = n_tokens - (n_panels - 1) * kPanel;
  thread_local std::vector<float> wbuf_v, cbuf_v;
  if (wbuf_v.size() < size_t(kRows * kKc)) wbuf_v.resize(size_t(kRows * kKc));
  const size_t cbuf_size = size_t(kTilesPerBlock * n_panels * kRows * kPanel);
  if (cbuf_v.size() < cbuf_size) cbuf_v.resize(cbuf_size);
  float* wbuf = wbuf_v.data();
  float* cbuf = cbuf_v.data();

  for (int64_t rb = r_begin; rb < r_end; rb += kTilesPerBlock * kRows) {
    const int64_t n_tiles = std::min(kTilesPerBlock, (r_end - rb + kRows - 1) / kRows);
    for (int64_t k0 = 0; k0 < cols; k0 += kKc) {
      const int64_t kc = std::min(kKc, cols - k0);
      for (int64_t i = 0; i < n_tiles; ++i) {
        const int64_t r0 = rb + i * kRows;
        for (int r = 0; r < kRows; ++r) {
          if (r0 + r < r_end) {
            convert<T>(base + (r0 + r) * stride, k0, kc, wbuf + r * kKc);
          } else {
            std::fill(wbuf + r * kKc, wbuf + r * kKc + kc, 0.0f);
          }
        }
        for (int64_t p = 0; p < n_panels; ++p) {
          const float* xpp = xp + p * cols * kPanel + k0 * kPanel;
          float* c = cbuf + (i * n_panels + p) * kRows * kPanel;
          if (kNv > 1 && p == n_panels - 1 && last_panel_tokens <= kLanes) {
            micro<kRows, 1>(wbuf, kc, xpp, c, k0 == 0);
          } else {
            micro<kRows, kNv>(wbuf, kc, xpp, c, k0 == 0);
          }
        }
      }
    }
    store_tiles<kRows, kPanel>(cbuf, n_tiles, n_panels, last_panel_tokens, rb, r_end, y, w.rows);
  }
}

}  // namespace

int64_t gemm_row_tile() {
  return kRows;
}

int64_t gemm_panels(int64_t n_tokens) {
  return (n_tokens + kPanel - 1) / kPanel;
}

size_t gemm_packed_floats(int64_t n_tokens, int64_t cols) {
  return size_t(gemm_panels(n_tokens) * kPanel * cols);
}

void gemm_pack(const float* x, int64_t n_tokens, int64_t cols, float* out, int64_t p_begin,
               int64_t p_end) {
  // Blocks of 64 columns keep the kPanel source rows' cache lines live while they are read.
  constexpr int64_t kB = 64;
  for (int64_t p = p_begin; p < p_end; ++p) {
    float* dst = out + p * cols * kPanel;
    const int64_t t0 = p * kPanel;
    const int64_t nt = std::min<int64_t>(kPanel, n_tokens - t0);
    for (int64_t k0 = 0; k0 < cols; k0 += kB) {
      const int64_t k1 = std::min(cols, k0 + kB);
      for (int64_t t = 0; t < nt; ++t) {
        const float* src = x + (t0 + t) * cols;
        for (int64_t k = k0; k < k1; ++k) dst[k * kPanel + t] = src[k];
      }
      for (int64_t t = nt; t < kPanel; ++t) {
        for (int64_t k = k0; k < k1; ++k) dst[k * kPanel + t] = 0.0f;
      }
    }
  }
}

void gemm(const WeightMatrix& w, const float* xp, int64_t n_tokens, float* y, int64_t r_begin,
          int64_t r_end) {
  switch (w.type) {
    case DType::F32:
      return gemm_type<DType::F32>(w, xp, n_tokens, y, r_begin, r_end);
    case DType::F16:
      return gemm_type<DType::F16>(w, xp, n_tokens, y, r_begin, r_end);
    case DType::BF16:
      return gemm_type<DType::BF16>(w, xp, n_tokens, y, r_begin, r_end);
    case DType::Q8_0:
      return gemm_type<DType::Q8_0>(w, xp, n_tokens, y, r_begin, r_end);
    case DType::Q4_0:
      return gemm_type<DType::Q4_0>(w, xp, n_tokens, y, r_begin, r_end);
    case DType::Q4_1:
      return gemm_type<DType::Q4_1>(w, xp, n_tokens, y, r_begin, r_end);
    case DType::Q5_0:
      return gemm_type<DType::Q5_0>(w, xp, n_tokens, y, r_begin, r_end);
    case DType::Q5_1:
      return gemm_type<DType::Q5_1>(w, xp, n_tokens, y, r_begin, r_end);
    case DType::Q2_K:
      return gemm_type<DType::Q2_K>(w, xp, n_tokens, y, r_begin, r_end);
    case DType::Q3_K:
      return gemm_type<DType::Q3_K>(w, xp, n_tokens, y, r_begin, r_end);
    case DType::Q4_K:
      return gemm_type<DType::Q4_K>(w, xp, n_tokens, y, r_begin, r_end);
    case DType::Q5_K:
      return gemm_type<DType::Q5_K>(w, xp, n_tokens, y, r_begin, r_end);
    case DType::Q6_K:
      return gemm_type<DType::Q6_K>(w, xp, n_tokens, y, r_begin, r_end);
  }
}

}  // namespace fairkv::kernels::detail
