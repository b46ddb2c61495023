// Block layouts of ggml's legacy (32-element) and K-quant (256-element super-block) types, as
// GGUF files store them, plus the activation blocks Q8_1 and Q8_K that llama.cpp's CPU backend
// quantizes activations to. Sizes are asserted against ggml's so that a row of blocks can be read
// straight out of a mapped file.
#pragma once

#include <cstdint>

namespace fairkv::kernels {

constexpr int kQK_K = 256;  // elements per K-quant super-block

// x = d * q + m, q in 0..15 (low nibbles: elements 0..15, high nibbles: 16..31).
struct BlockQ4_1 {
  uint16_t d, m;  // fp16
  uint8_t qs[16];
};
// x = d * (q - 16), q = nibble | (bit j of qh) << 4 (qh little-endian, bit j is element j).
struct BlockQ5_0 {
  uint16_t d;
  uint8_t qh[4];
  uint8_t qs[16];
};
// x = d * q + m, q as Q5_0's (0..31).
struct BlockQ5_1 {
  uint16_t d, m;
  uint8_t qh[4];
  uint8_t qs[16];
};
// Activations for Q4_1 / Q5_1: d = amax / 127 and s = d * sum(qs), both fp16.
struct BlockQ8_1 {
  uint16_t d, s;
  int8_t qs[32];
};

// 16 sub-blocks of 16: x = d * (scales[j] & 15) * q - dmin * (scales[j] >> 4), q 2 bits.
// Elements are in two halves of 128; in each, qs[0..31] hold four 32-element groups at bit
// shifts 0, 2, 4, 6, each group being two sub-blocks (bytes 0..15 and 16..31).
struct BlockQ2_K {
  uint8_t scales[16];
  uint8_t qs[64];
  uint16_t d, dmin;
};
// 16 sub-blocks of 16: x = d * (s_j - 32) * (q - 4 * !hbit), q the 2 low bits laid out as
// Q2_K's, hbit bit (group index 0..7) of hmask[l] (l = element index mod 32), s_j 6 bits packed
// in 12 bytes (low 4 bits in scales[0..7], high 2 bits in scales[8..11]).
struct BlockQ3_K {
  uint8_t hmask[32];
  uint8_t qs[64];
  uint8_t scales[12];
  uint16_t d;
};
// 8 sub-blocks of 32: x = d * sc_j * q - dmin * m_j, sc and m 6 bits in 12 bytes (scale_min_k4),
// q nibbles: each 32 bytes of qs hold two sub-blocks (low nibbles, then high nibbles).
struct BlockQ4_K {
  uint16_t d, dmin;
  uint8_t scales[12];
  uint8_t qs[128];
};
// As Q4_K with a fifth bit: sub-block j's high bit is bit j of qh[l] (l = index within it).
struct BlockQ5_K {
  uint16_t d, dmin;
  uint8_t scales[12];
  uint8_t qh[32];
  uint8_t qs[128];
};
// 16 sub-blocks of 16: x = d * scales[j] * (q - 32), q 6 bits: 4 in ql, 2 in qh. Each half of
// 128 elements uses 64 bytes of ql and 32 of qh: element l + 32 * g (g = 0..3) takes nibble
// (g / 2) of ql[l + 32 * (g % 2)] and bits 2g..2g+1 of qh[l].
struct BlockQ6_K {
  uint8_t ql[128];
  uint8_t qh[64];
  int8_t scales[16];
  uint16_t d;
};
// Activations for the K-quants: x = d * qs, bsums the sums of qs over each 16 elements.
struct BlockQ8_K {
  float d;
  int8_t qs[kQK_K];
  int16_t bsums[kQK_K / 16];
};

static_assert(sizeof(BlockQ4_1) == 20 && sizeof(BlockQ5_0) == 22 && sizeof(BlockQ5_1) == 24 &&
              sizeof(BlockQ8_1) == 36);
static_assert(sizeof(BlockQ2_K) == 84 && sizeof(BlockQ3_K) == 110 && sizeof(BlockQ4_K) == 144 &&
              sizeof(BlockQ5_K) == 176 && sizeof(BlockQ6_K) == 210 && sizeof(BlockQ8_K) == 292);

// Scale and min of sub-block j (0..7) of a Q4_K / Q5_K block: the first four keep 6 bits in
// bytes 0..3 (scales) and 4..7 (mins); the last four keep their low 4 bits in bytes 8..11 and
// their top 2 bits in the spare top bits of bytes 0..7.
inline void scale_min_k4(int j, const uint8_t* q, int& sc, int& m) {
  if (j < 4) {
    sc = q[j] & 63;
    m = q[j + 4] & 63;
  } else {
    sc = (q[j + 4] & 0x0f) | ((q[j - 4] >> 6) << 4);
    m = (q[j + 4] >> 4) | ((q[j] >> 6) << 4);
  }
}

// The 16 signed 6-bit scales of a Q3_K block, minus 32.
inline void q3k_scales(const uint8_t* s, int8_t out[16]) {
  for (int j = 0; j < 16; ++j) {
    const int lo = j < 8 ? s[j] & 0x0f : s[j - 8] >> 4;
    const int hi = (s[8 + j % 4] >> (2 * (j / 4))) & 3;
    out[j] = int8_t((lo | (hi << 4)) - 32);
  }
}

}  // namespace fairkv::kernels
