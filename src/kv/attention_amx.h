// Attention's arithmetic on Intel AMX (tdpbf16ps): the scores and the value sums of up to kRows
// query rows against blocks of keys and values, as exact as the float32 kernel, for two kinds of
// store (kv/cache.h):
//
// - bf16 (begin_pairs, scores_pairs, values_pairs): the store's panels are already tile rows
//   (keys in pairs of dimensions, values in pairs of keys), so the keys and values go from the
//   store straight into B tiles, with no conversion; only the queries (once per call) and the
//   probabilities (once per block) are made into tiles. attend uses this wherever AMX is there
//   (attention.h).
// - f16 (begin, scores, values): each f16 element is converted into one tile lane holding two
//   bf16 pieces. On this project's machine that conversion, the tile loads that wait for it and
//   the tile stores cost more than the FMAs they replace (55-60 ns per key at group 8,
//   docs/benchmarks.md), so attend uses this only when asked.
//
// Exactness: a float32 query or probability is within 2^-24 of three bf16 pieces, each rounded
// from what the previous left, and a bf16 element times a bf16 piece is exact in float32, summed in
// float32 as FMAs would: so results are exact to float32 rounding. A bf16 store's passes of more
// than five rows take two pieces (pieces()), within 2^-16: three would need a second A tile and
// twice the products, and a key's or value's own rounding to bf16 (up to 2^-8) is 256 times
// coarser. An f16 element (11 significant bits) is exactly hi + lo, two bf16 values (hi its top
// 8 bits, lo the rest): its tile lane holds hi in its upper half and lo in its lower half, and
// the A operand holds each piece in both halves, so one pair product is piece x (hi + lo).
//
// Only where available() says so; everything else falls back to attention.cpp's kernels.
#pragma once

#include <cstddef>
#include <cstdint>

namespace fairkv::kv::amx {

inline constexpr int kRows = 8;              // query rows per pass
inline constexpr int64_t kBlock = 64;        // keys per values() call at most
inline constexpr int64_t kPairsBlock = 256;  // keys per values_pairs() call at most

// bf16 pieces per query element and probability in a bf16 store's pass of n rows: three where
// 3n fit one 16-row tile, else two (at group 8 three took two products per B tile: decode
// 0.73-0.81 of the read against 0.77-0.84, prefill 1.4-1.5x slower). The f16 kernels take three.
constexpr int pieces(int n) {
  return 3 * n <= 16 ? 3 : 2;
}

// Whether the kernels can run here: the build knows AMX (x86-64 Linux, GCC or Clang), the CPU
// has AMX-TILE, AMX-BF16, AVX-512 (F, BW, VL, DQ, BF16), FMA and F16C, the OS saves AVX-512 state,
// and Linux granted this process the tile data (asked once per process; thread-safe).
bool available();

// The rows of one pass and their scratch.
struct Rows {
  int n = 0;                 // query rows, 1..kRows
  int64_t d = 0;             // head_dim, a multiple of 32
  float* scratch = nullptr;  // scratch_floats(d) floats, 64-byte aligned, owned by the caller
};
size_t scratch_floats(int64_t d);

// f16 stores. Splits scale * q[r] (r < rows.n, d floats each) into its bf16 pieces and
// configures this thread's tiles for rows.n rows; end() releases the tiles. scores() and
// values() run between.
void begin(const Rows& rows, const float* const* q, float scale);
void end();

// Prefetches of the next block, spread over a call's work (into L2).
struct Ahead {
  const void* at = nullptr;
  int64_t bytes = 0;
};

// s[r * s_stride + t] = scale * q_r . k_t for the n_panels (<= 4) * 16 keys of the whole f16
// panels at K (panel p at K + p * d * 16 elements, element i of its key t at i * 16 + t).
void scores(const Rows& rows, const uint16_t* K, int n_panels, float* s, int64_t s_stride,
            Ahead ahead = {});

// o[r][i] = o[r][i] * corr[r] + sum_{j < nb} prob[r * p_stride + j] * V[j * d + i] for nb <=
// kBlock f16 value rows at V (probabilities at j >= nb are not read).
void values(const Rows& rows, const uint16_t* V, int64_t nb, const float* prob, int64_t p_stride,
            const float* corr, float* const* o, Ahead ahead = {});

// bf16 stores: begin_pairs() takes the place of begin() (end() as above).
void begin_pairs(const Rows& rows, const float* const* q, float scale);

// scores() for the n_panels (<= 4) whole bf16 key panels at K (panel p at K + p * d * 16
// elements, element i of its key t at kv::bf16_key_index(t, i, d)).
void scores_pairs(const Rows& rows, const uint16_t* K, int n_panels, float* s, int64_t s_stride,
                  Ahead ahead = {});

// values() for nb <= kPairsBlock bf16 values at V in value panels (kv::bf16_value_index: panel p,
// values [32 p, 32 p + 32), at V + p * 32 * d elements). The panels up to nb rounded up to 32
// keys are read and must be finite (their probabilities are zero past nb).
void values_pairs(const Rows& rows, const uint16_t* V, int64_t nb, const float* prob,
                  int64_t p_stride, const float* corr, float* const* o, Ahead ahead = {});

}  // namespace fairkv::kv::amx
