// The Prometheus text of /metrics: every family declared before its samples, every sample line
// well formed, histograms cumulative, per-rank gauges labelled.
#include "serve/metrics.h"

#include <gtest/gtest.h>

#include <regex>
#include <set>
#include <sstream>
#include <string>

namespace fairkv::serve {
namespace {

TEST(Metrics, HistogramBucketsAreUpperBounds) {
  Histogram h({0.1, 1});
  h.observe(0.05);
  h.observe(0.1);  // on a bound: that bucket (le is "less or equal")
  h.observe(0.5);
  h.observe(7);
  EXPECT_EQ(h.counts, (std::vector<uint64_t>{2, 1, 1}));
  EXPECT_EQ(h.count, 4u);
  EXPECT_DOUBLE_EQ(h.sum, 7.65);
}

TEST(Metrics, PrometheusTextIsWellFormed) {
  EngineStats st;
  st.running = 2;
  st.waiting = 3;
  st.generated_tokens = 120;
  st.ranks = {{1000, 1.5, 1.2}, {3000, 2.5, 2.2}};
  st.imbalance = 1.5;
  ServerMetrics m;
  RequestStats rs;
  rs.arrival_ms = 0;
  rs.first_token_ms = 20;
  rs.finished_ms = 120;
  rs.generated_tokens = 11;
  m.observe_finish(FinishReason::Stop, rs);
  m.observe_finish(FinishReason::Cancelled, RequestStats{});
  m.observe_response(200);
  m.observe_response(503);
  const std::string text = prometheus_text(st, m.snapshot(), 1 << 20);

  const std::regex sample(R"(^fairkv_[a-z_]+(\{[a-z]+="[^"]*"\})? [-+0-9.eInf]+$)");
  std::set<std::string> declared;
  std::istringstream in(text);
  for (std::string line; std::getline(in, line);) {
    if (line.starts_with("# TYPE ")) {
      declared.insert(line.substr(7, line.find(' ', 7) - 7));
      continue;
    }
    if (line.starts_with("# HELP ")) continue;
    EXPECT_TRUE(std::regex_match(line, sample)) << line;
    std::string name = line.substr(0, line.find_first_of("{ "));
    for (const char* suffix : {"_bucket", "_sum", "_count"})
      if (name.ends_with(suffix) && !declared.count(name))
        name = name.substr(0, name.size() - std::string(suffix).size());
    EXPECT_TRUE(declared.count(name)) << "no TYPE before " << line;
  }
  for (const char* want :
       {"fairkv_requests_running 2\n", "fairkv_requests_waiting 3\n",
        "fairkv_generation_tokens_total 120\n", "fairkv_kv_bytes{rank=\"1\"} 3000\n",
        "fairkv_rank_step_seconds{rank=\"0\"} 0.0015\n", "fairkv_kv_imbalance 1.5\n",
        "fairkv_kv_memory_limit_bytes 1048576\n",
        "fairkv_requests_finished_total{reason=\"cancelled\"} 1\n",
        "fairkv_time_to_first_token_seconds_bucket{le=\"0.025\"} 1\n",
        "fairkv_time_to_first_token_seconds_bucket{le=\"0.01\"} 0\n",
        "fairkv_time_to_first_token_seconds_bucket{le=\"+Inf\"} 1\n",
        "fairkv_time_to_first_token_seconds_count 1\n",
        "fairkv_time_per_output_token_seconds_bucket{le=\"0.01\"} 1\n",
        "fairkv_http_responses_total{code=\"503\"} 1\n"})
    EXPECT_NE(text.find(want), std::string::npos) << want;
}

}  // namespace
}  // namespace fairkv::serve
