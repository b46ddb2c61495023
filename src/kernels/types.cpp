// Element types: sizes, fp16 / bf16 conversions, and ggml's Q8_0 / Q4_0 block formats (the other
// quantized formats are in quant_formats.cpp).
#include "kernels/types.h"

#include "kernels/quant_formats.h"

#include <algorithm>
#include <cmath>
#include <stdexcept>
#include <string>

#if defined(__F16C__)
#include <immintrin.h>
#endif

namespace fairkv::kernels {

const char* dtype_name(DType t) {
  switch (t) {
    case DType::F32:
      return "F32";
    case DType::F16:
      return "F16";
    case DType::BF16:
      return "BF16";
    case DType::Q8_0:
      return "Q8_0";
    case DType::Q4_0:
      return "Q4_0";
    case DType::Q4_1:
      return "Q4_1";
    case DType::Q5_0:
      return "Q5_0";
    case DType::Q5_1:
      return "Q5_1";
    case DType::Q2_K:
      return "Q2_K";
    case DType::Q3_K:
      return "Q3_K";
    case DType::Q4_K:
      return "Q4_K";
    case DType::Q5_K:
      return "Q5_K";
    case DType::Q6_K:
      return "Q6_K";
  }
  return "unknown";
}

int64_t block_size(DType t) {
  switch (t) {
    case DType::F32:
    case DType::F16:
    case DType::BF16:
      return 1;
    case DType::Q8_0:
    case DType::Q4_0:
    case DType::Q4_1:
    case DType::Q5_0:
    case DType::Q5_1:
      return kQK;
    case DType::Q2_K:
    case DType::Q3_K:
    case DType::Q4_K:
    case DType::Q5_K:
    case DType::Q6_K:
      return kQK_K;
  }
  return 1;
}

static size_t block_bytes(DType t) {
  switch (t) {
    case DType::F32:
      return 4;
    case DType::F16:
    case DType::BF16:
      return 2;
    case DType::Q8_0:
      return sizeof(BlockQ8_0);
    case DType::Q4_0:
      return sizeof(BlockQ4_0);
    case DType::Q4_1:
      return sizeof(BlockQ4_1);
    case DType::Q5_0:
      return sizeof(BlockQ5_0);
    case DType::Q5_1:
      return sizeof(BlockQ5_1);
    case DType::Q2_K:
      return sizeof(BlockQ2_K);
    case DType::Q3_K:
      return sizeof(BlockQ3_K);
    case DType::Q4_K:
      return sizeof(BlockQ4_K);
    case DType::Q5_K:
      return sizeof(BlockQ5_K);
    case DType::Q6_K:
      return sizeof(BlockQ6_K);
  }
  return 0;
}

size_t row_bytes(DType t, int64_t n) {
  if (n < 0) throw std::invalid_argument("row_bytes: negative element count");
  if (n % block_size(t) != 0) {
    throw std::invalid_argument(std::string("row_bytes: a ") + dtype_name(t) + " row of " +
                                std::to_string(n) + " elements is not a whole number of " +
                                std::to_string(block_size(t)) + "-element blocks");
  }
  return size_t(n / block_size(t)) * block_bytes(t);
}

static uint32_t bits_of(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return u;
}
static float float_of(uint32_t u) {
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

float fp16_to_fp32_soft(uint16_t h) {
  const uint32_t sign = uint32_t(h & 0x8000) << 16;
  const uint32_t exp = (h >> 10) & 0x1f;
  const uint32_t mant = h & 0x3ff;
  if (exp == 0x1f) return float_of(sign | 0x7f800000 | (mant << 13));  // inf, NaN (payload kept)
  if (exp != 0) return float_of(sign | ((exp + 112) << 23) | (mant << 13));
  // Zero or subnormal: mant * 2^-24 is exact in float32.
  const float v = float(mant) * 0x1p-24f;
  return sign ? -v : v;
}

uint16_t fp32_to_fp16_soft(float f) {
  const uint32_t x = bits_of(f);
  const uint16_t sign = uint16_t((x >> 16) & 0x8000);
  const uint32_t a = x & 0x7fffffff;
  if (a > 0x7f800000) return sign | 0x7e00 | uint16_t((a >> 13) & 0x3ff);  // NaN stays NaN (quiet)
  if (a >= 0x477ff000) return sign | 0x7c00;  // >= 65520 rounds to infinity
  if (a >= 0x38800000) {                      // normal half: rebias the exponent, round 13 bits
    uint32_t h = (a - (112u << 23)) >> 13;
    const uint32_t rem = a & 0x1fff;
    if (rem > 0x1000 || (rem == 0x1000 && (h & 1))) ++h;  // a carry into the exponent is right
    return sign | uint16_t(h);
  }
  if (a <= 0x33000000) return sign;  // <= 2^-25 (half of the smallest subnormal) rounds to zero
  // Subnormal half: value / 2^-24 = m * 2^(e - 126) with the implicit bit in m.
  const uint32_t e = a >> 23;
  const uint32_t m = (a & 0x7fffff) | 0x800000;
  const uint32_t shift = 126 - e;  // 14..24
  uint32_t h = m >> shift;
  const uint32_t rem = m & ((1u << shift) - 1);
  const uint32_t half = 1u << (shift - 1);
  if (rem > half || (rem == half && (h & 1))) ++h;
  return sign | uint16_t(h);
}

#if defined(__F16C__)
float fp16_to_fp32(uint16_t h) {
  return _cvtsh_ss(h);
}
uint16_t fp32_to_fp16(float f) {
  return uint16_t(_cvtss_sh(f, _MM_FROUND_TO_NEAREST_INT));
}
#else
float fp16_to_fp32(uint16_t h) {
  return fp16_to_fp32_soft(h);
}
uint16_t fp32_to_fp16(float f) {
  return fp32_to_fp16_soft(f);
}
#endif

uint16_t fp32_to_bf16(float f) {
  const uint32_t u = bits_of(f);
  if ((u & 0x7fffffff) > 0x7f800000) return uint16_t((u >> 16) | 0x40);  // quiet NaN, as ggml
  return uint16_t((u + 0x7fff + ((u >> 16) & 1)) >> 16);
}

static void check_blocks(DType t, int64_t n, const char* what) {
  if (n % block_size(t) != 0) {
    throw std::invalid_argument(std::string(what) + ": " + std::to_string(n) +
                                " elements is not a multiple of the " + dtype_name(t) +
                                " block size " + std::to_string(block_size(t)));
  }
}

static void fp16_row_to_fp32(const uint16_t* src, float* dst, int64_t n) {
  int64_t i = 0;
#if defined(__F16C__)
  for (; i + 8 <= n; i += 8) {
    const __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(src + i));
    _mm256_storeu_ps(dst + i, _mm256_cvtph_ps(h));
  }
#endif
  for (; i < n; ++i) dst[i] = fp16_to_fp32(src[i]);
}

static void fp32_row_to_fp16(const float* src, uint16_t* dst, int64_t n) {
  int64_t i = 0;
#if defined(__F16C__)
  for (; i + 8 <= n; i += 8) {
    const __m128i h = _mm256_cvtps_ph(_mm256_loadu_ps(src + i), _MM_FROUND_TO_NEAREST_INT);
    _mm_storeu_si128(reinterpret_cast<__m128i*>(dst + i), h);
  }
#endif
  for (; i < n; ++i) dst[i] = fp32_to_fp16(src[i]);
}

void dequantize_row(DType t, const void* src, float* dst, int64_t n) {
  check_blocks(t, n, "dequantize_row");
  switch (t) {
    case DType::F32:
      std::memcpy(dst, src, size_t(n) * 4);
      return;
    case DType::F16:
      fp16_row_to_fp32(static_cast<const uint16_t*>(src), dst, n);
      return;
    case DType::BF16: {
      const auto* s = static_cast<const uint16_t*>(src);
      for (int64_t i = 0; i < n; ++i) dst[i] = bf16_to_fp32(s[i]);
      return;
    }
    case DType::Q8_0: {
      const auto* b = static_cast<const BlockQ8_0*>(src);
      for (int64_t i = 0; i < n / kQK; ++i) {
        const float d = fp16_to_fp32(b[i].d);
        for (int j = 0; j < kQK; ++j) dst[i * kQK + j] = float(b[i].qs[j]) * d;
      }
      return;
    }
    case DType::Q4_0: {
      const auto* b = static_cast<const BlockQ4_0*>(src);
      for (int64_t i = 0; i < n / kQK; ++i) {
        const float d = fp16_to_fp32(b[i].d);
        for (int j = 0; j < kQK / 2; ++j) {
          dst[i * kQK + j] = float((b[i].qs[j] & 0x0f) - 8) * d;
          dst[i * kQK + j + kQK / 2] = float((b[i].qs[j] >> 4) - 8) * d;
        }
      }
      return;
    }
    default:
      detail::dequantize_ggml_quant(t, src, dst, n);
      return;
  }
}

// ggml's quantize_row_q8_0_ref: d = amax / 127, q = roundf(x * (1 / d)) (ties away from zero).
// roundf is a libm call per element, and a q8_0 KV cache quantizes every K and V row it appends
// (kv_bench's 32k-token q8_0 stores spent two thirds of their filling there); truncation plus a
// step where the part cut off is a half or more gives the same integer (|x / d| <= 127, so both
// are exact) in a few inline instructions.
static void quantize_q8_0(const float* x, BlockQ8_0* y, int64_t nb) {
  for (int64_t i = 0; i < nb; ++i, x += kQK) {
    float amax = 0.0f;
    for (int j = 0; j < kQK; ++j) amax = std::max(amax, std::fabs(x[j]));
    const float d = amax / 127.0f;
    const float id = d != 0.0f ? 1.0f / d : 0.0f;
    y[i].d = fp32_to_fp16(d);
    for (int j = 0; j < kQK; ++j) {
      const float v = x[j] * id;
      const int t = int(v);  // toward zero
      const float cut = v - float(t);
      y[i].qs[j] = int8_t(t + int(cut >= 0.5f) - int(cut <= -0.5f));
    }
  }
}

// ggml's quantize_row_q4_0_ref: d = (the value of largest magnitude) / -8, so that value maps to
// -8 exactly and the other end of the range gets the extra level; q = min(15, trunc(x/d + 8.5)).
static void quantize_q4_0(const float* x, BlockQ4_0* y, int64_t nb) {
  for (int64_t i = 0; i < nb; ++i, x += kQK) {
    const float d = detail::largest_magnitude(x, kQK) / -8.0f;
    const float id = d != 0.0f ? 1.0f / d : 0.0f;
    y[i].d = fp32_to_fp16(d);
    for (int j = 0; j < kQK / 2; ++j) {
      const int lo = std::min(15, int(int8_t(x[j] * id + 8.5f)));
      const int hi = std::min(15, int(int8_t(x[j + kQK / 2] * id + 8.5f)));
      y[i].qs[j] = uint8_t(lo | (hi << 4));
    }
  }
}

void quantize_row(DType t, const float* src, void* dst, int64_t n) {
  check_blocks(t, n, "quantize_row");
  switch (t) {
    case DType::F32:
      std::memcpy(dst, src, size_t(n) * 4);
      return;
    case DType::F16:
      fp32_row_to_fp16(src, static_cast<uint16_t*>(dst), n);
      return;
    case DType::BF16: {
      auto* d = static_cast<uint16_t*>(dst);
      for (int64_t i = 0; i < n; ++i) d[i] = fp32_to_bf16(src[i]);
      return;
    }
    case DType::Q8_0:
      quantize_q8_0(src, static_cast<BlockQ8_0*>(dst), n / kQK);
      return;
    case DType::Q4_0:
      quantize_q4_0(src, static_cast<BlockQ4_0*>(dst), n / kQK);
      return;
    default:
      detail::quantize_ggml_quant(t, src, dst, n);
      return;
  }
}

}  // namespace fairkv::kernels
