#include "model/prefill_compression.h"

namespace fairkv::model {

PrefillCompression::PrefillCompression(const kv::CompressionConfig& config,
                                       const ModelConfig& model)
    : config_(config), model_(model) {
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
  opt.after_prefill = [this](kv::SequenceCache& cache) {
    last_ = collector_->select(cache.n_past);
    kv::apply_selection(last_, cache);
    collector_ = std::make_unique<kv::ScoreCollector>(config_, model_.n_layers, model_.n_kv_heads);
  };
}

std::unique_ptr<PrefillCompression> make_prefill_compression(const kv::CompressionConfig& config,
                                                             const Model& m) {
  kv::CompressionConfig c = config;
  c.resolve();
  return std::make_unique<PrefillCompression>(c, m.config);
}

}  // namespace fairkv::model
