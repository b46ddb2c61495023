// Wires a kv compression policy into generation: the prefill's observation window is scored
// head by head as each layer runs, and the prompt's cache is compressed right after the prefill.
#pragma once

#include <memory>

#include "kv/compress.h"
#include "model/generate.h"
#include "model/model.h"

namespace fairkv::model {

class PrefillCompression {
 public:
  // config must be resolved (CompressionConfig::resolve()). weights: the output projections
  // that DefensiveKV's CriticalKV stage reads (kv::projected_value_norms); without them that
  // stage is skipped (attention-only selection).
  PrefillCompression(const kv::CompressionConfig& config, const ModelConfig& model,
                     const Weights* weights = nullptr);
  // Sets opt.prefill_observer and opt.after_prefill; this object must outlive the generation.
  // Each prefill starts a fresh collection, so one object serves many prompts in turn.
  void attach(GenerateOptions& opt);
  const kv::CompressionConfig& config() const { return config_; }

 private:
  kv::CompressionConfig config_;
  const ModelConfig& model_;
  const Weights* weights_ = nullptr;
  std::unique_ptr<kv::ScoreCollector> collector_;
  WindowObserver observer_;
};

// The end of one prompt's compression: CriticalKV's projected value norms when the policy wants
// them (from the cache's values and W_o of `weights`, skipped when null), then the selection
// applied to the cache. The collector must have observed every (layer, head) of the prompt.
void compress_prompt(kv::ScoreCollector& collector, const ModelConfig& model,
                     const Weights* weights, kv::SequenceCache& cache);

// Convenience for commands: a resolved config for (policy, budget) over base options.
std::unique_ptr<PrefillCompression> make_prefill_compression(const kv::CompressionConfig& config,
                                                             const Model& m);

}  // namespace fairkv::model
