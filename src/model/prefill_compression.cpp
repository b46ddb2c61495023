#include "model/prefill_compression.h"

#include <algorithm>

#include "kernels/types.h"

namespace fairkv::model {

PrefillCompression::PrefillCompression(const kv::CompressionConfig& config,
                                       const ModelConfig& model, const Weights* weights)
    : config_(config), model_(model), weights_(weights) {
  observer_.window = config_.window;
  observer_.observe = [this](size_t, int layer, int kv_head, const float* probs, int group,
                             int64_t window, int64_t n) {
    collector_->observe(layer, kv_head, probs, group, window, n);
  };
}

void PrefillCompression::attach(GenerateOptions& opt) {
  collector_ = std::make_unique<kv::ScoreCollector>(config_, model_.n_layers, model_.n_kv_heads);
  // Full and streaming keep by position: the window's attention need not be collected.
  opt.prefill_observer = config_.needs_scores() ? &observer_ : nullptr;
  if (config_.blockwise()) {
    opt.prefill_blocks = [this](int64_t n) {
      peak_bytes_ = 0;
      positions_.assign(size_t(model_.n_layers) * size_t(model_.n_kv_heads), {});
      return prefill_block_ends(n, config_.epicache_block, config_.window);
    };
    opt.after_block = [this](kv::SequenceCache& cache, int64_t n_prompt) {
      peak_bytes_ = std::max(peak_bytes_, cache.bytes());
      const kv::Selection sel = collector_->select(n_prompt);
      // The block's rows sit at the end of every store: their positions end at n_past.
      for (size_t u = 0; u < positions_.size(); ++u) {
        auto& pos = positions_[u];
        const int64_t rows =
            cache.head(int(u) / model_.n_kv_heads, int(u) % model_.n_kv_heads).size();
        for (int64_t p = cache.n_past - (rows - int64_t(pos.size())); p < cache.n_past; ++p)
          pos.push_back(p);
        std::vector<int64_t> kept;
        for (int64_t i : sel[u]) kept.push_back(pos[size_t(i)]);
        pos = std::move(kept);
      }
      kv::apply_selection(sel, cache);
      collector_ =
          std::make_unique<kv::ScoreCollector>(config_, model_.n_layers, model_.n_kv_heads);
    };
    opt.after_prefill = nullptr;  // the last block's compression was the prompt's
    return;
  }
  opt.after_prefill = [this](kv::SequenceCache& cache) {
    compress_prompt(*collector_, model_, weights_, cache);
    collector_ = std::make_unique<kv::ScoreCollector>(config_, model_.n_layers, model_.n_kv_heads);
  };
}

void compress_prompt(kv::ScoreCollector& collector, const ModelConfig& model,
                     const Weights* weights, kv::SequenceCache& cache) {
  if (weights && collector.needs_value_norms()) {
    // CriticalKV's projected value norms, from the prompt's values and W_o.
    const int group = model.n_heads / model.n_kv_heads;
    for (int l = 0; l < model.n_layers; ++l) {
      const kernels::WeightMatrix& wo = weights->layers[size_t(l)].wo;
      auto norms =
          kv::projected_value_norms(cache, l, group, wo.rows, [&wo](int64_t r, float* out) {
            kernels::dequantize_row(wo.type, wo.row(r), out, wo.cols);
          });
      for (int h = 0; h < model.n_kv_heads; ++h)
        collector.set_value_norms(l, h, std::move(norms[size_t(h)]));
    }
  }
  // Task-KV's semantic vectors: the heads' outputs over the prompt's values.
  if (collector.needs_head_outputs()) collector.set_head_outputs(cache);
  kv::apply_selection(collector.select(cache.n_past), cache);
}

std::vector<int64_t> prefill_block_ends(int64_t n, int64_t block, int64_t window) {
  std::vector<int64_t> ends;
  for (int64_t e = std::min(block, n); e <= n; e = std::min(e + block, n)) {
    ends.push_back(e);
    if (e == n) break;
  }
  // A short last block takes tokens from the one before it, up to the window.
  if (ends.size() > 1 && n - ends[ends.size() - 2] < window)
    ends[ends.size() - 2] =
        std::max<int64_t>(n - window, ends.size() > 2 ? ends[ends.size() - 3] : 0);
  if (ends.size() > 1 && ends[ends.size() - 2] == (ends.size() > 2 ? ends[ends.size() - 3] : 0))
    ends.erase(ends.end() - 2);
  return ends;
}

void compress_block(kv::ScoreCollector& collector, int64_t n_prompt, kv::SequenceCache& cache) {
  kv::apply_selection(collector.select(n_prompt), cache);
}

std::unique_ptr<PrefillCompression> make_prefill_compression(const kv::CompressionConfig& config,
                                                             const Model& m) {
  kv::CompressionConfig c = config;
  c.resolve();
  return std::make_unique<PrefillCompression>(c, m.config, &m.weights);
}

}  // namespace fairkv::model
