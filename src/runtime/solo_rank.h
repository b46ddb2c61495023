// One rank of a placement set up alone, for timing: the emulated bench and the calibration run
// every rank's decode step on the whole machine in turn and time the segments between
// collectives. Caches are filled with noise for the rows each rank would hold after a prefill of
// the profile's lengths, so long contexts are timed without running a prefill.
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

#include "comm/comm.h"
#include "kernels/threadpool.h"
#include "kv/cache.h"
#include "model/config.h"
#include "model/weights.h"
#include "placement/placement.h"
#include "placement/profile.h"
#include "runtime/rank_forward.h"
#include "runtime/shard.h"

namespace fairkv::runtime {

// xorshift: cache contents and random weights only need to be finite, and gigabytes must fill
// quickly.
struct Noise {
  uint64_t state;
  float next(float amplitude) {
    state ^= state << 13, state ^= state >> 7, state ^= state << 17;
    return float(int32_t(state >> 40) - (1 << 23)) * (amplitude / float(1 << 23));
  }
};

// Rank `rank`'s caches as after a prefill of the profile's lengths and redistribution.
std::vector<std::unique_ptr<RankSequence>> fill_caches(const model::ModelConfig& c,
                                                       const placement::Placement& p,
                                                       const placement::Profile& prof, int rank,
                                                       int batch, kv::KvTypes type);

// One decode token per sequence; `tokens` holds the ids the items point into.
std::vector<RankItem> decode_items(std::vector<std::unique_ptr<RankSequence>>& seqs,
                                   std::vector<int32_t>& tokens);

// A rank's shard, its caches filled from the profile, its forward pass over a SoloComm, one
// warm-up step run (pages touched, buffers sized).
struct SoloRank {
  SoloRank(const model::ModelConfig& c, const model::Weights& w, const placement::Placement& p,
           const placement::Profile& prof, int rank, int batch, kv::KvTypes type,
           kernels::ThreadPool& pool);
  void step() { fwd.run(items, batch); }

  comm::SoloComm comm;
  ShardedWeights shard;
  std::vector<std::unique_ptr<RankSequence>> seqs;
  RankForward fwd;
  std::vector<int32_t> tokens;  // before items: decode_items points into it
  std::vector<RankItem> items;
  int batch;
};

// Milliseconds of the collectives of one decode step among R threads: two all-reduces of the
// activations per layer, and per layer with token slices (`gathers` of them) the queries'
// all-reduce (q_floats), the all-gather of the slices' log-sum-exps (lse_bytes per rank) and the
// all-reduce of their weighted outputs (q_floats).
double collectives_ms(int R, int batch, const model::ModelConfig& c, int gathers, size_t q_floats,
                      size_t lse_bytes);

// Bytes of KV cache the sequences hold.
size_t kv_bytes(const std::vector<std::unique_ptr<RankSequence>>& seqs);

}  // namespace fairkv::runtime
