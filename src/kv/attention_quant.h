// Internal to attention.cpp: scores of query rows against quantized keys (q8_0, q4_0), values read
// in place (attention_quant_values.cpp), and the observation window's probabilities from
// unquantized keys.
//
// llama.cpp scores a quantized K cache by quantizing the query to Q8_0 blocks and taking integer
// dot products block by block (ggml_vec_dot_q8_0_q8_0, _q4_0_q8_0): score = sum over blocks of
// d_k * d_q * sum_i k_i q_i. So do these kernels, with the key's bytes made unsigned (q8_0:
// k + 128, a sign-bit flip; q4_0: its nibbles 0..15 as stored) so that AVX512-VNNI's vpdpbusd
// (u8 x s8) takes them directly, and the offset taken back as offset x sum(q) per block, which
// is the query's and computed once. Keys in sealed panels (cache.h, kQ8PanelBlockBytes,
// kQ4PanelBlockBytes) are stored unsigned and dimension-major, so one vpdpbusd scores 16 keys x 4
// dimensions; the rest (a store's row-major tail) take the row kernel, and any key of a panel that
// a range only partly covers is read through HeadStore::k_raw_row. The kernel is chosen at run time
// by CPUID: AVX512-VNNI where the CPU has it, else AVX2 (ggml's sign trick: |k| x sign(q, k) with
// vpmaddubsw) over rows, else a portable loop, all with the same integer sums.
#pragma once

#include <cstdint>
#include <vector>

#include "kv/cache.h"

// The kernels' AVX-512 VNNI code, compiled for that target whatever the build's flags and run
// only where CPUID has it (attention_quant.cpp, attention_quant_values.cpp).
#if defined(__x86_64__) && defined(__GNUC__)
#define FAIRKV_QUANT_VNNI 1
#define FAIRKV_TARGET_VNNI \
  __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx512vnni,f16c,fma")))
#endif

namespace fairkv::kv::detail {

struct Prefetch;  // attention_kernels.h

// Query rows as Q8_0 blocks (ggml's AVX quantize_row_q8_0) and the per-block sums the offsets
// need, for head_dim a multiple of 32.
struct QuantQueries {
  int64_t blocks = 0;        // per row
  std::vector<int8_t> q;     // rows x blocks x 32
  std::vector<float> d;      // rows x blocks
  std::vector<int32_t> sum;  // rows x blocks
  void set(const float* const* rows, int n, int64_t head_dim);
};

// s[r * s_stride + j] = scale * score(query row r, key k0 + j) for j < nk, rows r < n, over
// the store's quantized keys (panels and rows alike). While a panel block is scored, the bytes
// `ahead` further on are prefetched into L2 (0: none; past the store's end they are harmless).
void quant_scores(const HeadStore& st, int64_t k0, int64_t nk, const QuantQueries& q, int n,
                  float scale, float* s, int64_t s_stride, int64_t ahead = 0);
// Keys ahead of the scores whose K a decode pass prefetches: without it a core (which alone can
// stream at the machine's bandwidth) waits on its keys as much as it computes (kv_bench decode
// q8_0 group 1, 2 threads: 0.58-0.62 of the streaming read; a block ahead 0.67-0.70).
inline constexpr int64_t kQuantPrefetchKeys = 64;
// The same with the AVX2 kernel (for tests); false, doing nothing, where the CPU lacks AVX2.
bool quant_scores_avx2(const HeadStore& st, int64_t k0, int64_t nk, const QuantQueries& q, int n,
                       float scale, float* s, int64_t s_stride);
// The same with the portable loop, whatever the CPU (for tests).
void quant_scores_portable(const HeadStore& st, int64_t k0, int64_t nk, const QuantQueries& q,
                           int n, float scale, float* s, int64_t s_stride);
// Whether this CPU has AVX512-VNNI: quant_scores takes that path (head_dim up to 512, up to 16
// rows) and pv_quant runs.
bool quant_scores_vnni();

// o[r][0, head_dim) = o[r] * corr[r] + sum_j prob[r * prob_stride + j] * V[r0 + j] for the n
// rows and nb keys, reading the quantized values in place with integer products, in calls of at
// most kBlock keys: in each, row r's probabilities times the values' scales of a 32-dimension
// block b become 16-bit integers in units of (the row's largest probability in the call) x (the
// block's largest |scale|) / kWeightSteps, rounded to nearest, and vpdpwssd sums them against
// the quants two keys at a time, exactly in int32, one float32 multiply-add per block at the end.
// A weight is then within 2^-16 of that bound, so a call's m keys move an output by at most m x
// 2^-16 of its largest probability times max |v| (at most 2^-10 of max |v| over a whole softmax,
// the calls' largest probabilities summing to at most the softmax's total), under q8_0's own
// rounding of a value (2^-8 of its block's largest) and, measured, ~2^-13 in practice. It halves
// the multiply-add instructions of float32 widening (which llama.cpp does for q8_0 values, and
// which at group 8 cost more than the values' read). A row's result depends only on its own
// probabilities: not on the call's other rows, their count or the unrolling. Returns false, doing
// nothing, where the CPU lacks AVX512-VNNI (the caller then dequantizes a block of rows and uses
// its float32 kernel). The lines of `ahead` (attention_kernels.h) are prefetched spread over the
// work (steps set here).
inline constexpr int kWeightSteps = 32767;
bool pv_quant(const HeadStore& st, float* const* o, int n, int64_t r0, int64_t nb,
              const float* prob, int64_t prob_stride, const float* corr, Prefetch& ahead);

// Values [r0, r0 + n) as float32 rows of stride dp (zero padded past head_dim).
void dequantize_values(const HeadStore& st, int64_t r0, int64_t n, int64_t dp, float* out);

// Softmax probabilities of one query row q over the keys [begin, lim), written to out[begin,
// lim) (zero elsewhere in [0, size)), scored in float32 against unquantized keys: rows at or
// after `fresh_from` from `fresh` (the rows as computed, before the store converted them;
// row-major, head_dim each), older rows dequantized from the store.
void window_probs_f32(const HeadStore& st, const float* q, int64_t begin, int64_t lim, float scale,
                      const float* fresh, int64_t fresh_from, float* out);

}  // namespace fairkv::kv::detail
