// Attention's arithmetic on Intel AMX (tdpbf16ps): the scores and the value sums of up to kRows
// query rows against blocks of f16 (or bf16) keys and values, as exact as the float32 kernel.
//
// Decode over an f16 cache with a GQA group of 4-8 is bound by multiply-adds on AVX-512 (2 x
// group x head_dim per key, kv_bench hot/f16/g8: 36 ns per key from L2, slower than the memory
// delivers it). AMX multiplies 16 x 32 bf16 by 32 x 16 bf16 into 16 x 16 float32 per instruction,
// so the products leave the vector ports; what stays there is the conversion of every element
// into tile lanes, the same for every group size. On this project's machine that conversion, the
// tile loads that wait for it and the tile stores cost more than the FMAs they replace (55-60 ns
// per key at group 8, docs/benchmarks.md), so attend uses this only when asked (attention.h).
//
// Exactness: an f16 element (11 significant bits) is exactly hi + lo, two bf16 values (hi its top
// 8 bits, lo the rest), and a float32 query or probability is within 2^-24 of three bf16 pieces,
// each rounded from what the previous left. A tile lane holds hi in its upper half and lo in its
// lower half; the A operand holds each piece in both halves, so one pair product is piece x
// (hi + lo), exact in float32, summed in float32 as FMAs would. bf16 elements are one piece (the
// lower half zero).
//
// Keys come as the store keeps them (cache.h: panels of kKeyPanel keys, dimension-major), values
// row-major, as raw 16-bit elements (f16, or bf16 for a bf16 store). Only where available() says
// so; everything else falls back to attention.cpp's kernels.
#pragma once

#include <cstddef>
#include <cstdint>

namespace fairkv::kv::amx {

inline constexpr int kRows = 8;        // query rows per pass (3 pieces each: 24 tile rows)
inline constexpr int64_t kBlock = 64;  // keys per values() call at most

enum class Elem { F16, BF16 };

// Whether the kernels can run here: the build knows AMX (x86-64 Linux, GCC or Clang), the CPU
// has AMX-TILE, AMX-BF16, AVX-512 (F, BW, VL, DQ), FMA and F16C, the OS saves AVX-512 state, and
// Linux granted this process the tile data (asked once per process; thread-safe).
bool available();

// The rows of one pass and their scratch.
struct Rows {
  int n = 0;                 // query rows, 1..kRows
  int64_t d = 0;             // head_dim, a multiple of 32
  float* scratch = nullptr;  // scratch_floats(d) floats, 64-byte aligned, owned by the caller
};
size_t scratch_floats(int64_t d);

// Splits scale * q[r] (r < rows.n, d floats each) into its bf16 pieces and configures this
// thread's tiles for rows.n rows; end() releases the tiles. scores() and values() run between.
void begin(const Rows& rows, const float* const* q, float scale);
void end();

// Prefetches of the next block, spread over a call's work (into L2).
struct Ahead {
  const void* at = nullptr;
  int64_t bytes = 0;
};

// s[r * s_stride + t] = scale * q_r . k_t for the n_panels (<= 4) * 16 keys of the whole panels
// at K (panel p at K + p * d * 16 elements, element i of its key t at i * 16 + t).
void scores(const Rows& rows, Elem e, const uint16_t* K, int n_panels, float* s, int64_t s_stride,
            Ahead ahead = {});

// o[r][i] = o[r][i] * corr[r] + sum_{j < nb} prob[r * p_stride + j] * V[j * d + i] for nb <=
// kBlock value rows at V (probabilities at j >= nb are not read).
void values(const Rows& rows, Elem e, const uint16_t* V, int64_t nb, const float* prob,
            int64_t p_stride, const float* corr, float* const* o, Ahead ahead = {});

}  // namespace fairkv::kv::amx
