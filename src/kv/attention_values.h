// Internal to attention.cpp: the value side of a block of keys, o = o * corr + P V, and the
// prefetcher both sides of the kernel share.
#pragma once

#include <cstdint>
#include <vector>

#include "kv/cache.h"

namespace fairkv::kv::detail {

inline constexpr int kAttendRows = 16;    // query rows per pass: PV accumulators in registers
inline constexpr int64_t kKeyBlock = 64;  // keys per online-softmax step

// Prefetches `lines` cache lines from `at` into L2 spread evenly over `steps` calls of tick()
// (Bresenham): the kernels issue them between their FMAs, a few per loop iteration, because a
// burst of them, like a sweep of loads ahead, stalls the core until the line fill buffers free up
// (the sweep this replaced reached 0.48 of the read). Into L2, not L1: with an f32 cache a block
// of V alone is 32 KiB of L1's 48, and f32 group 8 read at 0.69 of the read with T0, 0.79 with T1.
struct Prefetch {
  const char* at = nullptr;
  int64_t lines = 0, steps = 1;
  int64_t due = 0, line = 0;
  void tick() {
    for (due += lines; due >= steps; due -= steps) __builtin_prefetch(at + 64 * line++, 0, 2);
  }
  void finish() {  // what an overestimated `steps` left
    for (; line < lines; ++line) __builtin_prefetch(at + 64 * line, 0, 2);
  }
};

// o[r][0, dp) = o[r] * corr[r] + sum_{j < nb} prob[r * kKeyBlock + j] * V[r0 + j] for the n
// (<= kAttendRows) rows, whose accumulators are padded to dp floats (a multiple of the vector
// width, head_dim or more): values read in place where their rows are whole vectors (f16
// converted on the fly), else through a float32 copy in vbuf. The prefetches of `ahead` are
// spread over the work.
void block_values(const HeadStore& st, float* const* o, int n, int64_t r0, int64_t nb, int64_t dp,
                  const float* prob, const float* corr, std::vector<float>& vbuf, Prefetch& ahead);

}  // namespace fairkv::kv::detail
