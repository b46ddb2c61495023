// The machine's calibration of the cost model (placement/cost.h): how long a rank's attention
// takes per KV load, per weight load and per part on this machine, what the collectives of a
// split layer add, and how far the model's predictions are from what was measured. Measured in
// situ, on ranks' own decode steps (runtime/solo_rank.h), since isolated kernels stream at other
// rates than a rank's packed products.
#pragma once

#include <span>

#include "kernels/threadpool.h"
#include "kv/cache.h"
#include "model/config.h"
#include "model/weights.h"
#include "placement/profile.h"
#include "runtime/model_placement.h"

namespace fairkv::runtime {

// One rank's attention segment in one layer of one placement: what it serves and how long it
// took.
struct SegmentSample {
  int placement = 0, layer = 0, rank = 0;
  double kv = 0;       // KV load: cached tokens per sequence it reads
  double weights = 0;  // weight load in FAIRKV.md's bytes model (tokens per sequence)
  double parts = 0;    // (unit, share) parts it serves
  double ms = 0;
};

// ms = a kv + b weights + c parts, by least squares without intercept (a rank's fixed costs are
// its parts'). With `with_parts` false, or when the fit makes c negative, c is 0 and a, b are
// refitted. ok: a and b came out positive.
struct SegmentFit {
  double a = 0, b = 0, c = 0;
  bool ok = false;
};
SegmentFit fit_segments(std::span<const SegmentSample> samples, bool with_parts = true);

// Over the samples' placements, the largest relative error of the fit's attention time of a step
// (the sum over layers of the slowest rank) against the measured one.
double step_error(std::span<const SegmentSample> samples, const SegmentFit& fit);

// Times every rank of tp's layout (planned in bytes) and of a split layout, `steps` decode steps
// each (the fastest counts), fits the segments, and times the collectives that a layer with token
// slices adds. `replicas` is split's budget (-1: its default).
Calibration calibrate(const model::ModelConfig& c, const model::Weights& w,
                      const placement::Profile& prof, int devices, int batch, kv::KvTypes kt,
                      int steps, int replicas, kernels::ThreadPool& pool);

}  // namespace fairkv::runtime
