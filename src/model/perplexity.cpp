#include "model/perplexity.h"

#include <algorithm>
#include <cmath>
#include <span>
#include <stdexcept>
#include <string>

#include "model/forward.h"

namespace fairkv::model {

double PerplexityResult::ppl() const {
  return count > 0 ? std::exp(nll / double(count)) : 0.0;
}

double PerplexityResult::error() const {
  if (count < 2) return 0.0;
  // llama-perplexity: the variance of -log p over the scored tokens, its standard error, scaled
  // by the perplexity (the derivative of exp at the mean).
  const double mean = nll / double(count);
  const double var = nll2 / double(count) - mean * mean;
  return var > 0 ? std::sqrt(var / double(count - 1)) * ppl() : 0.0;
}

double token_nll(const float* row, int32_t n_vocab, int32_t token) {
  float max_logit = row[0];
  for (int32_t i = 1; i < n_vocab; ++i) max_logit = std::max(max_logit, row[i]);
  double sum_exp = 0.0;
  for (int32_t i = 0; i < n_vocab; ++i) sum_exp += std::exp(row[i] - max_logit);
  return -(double(row[token] - max_logit) - std::log(sum_exp));
}

PerplexityResult perplexity(const Model& m, kernels::ThreadPool& pool,
                            const std::vector<int32_t>& tokens, const PerplexityOptions& opt,
                            const std::function<void(int, double)>& on_chunk) {
  const int n_ctx = opt.n_ctx;
  if (n_ctx < 4) throw std::invalid_argument("the context must be at least 4 tokens");
  if (int64_t(tokens.size()) < 2 * int64_t(n_ctx))
    throw std::invalid_argument("at least " + std::to_string(2 * n_ctx) +
                                " tokens are needed for a context of " + std::to_string(n_ctx) +
                                "; the text has " + std::to_string(tokens.size()));
  if (opt.n_batch < 1 || (opt.n_batch >= n_ctx && opt.n_batch % n_ctx != 0))
    throw std::invalid_argument("the batch size must be below the context or a multiple of it");
  const int n_chunk_max = int(tokens.size() / size_t(n_ctx));
  const int n_chunk = opt.n_chunks < 0 ? n_chunk_max : std::min(opt.n_chunks, n_chunk_max);
  const int n_seq = std::max(1, opt.n_batch / n_ctx);  // chunks side by side in one call
  const int piece = std::min(opt.n_batch, n_ctx);      // tokens of each chunk per call
  const int first = n_ctx / 2;                         // the first position scored
  const int32_t V = m.config.n_vocab;
  const int32_t bos = m.tokenizer.add_bos() ? m.tokenizer.bos() : -1;

  const ModelConfig& c = m.config;
  Forward fwd(c, m.weights, pool, opt.activations);
  PerplexityResult res;
  res.n_chunks = n_chunk;
  for (int i = 0; i < n_chunk; i += n_seq) {
    const int n_seq_batch = std::min(n_seq, n_chunk - i);
    const size_t ns = size_t(n_seq_batch);
    std::vector<kv::SequenceCache> caches;
    std::vector<std::vector<int32_t>> chunk(ns);
    for (int s = 0; s < n_seq_batch; ++s) {
      caches.emplace_back(c.n_layers, c.n_kv_heads, c.head_dim, opt.kv_type);
      const auto begin = tokens.begin() + std::ptrdiff_t(i + s) * n_ctx;
      chunk[size_t(s)].assign(begin, begin + n_ctx);
      // As llama-perplexity: every chunk starts with BOS when the vocabulary adds one (the
      // token it replaces is never scored).
      if (bos >= 0) chunk[size_t(s)][0] = bos;
    }
    // Pieces of at most `piece` tokens that never straddle `first`: those before it need no
    // logits (the output matrix is a fifth of this model's work per token), those from it on
    // need every row. Each row's arithmetic does not depend on the piece it is in.
    std::vector<BatchItem> items(ns);
    // Sums per chunk of the group: llama-perplexity adds each chunk's in turn and prints the
    // estimate after each.
    std::vector<double> nll(ns), nll2(ns);
    for (int p = 0; p < n_ctx;) {
      int q = std::min(p + piece, n_ctx);
      if (p < first && q > first) q = first;
      const bool scored = p >= first;
      for (int s = 0; s < n_seq_batch; ++s)
        items[size_t(s)] = BatchItem{
            &caches[size_t(s)],
            std::span<const int32_t>(chunk[size_t(s)]).subspan(size_t(p), size_t(q - p)), scored};
      const std::vector<float>& rows = fwd.run(items);
      for (int s = 0; scored && s < n_seq_batch; ++s) {
        const size_t base = size_t(i + s) * size_t(n_ctx);
        // Row k predicts position p + k + 1; the chunk's last row would predict past its end.
        for (int k = 0; k < q - p && p + k + 1 < n_ctx; ++k) {
          const float* row = rows.data() + (size_t(s) * size_t(q - p) + size_t(k)) * size_t(V);
          const double v = token_nll(row, V, tokens[base + size_t(p + k + 1)]);
          nll[size_t(s)] += v;
          nll2[size_t(s)] += v * v;
        }
      }
      p = q;
    }
    for (int s = 0; s < n_seq_batch; ++s) {
      res.nll += nll[size_t(s)];
      res.nll2 += nll2[size_t(s)];
      res.count += n_ctx - first - 1;
      res.running.push_back(res.ppl());
      if (on_chunk) on_chunk(i + s, res.ppl());
    }
  }
  return res;
}

}  // namespace fairkv::model
