#include "model/generate.h"

#include <chrono>
#include <stdexcept>
#include <string>

#include "kernels/clock.h"

namespace fairkv::model {

using kernels::ms_since;

std::vector<float> prefill(Forward& fwd, kv::SequenceCache& cache, std::span<const int32_t> prompt,
                           const GenerateOptions& opt, bool all_logits) {
  const int64_t n = int64_t(prompt.size());
  const std::vector<int64_t> ends =
      opt.prefill_blocks ? opt.prefill_blocks(n) : std::vector<int64_t>{n};
  std::vector<float> rows;
  int64_t b = 0;
  for (int64_t e : ends) {
    BatchItem item{&cache, prompt.subspan(size_t(b), size_t(e - b)), all_logits};
    const std::vector<float>& out = fwd.run({&item, 1}, opt.prefill_observer);
    if (opt.after_block) opt.after_block(cache, n);
    if (all_logits || e == n) rows.insert(rows.end(), out.begin(), out.end());
    b = e;
  }
  if (opt.after_prefill) opt.after_prefill(cache);
  return rows;
}

GenerateResult generate(const Model& m, kernels::ThreadPool& pool,
                        const std::vector<int32_t>& prompt, const GenerateOptions& opt,
                        const std::function<void(int32_t)>& on_token) {
  const ModelConfig& c = m.config;
  if (prompt.empty()) throw std::invalid_argument("the prompt has no tokens");
  const int64_t ctx = opt.ctx_size > 0 ? opt.ctx_size : int64_t(prompt.size()) + opt.n_predict;
  if (int64_t(prompt.size()) > ctx)
    throw std::invalid_argument("the prompt has " + std::to_string(prompt.size()) +
                                " tokens, more than --ctx-size " + std::to_string(ctx));
  Forward fwd(c, m.weights, pool, opt.activations);
  kv::SequenceCache cache(c.n_layers, c.n_kv_heads, c.head_dim, opt.kv_type);
  GenerateResult res;
  const size_t V = size_t(c.n_vocab);
  Sampler sampler(opt.sampler, c.n_vocab);
  sampler.accept(prompt);  // the penalties count the prompt's tokens too, as llama.cpp's do

  auto t0 = std::chrono::steady_clock::now();
  const std::vector<float> prompt_rows = prefill(fwd, cache, prompt, opt, opt.keep_logits);
  const std::vector<float>* logits = &prompt_rows;
  res.prefill_ms = ms_since(t0);
  res.prefill_tokens = int64_t(prompt.size());
  if (opt.keep_logits) res.logits.assign(logits->begin(), logits->end());
  std::span<const float> last(logits->data() + logits->size() - V, V);

  t0 = std::chrono::steady_clock::now();
  for (int i = 0; i < opt.n_predict; ++i) {
    const int32_t tok = sampler.sample(last);
    sampler.accept(tok);
    res.output.push_back(tok);
    if (on_token) on_token(tok);
    if (m.tokenizer.is_eog(tok)) break;
    // The last token only needs a forward pass when its logits row is wanted.
    const bool last_step = i + 1 == opt.n_predict;
    if (last_step && !opt.keep_logits) break;
    if (cache.n_past >= ctx) break;  // context full
    BatchItem step{&cache, {&res.output.back(), 1}, false};
    logits = &fwd.run({&step, 1});
    ++res.decode_tokens;
    last = std::span<const float>(logits->data(), V);
    if (opt.keep_logits) res.logits.insert(res.logits.end(), last.begin(), last.end());
  }
  res.decode_ms = ms_since(t0);
  return res;
}

std::vector<float> teacher_force(const Model& m, kernels::ThreadPool& pool,
                                 const std::vector<int32_t>& prompt,
                                 const std::vector<int32_t>& forced, const GenerateOptions& opt,
                                 size_t* kv_bytes_after_prefill) {
  const ModelConfig& c = m.config;
  if (prompt.empty()) throw std::invalid_argument("the prompt has no tokens");
  Forward fwd(c, m.weights, pool, opt.activations);
  kv::SequenceCache cache(c.n_layers, c.n_kv_heads, c.head_dim, opt.kv_type);
  const size_t V = size_t(c.n_vocab);
  std::vector<float> rows = prefill(fwd, cache, prompt, opt, false);
  if (kv_bytes_after_prefill) *kv_bytes_after_prefill = cache.bytes();
  const std::vector<float>* logits = nullptr;
  rows.reserve(V * (forced.size() + 1));
  for (size_t i = 0; i < forced.size(); ++i) {
    BatchItem step{&cache, {&forced[i], 1}, false};
    logits = &fwd.run({&step, 1});
    rows.insert(rows.end(), logits->begin(), logits->end());
  }
  return rows;
}

}  // namespace fairkv::model
