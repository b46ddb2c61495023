// Internal: the kernels behind matmul(), one family per file. matmul.cpp validates, picks one
// and splits its rows over the thread pool. Every kernel computes y rows [r_begin, r_end) for all
// n_tokens tokens (y is n_tokens x w.rows, x is n_tokens x w.cols unless said otherwise).
#pragma once

#include <cstddef>
#include <cstdint>

#include "kernels/matmul.h"

namespace fairkv::kernels::detail {

// --- gemv.cpp: dot-product kernels for a few tokens, float32 activations, any weight type.
// Reads the weights once per group of up to kGemvTokens tokens: the decode path.
inline constexpr int64_t kGemvTokens = 8;
// Rows per work unit when splitting decode over threads (the kernels go one row at a time; 8 rows
// keep each thread's outputs on whole cache lines).
inline constexpr int64_t kGemvRows = 8;
void gemv(const WeightMatrix& w, const float* x, int64_t n_tokens, float* y, int64_t r_begin,
          int64_t r_end);
// The same for F16 weights with fp16 activations (LikeGgml): xh is n_tokens x w.cols fp16.
void gemv_f16_x16(const WeightMatrix& w, const uint16_t* xh, int64_t n_tokens, float* y,
                  int64_t r_begin, int64_t r_end);

// --- gemm.cpp: packed, register-blocked kernels for many tokens, float32 activations.
// Activations are packed once per call into panels of tokens ([k][token] inside a panel,
// zero-padded); weights are converted to float32 a tile of rows at a time.
int64_t gemm_row_tile();  // rows per tile; split points should be multiples
size_t gemm_packed_floats(int64_t n_tokens, int64_t cols);
// Packs the panels [p_begin, p_end) of x (n_tokens x cols) into out.
void gemm_pack(const float* x, int64_t n_tokens, int64_t cols, float* out, int64_t p_begin,
               int64_t p_end);
int64_t gemm_panels(int64_t n_tokens);
void gemm(const WeightMatrix& w, const float* xpacked, int64_t n_tokens, float* y, int64_t r_begin,
          int64_t r_end);

// --- quantize_act.cpp: activations rounded as llama.cpp's x86 CPU backend rounds them.
// Q8_0 blocks of activations: d = amax / 127 (stored as fp16), q = round-half-even(x * 127/amax),
// which is ggml's AVX quantize_row_q8_0 (its scalar reference uses 1/d and rounds ties away from
// zero; the two differ only on exact ties).
void quantize_act_q8_0(const float* x, BlockQ8_0* out, int64_t n);

#if defined(__AVX512F__) && defined(__AVX512BF16__) && defined(__AVX512VL__) && \
    defined(__AVX512BW__)
#define FAIRKV_HAVE_BF16_KERNELS 1
// --- bf16_avx512.cpp: BF16 weights times bf16-rounded activations with vdpbf16ps.
// x is packed as bf16 pairs; see bf16_packed_bytes for the layout's size.
size_t bf16_packed_bytes(int64_t n_tokens, int64_t cols);
void bf16_pack(const float* x, int64_t n_tokens, int64_t cols, uint8_t* out, int64_t p_begin,
               int64_t p_end);
int64_t bf16_panels(int64_t n_tokens);
int64_t bf16_row_tile();
void bf16_matmul(const WeightMatrix& w, const uint8_t* xpacked, int64_t n_tokens, float* y,
                 int64_t r_begin, int64_t r_end);
#endif

#if defined(__AVX512F__) && defined(__AVX512VNNI__) && defined(__AVX512VL__) && \
    defined(__AVX512BW__)
#define FAIRKV_HAVE_VNNI_KERNELS 1
// --- q8_vnni.cpp: Q8_0 / Q4_0 weights times Q8_0 activations with vpdpbusd.
size_t q8_packed_bytes(int64_t n_tokens, int64_t cols);
void q8_pack(const float* x, int64_t n_tokens, int64_t cols, uint8_t* out, int64_t p_begin,
             int64_t p_end);
int64_t q8_panels(int64_t n_tokens);
int64_t q8_row_tile();
void q8_matmul(const WeightMatrix& w, const uint8_t* xpacked, int64_t n_tokens, float* y,
               int64_t r_begin, int64_t r_end);
#endif

}  // namespace fairkv::kernels::detail
