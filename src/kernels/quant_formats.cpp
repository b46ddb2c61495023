// ggml's legacy formats Q4_1 / Q5_0 / Q5_1 and the K-quants Q2_K .. Q6_K: dequantization in the
// arithmetic of ggml's dequantize_row_* (each weight is (scale * level) - offset in float32, with
// the products in ggml's order), the legacy types' reference quantizers, and random test blocks.
#include <algorithm>
#include <cfloat>
#include <cmath>
#include <random>
#include <stdexcept>
#include <string>
#include <vector>

#include "kernels/quant_formats.h"

namespace fairkv::kernels::detail {

namespace {

uint32_t load_u32(const uint8_t* p) {
  uint32_t v;
  std::memcpy(&v, p, 4);
  return v;
}

void dequant_q4_1(const BlockQ4_1* b, float* y, int64_t nb) {
  for (int64_t i = 0; i < nb; ++i, y += kQK) {
    const float d = fp16_to_fp32(b[i].d), m = fp16_to_fp32(b[i].m);
    for (int j = 0; j < 16; ++j) {
      y[j] = float(b[i].qs[j] & 0x0f) * d + m;
      y[j + 16] = float(b[i].qs[j] >> 4) * d + m;
    }
  }
}

// The 5-bit levels of a Q5_0 / Q5_1 block: nibble | (bit j of qh) << 4.
template <class Block>
void levels_q5(const Block& b, int q[kQK]) {
  const uint32_t qh = load_u32(b.qh);
  for (int j = 0; j < 16; ++j) {
    q[j] = (b.qs[j] & 0x0f) | int(((qh >> j) & 1) << 4);
    q[j + 16] = (b.qs[j] >> 4) | int(((qh >> (j + 16)) & 1) << 4);
  }
}

void dequant_q5_0(const BlockQ5_0* b, float* y, int64_t nb) {
  int q[kQK];
  for (int64_t i = 0; i < nb; ++i, y += kQK) {
    const float d = fp16_to_fp32(b[i].d);
    levels_q5(b[i], q);
    for (int j = 0; j < kQK; ++j) y[j] = float(q[j] - 16) * d;
  }
}

void dequant_q5_1(const BlockQ5_1* b, float* y, int64_t nb) {
  int q[kQK];
  for (int64_t i = 0; i < nb; ++i, y += kQK) {
    const float d = fp16_to_fp32(b[i].d), m = fp16_to_fp32(b[i].m);
    levels_q5(b[i], q);
    for (int j = 0; j < kQK; ++j) y[j] = float(q[j]) * d + m;
  }
}

void dequant_q2_k(const BlockQ2_K* b, float* y, int64_t nb) {
  for (int64_t i = 0; i < nb; ++i) {
    const float d = fp16_to_fp32(b[i].d), dmin = fp16_to_fp32(b[i].dmin);
    for (int half = 0; half < 2; ++half) {
      const uint8_t* q = b[i].qs + 32 * half;
      for (int g = 0; g < 4; ++g) {  // 32-element groups at bit shift 2g
        for (int s = 0; s < 2; ++s, y += 16) {
          const int sc = b[i].scales[8 * half + 2 * g + s];
          const float dl = d * float(sc & 0x0f), ml = dmin * float(sc >> 4);
          for (int l = 0; l < 16; ++l) y[l] = dl * float((q[16 * s + l] >> (2 * g)) & 3) - ml;
        }
      }
    }
  }
}

void dequant_q3_k(const BlockQ3_K* b, float* y, int64_t nb) {
  int8_t sc[16];
  for (int64_t i = 0; i < nb; ++i) {
    const float d = fp16_to_fp32(b[i].d);
    q3k_scales(b[i].scales, sc);
    for (int half = 0; half < 2; ++half) {
      const uint8_t* q = b[i].qs + 32 * half;
      for (int g = 0; g < 4; ++g) {
        const int hbit = 4 * half + g;  // hmask bit of this 32-element group
        for (int s = 0; s < 2; ++s, y += 16) {
          const float dl = d * float(sc[8 * half + 2 * g + s]);
          for (int l = 0; l < 16; ++l) {
            const int lo = (q[16 * s + l] >> (2 * g)) & 3;
            const int h = (b[i].hmask[16 * s + l] >> hbit) & 1;
            y[l] = dl * float(lo - (h ? 0 : 4));
          }
        }
      }
    }
  }
}

// Q4_K and Q5_K: 8 sub-blocks of 32, x = (d * sc) * q - (dmin * m).
template <class Block, bool kFive>
void dequant_q45_k(const Block* b, float* y, int64_t nb) {
  for (int64_t i = 0; i < nb; ++i) {
    const float d = fp16_to_fp32(b[i].d), dmin = fp16_to_fp32(b[i].dmin);
    for (int j = 0; j < 8; ++j, y += 32) {
      int sc, m;
      scale_min_k4(j, b[i].scales, sc, m);
      const float dl = d * float(sc), ml = dmin * float(m);
      const uint8_t* q = b[i].qs + 32 * (j / 2);
      const int shift = 4 * (j % 2);
      for (int l = 0; l < 32; ++l) {
        int v = (q[l] >> shift) & 0x0f;
        if constexpr (kFive) v |= ((b[i].qh[l] >> j) & 1) << 4;
        y[l] = dl * float(v) - ml;
      }
    }
  }
}

void dequant_q6_k(const BlockQ6_K* b, float* y, int64_t nb) {
  for (int64_t i = 0; i < nb; ++i, y += kQK_K) {
    const float d = fp16_to_fp32(b[i].d);
    for (int half = 0; half < 2; ++half) {
      const uint8_t* ql = b[i].ql + 64 * half;
      const uint8_t* qh = b[i].qh + 32 * half;
      const int8_t* sc = b[i].scales + 8 * half;
      float* yh = y + 128 * half;
      for (int g = 0; g < 4; ++g) {
        for (int l = 0; l < 32; ++l) {
          const int lo = (ql[l + 32 * (g % 2)] >> (4 * (g / 2))) & 0x0f;
          const int q = (lo | (((qh[l] >> (2 * g)) & 3) << 4)) - 32;
          yh[32 * g + l] = d * float(sc[2 * g + l / 16]) * float(q);
        }
      }
    }
  }
}

// ggml's quantize_row_q4_1_ref / q5_1_ref: d = (max - min) / levels, q = trunc((x - min)/d + .5).
template <class Block, int kBits>
void quantize_affine(const float* x, Block* y, int64_t nb) {
  constexpr int kMax = (1 << kBits) - 1;
  for (int64_t i = 0; i < nb; ++i, x += kQK) {
    float mn = FLT_MAX, mx = -FLT_MAX;
    for (int j = 0; j < kQK; ++j) {
      mn = std::min(mn, x[j]);
      mx = std::max(mx, x[j]);
    }
    const float d = (mx - mn) / float(kMax);
    const float id = d != 0.0f ? 1.0f / d : 0.0f;
    y[i].d = fp32_to_fp16(d);
    y[i].m = fp32_to_fp16(mn);
    uint32_t qh = 0;
    for (int j = 0; j < 16; ++j) {
      int q0 = int(uint8_t((x[j] - mn) * id + 0.5f));
      int q1 = int(uint8_t((x[j + 16] - mn) * id + 0.5f));
      if constexpr (kBits == 4) {
        q0 = std::min(15, q0);
        q1 = std::min(15, q1);
      } else {
        qh |= uint32_t((q0 >> 4) & 1) << j;
        qh |= uint32_t((q1 >> 4) & 1) << (j + 16);
      }
      y[i].qs[j] = uint8_t((q0 & 0x0f) | ((q1 & 0x0f) << 4));
    }
    if constexpr (kBits == 5) std::memcpy(y[i].qh, &qh, 4);
  }
}

// ggml's quantize_row_q5_0_ref: d = (value of largest magnitude) / -16,
// q = min(31, trunc(x / d + 16.5)).
void quantize_q5_0(const float* x, BlockQ5_0* y, int64_t nb) {
  for (int64_t i = 0; i < nb; ++i, x += kQK) {
    const float d = largest_magnitude(x, kQK) / -16.0f;
    const float id = d != 0.0f ? 1.0f / d : 0.0f;
    y[i].d = fp32_to_fp16(d);
    uint32_t qh = 0;
    for (int j = 0; j < 16; ++j) {
      const int q0 = std::min(31, int(int8_t(x[j] * id + 16.5f)));
      const int q1 = std::min(31, int(int8_t(x[j + 16] * id + 16.5f)));
      y[i].qs[j] = uint8_t((q0 & 0x0f) | ((q1 & 0x0f) << 4));
      qh |= uint32_t((q0 >> 4) & 1) << j;
      qh |= uint32_t((q1 >> 4) & 1) << (j + 16);
    }
    std::memcpy(y[i].qh, &qh, 4);
  }
}

}  // namespace

float largest_magnitude(const float* x, int n) {
  float amax = 0.0f, max = 0.0f;
  for (int j = 0; j < n; ++j) {
    if (amax < std::fabs(x[j])) {
      amax = std::fabs(x[j]);
      max = x[j];
    }
  }
  return max;
}

void dequantize_ggml_quant(DType t, const void* src, float* dst, int64_t n) {
  const int64_t nb = n / block_size(t);
  switch (t) {
    case DType::Q4_1:
      return dequant_q4_1(static_cast<const BlockQ4_1*>(src), dst, nb);
    case DType::Q5_0:
      return dequant_q5_0(static_cast<const BlockQ5_0*>(src), dst, nb);
    case DType::Q5_1:
      return dequant_q5_1(static_cast<const BlockQ5_1*>(src), dst, nb);
    case DType::Q2_K:
      return dequant_q2_k(static_cast<const BlockQ2_K*>(src), dst, nb);
    case DType::Q3_K:
      return dequant_q3_k(static_cast<const BlockQ3_K*>(src), dst, nb);
    case DType::Q4_K:
      return dequant_q45_k<BlockQ4_K, false>(static_cast<const BlockQ4_K*>(src), dst, nb);
    case DType::Q5_K:
      return dequant_q45_k<BlockQ5_K, true>(static_cast<const BlockQ5_K*>(src), dst, nb);
    case DType::Q6_K:
      return dequant_q6_k(static_cast<const BlockQ6_K*>(src), dst, nb);
    default:
      throw std::logic_error(std::string("dequantize_ggml_quant: ") + dtype_name(t));
  }
}

void quantize_ggml_quant(DType t, const float* src, void* dst, int64_t n) {
  const int64_t nb = n / block_size(t);
  switch (t) {
    case DType::Q4_1:
      return quantize_affine<BlockQ4_1, 4>(src, static_cast<BlockQ4_1*>(dst), nb);
    case DType::Q5_0:
      return quantize_q5_0(src, static_cast<BlockQ5_0*>(dst), nb);
    case DType::Q5_1:
      return quantize_affine<BlockQ5_1, 5>(src, static_cast<BlockQ5_1*>(dst), nb);
    default:
      throw std::invalid_argument(std::string("quantize_row: no quantizer for ") + dtype_name(t) +
                                  " (fill_random_blocks makes test data)");
  }
}

}  // namespace fairkv::kernels::detail

namespace fairkv::kernels {

void fill_random_blocks(DType t, uint32_t seed, void* dst, int64_t n) {
  std::mt19937 rng(seed);
  if (!is_ggml_quant(t)) {
    std::normal_distribution<float> dist(0.0f, 1.0f);
    std::vector<float> x(static_cast<size_t>(n));
    for (float& v : x) v = dist(rng);
    quantize_row(t, x.data(), dst, n);
    return;
  }
  auto* bytes = static_cast<uint8_t*>(dst);
  const size_t total = row_bytes(t, n);
  for (size_t i = 0; i < total; ++i) bytes[i] = uint8_t(rng());
  // An fp16 in [2^-10, 2^-6): exponent field 5..8, random mantissa; `sign` allows negatives.
  auto scale = [&rng](bool sign) {
    const uint16_t h = uint16_t(((5 + rng() % 4) << 10) | (rng() & 0x3ff));
    return uint16_t(sign && (rng() & 1) ? h | 0x8000 : h);
  };
  const int64_t nb = n / block_size(t);
  for (int64_t i = 0; i < nb; ++i) {
    switch (t) {
      case DType::Q4_1:
        static_cast<BlockQ4_1*>(dst)[i].d = scale(true);
        static_cast<BlockQ4_1*>(dst)[i].m = uint16_t(scale(true) + (3 << 10));  // ~8 d
        break;
      case DType::Q5_0:
        static_cast<BlockQ5_0*>(dst)[i].d = scale(true);
        break;
      case DType::Q5_1:
        static_cast<BlockQ5_1*>(dst)[i].d = scale(true);
        static_cast<BlockQ5_1*>(dst)[i].m = uint16_t(scale(true) + (4 << 10));  // ~16 d
        break;
      case DType::Q2_K:
        static_cast<BlockQ2_K*>(dst)[i].d = scale(false);
        static_cast<BlockQ2_K*>(dst)[i].dmin = scale(false);
        break;
      case DType::Q3_K:
        static_cast<BlockQ3_K*>(dst)[i].d = scale(false);
        break;
      case DType::Q4_K:
        static_cast<BlockQ4_K*>(dst)[i].d = scale(false);
        static_cast<BlockQ4_K*>(dst)[i].dmin = scale(false);
        break;
      case DType::Q5_K:
        static_cast<BlockQ5_K*>(dst)[i].d = scale(false);
        static_cast<BlockQ5_K*>(dst)[i].dmin = scale(false);
        break;
      case DType::Q6_K:
        static_cast<BlockQ6_K*>(dst)[i].d = scale(false);
        break;
      default:
        break;
    }
  }
}

}  // namespace fairkv::kernels
