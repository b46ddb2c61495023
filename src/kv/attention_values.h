// Internal to attention.cpp: the value side of a block of keys, o = o * corr + P V.
#pragma once

#include <cstdint>
#include <vector>

#include "kv/attention_kernels.h"
#include "kv/cache.h"

namespace fairkv::kv::detail {

// o[r][0, dp) = o[r] * corr[r] + sum_{j < nb} prob[r * kBlock + j] * V[r0 + j] for the n
// (<= kMaxRows) rows, whose accumulators are padded to dp floats (a multiple of the vector
// width, head_dim or more): values read in place where their rows are whole vectors (f16
// converted on the fly), else through a float32 copy in vbuf. The prefetches of `ahead` are
// spread over the work.
void block_values(const HeadStore& st, float* const* o, int n, int64_t r0, int64_t nb, int64_t dp,
                  const float* prob, const float* corr, std::vector<float>& vbuf, Prefetch& ahead);

}  // namespace fairkv::kv::detail
