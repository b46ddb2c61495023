// ggml's Q4_1 / Q5_0 / Q5_1 and K-quant formats: dequantize_row against an element-by-element
// reference written from the format descriptions (each element located on its own, where the
// library walks blocks in order), hand-built blocks with known values, the legacy quantizers'
// round trips, and the activation quantizers Q8_1 / Q8_K against ggml's rules.
#include <gtest/gtest.h>

#include <cmath>
#include <random>
#include <vector>

#include "kernels/matmul.h"
#include "kernels/matmul_kernels.h"
#include "kernels/types.h"

namespace fairkv::kernels {
namespace {

const DType kNewTypes[] = {DType::Q4_1, DType::Q5_0, DType::Q5_1, DType::Q2_K,
                           DType::Q3_K, DType::Q4_K, DType::Q5_K, DType::Q6_K};

float h(uint16_t v) {
  return fp16_to_fp32(v);
}

// Scale and min of Q4_K / Q5_K sub-block j, from ggml's description of the 12 bytes.
void k4_scale_min(const uint8_t* s, int j, int& sc, int& m) {
  if (j < 4) {
    sc = s[j] & 0x3f;
    m = s[j + 4] & 0x3f;
  } else {
    sc = (s[j + 4] & 0xf) | ((s[j - 4] >> 6) << 4);
    m = (s[j + 4] >> 4) | ((s[j] >> 6) << 4);
  }
}

// Q3_K scale j through ggml's four-word shuffle (a different derivation from q3k_scales).
int q3_scale(const uint8_t* s, int j) {
  uint32_t aux[4];
  std::memcpy(aux, s, 12);
  const uint32_t tmp = aux[2], m1 = 0x03030303, m2 = 0x0f0f0f0f;
  aux[2] = ((aux[0] >> 4) & m2) | (((tmp >> 4) & m1) << 4);
  aux[3] = ((aux[1] >> 4) & m2) | (((tmp >> 6) & m1) << 4);
  aux[0] = (aux[0] & m2) | (((tmp >> 0) & m1) << 4);
  aux[1] = (aux[1] & m2) | (((tmp >> 2) & m1) << 4);
  int8_t sc[16];
  std::memcpy(sc, aux, 16);
  return sc[j] - 32;
}

// Element e of a row of type t.
float element(DType t, const uint8_t* row, int64_t e) {
  const int64_t j = e % block_size(t);
  const int jj = int(j);
  const size_t bb = row_bytes(t, block_size(t));
  const uint8_t* p = row + (e / block_size(t)) * int64_t(bb);
  auto nib32 = [&](const uint8_t* qs) { return jj < 16 ? qs[jj] & 0xf : qs[jj - 16] >> 4; };
  auto bit32 = [&](const uint8_t* qh) {
    uint32_t v;
    std::memcpy(&v, qh, 4);
    return int((v >> jj) & 1);
  };
  const int half = jj / 128, g = (jj % 128) / 32, l = jj % 32;
  switch (t) {
    case DType::Q4_1: {
      const auto& b = *reinterpret_cast<const BlockQ4_1*>(p);
      return float(nib32(b.qs)) * h(b.d) + h(b.m);
    }
    case DType::Q5_0: {
      const auto& b = *reinterpret_cast<const BlockQ5_0*>(p);
      return float((nib32(b.qs) | (bit32(b.qh) << 4)) - 16) * h(b.d);
    }
    case DType::Q5_1: {
      const auto& b = *reinterpret_cast<const BlockQ5_1*>(p);
      return float(nib32(b.qs) | (bit32(b.qh) << 4)) * h(b.d) + h(b.m);
    }
    case DType::Q2_K: {
      const auto& b = *reinterpret_cast<const BlockQ2_K*>(p);
      const int q = (b.qs[32 * half + l] >> (2 * g)) & 3;
      const int sc = b.scales[jj / 16];
      return h(b.d) * float(sc & 0xf) * float(q) - h(b.dmin) * float(sc >> 4);
    }
    case DType::Q3_K: {
      const auto& b = *reinterpret_cast<const BlockQ3_K*>(p);
      const int lo = (b.qs[32 * half + l] >> (2 * g)) & 3;
      const int hb = (b.hmask[l] >> (4 * half + g)) & 1;
      return h(b.d) * float(q3_scale(b.scales, jj / 16)) * float(lo - (hb ? 0 : 4));
    }
    case DType::Q4_K:
    case DType::Q5_K: {
      const bool five = t == DType::Q5_K;
      const uint8_t* scales = five ? reinterpret_cast<const BlockQ5_K*>(p)->scales
                                   : reinterpret_cast<const BlockQ4_K*>(p)->scales;
      const uint8_t* qs = five ? reinterpret_cast<const BlockQ5_K*>(p)->qs
                               : reinterpret_cast<const BlockQ4_K*>(p)->qs;
      const uint16_t d = five ? reinterpret_cast<const BlockQ5_K*>(p)->d
                              : reinterpret_cast<const BlockQ4_K*>(p)->d;
      const uint16_t dmin = five ? reinterpret_cast<const BlockQ5_K*>(p)->dmin
                                 : reinterpret_cast<const BlockQ4_K*>(p)->dmin;
      const int sub = jj / 32;
      int q = (qs[32 * (sub / 2) + l] >> (4 * (sub % 2))) & 0xf;
      if (five) q |= ((reinterpret_cast<const BlockQ5_K*>(p)->qh[l] >> sub) & 1) << 4;
      int sc, m;
      k4_scale_min(scales, sub, sc, m);
      return h(d) * float(sc) * float(q) - h(dmin) * float(m);
    }
    case DType::Q6_K: {
      const auto& b = *reinterpret_cast<const BlockQ6_K*>(p);
      const int lo = (b.ql[64 * half + 32 * (g % 2) + l] >> (4 * (g / 2))) & 0xf;
      const int hi = (b.qh[32 * half + l] >> (2 * g)) & 3;
      return h(b.d) * float(b.scales[jj / 16]) * float((lo | (hi << 4)) - 32);
    }
    default:
      ADD_FAILURE() << "not a new type";
      return 0.0f;
  }
}

TEST(GgmlQuants, SizesMatchGgml) {
  EXPECT_EQ(row_bytes(DType::Q4_1, 64), 40u);
  EXPECT_EQ(row_bytes(DType::Q5_0, 64), 44u);
  EXPECT_EQ(row_bytes(DType::Q5_1, 64), 48u);
  EXPECT_EQ(row_bytes(DType::Q2_K, 512), 168u);
  EXPECT_EQ(row_bytes(DType::Q3_K, 256), 110u);
  EXPECT_EQ(row_bytes(DType::Q4_K, 256), 144u);
  EXPECT_EQ(row_bytes(DType::Q5_K, 256), 176u);
  EXPECT_EQ(row_bytes(DType::Q6_K, 256), 210u);
  for (DType t : kNewTypes) EXPECT_EQ(block_size(t), is_k_quant(t) ? 256 : 32) << dtype_name(t);
  EXPECT_THROW(row_bytes(DType::Q4_K, 128), std::invalid_argument);
  EXPECT_STREQ(dtype_name(DType::Q5_K), "Q5_K");
}

TEST(GgmlQuants, DequantizeMatchesElementwiseReferenceOnRandomBlocks) {
  uint32_t seed = 1;
  for (DType t : kNewTypes) {
    const int64_t n = 4 * kQK_K;
    std::vector<uint8_t> row(row_bytes(t, n));
    for (int rep = 0; rep < 20; ++rep) {
      fill_random_blocks(t, seed++, row.data(), n);
      std::vector<float> got(static_cast<size_t>(n));
      dequantize_row(t, row.data(), got.data(), n);
      for (int64_t e = 0; e < n; ++e) {
        const float want = element(t, row.data(), e);
        ASSERT_EQ(got[size_t(e)], want) << dtype_name(t) << " element " << e;
        ASSERT_TRUE(std::isfinite(want));
      }
    }
  }
}

TEST(GgmlQuants, HandBuiltBlocks) {
  // Q4_K: d = 1, dmin = 0.5, sub-block 0 scale 3 min 2, sub-block 5 scale 33 (high bits in
  // byte 1) min 17 (high bits in byte 5); level 9 at element 0 and 11 at element 5 * 32 + 7.
  BlockQ4_K k{};
  k.d = fp32_to_fp16(1.0f);
  k.dmin = fp32_to_fp16(0.5f);
  k.scales[0] = 3;
  k.scales[4] = 2;
  k.scales[9] = uint8_t((33 & 0xf) | ((17 & 0xf) << 4));
  k.scales[1] = uint8_t((33 >> 4) << 6);
  k.scales[5] = uint8_t((17 >> 4) << 6);
  k.qs[0] = 9;
  k.qs[2 * 32 + 7] = 11 << 4;  // sub-block 5 = high nibbles of the third 32 bytes
  std::vector<float> y(256);
  dequantize_row(DType::Q4_K, &k, y.data(), 256);
  EXPECT_EQ(y[0], 3.0f * 9 - 1.0f);
  EXPECT_EQ(y[1], -1.0f);
  EXPECT_EQ(y[5 * 32 + 7], 33.0f * 11 - 8.5f);
  // Q6_K: element 128 + 64 + 3 is half 1, group 2: high nibble of ql[64 + 3], qh[32 + 3] bits
  // 4..5; scale index 12.
  BlockQ6_K s{};
  s.d = fp32_to_fp16(0.25f);
  s.scales[12] = -3;
  s.ql[64 + 3] = 0x70;
  s.qh[32 + 3] = 2 << 4;
  dequantize_row(DType::Q6_K, &s, y.data(), 256);
  EXPECT_EQ(y[128 + 64 + 3], 0.25f * -3 * float((7 | (2 << 4)) - 32));
  EXPECT_EQ(y[0], 0.25f * 0 * -32);
  // Q5_0: the fifth bit of element 20 is bit 20 of qh.
  BlockQ5_0 q5{};
  q5.d = fp32_to_fp16(2.0f);
  q5.qh[2] = 1 << 4;
  q5.qs[4] = 0x30;  // element 20's nibble (high nibble of byte 4)
  std::vector<float> z(32);
  dequantize_row(DType::Q5_0, &q5, z.data(), 32);
  EXPECT_EQ(z[20], 2.0f * ((3 | 16) - 16));
  EXPECT_EQ(z[4], 2.0f * -16);
}

TEST(GgmlQuants, LegacyQuantizersRoundTrip) {
  std::mt19937 rng(5);
  std::normal_distribution<float> dist(0.0f, 1.0f);
  std::vector<float> x(256), y(256);
  for (float& v : x) v = dist(rng);
  for (DType t : {DType::Q4_1, DType::Q5_0, DType::Q5_1}) {
    std::vector<uint8_t> q(row_bytes(t, 256));
    quantize_row(t, x.data(), q.data(), 256);
    dequantize_row(t, q.data(), y.data(), 256);
    const float levels = t == DType::Q4_1 ? 15.0f : 31.0f;
    for (int b = 0; b < 8; ++b) {
      float lo = x[size_t(32 * b)], hi = lo;
      for (int j = 0; j < 32; ++j) {
        lo = std::min(lo, x[size_t(32 * b + j)]);
        hi = std::max(hi, x[size_t(32 * b + j)]);
      }
      // Half a step, except Q5_0's end opposite the largest magnitude, which clamps (level 32
      // does not exist) and may be a whole step off.
      const float bound =
          t == DType::Q5_0 ? std::max(-lo, hi) / 16.0f * 1.01f : (hi - lo) / levels * 0.51f;
      for (int j = 0; j < 32; ++j) {
        const size_t i = size_t(32 * b + j);
        EXPECT_LE(std::fabs(y[i] - x[i]), bound + 0.01f) << dtype_name(t) << i;
      }
    }
  }
  std::vector<uint8_t> q(row_bytes(DType::Q4_K, 256));
  EXPECT_THROW(quantize_row(DType::Q4_K, x.data(), q.data(), 256), std::invalid_argument);
}

TEST(GgmlQuants, Q8_1IsGgmlsAvxRule) {
  std::vector<float> x(32, 0.0f);
  x[0] = 127.0f;  // amax 127: id = 1, so the ties below show the rounding
  x[1] = 2.5f;
  x[2] = -3.5f;
  x[3] = 1.25f;
  BlockQ8_1 b;
  detail::quantize_act_q8_1(x.data(), &b, 32);
  EXPECT_EQ(b.qs[1], 2);
  EXPECT_EQ(b.qs[2], -4);
  EXPECT_EQ(b.qs[3], 1);
  EXPECT_EQ(b.d, fp32_to_fp16(1.0f));
  EXPECT_EQ(b.s, fp32_to_fp16(127.0f + 2 - 4 + 1));
  // s uses the unrounded d: amax 100 gives d = 100/127, not fp16(100/127).
  std::vector<float> y(32, 1.0f);
  y[0] = 100.0f;
  detail::quantize_act_q8_1(y.data(), &b, 32);
  int sum = 0;
  for (int8_t q : b.qs) sum += q;
  EXPECT_EQ(b.s, fp32_to_fp16(100.0f / 127.0f * float(sum)));
}

TEST(GgmlQuants, Q8_KIsGgmlsReferenceRule) {
  std::vector<float> x(256, 0.0f);
  x[7] = -127.0f;  // the largest magnitude, negative: iscale = 1, maps to... -127 * 1
  x[8] = 127.0f;   // the same magnitude later: not the max (first wins), maps to 127
  x[1] = 2.5f;
  x[2] = -3.5f;
  x[20] = 0.5f;
  BlockQ8_K b;
  detail::quantize_act_q8_k(x.data(), &b, 256);
  EXPECT_EQ(b.d, 1.0f);
  EXPECT_EQ(b.qs[7], -127);
  EXPECT_EQ(b.qs[8], 127);
  EXPECT_EQ(b.qs[1], 2);
  EXPECT_EQ(b.qs[2], -4);
  EXPECT_EQ(b.qs[20], 0);
  EXPECT_EQ(b.bsums[0], 2 - 4 - 127 + 127);
  EXPECT_EQ(b.bsums[1], 0);
  // A positive max maps to -127: iscale = -127 / max, d = 1 / iscale.
  std::mt19937 rng(3);
  std::normal_distribution<float> dist(0.0f, 1.0f);
  for (float& v : x) v = dist(rng);
  x[100] = 9.0f;
  detail::quantize_act_q8_k(x.data(), &b, 256);
  EXPECT_EQ(b.qs[100], -127);
  EXPECT_EQ(b.d, 1.0f / (-127.0f / 9.0f));
  for (int j = 0; j < 256; ++j) {
    EXPECT_EQ(b.qs[j], int8_t(std::min(127.0f, std::nearbyint(-127.0f / 9.0f * x[size_t(j)]))));
  }
  for (int g = 0; g < 16; ++g) {
    int s = 0;
    for (int l = 0; l < 16; ++l) s += b.qs[16 * g + l];
    EXPECT_EQ(b.bsums[g], s);
  }
  std::vector<float> zero(256, 0.0f);
  detail::quantize_act_q8_k(zero.data(), &b, 256);
  EXPECT_EQ(b.d, 0.0f);
  EXPECT_EQ(b.bsums[3], 0);
  // round_activations gives q * d back.
  std::vector<float> r(256);
  round_activations(DType::Q4_K, x.data(), 1, 256, r.data());
  detail::quantize_act_q8_k(x.data(), &b, 256);
  for (int j = 0; j < 256; ++j) EXPECT_EQ(r[size_t(j)], float(b.qs[j]) * b.d);
}

}  // namespace
}  // namespace fairkv::kernels
