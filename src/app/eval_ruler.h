// `fairkv eval --suite ruler`: the RULER-style suite (app/ruler.h) over policies and budgets.
#pragma once

#include <string>

#include "app/engine_options.h"
#include "app/kv_options.h"

namespace fairkv::app {

struct RulerArgs {
  std::string model, policies, budgets, contexts = "1k,2k,4k", tasks, json_out, svg_out;
  int samples = 2;
  uint64_t seed = 1;
  bool show = false;
  std::string dump;  // write the samples as .jsonl and stop
  // EpiCache's layer-sensitivity profile (--kv-layer-sensitivity's file), measured on the runs.
  std::string sensitivity_out;
  EngineOptions engine;
  KvOptions kv;
};

// Every sample is prefilled once with the full cache, the observation window's attention kept;
// each (policy, budget) then compresses a copy of that cache and decodes its greedy answer
// (identical to a prefill per policy: the scores and the cache do not depend on the policy).
// EpiCache's block-wise prefill cannot share it: it prefills each (sample, budget) on its own,
// and the table's footer gives its peak KV bytes against the full prefill's per context.
// The full cache's own answer is the ceiling. Prints the table task x policy x budget per
// context; --json and --svg as eval's.
void run_ruler(const RulerArgs& a);

}  // namespace fairkv::app
