// Text generation on one sequence: prefill the prompt, then decode token by token.
#pragma once

#include <cstdint>
#include <functional>
#include <vector>

#include "kernels/threadpool.h"
#include "kv/cache.h"
#include "model/forward.h"
#include "model/model.h"
#include "model/sampler.h"

namespace fairkv::model {

struct GenerateOptions {
  int n_predict = 64;  // tokens to generate; generation also stops after an end-of-generation token
  int64_t ctx_size = 0;   // 0: prompt + n_predict
  SamplerConfig sampler;  // its penalties count the prompt's tokens and the generated ones
  kv::KvTypes kv_type = kv::KvType::F32;
  kernels::Activations activations = kernels::Activations::Float32;  // see Forward
  bool keep_logits = false;  // collect one logits row per token of prompt ++ continuation
  // Runs after the prompt's prefill, before the first decode step: where the prompt's cache is
  // compressed. The observer sees the prefill's observation window.
  const WindowObserver* prefill_observer = nullptr;
  std::function<void(kv::SequenceCache&)> after_prefill;
  // Block-wise prefill (EpiCache): when set, the ends of the blocks of a prompt of n tokens; the
  // prompt runs block by block, the observer sees every block's window and after_block(cache,
  // n) runs after each block, the last included, before after_prefill.
  std::function<std::vector<int64_t>(int64_t n)> prefill_blocks;
  std::function<void(kv::SequenceCache&, int64_t n_prompt)> after_block;
};

// The prompt's prefill as opt says (one run, or block by block with after_block), then
// after_prefill. Returns the logits of the prompt's rows when all_logits, else of its last.
std::vector<float> prefill(Forward& fwd, kv::SequenceCache& cache, std::span<const int32_t> prompt,
                           const GenerateOptions& opt, bool all_logits);

struct GenerateResult {
  std::vector<int32_t> output;  // generated ids (an end-of-generation token included, if it came)
  std::vector<float> logits;    // keep_logits: rows over prompt ++ output, row p predicts p + 1
  double prefill_ms = 0, decode_ms = 0;
  int64_t prefill_tokens = 0, decode_tokens = 0;  // tokens run through each phase
};

// on_token(id) is called as soon as each token is chosen (streaming).
GenerateResult generate(const Model& m, kernels::ThreadPool& pool,
                        const std::vector<int32_t>& prompt, const GenerateOptions& opt,
                        const std::function<void(int32_t)>& on_token = {});

// Teacher forcing: prefills the prompt (opt.after_prefill runs as in generate), then feeds the
// `forced` tokens one by one. Returns 1 + forced.size() logits rows: the prompt's last row, then
// one row after each forced token. opt.n_predict and opt.sampler are not used.
std::vector<float> teacher_force(const Model& m, kernels::ThreadPool& pool,
                                 const std::vector<int32_t>& prompt,
                                 const std::vector<int32_t>& forced, const GenerateOptions& opt,
                                 size_t* kv_bytes_after_prefill = nullptr);

}  // namespace fairkv::model
