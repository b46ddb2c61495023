// Element types of weights and caches, and the conversions between them and float32.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>

namespace fairkv::kernels {

enum class DType { F32, F16, BF16, Q8_0, Q4_0 };
const char* dtype_name(DType t);

constexpr int kQK = 32;  // elements per Q8_0 / Q4_0 block
struct BlockQ8_0 {
  uint16_t d;  // fp16 scale
  int8_t qs[kQK];
};
struct BlockQ4_0 {
  uint16_t d;           // fp16 scale
  uint8_t qs[kQK / 2];  // low nibbles: elements 0..15, high nibbles: 16..31 (ggml's layout)
};
static_assert(sizeof(BlockQ8_0) == 34 && sizeof(BlockQ4_0) == 18);

// Bytes of a row of n elements (n must be a multiple of the block size for quantized types).
size_t row_bytes(DType t, int64_t n);
int64_t block_size(DType t);

float fp16_to_fp32(uint16_t h);
uint16_t fp32_to_fp16(float f);  // round to nearest even
// The same conversions in plain integer arithmetic: what the two above fall back to without F16C,
// public so that tests can check them against the hardware instructions.
float fp16_to_fp32_soft(uint16_t h);
uint16_t fp32_to_fp16_soft(float f);
inline float bf16_to_fp32(uint16_t h) {
  uint32_t u = uint32_t(h) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}
uint16_t fp32_to_bf16(float f);  // round to nearest even, NaN kept NaN

// Rows of n elements; for Q8_0 / Q4_0, n must be a multiple of kQK. quantize_row follows ggml's
// reference quantizers (quantize_row_q8_0_ref / _q4_0_ref) bit for bit.
void dequantize_row(DType t, const void* src, float* dst, int64_t n);
void quantize_row(DType t, const float* src, void* dst, int64_t n);

}  // namespace fairkv::kernels
