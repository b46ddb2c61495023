// Planning time of every planner. The issue's target: 80 layers x 8 KV heads on 8 devices, every
// planner, well under a second. Also 2 and 4 devices (where balanced searches), a 32-KV-head
// model (balanced's exact search meets its node budget), and one rebalance after a prefill.
#include <benchmark/benchmark.h>

#include "placement/planners.h"
#include "placement/rebalance.h"

namespace {

namespace pl = fairkv::placement;

pl::Profile profile(int kv_heads, int query_heads) {
  pl::SyntheticSpec s;
  s.kv_heads = kv_heads;
  s.query_heads = query_heads;
  s.sigma = 1.0;
  return pl::synthetic_lognormal(s);  // 80 layers, head size 128, embd 8192
}

// Args: planner (0 tp, 1 balanced, 2 fair-copy, 3 split), devices, KV heads.
void BM_Plan(benchmark::State& state) {
  const auto kind = pl::PlannerKind(state.range(0));
  const int devices = int(state.range(1));
  const int kv_heads = int(state.range(2));
  const auto prof = profile(kv_heads, 64);
  const auto cost = pl::cost_model_for(prof, 32);
  pl::PlanOptions o;
  o.planner = kind;
  o.devices = devices;
  for (auto _ : state) benchmark::DoNotOptimize(pl::plan(prof, cost, o));
  state.SetLabel(pl::planner_name(kind));
  state.counters["layers"] = prof.layers;
}
BENCHMARK(BM_Plan)
    ->ArgsProduct({{0, 1, 2, 3}, {8}, {8}})
    ->ArgsProduct({{1, 2, 3}, {2, 4}, {8}})
    ->ArgsProduct({{1, 2, 3}, {8}, {32}})
    ->ArgNames({"planner", "R", "H"})
    ->Unit(benchmark::kMillisecond);

// The runtime's call after a prefill: new shares for one layer of a split plan (8 units, 8
// devices, up to 7 cut units), from new lengths.
void BM_RebalanceLayer(benchmark::State& state) {
  const auto prof = profile(8, 64);
  const auto cost = pl::cost_model_for(prof, 32, "none");
  const auto layer = pl::wrap_around_layer(prof.tokens[0], cost, 8);
  const auto& actual = prof.tokens[1];
  for (auto _ : state) benchmark::DoNotOptimize(pl::rebalance_layer(layer, actual, cost, 8));
  state.SetItemsProcessed(state.iterations());
}
BENCHMARK(BM_RebalanceLayer)->Unit(benchmark::kMicrosecond);

}  // namespace

BENCHMARK_MAIN();
