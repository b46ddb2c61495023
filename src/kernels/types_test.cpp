// Conversions and block formats: known values from the IEEE-754 and ggml definitions, exhaustive
// fp16 round trips, the software fp16 path against the hardware one, quantization round trips.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <random>
#include <vector>

#include "kernels/finite.h"
#include "kernels/types.h"

namespace fairkv::kernels {
namespace {

float f32(uint32_t u) {
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}
uint32_t bits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return u;
}

TEST(Fp16, KnownValues) {
  for (auto* to_half : {&fp32_to_fp16, &fp32_to_fp16_soft}) {
    EXPECT_EQ(to_half(0.0f), 0x0000);
    EXPECT_EQ(to_half(-0.0f), 0x8000);
    EXPECT_EQ(to_half(1.0f), 0x3c00);
    EXPECT_EQ(to_half(-2.0f), 0xc000);
    EXPECT_EQ(to_half(65504.0f), 0x7bff);   // largest half
    EXPECT_EQ(to_half(65519.99f), 0x7bff);  // below the midpoint to 65536
    EXPECT_EQ(to_half(65520.0f), 0x7c00);   // the midpoint rounds to even: infinity
    EXPECT_EQ(to_half(1e9f), 0x7c00);
    EXPECT_EQ(to_half(-std::numeric_limits<float>::infinity()), 0xfc00);
    EXPECT_EQ(to_half(0x1p-14f), 0x0400);             // smallest normal
    EXPECT_EQ(to_half(0x1p-24f), 0x0001);             // smallest subnormal
    EXPECT_EQ(to_half(0x1p-25f), 0x0000);             // half of it: tie to even (zero)
    EXPECT_EQ(to_half(0x1.8p-25f), 0x0001);           // above the tie
    EXPECT_EQ(to_half(0x1.8p-24f), 0x0002);           // 1.5 units: tie to even (2)
    EXPECT_EQ(to_half(0x1.ffp-15f), 0x03fe);          // subnormal, exact (1022 units)
    EXPECT_EQ(to_half(0x1.ffcp-15f), 0x0400);         // rounds up into the smallest normal
    EXPECT_EQ(to_half(1.0f + 0x1p-11f), 0x3c00);      // tie: to even (1.0)
    EXPECT_EQ(to_half(1.0f + 0x3p-11f), 0x3c02);      // tie: to even (1 + 2^-9)
    EXPECT_EQ(to_half(1.0f + 0x1.004p-11f), 0x3c01);  // just above the tie
    EXPECT_EQ(to_half(2047.5f), 0x6800);  // spacing 1 in [1024, 2048): tie, to even (2048)
    EXPECT_EQ(to_half(2046.5f), 0x67fe);  // tie, to even (2046)
    const uint16_t nan = to_half(std::numeric_limits<float>::quiet_NaN());
    EXPECT_EQ(nan & 0x7c00, 0x7c00);
    EXPECT_NE(nan & 0x03ff, 0);
  }
  EXPECT_EQ(fp16_to_fp32(0x7bff), 65504.0f);
  EXPECT_EQ(fp16_to_fp32(0x0001), 0x1p-24f);
  EXPECT_EQ(fp16_to_fp32(0x03ff), 0x3ffp-24f);
  EXPECT_EQ(fp16_to_fp32(0x8000), 0.0f);
  EXPECT_TRUE(std::signbit(fp16_to_fp32(0x8000)));
  EXPECT_EQ(fp16_to_fp32(0x7c00), std::numeric_limits<float>::infinity());
  EXPECT_TRUE(std::isnan(fp16_to_fp32(0x7e00)));
  EXPECT_TRUE(std::isnan(fp16_to_fp32(0x7c01)));
}

TEST(Fp16, EveryHalfRoundTripsAndSoftMatchesHardware) {
  for (uint32_t h = 0; h < 0x10000; ++h) {
    const float f = fp16_to_fp32(uint16_t(h));
    const float fs = fp16_to_fp32_soft(uint16_t(h));
    if (std::isnan(f)) {
      EXPECT_TRUE(std::isnan(fs)) << h;
      EXPECT_TRUE(std::isnan(fp16_to_fp32(fp32_to_fp16(f)))) << h;
      EXPECT_TRUE(std::isnan(fp16_to_fp32(fp32_to_fp16_soft(f)))) << h;
      continue;
    }
    ASSERT_EQ(bits(f), bits(fs)) << h;
    ASSERT_EQ(fp32_to_fp16(f), h) << h;
    ASSERT_EQ(fp32_to_fp16_soft(f), h) << h;
  }
}

TEST(Fp16, SoftRoundingMatchesHardwareOnSampledFloats) {
  // A stride co-prime with 2^32 walks every exponent and mantissa pattern; plus every float
  // near the half range's ends and around each tie of a few binades.
  uint64_t checked = 0;
  for (uint64_t u = 0; u < (uint64_t(1) << 32); u += 4099) {
    const float f = f32(uint32_t(u));
    if (std::isnan(f)) continue;
    ASSERT_EQ(fp32_to_fp16_soft(f), fp32_to_fp16(f)) << std::hex << u;
    ++checked;
  }
  for (uint32_t e : {0x33000000u, 0x387fe000u, 0x38800000u, 0x3f800000u, 0x477fe000u}) {
    for (uint32_t u = e - 0x4000; u < e + 0x4000; ++u) {
      ASSERT_EQ(fp32_to_fp16_soft(f32(u)), fp32_to_fp16(f32(u))) << std::hex << u;
      ASSERT_EQ(fp32_to_fp16_soft(f32(u | 0x80000000u)), fp32_to_fp16(f32(u | 0x80000000u)));
    }
  }
  EXPECT_GT(checked, 1000000u);
}

TEST(Bf16, KnownValuesAndTies) {
  EXPECT_EQ(fp32_to_bf16(1.0f), 0x3f80);
  EXPECT_EQ(fp32_to_bf16(-1.0f), 0xbf80);
  EXPECT_EQ(fp32_to_bf16(f32(0x3f808000)), 0x3f80);  // tie: even stays
  EXPECT_EQ(fp32_to_bf16(f32(0x3f818000)), 0x3f82);  // tie: odd rounds up
  EXPECT_EQ(fp32_to_bf16(f32(0x3f808001)), 0x3f81);
  EXPECT_EQ(fp32_to_bf16(f32(0x7f7f8000)), 0x7f80);  // tie above the largest: infinity
  EXPECT_EQ(fp32_to_bf16(std::numeric_limits<float>::infinity()), 0x7f80);
  const uint16_t nan = fp32_to_bf16(f32(0x7f800001));  // signalling NaN: must stay a NaN
  EXPECT_TRUE(std::isnan(bf16_to_fp32(nan)));
  EXPECT_EQ(bf16_to_fp32(0x4049), 3.140625f);
  for (uint32_t h = 0; h < 0x10000; ++h) {
    const float f = bf16_to_fp32(uint16_t(h));
    if (!std::isnan(f)) {
      ASSERT_EQ(fp32_to_bf16(f), h);
    }
  }
}

TEST(Sizes, RowBytesAndErrors) {
  EXPECT_EQ(row_bytes(DType::F32, 10), 40u);
  EXPECT_EQ(row_bytes(DType::F16, 10), 20u);
  EXPECT_EQ(row_bytes(DType::BF16, 3), 6u);
  EXPECT_EQ(row_bytes(DType::Q8_0, 64), 68u);
  EXPECT_EQ(row_bytes(DType::Q4_0, 96), 54u);
  EXPECT_EQ(block_size(DType::Q4_0), 32);
  EXPECT_EQ(block_size(DType::BF16), 1);
  EXPECT_THROW(row_bytes(DType::Q8_0, 33), std::invalid_argument);
  std::vector<float> x(33);
  std::vector<uint8_t> q(64);
  EXPECT_THROW(quantize_row(DType::Q4_0, x.data(), q.data(), 33), std::invalid_argument);
  EXPECT_STREQ(dtype_name(DType::Q8_0), "Q8_0");
}

TEST(Q8_0, KnownBlock) {
  // amax = 127 gives d = 1 exactly: q = round(x), ties away from zero (roundf).
  std::vector<float> x(32, 0.0f);
  x[0] = 127.0f;
  x[1] = 2.5f;
  x[2] = -2.5f;
  x[3] = 0.49f;
  x[4] = -126.6f;
  x[31] = -3.0f;
  BlockQ8_0 b;
  quantize_row(DType::Q8_0, x.data(), &b, 32);
  EXPECT_EQ(b.d, 0x3c00);
  EXPECT_EQ(b.qs[0], 127);
  EXPECT_EQ(b.qs[1], 3);
  EXPECT_EQ(b.qs[2], -3);
  EXPECT_EQ(b.qs[3], 0);
  EXPECT_EQ(b.qs[4], -127);
  EXPECT_EQ(b.qs[31], -3);
  std::vector<float> y(32);
  dequantize_row(DType::Q8_0, &b, y.data(), 32);
  EXPECT_EQ(y[1], 3.0f);
  EXPECT_EQ(y[31], -3.0f);
  // An all-zero block: scale 0, no division by zero.
  std::fill(x.begin(), x.end(), 0.0f);
  quantize_row(DType::Q8_0, x.data(), &b, 32);
  EXPECT_EQ(b.d, 0);
  for (int8_t q : b.qs) EXPECT_EQ(q, 0);
}

// ggml's reference rounding, roundf, on blocks of every scale and on exact halves (x = k + 0.5
// with amax = 127, so d = 1): the quantizer's truncate-and-step gives the same integers.
TEST(Q8_0, RoundsAsRoundfOnRandomBlocksAndHalves) {
  std::mt19937 rng(5);
  std::normal_distribution<float> n01(0.0f, 1.0f);
  std::uniform_int_distribution<int> level(-126, 126);
  std::vector<float> x(32);
  BlockQ8_0 b;
  for (int trial = 0; trial < 4000; ++trial) {
    const bool halves = trial % 4 == 0;
    const float scale = std::ldexp(1.0f, trial % 40 - 20);
    for (float& v : x)
      v = halves ? float(level(rng)) + (level(rng) % 2 ? 0.5f : -0.5f) : n01(rng) * scale;
    if (halves) x[7] = trial % 8 ? 127.0f : -127.0f;
    quantize_row(DType::Q8_0, x.data(), &b, 32);
    float amax = 0.0f;
    for (float v : x) amax = std::max(amax, std::fabs(v));
    const float d = amax / 127.0f, id = d != 0.0f ? 1.0f / d : 0.0f;
    for (int j = 0; j < 32; ++j)
      ASSERT_EQ(b.qs[j], int8_t(std::roundf(x[size_t(j)] * id)))
          << "trial " << trial << " x " << x[size_t(j)];
  }
}

TEST(Q4_0, KnownBlockAndNibbleLayout) {
  // The value of largest magnitude is -8: d = 1, q = min(15, trunc(x + 8.5)).
  std::vector<float> x(32, 0.0f);
  x[0] = -8.0f;   // q 0
  x[1] = 7.0f;    // q 15
  x[2] = 7.4f;    // 15.9 -> 15
  x[3] = -0.5f;   // 8.0 -> 8
  x[16] = 3.0f;   // q 11, high nibble of byte 0
  x[17] = -7.6f;  // 0.9 -> 0
  BlockQ4_0 b;
  quantize_row(DType::Q4_0, x.data(), &b, 32);
  EXPECT_EQ(b.d, 0x3c00);
  EXPECT_EQ(b.qs[0], 0x0 | (11 << 4));
  EXPECT_EQ(b.qs[1], 15 | (0 << 4));
  EXPECT_EQ(b.qs[2] & 0x0f, 15);
  EXPECT_EQ(b.qs[3] & 0x0f, 8);
  EXPECT_EQ(b.qs[4] & 0x0f, 8);  // zeros map to the middle level
  std::vector<float> y(32);
  dequantize_row(DType::Q4_0, &b, y.data(), 32);
  EXPECT_EQ(y[0], -8.0f);
  EXPECT_EQ(y[1], 7.0f);
  EXPECT_EQ(y[16], 3.0f);
  EXPECT_EQ(y[17], -8.0f);
  // A positive extreme: d = 8 / -8 = -1, so 8 maps to level 0 and the grid runs 8 ... -7.
  std::fill(x.begin(), x.end(), 0.0f);
  x[5] = 8.0f;
  x[6] = -7.0f;
  quantize_row(DType::Q4_0, x.data(), &b, 32);
  EXPECT_EQ(fp16_to_fp32(b.d), -1.0f);
  dequantize_row(DType::Q4_0, &b, y.data(), 32);
  EXPECT_EQ(y[5], 8.0f);
  EXPECT_EQ(y[6], -7.0f);
}

// Random rows: every dequantized value is within half a quantization step of the input (plus
// the fp16 rounding of the scale), and re-quantizing the dequantized row is exact.
TEST(Quantized, RoundTripErrorBounds) {
  std::mt19937 rng(3);
  std::normal_distribution<float> dist(0.0f, 1.0f);
  const int64_t n = 32 * 64;
  std::vector<float> x(size_t{n}), y(size_t{n}), z(size_t{n});
  for (float& v : x) v = dist(rng) * 3.0f;
  for (DType t : {DType::Q8_0, DType::Q4_0}) {
    std::vector<uint8_t> q(row_bytes(t, n)), q2(row_bytes(t, n));
    quantize_row(t, x.data(), q.data(), n);
    dequantize_row(t, q.data(), y.data(), n);
    for (int64_t b = 0; b < n / 32; ++b) {
      float amax = 0.0f;
      for (int j = 0; j < 32; ++j) amax = std::max(amax, std::fabs(x[size_t(b * 32 + j)]));
      // Q8_0 rounds to the nearest level; Q4_0 has 16 levels for [-8d, 8d], so +8d (the
      // opposite end from the extreme) is clamped to 7d: one full step. The fp16 scale adds a
      // relative 2^-11 on every level (up to 127 or 8 steps, i.e. amax).
      const float step = t == DType::Q8_0 ? amax / 127.0f * 0.5f : amax / 8.0f;
      const float tol = step + amax * 0x1p-11f * 1.01f + 1e-7f;
      for (int j = 0; j < 32; ++j) {
        const size_t i = size_t(b * 32 + j);
        ASSERT_LE(std::fabs(y[i] - x[i]), tol) << dtype_name(t) << " element " << i;
      }
    }
    quantize_row(t, y.data(), q2.data(), n);
    dequantize_row(t, q2.data(), z.data(), n);
    // A dequantized row lies on its own grid: quantizing it again changes nothing.
    for (int64_t i = 0; i < n; ++i) ASSERT_EQ(z[size_t(i)], y[size_t(i)]) << dtype_name(t) << i;
  }
  for (DType t : {DType::F16, DType::BF16, DType::F32}) {
    std::vector<uint8_t> q(row_bytes(t, n));
    quantize_row(t, x.data(), q.data(), n);
    dequantize_row(t, q.data(), y.data(), n);
    const float rel = t == DType::F16 ? 0x1p-11f : t == DType::BF16 ? 0x1p-8f : 0.0f;
    for (int64_t i = 0; i < n; ++i) {
      ASSERT_LE(std::fabs(y[size_t(i)] - x[size_t(i)]), rel * std::fabs(x[size_t(i)]));
    }
  }
}

TEST(Finite, TheFirstNonFiniteElementOrBlockIsFound) {
  std::vector<float> f32(64, 1.0f);
  EXPECT_EQ(first_non_finite(DType::F32, f32.data(), 64), -1);
  f32[41] = std::numeric_limits<float>::infinity();
  f32[50] = std::numeric_limits<float>::quiet_NaN();
  EXPECT_EQ(first_non_finite(DType::F32, f32.data(), 64), 41);
  std::vector<uint16_t> h(64, fp32_to_fp16(0.5f));
  EXPECT_EQ(first_non_finite(DType::F16, h.data(), 64), -1);
  h[9] = 0x7c00;  // +inf
  EXPECT_EQ(first_non_finite(DType::F16, h.data(), 64), 9);
  std::vector<uint16_t> b(64, fp32_to_bf16(0.5f));
  EXPECT_EQ(first_non_finite(DType::BF16, b.data(), 64), -1);
  b[3] = 0xffc0;  // NaN
  EXPECT_EQ(first_non_finite(DType::BF16, b.data(), 64), 3);
  // Quantized: the scale of the third block is NaN; its codes are irrelevant.
  std::vector<BlockQ8_0> q8(4);
  for (auto& blk : q8) blk.d = fp32_to_fp16(0.1f);
  EXPECT_EQ(first_non_finite(DType::Q8_0, q8.data(), 4 * kQK), -1);
  q8[2].d = 0x7e00;
  EXPECT_EQ(first_non_finite(DType::Q8_0, q8.data(), 4 * kQK), 2 * kQK);
}

}  // namespace
}  // namespace fairkv::kernels
