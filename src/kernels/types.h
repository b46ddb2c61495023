// Element types of weights and caches, and the conversions between them and float32.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>

#include "kernels/quant_blocks.h"

namespace fairkv::kernels {

// Q4_1 .. Q6_K are ggml's legacy and K-quant weight formats (see quant_blocks.h); kernels read
// them as GGUF stores them.
enum class DType { F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, Q2_K, Q3_K, Q4_K, Q5_K, Q6_K };
const char* dtype_name(DType t);
// Every DType, for tests and benchmarks that cover them all.
inline constexpr DType kAllDTypes[] = {
    DType::F32,  DType::F16,  DType::BF16, DType::Q8_0, DType::Q4_0, DType::Q4_1, DType::Q5_0,
    DType::Q5_1, DType::Q2_K, DType::Q3_K, DType::Q4_K, DType::Q5_K, DType::Q6_K};
constexpr bool is_k_quant(DType t) {
  return t == DType::Q2_K || t == DType::Q3_K || t == DType::Q4_K || t == DType::Q5_K ||
         t == DType::Q6_K;
}
// The types added with the K-quants (Q4_1 .. Q6_K): their kernels live in qmatmul*.cpp.
constexpr bool is_ggml_quant(DType t) {
  return t == DType::Q4_1 || t == DType::Q5_0 || t == DType::Q5_1 || is_k_quant(t);
}

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

// The block struct of each quantized type, for the kernels templated on the type.
template <DType T>
struct BlockOf;
template <>
struct BlockOf<DType::Q8_0> {
  using type = BlockQ8_0;
};
template <>
struct BlockOf<DType::Q4_0> {
  using type = BlockQ4_0;
};
template <>
struct BlockOf<DType::Q4_1> {
  using type = BlockQ4_1;
};
template <>
struct BlockOf<DType::Q5_0> {
  using type = BlockQ5_0;
};
template <>
struct BlockOf<DType::Q5_1> {
  using type = BlockQ5_1;
};
template <>
struct BlockOf<DType::Q2_K> {
  using type = BlockQ2_K;
};
template <>
struct BlockOf<DType::Q3_K> {
  using type = BlockQ3_K;
};
template <>
struct BlockOf<DType::Q4_K> {
  using type = BlockQ4_K;
};
template <>
struct BlockOf<DType::Q5_K> {
  using type = BlockQ5_K;
};
template <>
struct BlockOf<DType::Q6_K> {
  using type = BlockQ6_K;
};

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

// Rows of n elements, n a multiple of block_size(t). dequantize_row follows ggml's
// dequantize_row_* arithmetic. quantize_row follows ggml's reference quantizers
// (quantize_row_q8_0_ref, _q4_0_ref, _q4_1_ref, _q5_0_ref, _q5_1_ref) bit for bit; the K-quants
// have no quantizer here (ggml's search for their scales is not reproduced) and throw
// std::invalid_argument: fill_random_blocks makes test data for them.
void dequantize_row(DType t, const void* src, float* dst, int64_t n);
void quantize_row(DType t, const float* src, void* dst, int64_t n);
// n elements of type t made of random bytes with sane scales (fp16 scales in [2^-10, 2^-6],
// K-quant super-block scales alike): test and benchmark weights for every type.
void fill_random_blocks(DType t, uint32_t seed, void* dst, int64_t n);

}  // namespace fairkv::kernels
