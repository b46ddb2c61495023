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
// The same two with every token bitwise as a 1-token call gives it (Batching::Invariant), each
// row read once for all tokens.
void gemv_apart(const WeightMatrix& w, const float* x, int64_t n_tokens, float* y, int64_t r_begin,
                int64_t r_end);
void gemv_f16_x16_apart(const WeightMatrix& w, const uint16_t* xh, int64_t n_tokens, float* y,
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

// The epilogue of the register-blocked kernels (gemm, bf16_matmul, q8_matmul): their sums sit in
// cbuf as tiles of Rows weight rows x Panel tokens ([row][token]), tile i of a block of row tiles
// holding panel p at (i * n_panels + p) * Rows * Panel. Copies the tiles of the rows [rb, ...)
// that are below r_end into y (n_tokens x y_rows), transposing each to [token][row]; the last
// panel holds last_panel_tokens tokens. Inline so that every kernel's loops keep their constants.
template <int Rows, int Panel>
inline void store_tiles(const float* cbuf, int64_t n_tiles, int64_t n_panels,
                        int64_t last_panel_tokens, int64_t rb, int64_t r_end, float* y,
                        int64_t y_rows) {
  for (int64_t i = 0; i < n_tiles; ++i) {
    const int64_t r0 = rb + i * Rows;
    const int nr = int(r_end - r0 < Rows ? r_end - r0 : Rows);
    for (int64_t p = 0; p < n_panels; ++p) {
      const float* c = cbuf + (i * n_panels + p) * Rows * Panel;
      const int nt = int(p == n_panels - 1 ? last_panel_tokens : Panel);
      for (int t = 0; t < nt; ++t) {
        float* yt = y + (p * Panel + t) * y_rows + r0;
        for (int r = 0; r < nr; ++r) yt[r] = c[r * Panel + t];
      }
    }
  }
}

// --- quantize_act.cpp: activations rounded as llama.cpp's x86 CPU backend rounds them.
// Q8_0 blocks of activations: d = amax / 127 (stored as fp16), q = round-half-even(x * 127/amax),
// which is ggml's AVX quantize_row_q8_0 (its scalar reference uses 1/d and rounds ties away from
// zero; the two differ only on exact ties).
void quantize_act_q8_0(const float* x, BlockQ8_0* out, int64_t n);
// Q8_1 blocks (for Q4_1 / Q5_1 weights), ggml's AVX quantize_row_q8_1: Q8_0's d and q (round half
// to even), and s = fp16(d * sum(q)) with the unrounded d.
void quantize_act_q8_1(const float* x, BlockQ8_1* out, int64_t n);
// Q8_K blocks (for the K-quants), ggml's quantize_row_q8_K_ref (its x86 build has no other):
// the element of largest magnitude max maps to -127, q = min(127, round-half-even(x * -127/max))
// (ggml's nearest_int adds 1.5 * 2^23, which rounds half to even), d = 1 / (-127/max), bsums the
// sums of q over 16 elements.
void quantize_act_q8_k(const float* x, BlockQ8_K* out, int64_t n);

// --- qmatmul.cpp (+ qdot_legacy.cpp, qdot_k.cpp): Q4_1 / Q5_0 / Q5_1 / K-quant weights times
// activations quantized as ggml quantizes them for each type (Q8_1, Q8_0, Q8_K), with ggml's
// per-block integer arithmetic. Activations are packed per token (qmatmul_pack), then every
// weight row is read once per group of up to 8 tokens. The row kernels never mix tokens, so each
// token's result is that of a 1-token call for any n_tokens (Batching::Invariant relies on it).
size_t qmatmul_token_bytes(DType t, int64_t cols);
void qmatmul_pack(DType t, const float* x, int64_t cols, uint8_t* out, int64_t t_begin,
                  int64_t t_end);
void qmatmul(const WeightMatrix& w, const uint8_t* xpacked, int64_t n_tokens, float* y,
             int64_t r_begin, int64_t r_end);

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
// Every token bitwise as bf16_matmul of that token alone (Batching::Invariant), each row read
// once for all tokens; x packed token by token as bf16_pack packs one token
// (bf16_packed_bytes(1, cols) each).
void bf16_matmul_apart(const WeightMatrix& w, const uint8_t* xpacked, int64_t n_tokens, float* y,
                       int64_t r_begin, int64_t r_end);
#endif

#if defined(__AVX512F__) && defined(__AVX512VNNI__) && defined(__AVX512VL__) && \
    defined(__AVX512BW__)
#define FAIRKV_HAVE_VNNI_KERNELS 1
// --- q8_vnni.cpp: the 32-element ggml types (Q8_0, Q4_0, Q5_0, Q4_1, Q5_1) times Q8_0 / Q8_1
// activations with vpdpbusd. The packed activations depend on the weight type t. Below 8
// tokens they are packed token after token (q8_packed_bytes(t, 1, cols) each) and the dot
// products never mix tokens: each token's result is that of a 1-token call (Batching::Invariant
// relies on it); from 8 tokens on, packed panels and tiles.
bool q8_handles(DType t);
size_t q8_packed_bytes(DType t, int64_t n_tokens, int64_t cols);
void q8_pack(DType t, const float* x, int64_t n_tokens, int64_t cols, uint8_t* out, int64_t p_begin,
             int64_t p_end);
int64_t q8_panels(int64_t n_tokens);
int64_t q8_row_tile();
void q8_matmul(const WeightMatrix& w, const uint8_t* xpacked, int64_t n_tokens, float* y,
               int64_t r_begin, int64_t r_end);
// --- ggml_order.cpp: Q8_0 / Q4_0 / Q4_1 weights in ggml_vec_dot's order of operations
// (Activations::GgmlOrder); activations packed per token as ggml's Q8_0 / Q8_1 blocks.
bool ggml_order_handles(DType t);
size_t ggml_order_token_bytes(DType t, int64_t cols);
void ggml_order_pack(DType t, const float* x, int64_t cols, uint8_t* out, int64_t t_begin,
                     int64_t t_end);
void ggml_order_matmul(const WeightMatrix& w, const uint8_t* xpacked, int64_t n_tokens, float* y,
                       int64_t r_begin, int64_t r_end);
// --- qk_vnni.cpp: K-quant weights (Q2_K .. Q6_K) times Q8_K activations, many tokens (prefill):
// activations packed in panels of tokens, rows in tiles of qk_row_tile().
bool qk_handles(DType t);
size_t qk_packed_bytes(int64_t n_tokens, int64_t cols);
int64_t qk_panels(int64_t n_tokens);
void qk_pack(const float* x, int64_t n_tokens, int64_t cols, uint8_t* out, int64_t p_begin,
             int64_t p_end);
int64_t qk_row_tile();
void qk_matmul(const WeightMatrix& w, const uint8_t* xpacked, int64_t n_tokens, float* y,
               int64_t r_begin, int64_t r_end);
#endif

}  // namespace fairkv::kernels::detail
