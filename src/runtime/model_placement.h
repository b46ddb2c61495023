// A placement for a loaded model: its profile shape, the cost model a run plans and rebalances
// by, and the placement a command line names (a planner run on a profile, or a plan file).
#pragma once

#include <string>

#include "kernels/types.h"
#include "kv/cache.h"
#include "model/config.h"
#include "placement/cost.h"
#include "placement/placement.h"
#include "placement/profile.h"

namespace fairkv::runtime {

// A profile with the model's shape (layers, heads, sizes) and every unit at `tokens`.
placement::Profile model_profile(const model::ModelConfig& c, double tokens = 1.0);

// Throws std::invalid_argument, prefixed with `where`, unless the profile has the model's shape
// (layers, query and KV heads, head size).
void check_profile_shape(const placement::Profile& prof, const model::ModelConfig& c,
                         const std::string& where);

// What the machine's calibration (runtime/calibration.h) measured for the cost model. The
// default is FAIRKV.md's model: loads are bytes, parts and collectives free, predictions exact.
struct Calibration {
  double kv_time_factor = 1;    // time of a KV byte over that of a weight byte
  double ms_per_load = 0;       // attention time of one load (0: not measured)
  double part_load = 0;         // fixed time of one (unit, device) part, in loads
  double split_layer_load = 0;  // the merge's collectives in a layer with token slices, in loads
  double error = 0;             // relative error of the predicted attention time of a step
};

// The cost model of one run: the model's shape, the bytes per element of its weights and of its
// KV cache, the batch the loads are per sequence of, and the machine's calibration: weights are
// weighed by 1 / kv_time_factor so that loads balance time rather than bytes, and parts, split
// layers and the prediction error carry what was measured. The planner, the rebalancer and the
// bench all take the run's one cost model.
placement::CostModel run_cost_model(const model::ModelConfig& c, kernels::DType weight_type,
                                    kv::KvTypes kv_type, int batch,
                                    const Calibration& calibration = {});

// The placement `what` names for the model: a planner name (tp, balanced, fair-copy, split),
// planned on the fly with `cost` from the profile at profile_path (when empty: every unit equally
// long, so only tp's layout matters), or the path of a `fairkv plan --json` file. Throws
// std::invalid_argument naming the file and what does not match the model or the devices, and
// placement::FormatError for a query share too thin to hold a query head of the model's.
placement::Placement resolve_placement(const std::string& what, const std::string& profile_path,
                                       const model::ModelConfig& c, int devices,
                                       const placement::CostModel& cost);

}  // namespace fairkv::runtime
