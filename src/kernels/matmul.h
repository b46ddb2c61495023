// Matrix products of weights (any DType) with float32 activations: the work of every linear layer.
// Each fast kernel has a scalar reference beside it; tests compare the two for every type.
#pragma once

#include <cstdint>

#include "kernels/threadpool.h"
#include "kernels/types.h"

namespace fairkv::kernels {

// A weight matrix as GGUF stores it: `rows` output rows of `cols` inputs, row r starting at
// data + r * row_stride bytes. row_stride defaults to row_bytes(type, cols); a larger stride
// views a block of columns of a bigger matrix (a unit's slice of Wo).
struct WeightMatrix {
  DType type = DType::F32;
  int64_t rows = 0;
  int64_t cols = 0;
  const void* data = nullptr;
  size_t row_stride = 0;  // 0 means row_bytes(type, cols)
  size_t stride() const { return row_stride ? row_stride : row_bytes(type, cols); }
  const uint8_t* row(int64_t r) const { return static_cast<const uint8_t*>(data) + r * stride(); }
};

// What happens to the activations x before the products.
//  Float32: x is used as is; y equals the product of the dequantized weights with x up to float32
//    summation order (relative error ~1e-6 of sum |W||x|).
//  LikeGgml: x is first rounded the way llama.cpp's CPU backend rounds it for this weight type:
//    F16 -> fp16, BF16 -> bf16, Q8_0, Q4_0 and Q5_0 -> Q8_0 blocks, Q4_1 and Q5_1 -> Q8_1
//    blocks, the K-quants -> Q8_K blocks (F32: unchanged); the quantized types then take ggml's
//    per-block integer dot products. Results then match
//    llama.cpp's up to summation order (this is what reproduces its greedy ids on BF16 / Q8_0
//    models) and differ from Float32's by about the rounding: ~1e-3 relative for F16 / BF16,
//    ~1e-2 for the Q8_0 blocks. It is also faster where the CPU has the instructions: BF16 uses
//    AVX512-BF16 dot products and Q8_0 / Q4_0 use AVX512-VNNI int8 dot products (2.5-3x the
//    prefill rate), and F16 decode reads fp16 activations (~20% more bandwidth per core).
//  GgmlOrder: LikeGgml's rounding, and for Q8_0, Q4_0 and Q4_1 weights also ggml's order of
//    operations inside each dot product (ggml_order.cpp), so that the results are bitwise
//    llama.cpp's CPU results wherever it runs ggml_vec_dot (every Q4_1 product, decode for
//    Q8_0 / Q4_0). Slower (one chain of FMAs per row and token); for exact comparisons with
//    llama.cpp (the SmolLM2 goldens). Other types as LikeGgml. The model's other steps take
//    ggml's arithmetic in this mode too (model/layer_steps.h).
enum class Activations { Float32, LikeGgml, GgmlOrder };
const char* activations_name(Activations a);

// Whether a token's result may depend on the other tokens of the call.
//  Fastest: the kernels that suit the token count (below), whose float32 summation order, and so
//    a token's last bits, change with the number of tokens.
//  Invariant: every token's row is bitwise what matmul(w, that row, 1, ...) gives, whatever the
//    other rows and the thread count: batch invariance, for a server whose decode rows must not
//    depend on which sequences share the step. Each token is rounded and packed as the 1-token
//    call does it, then goes through the 1-token path's kernels in groups of 4 (the few-token
//    kernels never mix tokens, and keep the 1-token accumulators here), over blocks of ~16 KiB of
//    weight rows that are read from memory once. About Fastest's cost up to 8 tokens, 1.4-3.2x it
//    at 16-32 where Fastest has switched to packed tiles (docs/benchmarks.md).
enum class Batching { Fastest, Invariant };
const char* batching_name(Batching b);

// y[t * w.rows + r] = sum_c W[r][c] * x[t * w.cols + c] for t in [0, n_tokens).
// Below 16 tokens (8 on the AVX-512 BF16 / VNNI paths): dot products, each thread reading its
// rows one after the other (one sequential stream, memory-bound); from there on: packed,
// register-blocked tiles (compute-bound). Rows are split over the pool in chunks with work
// stealing (ThreadPool::parallel_for_dynamic). x and y must not overlap. Throws
// std::invalid_argument on a malformed matrix (cols not whole blocks, stride shorter than a row,
// null data with rows > 0).
void matmul(const WeightMatrix& w, const float* x, int64_t n_tokens, float* y, ThreadPool& pool,
            Activations act = Activations::Float32, Batching batching = Batching::Fastest);
// Scalar reference: dequantize each row, accumulate in double.
void matmul_ref(const WeightMatrix& w, const float* x, int64_t n_tokens, float* y);
// x rounded as matmul(..., LikeGgml) rounds it for weights of type t, back in float32:
// matmul_ref(w, round_activations(t, x)) is the exact result that LikeGgml approximates, except
// for Q4_1 / Q5_1, whose offset term uses ggml's s = fp16(d * sum(q)) per activation block
// (about 2^-10 of |m_w * s| per block away from the rounded values' sum).
void round_activations(DType t, const float* x, int64_t n_tokens, int64_t cols, float* out);
// The instruction set the kernels were compiled for ("avx512", "avx2" or "scalar"), with
// "+bf16" / "+vnni" when those fast paths are in.
const char* kernels_isa();

// Dot product of one weight row (n elements of type t) with float32 x.
float dot_row(DType t, const void* w_row, const float* x, int64_t n);

}  // namespace fairkv::kernels
