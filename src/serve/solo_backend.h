// The serving engine's backend on one device: model::Forward over the whole model, one
// kv::SequenceCache per sequence.
#pragma once

#include <map>
#include <memory>
#include <string>
#include <vector>

#include "kernels/matmul.h"
#include "kernels/threadpool.h"
#include "kv/cache.h"
#include "kv/cache_swap.h"
#include "model/forward.h"
#include "model/model.h"
#include "serve/backend.h"

namespace fairkv::serve {

struct SoloOptions {
  kv::KvTypes kv_type = kv::KvType::F32;
  kernels::Activations activations = kernels::Activations::Float32;
  // Each row's result independent of the other rows in its step (kernels::Batching::Invariant):
  // what makes a request's output the same alone and in any batch.
  bool batch_invariant = true;
  // Caches grow in place on address ranges reserved for their whole length, committed as rows
  // arrive (HeadStore::reserve_virtual, vAttention's way): no copy as decode grows them, and
  // committed bytes are what --kv-memory counts. Off: ordinary stores that grow by a quarter.
  bool reserve_address_space = true;
  size_t swap_host_bytes = size_t(1) << 30;  // room for swapped caches in host memory
  size_t swap_file_bytes = 0;                // and in spill files under swap_dir
  std::string swap_dir;
};

class SoloBackend final : public Backend {
 public:
  SoloBackend(const model::Model& m, kernels::ThreadPool& pool, const SoloOptions& opt);
  int ranks() const override { return 1; }
  int64_t n_vocab() const override { return m_.config.n_vocab; }
  size_t row_bytes() const override;
  void open(SeqId seq, int64_t max_rows) override;
  void close(SeqId seq) override;
  std::span<const float> run(std::span<const StepItem> items) override;
  int64_t rows(SeqId seq) const override;
  std::vector<RankLoad> loads() const override;
  size_t bytes_for(int64_t rows, int64_t max_rows) const override;
  size_t growth_bytes(SeqId seq, int64_t new_rows, bool prompt_done) const override;
  SwapPlace swap_out(SeqId seq) override;
  void swap_in(SeqId seq) override;
  size_t swap_bytes_host() const override { return swap_.bytes_host(); }
  size_t swap_bytes_file() const override { return swap_.bytes_file(); }
  std::string describe() const override;

 private:
  struct Seq {
    std::unique_ptr<kv::SequenceCache> cache;
    std::unique_ptr<kv::ScoreCollector> collector;  // while its last prompt chunk runs
    int64_t max_rows = 0;
  };
  Seq& find(SeqId seq);
  const Seq& find(SeqId seq) const;

  const model::Model& m_;
  SoloOptions opt_;
  model::Forward fwd_;
  std::map<SeqId, Seq> seqs_;
  kv::SwapSpace swap_;
  std::vector<model::BatchItem> batch_;
  std::vector<float> logits_;
  double step_ms_ = 0;
};

}  // namespace fairkv::serve
