// The cost model of FAIRKV.md in the profile's unit.
//
// Decode is memory-bound, so a device's time in a layer is the bytes it reads there. All loads are
// expressed in "tokens per sequence": the bytes divided by what one cached token of one sequence
// costs for one unit (batch x 2 x head_dim x KV element bytes, K and V). A unit with t cached
// tokens per sequence therefore reads t, plus its weights converted into the same unit:
//   unit weights = Wq rows (group x head_dim x embd) + Wk, Wv rows (2 x head_dim x embd)
//                + Wo columns (group x head_dim x embd) elements.
// Weights are read once per step for the whole batch, so in tokens per sequence they shrink as the
// batch grows. Every device that serves any share of a unit reads all of the unit's weights, except
// for a query slice (tp with more devices than KV heads), which reads Wk and Wv and its part of Wq
// and Wo, and a token slice other than the unit's last (its tail): the tail projects the queries
// for all slices (they travel in a small all-reduce) and applies Wo to their merged output, so the
// other slices read only their KV. Weight type "none" leaves weights out: only the KV counts.
// Every part also pays part_load (the fixed work of one more attention call), and a layer with
// token slices pays split_layer_load on every device (the collectives that merge the slices).
#pragma once

#include <cstdint>
#include <string>

namespace fairkv::placement {

struct Profile;

// Bytes per element of a type name: f32, f16, bf16, q8_0, q4_0, or none (0). Throws on others.
double type_bytes(const std::string& name);

struct CostModel {
  int batch = 1;
  int head_dim = 0;
  int group = 1;  // query heads per KV head
  int64_t embd = 0;
  int64_t ffn = 0;          // 0: MLP unknown, left out of the step estimate and of memory
  double weight_bytes = 2;  // per weight element (f16 by default)
  double kv_bytes = 2;      // per cached K or V element (f16 by default)
  // What every extra part costs beyond its bytes, in loads; 0 in FAIRKV.md's bytes-only model,
  // measured by the bench's calibration (runtime/calibration.h). Without them a planner buys
  // balance with replicas that cost more than they save.
  double part_load = 0;         // each (unit, device) part: its attention call, merge, output
  double split_layer_load = 0;  // a layer with token slices: its extra round of collectives
  // Relative error of the model's step-time predictions, as measured: a placement replaces tp
  // only when it is predicted faster by more than this.
  double error = 0;

  // Bytes of one cached token of one sequence of a unit (K and V).
  double token_bytes() const { return 2.0 * head_dim * kv_bytes; }
  // Bytes read per step by one unit-token-per-sequence of load: the conversion factor from loads
  // to bytes.
  double load_bytes() const { return double(batch) * token_bytes(); }

  double unit_weight_bytes() const { return qo_weight_bytes() + kv_weight_bytes(); }
  double kv_weight_bytes() const { return 2.0 * head_dim * double(embd) * weight_bytes; }
  double qo_weight_bytes() const { return 2.0 * group * head_dim * double(embd) * weight_bytes; }
  // One layer's MLP (gate, up, down), the part TP divides evenly.
  double mlp_weight_bytes() const { return 3.0 * double(embd) * double(ffn) * weight_bytes; }

  // The same in loads (tokens per sequence).
  double unit_weight_load() const { return to_load(unit_weight_bytes()); }
  double kv_weight_load() const { return to_load(kv_weight_bytes()); }
  double qo_weight_load() const { return to_load(qo_weight_bytes()); }
  double mlp_load() const { return to_load(mlp_weight_bytes()); }
  double to_load(double bytes) const { return load_bytes() > 0 ? bytes / load_bytes() : 0.0; }
};

// The cost model of a profile's model at a batch size and element types.
CostModel cost_model_for(const Profile& p, int batch, const std::string& weight_type = "f16",
                         const std::string& kv_type = "f16");

}  // namespace fairkv::placement
