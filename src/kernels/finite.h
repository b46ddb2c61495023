// Weights that are not numbers. A NaN or infinite weight (a corrupt or badly converted file)
// makes every logit NaN downstream, which greedy decoding turns into token 0 without a word:
// models are checked when they load.
#pragma once

#include <cstdint>

#include "kernels/types.h"

namespace fairkv::kernels {

// The index of the first element of n (a whole number of blocks for quantized types) that is
// NaN or infinite, or -1. Quantized types are checked through their block scales (and minima):
// their integer codes are finite by construction.
int64_t first_non_finite(DType t, const void* data, int64_t n);

}  // namespace fairkv::kernels
