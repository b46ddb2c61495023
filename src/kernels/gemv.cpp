// Dot-product kernels for a few tokens (decode): memory-bound, so the goal is to read each
// weight byte once per call at full bandwidth. Each weight vector is converted to float32 once
// and used by up to kGemvTokens tokens.
#include <algorithm>
#include <array>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "kernels/matmul_kernels.h"
#include "kernels/simd.h"

namespace fairkv::kernels::detail {

namespace {

using simd::kLanes;
using simd::V;

constexpr bool is_quantized(DType t) {
  return t == DType::Q8_0 || t == DType::Q4_0;
}

// Activations as float32, or as fp16 (matmul's LikeGgml mode for F16 weights, where x is rounded
// to fp16 anyway: half the load traffic per weight byte).
inline V load_x(const float* p) {
  return simd::load(p);
}
inline V load_x(const uint16_t* p) {
  return simd::load_f16(p);
}
inline float x_at(const float* p, int64_t i) {
  return p[i];
}
inline float x_at(const uint16_t* p, int64_t i) {
  return simd::half_to_float(p[i]);
}

// One row at a time: the weights of a thread's rows are then read as a single sequential
// stream, which the hardware prefetchers follow best (measured on Zen 4 over a whole model:
// ~25% more bandwidth than eight interleaved row streams, more still on 4 KiB pages). Few uops
// per weight byte matter too: the out-of-order window then holds more outstanding loads.
// U independent accumulators per token hide the FMA latency.
template <DType T, class XT, int NT, int U>
void gemv_row(const uint8_t* row, int64_t cols, const XT* x, float* y, int64_t y_stride) {
  V acc[NT][U];
  FAIRKV_UNROLL
  for (auto& a : acc) {
    FAIRKV_UNROLL
    for (auto& v : a) v = simd::zero();
  }
  const int64_t kv = cols - cols % kLanes;
  int64_t k = 0;
  for (; k + U * kLanes <= kv; k += U * kLanes) {
    FAIRKV_UNROLL
    for (int u = 0; u < U; ++u) {
      const V wv = simd::load_weights<T>(row, k + u * kLanes);
      FAIRKV_UNROLL
      for (int t = 0; t < NT; ++t) {
        acc[t][u] = simd::fma(wv, load_x(x + t * cols + k + u * kLanes), acc[t][u]);
      }
    }
  }
  for (; k < kv; k += kLanes) {
    const V wv = simd::load_weights<T>(row, k);
    FAIRKV_UNROLL
    for (int t = 0; t < NT; ++t) acc[t][0] = simd::fma(wv, load_x(x + t * cols + k), acc[t][0]);
  }
  FAIRKV_UNROLL
  for (int t = 0; t < NT; ++t) {
    V sum = acc[t][0];
    FAIRKV_UNROLL
    for (int u = 1; u < U; ++u) sum = simd::add(sum, acc[t][u]);
    float s = simd::reduce(sum);
    for (int64_t c = kv; c < cols; ++c) s += simd::weight_at<T>(row, c) * x_at(x + t * cols, c);
    y[t * y_stride] = s;
  }
}

// Quantized types: the integer levels times x summed per block, then one FMA with the block's
// scale, so the scale is converted and applied once per 32 weights rather than per vector.
template <DType T, int NT>
void gemv_row_q(const uint8_t* row, int64_t cols, const float* x, float* y, int64_t y_stride) {
  using Block = std::conditional_t<T == DType::Q8_0, BlockQ8_0, BlockQ4_0>;
  constexpr int kNv = kQK / kLanes;  // vectors per block
  const Block* blocks = reinterpret_cast<const Block*>(row);
  V acc[NT];
  FAIRKV_UNROLL
  for (auto& a : acc) a = simd::zero();
  for (int64_t b = 0; b < cols / kQK; ++b) {
    const Block* blk = blocks + b;
    V part[NT];
    FAIRKV_UNROLL
    for (int v = 0; v < kNv; ++v) {
      V wv;
      if constexpr (T == DType::Q8_0) {
        wv = simd::load_i8(blk->qs + v * kLanes);
      } else {
        const bool high = v * kLanes >= kQK / 2;
        wv = simd::load_q4(blk->qs + (v * kLanes) % (kQK / 2), high);
      }
      FAIRKV_UNROLL
      for (int t = 0; t < NT; ++t) {
        const V xv = simd::load(x + t * cols + b * kQK + v * kLanes);
        part[t] = v == 0 ? simd::mul(wv, xv) : simd::fma(wv, xv, part[t]);
      }
    }
    const V d = simd::set1(simd::half_to_float(blk->d));
    FAIRKV_UNROLL
    for (int t = 0; t < NT; ++t) acc[t] = simd::fma(part[t], d, acc[t]);
  }
  FAIRKV_UNROLL
  for (int t = 0; t < NT; ++t) y[t * y_stride] = simd::reduce(acc[t]);
}

// Accumulators per token in gemv_row: two for one token (decode, to cover the FMA latency), one
// for several (their tokens cover it).
constexpr int kOneTokenU = 2;

template <DType T, class XT, int NT>
void gemv_rows(const WeightMatrix& w, const XT* x, float* y, int64_t r_begin, int64_t r_end) {
  const size_t stride = w.stride();
  const uint8_t* row = w.row(r_begin);
  if constexpr (is_ggml_quant(T)) {
    // Float32 activations with ggml's other formats: each row dequantized once (ggml's
    // arithmetic, dequantize_row), then the float32 dot products, exact against the dequantized
    // weights. LikeGgml is their fast path (qmatmul.cpp).
    thread_local std::vector<float> buf;
    if (buf.size() < size_t(w.cols)) buf.resize(size_t(w.cols));
    const auto* frow = reinterpret_cast<const uint8_t*>(buf.data());
    for (int64_t r = r_begin; r < r_end; ++r, row += stride) {
      dequantize_row(T, row, buf.data(), w.cols);
      gemv_row<DType::F32, XT, NT, (NT == 1 ? kOneTokenU : 1)>(frow, w.cols, x, y + r, w.rows);
    }
  } else {
    for (int64_t r = r_begin; r < r_end; ++r, row += stride) {
      if constexpr (is_quantized(T)) {
        gemv_row_q<T, NT>(row, w.cols, x, y + r, w.rows);
      } else {
        gemv_row<T, XT, NT, (NT == 1 ? kOneTokenU : 1)>(row, w.cols, x, y + r, w.rows);
      }
    }
  }
}

// gemv_rows for 1..kGemvTokens tokens, indexed by the count less one.
template <DType T, class XT, size_t... N>
constexpr auto gemv_rows_table(std::index_sequence<N...>) {
  return std::array{&gemv_rows<T, XT, int(N) + 1>...};
}

template <DType T, class XT>
void gemv_type(const WeightMatrix& w, const XT* x, int64_t n_tokens, float* y, int64_t r_begin,
               int64_t r_end) {
  static constexpr auto rows = gemv_rows_table<T, XT>(std::make_index_sequence<kGemvTokens>{});
  for (int64_t t = 0; t < n_tokens; t += kGemvTokens) {
    const int64_t n = std::min<int64_t>(kGemvTokens, n_tokens - t);
    rows[size_t(n - 1)](w, x + t * w.cols, y + t * w.rows, r_begin, r_end);
  }
}

// --- Batching::Invariant. gemv_row and gemv_row_q never mix tokens: each token's accumulators
// take the same operations for any NT, only U changes their order. So groups of up to
// kApartTokens tokens at the 1-token U give every token its 1-token sums, with each weight
// vector converted once per group.
constexpr int64_t kApartTokens = 4;

template <DType T, class XT, int NT>
void apart_group(const uint8_t* row, int64_t cols, const XT* x, float* y, int64_t y_stride) {
  if constexpr (is_quantized(T)) {
    gemv_row_q<T, NT>(row, cols, x, y, y_stride);
  } else {
    gemv_row<T, XT, NT, kOneTokenU>(row, cols, x, y, y_stride);
  }
}

// One row (T's bytes, or F32 once dequantized) against n tokens, kApartTokens at a time.
template <DType T, class XT>
void apart_row(const uint8_t* row, int64_t cols, const XT* x, int64_t n, float* y,
               int64_t y_stride) {
  int64_t t = 0;
  for (; t + kApartTokens <= n; t += kApartTokens)
    apart_group<T, XT, kApartTokens>(row, cols, x + t * cols, y + t * y_stride, y_stride);
  const XT* xt = x + t * cols;
  float* yt = y + t * y_stride;
  switch (n - t) {
    case 3:
      return apart_group<T, XT, 3>(row, cols, xt, yt, y_stride);
    case 2:
      return apart_group<T, XT, 2>(row, cols, xt, yt, y_stride);
    case 1:
      return apart_group<T, XT, 1>(row, cols, xt, yt, y_stride);
    default:
      return;
  }
}

// Every row read (and, for ggml's other formats, dequantized) once for all tokens.
template <DType T, class XT>
void gemv_type_apart(const WeightMatrix& w, const XT* x, int64_t n_tokens, float* y,
                     int64_t r_begin, int64_t r_end) {
  const size_t stride = w.stride();
  const uint8_t* row = w.row(r_begin);
  if constexpr (is_ggml_quant(T)) {
    thread_local std::vector<float> buf;
    if (buf.size() < size_t(w.cols)) buf.resize(size_t(w.cols));
    const auto* frow = reinterpret_cast<const uint8_t*>(buf.data());
    for (int64_t r = r_begin; r < r_end; ++r, row += stride) {
      dequantize_row(T, row, buf.data(), w.cols);
      apart_row<DType::F32, XT>(frow, w.cols, x, n_tokens, y + r, w.rows);
    }
  } else {
    for (int64_t r = r_begin; r < r_end; ++r, row += stride)
      apart_row<T, XT>(row, w.cols, x, n_tokens, y + r, w.rows);
  }
}

template <DType T, bool Apart>
void gemv_typed(const WeightMatrix& w, const float* x, int64_t n_tokens, float* y, int64_t r_begin,
                int64_t r_end) {
  if constexpr (Apart)
    gemv_type_apart<T, float>(w, x, n_tokens, y, r_begin, r_end);
  else
    gemv_type<T, float>(w, x, n_tokens, y, r_begin, r_end);
}

template <bool Apart>
void gemv_any(const WeightMatrix& w, const float* x, int64_t n_tokens, float* y, int64_t r_begin,
              int64_t r_end) {
  switch (w.type) {
    case DType::F32:
      return gemv_typed<DType::F32, Apart>(w, x, n_tokens, y, r_begin, r_end);
    case DType::F16:
      return gemv_typed<DType::F16, Apart>(w, x, n_tokens, y, r_begin, r_end);
    case DType::BF16:
      return gemv_typed<DType::BF16, Apart>(w, x, n_tokens, y, r_begin, r_end);
    case DType::Q8_0:
      return gemv_typed<DType::Q8_0, Apart>(w, x, n_tokens, y, r_begin, r_end);
    case DType::Q4_0:
      return gemv_typed<DType::Q4_0, Apart>(w, x, n_tokens, y, r_begin, r_end);
    case DType::Q4_1:
      return gemv_typed<DType::Q4_1, Apart>(w, x, n_tokens, y, r_begin, r_end);
    case DType::Q5_0:
      return gemv_typed<DType::Q5_0, Apart>(w, x, n_tokens, y, r_begin, r_end);
    case DType::Q5_1:
      return gemv_typed<DType::Q5_1, Apart>(w, x, n_tokens, y, r_begin, r_end);
    case DType::Q2_K:
      return gemv_typed<DType::Q2_K, Apart>(w, x, n_tokens, y, r_begin, r_end);
    case DType::Q3_K:
      return gemv_typed<DType::Q3_K, Apart>(w, x, n_tokens, y, r_begin, r_end);
    case DType::Q4_K:
      return gemv_typed<DType::Q4_K, Apart>(w, x, n_tokens, y, r_begin, r_end);
    case DType::Q5_K:
      return gemv_typed<DType::Q5_K, Apart>(w, x, n_tokens, y, r_begin, r_end);
    case DType::Q6_K:
      return gemv_typed<DType::Q6_K, Apart>(w, x, n_tokens, y, r_begin, r_end);
  }
}

}  // namespace

void gemv(const WeightMatrix& w, const float* x, int64_t n_tokens, float* y, int64_t r_begin,
          int64_t r_end) {
  gemv_any<false>(w, x, n_tokens, y, r_begin, r_end);
}

void gemv_apart(const WeightMatrix& w, const float* x, int64_t n_tokens, float* y, int64_t r_begin,
                int64_t r_end) {
  gemv_any<true>(w, x, n_tokens, y, r_begin, r_end);
}

void gemv_f16_x16(const WeightMatrix& w, const uint16_t* xh, int64_t n_tokens, float* y,
                  int64_t r_begin, int64_t r_end) {
  if (w.type != DType::F16) throw std::logic_error("gemv_f16_x16: F16 weights only");
  gemv_type<DType::F16, uint16_t>(w, xh, n_tokens, y, r_begin, r_end);
}

void gemv_f16_x16_apart(const WeightMatrix& w, const uint16_t* xh, int64_t n_tokens, float* y,
                        int64_t r_begin, int64_t r_end) {
  if (w.type != DType::F16) throw std::logic_error("gemv_f16_x16: F16 weights only");
  gemv_type_apart<DType::F16, uint16_t>(w, xh, n_tokens, y, r_begin, r_end);
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
