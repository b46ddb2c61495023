// Dot-product kernels for a few tokens (decode): memory-bound, so the goal is to read each
// weight byte once per call at full bandwidth. A tile is kGemvRows rows x up to kGemvTokens
// tokens; each weight vector is converted to float32 once and used by every token of the tile,
// and the rows of a tile are separate streams so the FMA chains are independent.
#include <algorithm>
#include <stdexcept>
#include <string>
#include <type_traits>

#include "kernels/matmul_kernels.h"
#include "kernels/simd.h"

namespace fairkv::kernels::detail {

namespace {

using simd::kLanes;
using simd::V;

// Bytes of weights per kLanes elements of a row, for the software prefetch.
template <DType T>
constexpr int64_t bytes_per_vector() {
  switch (T) {
    case DType::F32:
      return 4 * kLanes;
    case DType::F16:
    case DType::BF16:
      return 2 * kLanes;
    case DType::Q8_0:
      return int64_t(sizeof(BlockQ8_0)) * kLanes / kQK;
    case DType::Q4_0:
      return int64_t(sizeof(BlockQ4_0)) * kLanes / kQK;
  }
  return 0;
}

constexpr bool is_quantized(DType t) {
  return t == DType::Q8_0 || t == DType::Q4_0;
}

// Rows per tile for NT tokens: more rows are more memory streams in flight (one core needs about
// eight to reach its share of the bandwidth), as long as the accumulators fit the registers
// (quantized types keep a per-block partial sum beside each accumulator).
template <DType T, int NT>
constexpr int tile_rows() {
#if defined(FAIRKV_AVX512)
  return NT == 1 || (NT == 2 && !is_quantized(T)) ? 8 : 4;
#else
  return NT == 1 && !is_quantized(T) ? 8 : 4;
#endif
}
static_assert(kGemvRows % 8 == 0 && kGemvRows % 4 == 0);

// How far ahead of the loads to prefetch each row: a few cache lines, enough to cover the
// latency of the stream ahead of the hardware prefetcher's ramp-up.
constexpr int64_t kPrefetchBytes = 256;

// Float types: one FMA per weight vector and token.
template <DType T, int R, int NT>
void gemv_tile(const WeightMatrix& w, int64_t r0, const float* x, float* y) {
  const int64_t cols = w.cols;
  const size_t stride = w.stride();
  const uint8_t* base = w.row(r0);
  V acc[R][NT];
  FAIRKV_UNROLL
  for (auto& a : acc) {
    FAIRKV_UNROLL
    for (auto& v : a) v = simd::zero();
  }
  const int64_t kv = cols - cols % kLanes;
  for (int64_t k = 0; k < kv; k += kLanes) {
    V xv[NT];
    FAIRKV_UNROLL
    for (int t = 0; t < NT; ++t) xv[t] = simd::load(x + t * cols + k);
    FAIRKV_UNROLL
    for (int r = 0; r < R; ++r) {
      const uint8_t* row = base + r * stride;
      __builtin_prefetch(row + k / kLanes * bytes_per_vector<T>() + kPrefetchBytes);
      const V wv = simd::load_weights<T>(row, k);
      FAIRKV_UNROLL
      for (int t = 0; t < NT; ++t) acc[r][t] = simd::fma(wv, xv[t], acc[r][t]);
    }
  }
  FAIRKV_UNROLL
  for (int r = 0; r < R; ++r) {
    FAIRKV_UNROLL
    for (int t = 0; t < NT; ++t) {
      float s = simd::reduce(acc[r][t]);
      for (int64_t k = kv; k < cols; ++k) {
        s += simd::weight_at<T>(base + r * stride, k) * x[t * cols + k];
      }
      y[t * w.rows + r0 + r] = s;
    }
  }
}

// Quantized types: the integer levels times x summed per block, then one FMA with the block's
// scale, so the scale is converted and applied once per 32 weights rather than per vector.
template <DType T, int R, int NT>
void gemv_tile_q(const WeightMatrix& w, int64_t r0, const float* x, float* y) {
  using Block = std::conditional_t<T == DType::Q8_0, BlockQ8_0, BlockQ4_0>;
  constexpr int kNv = kQK / kLanes;  // vectors per block
  const int64_t cols = w.cols;
  const size_t stride = w.stride();
  const uint8_t* base = w.row(r0);
  V acc[R][NT];
  FAIRKV_UNROLL
  for (auto& a : acc) {
    FAIRKV_UNROLL
    for (auto& v : a) v = simd::zero();
  }
  for (int64_t b = 0; b < cols / kQK; ++b) {
    V part[R][NT];
    FAIRKV_UNROLL
    for (int v = 0; v < kNv; ++v) {
      V xv[NT];
      FAIRKV_UNROLL
      for (int t = 0; t < NT; ++t) xv[t] = simd::load(x + t * cols + b * kQK + v * kLanes);
      FAIRKV_UNROLL
      for (int r = 0; r < R; ++r) {
        const Block* blk = reinterpret_cast<const Block*>(base + r * stride) + b;
        if (v == 0) __builtin_prefetch(reinterpret_cast<const uint8_t*>(blk) + kPrefetchBytes);
        V wv;
        if constexpr (T == DType::Q8_0) {
          wv = simd::load_i8(blk->qs + v * kLanes);
        } else {
          const bool high = v * kLanes >= kQK / 2;
          wv = simd::load_q4(blk->qs + (v * kLanes) % (kQK / 2), high);
        }
        FAIRKV_UNROLL
        for (int t = 0; t < NT; ++t) {
          part[r][t] = v == 0 ? simd::mul(wv, xv[t]) : simd::fma(wv, xv[t], part[r][t]);
        }
      }
    }
    FAIRKV_UNROLL
    for (int r = 0; r < R; ++r) {
      const Block* blk = reinterpret_cast<const Block*>(base + r * stride) + b;
      const V d = simd::set1(simd::half_to_float(blk->d));
      FAIRKV_UNROLL
      for (int t = 0; t < NT; ++t) acc[r][t] = simd::fma(part[r][t], d, acc[r][t]);
    }
  }
  FAIRKV_UNROLL
  for (int r = 0; r < R; ++r) {
    FAIRKV_UNROLL
    for (int t = 0; t < NT; ++t) y[t * w.rows + r0 + r] = simd::reduce(acc[r][t]);
  }
}

template <DType T, int NT>
void gemv_rows(const WeightMatrix& w, const float* x, float* y, int64_t r_begin, int64_t r_end) {
  constexpr int R = tile_rows<T, NT>();
  int64_t r = r_begin;
  if constexpr (is_quantized(T)) {
    for (; r + R <= r_end; r += R) gemv_tile_q<T, R, NT>(w, r, x, y);
    for (; r < r_end; ++r) gemv_tile_q<T, 1, NT>(w, r, x, y);
  } else {
    for (; r + R <= r_end; r += R) gemv_tile<T, R, NT>(w, r, x, y);
    for (; r < r_end; ++r) gemv_tile<T, 1, NT>(w, r, x, y);
  }
}

template <DType T>
void gemv_type(const WeightMatrix& w, const float* x, int64_t n_tokens, float* y, int64_t r_begin,
               int64_t r_end) {
  for (int64_t t = 0; t < n_tokens; t += kGemvTokens) {
    const float* xt = x + t * w.cols;
    float* yt = y + t * w.rows;
    switch (std::min<int64_t>(kGemvTokens, n_tokens - t)) {
      case 1:
        gemv_rows<T, 1>(w, xt, yt, r_begin, r_end);
        break;
      case 2:
        gemv_rows<T, 2>(w, xt, yt, r_begin, r_end);
        break;
      case 3:
        gemv_rows<T, 3>(w, xt, yt, r_begin, r_end);
        break;
      default:
        gemv_rows<T, 4>(w, xt, yt, r_begin, r_end);
        break;
    }
  }
}

}  // namespace

void gemv(const WeightMatrix& w, const float* x, int64_t n_tokens, float* y, int64_t r_begin,
          int64_t r_end) {
  static_assert(kGemvTokens == 4, "gemv_type's switch covers 1..4 tokens");
  switch (w.type) {
    case DType::F32:
      return gemv_type<DType::F32>(w, x, n_tokens, y, r_begin, r_end);
    case DType::F16:
      return gemv_type<DType::F16>(w, x, n_tokens, y, r_begin, r_end);
    case DType::BF16:
      return gemv_type<DType::BF16>(w, x, n_tokens, y, r_begin, r_end);
    case DType::Q8_0:
      return gemv_type<DType::Q8_0>(w, x, n_tokens, y, r_begin, r_end);
    case DType::Q4_0:
      return gemv_type<DType::Q4_0>(w, x, n_tokens, y, r_begin, r_end);
  }
}

}  // namespace fairkv::kernels::detail

namespace fairkv::kernels {

float dot_row(DType t, const void* w_row, const float* x, int64_t n) {
  if (n % block_size(t) != 0) {
    throw std::invalid_argument(std::string("dot_row: ") + std::to_string(n) +
                                " elements is not a whole number of " + dtype_name(t) + " blocks");
  }
  const WeightMatrix w{t, 1, n, w_row, 0};
  float y = 0.0f;
  detail::gemv(w, x, 1, &y, 0, 1);
  return y;
}

}  // namespace fairkv::kernels
