// Attention of a GQA group of query heads over one ragged head store.
//
// Every query head of the group reads the same keys and values, so the group is processed
// together and the store is streamed once per call: decode attention is bound by that read.
// Partial results over token slices carry their log-sum-exp so that slices computed on different
// devices merge (split-K / flash-decoding) to rounding; or, in the canonical blocked order
// (attention_merge.h), the partials of their blocks, which fold into one device's bits.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>

#include "kernels/threadpool.h"
#include "kv/attention_merge.h"
#include "kv/cache.h"

namespace fairkv::kv {

struct AttentionArgs {
  const HeadStore* store = nullptr;
  // Queries: n_tokens x group x head_dim floats, token-major (the group's heads side by side).
  const float* q = nullptr;
  int64_t n_tokens = 1;
  int group = 1;
  float scale = 1.0f;  // usually 1/sqrt(head_dim)
  // Causality: token t sees store rows [begin, min(end, visible + t + 1)). For decode after the
  // new token was appended, visible = size() - 1. For a prefill of n tokens appended to a store
  // that held m rows, visible = m.
  int64_t visible = 0;
  int64_t begin = 0;
  int64_t end = INT64_MAX;  // clamped to the store's size
  // Outputs: out is n_tokens x group x head_dim; lse (optional) is n_tokens x group.
  float* out = nullptr;
  float* lse = nullptr;
  // Optional: the softmax probabilities of the last `probs_tokens` tokens, written as
  // probs_tokens x group x (store size) rows (zero where masked): the observation window's
  // attention that compression methods score by.
  float* probs = nullptr;
  int64_t probs_tokens = 0;
  // llama.cpp's arithmetic instead of the fast kernel (attention_ggml.cpp): scores, softmax and
  // sums in ggml's order, for an f32 store, without lse or probs (Activations::GgmlOrder).
  bool ggml_order = false;
  // Optional: the float32 keys of the store's last n_tokens rows as they were appended
  // (n_tokens x head_dim). For a quantized K cache, `probs` is then scored against these rather
  // than the quantized rows (eviction scores computed before quantization).
  const float* fresh_keys = nullptr;
  // Optional, besides out and lse (not with ggml_order): the partial of every block of the
  // canonical order (attention_merge.h) that [begin, end) touches, the ones attend folds into
  // out: n_tokens x group x attend_blocks(a) partials of 2 + head_dim floats (m, l, o), empty
  // (l = 0) for a block the row does not see. A token slice that starts at a multiple of
  // kCanonicalRows writes the partials the whole unit's pass folds for those rows.
  float* blocks = nullptr;
};

// The number of canonical blocks attend writes per row into AttentionArgs::blocks: those that
// [begin, min(end, size, visible + n_tokens)) touches.
int64_t attend_blocks(const AttentionArgs& a);

// Fast kernel (SIMD over head_dim, one pass with online softmax over blocks of 64 keys, or 256 for
// bf16 on AMX, folded every kCanonicalRows (256) rows in the canonical order).
void attend(const AttentionArgs& a);
// The ggml_order form of attend (attention_ggml.cpp).
void attend_ggml(const AttentionArgs& a);
// Whether attend runs this store on AMX (kv/attention_amx.h: keys and values both f16 or both
// bf16, head_dim a multiple of 32, a CPU with AMX that Linux lets the process use, and AMX
// allowed for that type) rather than on the AVX-512 / AVX2 / portable kernel. For bf16 stores
// AMX is on by default (their panels are tile rows, read with no conversion: faster than
// AVX-512 from a GQA group of 2-4 up, docs/benchmarks.md) for calls of at least min_rows query
// rows (tokens x group; fewer go to the FMA kernel); attend_allow_amx_bf16(false), or
// FAIRKV_AMX_BF16=0 in the environment at start, turns it off for the whole process. For f16 it
// is off by default (each element must be converted: slower than AVX-512);
// attend_allow_amx(true), or FAIRKV_AMX=1, turns it on.
bool attend_uses_amx(const HeadStore& store);
void attend_allow_amx(bool allow);
void attend_allow_amx_bf16(bool allow, int min_rows = 2);
// Reference: materialised scores, plain softmax, double accumulation.
void attend_ref(const AttentionArgs& a);

// Bytes the calling thread's attend scratch holds (capacity, kept between calls): a few query
// rows and one block of scores, whatever the number of tokens, so a long prefill needs no n x n
// matrix (only `probs` grows with the store, for the window's rows).
size_t attend_scratch_bytes();

// Many independent calls (units x sequences, any mix of lengths) on a pool. Threads take calls
// one at a time from a shared counter, so ragged lengths balance. When there are fewer calls than
// threads, single-token calls over long stores (decode) are cut into token slices that run in
// parallel and are merged with merge_partials: the result equals attend's up to float rounding.
// slice = false never cuts a call: every result is then bitwise attend's, whatever the other
// calls and the thread count (batch invariance, and R ranks reproducing one device).
void attend_batch(std::span<const AttentionArgs> calls, kernels::ThreadPool& pool,
                  bool slice = true);

}  // namespace fairkv::kv
