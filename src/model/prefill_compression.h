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
  // Sets opt.prefill_observer and opt.after_prefill (and, for a block-wise policy,
  // opt.prefill_blocks and opt.after_block); this object must outlive the generation. Each
  // prefill starts a fresh collection, so one object serves many prompts in turn.
  void attach(GenerateOptions& opt);
  const kv::CompressionConfig& config() const { return config_; }
  // Block-wise prefill: the most bytes the prompt's cache held at once (after a block's rows
  // arrived, before its compression), over the last prompt.
  size_t peak_bytes() const { return peak_bytes_; }
  // Block-wise prefill: the prompt position of every row each (layer, head) kept, [l * H + h].
  const std::vector<std::vector<int64_t>>& kept_positions() const { return positions_; }

 private:
  kv::CompressionConfig config_;
  const ModelConfig& model_;
  const Weights* weights_ = nullptr;
  std::unique_ptr<kv::ScoreCollector> collector_;
  WindowObserver observer_;
  size_t peak_bytes_ = 0;
  std::vector<std::vector<int64_t>> positions_;
};

// The ends of a prompt's prefill blocks (or chunks): every `block` tokens, a short last block
// taking tokens from the one before it so that it holds at least `window` (when the prompt has
// that many). EpiCache scores every block by its own last window.
std::vector<int64_t> prefill_block_ends(int64_t n, int64_t block, int64_t window);

// One block of a block-wise prefill ends: the block's window scores (collector, fed by the
// block's run) select the rows to keep, the cache is compressed to them. config: the policy's,
// with its size already fixed for the whole prompt (budget, or ratio of n_prompt).
void compress_block(kv::ScoreCollector& collector, int64_t n_prompt, kv::SequenceCache& cache);

// The end of one prompt's compression: CriticalKV's projected value norms when the policy wants
// them (from the cache's values and W_o of `weights`, skipped when null), then the selection
// applied to the cache. The collector must have observed every (layer, head) of the prompt.
void compress_prompt(kv::ScoreCollector& collector, const ModelConfig& model,
                     const Weights* weights, kv::SequenceCache& cache);

// Convenience for commands: a resolved config for (policy, budget) over base options.
std::unique_ptr<PrefillCompression> make_prefill_compression(const kv::CompressionConfig& config,
                                                             const Model& m);

}  // namespace fairkv::model
