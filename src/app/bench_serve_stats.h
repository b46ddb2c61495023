// The pure parts of `fairkv bench-serve`: arrival schedules, percentiles and the metrics of a
// run (TTFT, TPOT, ITL, end-to-end latency, throughput, goodput under SLOs), as vLLM's
// `bench serve` defines them. No I/O here: the client (bench_serve_client.h) measures, this sums.
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

namespace fairkv::app::bench {

// The p-th percentile (0..100) by linear interpolation between the closest ranks (numpy's
// default, which vLLM reports); 0 for no values.
double percentile(std::vector<double> values, double p);

struct Summary {
  double mean = 0, median = 0, std = 0, p90 = 0, p99 = 0;
};
Summary summarize(const std::vector<double>& values);

enum class Arrival { Poisson, Fixed };

// When each of n requests is sent, in seconds from the start: the first at 0, then intervals of
// 1/rate (Fixed) or gamma-distributed with shape `burstiness` and mean 1/rate (Poisson; shape 1
// is a Poisson process, below 1 burstier, above 1 more regular), drawn from `seed`. rate = inf
// (or <= 0 is refused by the caller) sends everything at 0.
std::vector<double> arrival_times(size_t n, double rate, Arrival arrival, double burstiness,
                                  uint64_t seed);

// What one request measured; times in seconds.
struct RequestResult {
  bool ok = false;
  std::string error;             // why it failed
  int64_t prompt_tokens = -1;    // from the server's usage; -1 when it sent none
  int64_t output_tokens = 0;     // usage's completion_tokens, else the streamed text chunks
  int64_t requested_tokens = 0;  // max_tokens sent
  bool usage = false;            // the server reported usage
  double ttft = 0;               // send to first text chunk
  double e2el = 0;               // send to the end of the stream
  std::vector<double> itl;       // every gap between successive text chunks
};

// TPOT of one request: (e2el - ttft) / (output_tokens - 1); 0 with one token or fewer.
double tpot(const RequestResult& r);

// Service-level objectives for goodput, in milliseconds; an unset one is not checked.
struct Slo {
  std::optional<double> ttft_ms, tpot_ms, e2el_ms;
  bool any() const { return ttft_ms || tpot_ms || e2el_ms; }
};
// "ttft:MS", "tpot:MS", "e2el:MS" items; throws std::invalid_argument naming the bad item.
Slo parse_slo(const std::vector<std::string>& items);
// A completed request meets every set objective.
bool meets(const RequestResult& r, const Slo& slo);

struct RunMetrics {
  size_t completed = 0, failed = 0, good = 0, without_usage = 0;
  int64_t total_input = 0, total_output = 0;
  double duration = 0;  // seconds, first send to last end
  double request_throughput = 0, output_throughput = 0, total_token_throughput = 0;
  double request_goodput = 0;
  Summary ttft_ms, tpot_ms, itl_ms, e2el_ms;
};
RunMetrics compute_metrics(const std::vector<RequestResult>& results, double duration,
                           const Slo& slo);

}  // namespace fairkv::app::bench
