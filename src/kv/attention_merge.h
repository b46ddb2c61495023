// The log-sum-exp merge of partial attention over disjoint token slices of the same rows
// (split-K, flash-decoding): out = sum_i exp(lse_i - L) * out_i with L = log(sum_i exp(lse_i)).
// A slice with no tokens has lse = -inf and contributes nothing.
//
// Two forms of the one merge, for where the parts are:
//  - merge_partials: every part's output is at hand (one device's token slices, attend_batch);
//  - merge_weight: the parts sit on different devices, each knowing every part's lse (gathered)
//    and only its own output; each scales its output by its weight, and the sum of the scaled
//    outputs (an all-reduce) is the merged attention.
//
// And the canonical blocked order, which gives the same bits wherever the rows sit: a row's
// softmax is a fold, in row order, of the partials of the blocks of kCanonicalRows rows (at
// multiples of kCanonicalRows of the store's row index), each attended alone. attend folds its
// blocks so; a unit cut into token slices at multiples of kCanonicalRows has each part write its
// blocks' partials (AttentionArgs::blocks) and folds them, gathered, in the same order with the
// same two functions.
#pragma once

#include <cstddef>
#include <cstdint>

namespace fairkv::kv {

// Rows of a block of the canonical order: four of the attention kernel's online-softmax steps
// (kBlock = 64 keys), and the bf16 AMX kernel's and a quantized store's whole block, so that one
// block's partial is the kernels' own pass over it (a store of up to this many rows is attended
// as one pass, exactly as before the order existed). Every fold costs a rescale of head_dim
// floats and an exp per query row, and every part of a token-sliced unit sends one partial per
// block: 256 rows cost a quarter of 64's in both, at the price of token slices balanced to 256
// rows (docs/serving.md).
inline constexpr int64_t kCanonicalRows = 256;

// A query row's partial over some rows: m the largest score, l the sum of exp(score - m), o the
// sum of exp(score - m) * value (head_dim floats). l = 0: no rows seen (m = -inf, o = 0). A
// partial travels as 2 + head_dim floats: m, l, o.
inline constexpr int64_t kPartialHeader = 2;

// (m, l, o) = (m, l, o) followed by the block's partial (mb, lb, ob): rescaled to the larger
// maximum, added with one rounding per element (fma). A block with lb = 0 changes nothing; into
// an empty (m, l, o) the block is copied. The one fold of the canonical order.
void merge_block(float& m, float& l, float* o, float mb, float lb, const float* ob,
                 int64_t head_dim);

// The attention output of a partial: o / l, and its log-sum-exp m + log(l) (when lse is not
// null); zero and -inf when l = 0.
void finish_partial(float m, float l, const float* o, int64_t head_dim, float* out, float* lse);

// Arrays are n_rows x head_dim (outs) and n_rows (lses); out gets n_rows x head_dim and lse
// (optional) the merged n_rows log-sum-exps. Accumulates in double.
void merge_partials(int n_parts, const float* const* outs, const float* const* lses, int64_t n_rows,
                    int64_t head_dim, float* out, float* lse);

// exp(mine - L) for the part whose lse is `mine`, L the log-sum-exp of the n_parts lses
// lses[0], lses[stride], ...: the factor by which that part scales its output.
float merge_weight(float mine, const float* lses, int n_parts, size_t stride);

}  // namespace fairkv::kv
