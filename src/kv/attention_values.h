// Internal to attention.cpp: the value side of a block of keys, o = o * corr + P V.
#pragma once

#include <cstdint>
#include <vector>

#include "kv/attention_kernels.h"
#include "kv/cache.h"

namespace fairkv::kv::detail {

// o[r][0, dp) = o[r] * corr[r] + sum_{j < nb} prob[r * prob_stride + j] * V[r0 + j] for the n
// (<= kMaxRows) rows, whose accumulators are padded to dp floats (a multiple of the vector
// width, head_dim or more): values read in place where their rows are whole vectors (f16
// converted on the fly), else through a float32 copy in vbuf. The prefetches of `ahead` are
// spread over the work. nb <= kBlock and prob_stride == kBlock, except for quantized values
// where quant_block_values() (any nb, any stride).
void block_values(const HeadStore& st, float* const* o, int n, int64_t r0, int64_t nb, int64_t dp,
                  const float* prob, int64_t prob_stride, const float* corr,
                  std::vector<float>& vbuf, Prefetch& ahead);
// Whether block_values reads this store's values as integer products (pv_quant), in calls of
// kBlock keys whatever nb: quantized values on a CPU with AVX512-VNNI.
bool quant_block_values(const HeadStore& st);

}  // namespace fairkv::kv::detail
