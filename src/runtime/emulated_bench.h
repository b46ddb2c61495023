// `fairkv bench`'s engine: one decode workload under several placements, side by side.
//
// Cache lengths come from a profile: every rank's stores are filled with random keys and values
// for the rows it would hold after a prefill of those lengths (its share of each unit), so long
// contexts are benchable without running a prefill. Two timings per placement, both reported:
//  - wall: the R ranks run truly in parallel as threads (the fastest step); honest only while
//    R <= cores;
//  - emulated: each rank's decode step runs alone on the whole machine and the time of each
//    layer's segments between collectives is measured (the fastest over steps and rounds); the step
//    is the sum over layers of the slowest rank, plus the measured cost of the collectives: what R
//    separate devices would see. lower_bound_ms is the same sum with every layer perfectly
//    balanced: the placement's own mean rank time in place of the slowest rank (its own
//    collectives and extra work kept). ideal_ms is stricter: every layer at tp's mean rank time
//    (each unit read once, no replicas, no extra collectives), the least any placement could
//    reach on these devices.
// Every placement is planned with one cost model, run_cost_model's for the model's types and the
// batch with the machine's calibration, measured first (BenchSpec::calibrate); a placement not
// predicted faster than tp beyond the model's error gives way to tp (Placement::note).
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "kv/cache.h"
#include "model/config.h"
#include "model/weights.h"
#include "placement/placement.h"
#include "placement/profile.h"
#include "runtime/model_placement.h"

namespace fairkv::runtime {

// Random F16 weights of a profile's shape held in memory (small vocabulary): the model the bench
// runs when given only a profile. Values are uniform with the 0.02 standard deviation of an
// initialised transformer, so activations stay finite.
struct RandomModel {
  model::ModelConfig config;
  model::Weights weights;
  std::vector<std::vector<uint16_t>> buffers;
};
RandomModel random_model(const placement::Profile& p, int64_t ffn, int vocab = 256,
                         uint64_t seed = 1);

struct BenchSpec {
  int devices = 4;
  int batch = 8;
  int steps = 3;    // timed decode steps per placement (and round), after a warm-up
  int rounds = 2;   // emulated: every placement measured this many times, in turn
  int threads = 1;  // threads of the whole machine (emulated: all for one rank; wall: split)
  bool wall = true;
  std::vector<std::string> planners = {"tp", "balanced", "fair-copy", "split"};
  kv::KvTypes kv_type = kv::KvType::F16;
  // Calibrate the cost model on this machine (else FAIRKV.md's model: loads are bytes, parts and
  // collectives free).
  bool calibrate = true;
  // Extra replicas per layer for fair-copy and split (-1: the planner's default budget).
  int replicas = -1;
};

struct BenchRow {
  std::string planner;
  // Why the planner could not place the heads on these devices (tp with more devices than KV
  // heads that do not divide them, as vLLM refuses too); such a row has no timings.
  std::string refused;
  int devices = 0, batch = 0;
  double step_ms_emulated = 0, step_ms_wall = 0, lower_bound_ms = 0, ideal_ms = 0;
  // The calibrated cost model's step time (0 without calibration): its attention and split
  // collectives predicted, the rest of the step as measured, so a wrong prediction shows.
  double predicted_ms = 0;
  double collective_ms = 0;      // per step, inside the emulated step time
  double imbalance = 0;          // measured: max / mean rank attention time per layer, averaged
  double planned_imbalance = 0;  // the cost model's max / lower bound per layer, averaged
  double tok_s_emulated = 0, tok_s_wall = 0;
  double speedup_vs_tp = 0, speedup_wall_vs_tp = 0;
  size_t max_kv_bytes = 0, max_weight_bytes = 0;   // the fullest rank's
  int replicas = 0;                                // over all layers
  std::vector<std::vector<double>> layer_rank_ms;  // [layer][rank] attention segment, emulated
  // The machine's calibration the placements were planned with (runtime/calibration.h): time per
  // KV byte over time per weight byte, the cost of a part and of a split layer, the model's error.
  Calibration calibration;
  placement::Placement placement;
};

// Bench every planner of spec.planners on the model with the profile's lengths. progress(done,
// total, what) is called as work advances. Throws std::invalid_argument when the profile's shape
// is not the model's. A planner that cannot place the heads gives a row with `refused` set; the
// others are timed, and speed-ups over tp stay 0 when tp is refused.
std::vector<BenchRow> bench_placements(
    const model::ModelConfig& c, const model::Weights& w, const placement::Profile& profile,
    const BenchSpec& spec, const std::function<void(int, int, const std::string&)>& progress = {});

}  // namespace fairkv::runtime
