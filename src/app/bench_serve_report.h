// What `fairkv bench-serve` prints and writes: vLLM's result table for one run, a line per rate
// for a sweep, the JSON of every run (metrics and per-request measurements), and the SVG of
// latency against offered load.
#pragma once

#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "app/bench_serve_run.h"
#include "app/bench_serve_stats.h"

namespace fairkv::app::bench {

struct RunReport {
  RunPlan plan;
  RunOutcome outcome;
  RunMetrics metrics;
};

// The table of one run (vLLM's layout), goodput lines only when SLOs were given.
std::string result_table(const RunReport& r, const Slo& slo);

// One row per run: rate, req/s, tok/s, TTFT, TPOT, ITL percentiles, failed.
std::string sweep_table(const std::vector<RunReport>& runs);

// A run's metrics (vLLM's key names) and per-request arrays.
nlohmann::json run_json(const RunReport& r, const Slo& slo);

// p99 and mean TPOT over TTFT against the offered rate, one chart each, stacked; runs at an
// infinite rate have no place on that axis and are left out.
std::string sweep_svg(const std::vector<RunReport>& runs, const std::string& title);

// "inf" or the rate as written ("2", "0.5").
std::string rate_name(double rate);

}  // namespace fairkv::app::bench
