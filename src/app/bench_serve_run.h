// One run of `fairkv bench-serve`: the requests sent at their arrival times (arrival_times in
// bench_serve_stats.h) by a pool of clients, at most max_concurrency in flight (a request that
// arrives while the cap is reached waits for a free slot, as in vLLM), each measured on its own.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

#include "app/bench_serve_client.h"

namespace fairkv::app::bench {

struct RunPlan {
  double rate = 0;  // requests per second; inf sends all at once
  Arrival arrival = Arrival::Poisson;
  double burstiness = 1;
  size_t max_concurrency = 0;  // 0: no cap
  uint64_t seed = 0;
  bool progress = true;  // a line on stderr as requests complete
};

struct RunOutcome {
  std::vector<RequestResult> results;  // in request order
  double duration = 0;                 // seconds, first send to last answer
  size_t peak_concurrency = 0;
};

// The most client threads a run uses: a cap beyond it is reached by no run.
inline constexpr size_t kMaxClients = 1024;

RunOutcome run_requests(const Target& target, const std::vector<BenchRequest>& requests,
                        const RunPlan& plan);

}  // namespace fairkv::app::bench
