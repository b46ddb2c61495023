// Perplexity as llama.cpp's llama-perplexity computes it (tools/perplexity/perplexity.cpp):
// the tokens are cut into chunks of n_ctx, each chunk runs from an empty cache (its first token
// replaced by BOS when the vocabulary adds one), and only the second half of each chunk is
// scored, so that every scored token has at least n_ctx / 2 tokens of context. The figures are
// comparable with llama-perplexity's for the same tokens, context and chunks.
#pragma once

#include <cstdint>
#include <functional>
#include <vector>

#include "kernels/matmul.h"
#include "kernels/threadpool.h"
#include "kv/cache.h"
#include "model/model.h"

namespace fairkv::model {

struct PerplexityOptions {
  int n_ctx = 512;     // tokens per chunk
  int n_chunks = -1;   // at most this many chunks (-1: all whole chunks of the text)
  int n_batch = 2048;  // tokens per forward call; n_batch / n_ctx chunks run side by side
  kv::KvTypes kv_type = kv::KvType::F32;
  kernels::Activations activations = kernels::Activations::LikeGgml;
};

struct PerplexityResult {
  int n_chunks = 0;
  int64_t count = 0;            // scored tokens: (n_ctx - n_ctx / 2 - 1) per chunk
  double nll = 0, nll2 = 0;     // sums of -log p and of its square over the scored tokens
  std::vector<double> running;  // the estimate after each chunk, as llama-perplexity prints it
  double ppl() const;           // exp(mean nll)
  double error() const;         // llama-perplexity's "+/-": ppl x the standard error of nll
};

// -log p(token | row) for one logits row, as llama-perplexity's log_softmax: float maximum,
// expf terms summed in double.
double token_nll(const float* row, int32_t n_vocab, int32_t token);

// Chunks as llama-perplexity: throws std::invalid_argument when the text has fewer than
// 2 x n_ctx tokens (its own requirement) or the options do not fit (n_batch must be below
// n_ctx or a multiple of it). on_chunk(i, running_ppl) is called after chunk i (from 0).
PerplexityResult perplexity(const Model& m, kernels::ThreadPool& pool,
                            const std::vector<int32_t>& tokens, const PerplexityOptions& opt,
                            const std::function<void(int, double)>& on_chunk = {});

}  // namespace fairkv::model
