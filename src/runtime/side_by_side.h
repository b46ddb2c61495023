// `fairkv bench`: one decode workload under several placements, side by side.
//
// The per-unit cache lengths come from a profile: each rank's stores are filled with that many
// random keys and values (its share of them), so that long contexts are benchable without a
// prefill. Two timings per placement:
// - wall: the R ranks run truly in parallel (threads); honest only while R <= cores;
// - emulated: each rank's decode step runs alone on the whole machine, layer by layer; the step
//   is the sum over layers of the slowest rank plus the measured all-reduce cost: what R separate
//   devices would see. lower_bound_ms is the same sum with every layer perfectly balanced.
#pragma once

#include <functional>
#include <string>
#include <vector>

#include "model/config.h"
#include "model/weights.h"
#include "placement/placement.h"
#include "placement/profile.h"

namespace fairkv::runtime {

// A random-weight model held in memory, of a profile's shape (layers, KV and query heads, head
// size, embd, ffn), F16 weights and a small vocabulary: what the bench runs without a GGUF.
struct SyntheticModel {
  model::ModelConfig config;
  model::Weights weights;
  std::vector<std::vector<uint16_t>> buffers;
};
SyntheticModel synthetic_model(const placement::Profile& p, int64_t ffn, uint64_t seed = 1);

struct BenchOptions {
  int devices = 4;
  int batch = 8;
  int steps = 4;  // decode steps timed per placement (after one warm-up step)
  int threads = 2;
  bool wall = true;  // also time the ranks truly in parallel
  std::vector<std::string> placements = {"tp", "balanced", "fair-copy", "split"};
};

struct BenchResult {
  std::string planner;
  int devices = 0;
  double step_ms_emulated = 0, step_ms_wall = 0, lower_bound_ms = 0, allreduce_ms = 0;
  double imbalance = 0;  // measured max / mean rank time per layer, averaged over layers
  double tok_s_emulated = 0, tok_s_wall = 0;
  size_t max_kv_bytes = 0;  // the fullest rank's cache
  int replicas = 0;
  double speedup_vs_tp = 0;                        // emulated
  std::vector<std::vector<double>> layer_rank_ms;  // [layer][rank], emulated
};

// progress(done, total, what) is called as the work advances.
std::vector<BenchResult> run_bench(
    const model::ModelConfig& c, const model::Weights& w, const placement::Profile& profile,
    const BenchOptions& o, const std::function<void(int, int, const std::string&)>& progress = {});

}  // namespace fairkv::runtime
