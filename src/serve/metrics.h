// What GET /metrics says, in Prometheus's text format (version 0.0.4): the engine's snapshot
// (requests running and waiting, token totals, preemptions, re-plans, KV bytes and step time per
// rank as labelled gauges, the imbalance) and what the server counts itself (latency histograms
// of finished requests, finish reasons, HTTP statuses).
#pragma once

#include <array>
#include <cstdint>
#include <map>
#include <mutex>
#include <string>
#include <vector>

#include "serve/engine.h"
#include "serve/request.h"

namespace fairkv::serve {

// Counts per bucket of fixed upper bounds (the last bucket: +Inf), written cumulatively.
struct Histogram {
  std::vector<double> bounds;    // ascending upper bounds, in seconds
  std::vector<uint64_t> counts;  // bounds.size() + 1 buckets, not cumulative
  double sum = 0;
  uint64_t count = 0;

  explicit Histogram(std::vector<double> upper_bounds);
  void observe(double x);
};

// The server's own counts; every method is thread-safe (observations come from the engine's
// thread and the HTTP threads).
class ServerMetrics {
 public:
  struct Snapshot {
    Histogram ttft{{0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60}};
    Histogram tpot{{0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5}};
    std::array<int64_t, 5> finished{};  // by FinishReason
    std::map<int, int64_t> responses;   // by HTTP status
  };

  // A request's final event: its reason, and its TTFT and TPOT when it produced tokens.
  void observe_finish(FinishReason why, const RequestStats& s);
  void observe_response(int status);
  Snapshot snapshot() const;

 private:
  mutable std::mutex mu_;
  Snapshot s_;
};

// The exposition text. kv_memory: the per-rank limit in bytes (0: none).
std::string prometheus_text(const EngineStats& st, const ServerMetrics::Snapshot& m,
                            size_t kv_memory);

}  // namespace fairkv::serve
