// The log-sum-exp merge of partial attention over disjoint token slices of the same rows
// (split-K, flash-decoding): out = sum_i exp(lse_i - L) * out_i with L = log(sum_i exp(lse_i)).
// A slice with no tokens has lse = -inf and contributes nothing.
//
// Two forms of the one merge, for where the parts are:
//  - merge_partials: every part's output is at hand (one device's token slices, attend_batch);
//  - merge_weight: the parts sit on different devices, each knowing every part's lse (gathered)
//    and only its own output; each scales its output by its weight, and the sum of the scaled
//    outputs (an all-reduce) is the merged attention.
#pragma once

#include <cstddef>
#include <cstdint>

namespace fairkv::kv {

// Arrays are n_rows x head_dim (outs) and n_rows (lses); out gets n_rows x head_dim and lse
// (optional) the merged n_rows log-sum-exps. Accumulates in double.
void merge_partials(int n_parts, const float* const* outs, const float* const* lses, int64_t n_rows,
                    int64_t head_dim, float* out, float* lse);

// exp(mine - L) for the part whose lse is `mine`, L the log-sum-exp of the n_parts lses
// lses[0], lses[stride], ...: the factor by which that part scales its output.
float merge_weight(float mine, const float* lses, int n_parts, size_t stride);

}  // namespace fairkv::kv
