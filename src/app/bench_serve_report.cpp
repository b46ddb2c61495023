#include "app/bench_serve_report.h"

#include <cmath>

#include <fmt/format.h>

#include "app/svg_plot.h"

namespace fairkv::app::bench {

using nlohmann::json;

std::string rate_name(double rate) {
  return std::isfinite(rate) ? fmt::format("{:g}", rate) : "inf";
}

namespace {

std::string line(const std::string& name, const std::string& value) {
  return fmt::format("{:<40} {:<10}\n", name, value);
}
std::string num(double v, int digits = 2) {
  return fmt::format("{:.{}f}", v, digits);
}
std::string rule(const std::string& title, char fill) {
  const size_t w = 50;
  const size_t pad = title.size() + 2 <= w ? w - title.size() : 0;
  return std::string(pad / 2, fill) + title + std::string(pad - pad / 2, fill) + "\n";
}
std::string summary_lines(const char* title, const char* name, const Summary& s) {
  std::string o = rule(title, '-');
  o += line(fmt::format("Mean {} (ms):", name), num(s.mean));
  o += line(fmt::format("Median {} (ms):", name), num(s.median));
  o += line(fmt::format("P90 {} (ms):", name), num(s.p90));
  o += line(fmt::format("P99 {} (ms):", name), num(s.p99));
  return o;
}
json summary_json(json& j, const std::string& key, const Summary& s) {
  j["mean_" + key + "_ms"] = s.mean;
  j["median_" + key + "_ms"] = s.median;
  j["std_" + key + "_ms"] = s.std;
  j["p90_" + key + "_ms"] = s.p90;
  j["p99_" + key + "_ms"] = s.p99;
  return j;
}

}  // namespace

std::string result_table(const RunReport& r, const Slo& slo) {
  const RunMetrics& m = r.metrics;
  std::string o = rule(" Serving Benchmark Result ", '=');
  o += line("Request rate (req/s):", rate_name(r.plan.rate));
  o += line("Max request concurrency:",
            r.plan.max_concurrency ? std::to_string(r.plan.max_concurrency) : "none");
  o += line("Successful requests:", std::to_string(m.completed));
  o += line("Failed requests:", std::to_string(m.failed));
  o += line("Benchmark duration (s):", num(m.duration));
  o += line("Total input tokens:", std::to_string(m.total_input));
  o += line("Total generated tokens:", std::to_string(m.total_output));
  o += line("Request throughput (req/s):", num(m.request_throughput));
  if (slo.any()) o += line("Request goodput (req/s):", num(m.request_goodput));
  o += line("Output token throughput (tok/s):", num(m.output_throughput));
  o += line("Total token throughput (tok/s):", num(m.total_token_throughput));
  o += summary_lines("Time to First Token", "TTFT", m.ttft_ms);
  o += summary_lines("Time per Output Token (excl. 1st token)", "TPOT", m.tpot_ms);
  o += summary_lines("Inter-token Latency", "ITL", m.itl_ms);
  o += summary_lines("End-to-end Latency", "E2EL", m.e2el_ms);
  o += std::string(50, '=') + "\n";
  return o;
}

std::string sweep_table(const std::vector<RunReport>& runs) {
  std::string o =
      "| rate (req/s) | req/s | output tok/s | TTFT p50 / p99 (ms) | TPOT p50 / p99 (ms) | "
      "ITL p99 (ms) | failed |\n|---|---|---|---|---|---|---|\n";
  for (const RunReport& r : runs) {
    const RunMetrics& m = r.metrics;
    o += fmt::format("| {} | {:.2f} | {:.1f} | {:.0f} / {:.0f} | {:.1f} / {:.1f} | {:.1f} | {} |\n",
                     rate_name(r.plan.rate), m.request_throughput, m.output_throughput,
                     m.ttft_ms.median, m.ttft_ms.p99, m.tpot_ms.median, m.tpot_ms.p99, m.itl_ms.p99,
                     m.failed);
  }
  return o;
}

json run_json(const RunReport& r, const Slo& slo) {
  const RunMetrics& m = r.metrics;
  json j;
  // JSON has no infinity: an unbounded rate is written as vLLM writes it, the string "inf".
  if (std::isfinite(r.plan.rate))
    j["request_rate"] = r.plan.rate;
  else
    j["request_rate"] = "inf";
  j["burstiness"] = r.plan.burstiness;
  j["seed"] = r.plan.seed;
  j["arrival"] = r.plan.arrival == Arrival::Fixed ? "fixed" : "poisson";
  j["max_concurrency"] = r.plan.max_concurrency ? json(r.plan.max_concurrency) : json(nullptr);
  j["peak_concurrency"] = r.outcome.peak_concurrency;
  j["duration"] = m.duration;
  j["completed"] = m.completed;
  j["failed"] = m.failed;
  j["total_input_tokens"] = m.total_input;
  j["total_output_tokens"] = m.total_output;
  j["requests_without_usage"] = m.without_usage;
  j["request_throughput"] = m.request_throughput;
  j["output_throughput"] = m.output_throughput;
  j["total_token_throughput"] = m.total_token_throughput;
  if (slo.any()) {
    j["good_requests"] = m.good;
    j["request_goodput"] = m.request_goodput;
  }
  summary_json(j, "ttft", m.ttft_ms);
  summary_json(j, "tpot", m.tpot_ms);
  summary_json(j, "itl", m.itl_ms);
  summary_json(j, "e2el", m.e2el_ms);
  json input_lens = json::array(), output_lens = json::array(), requested = json::array(),
       ttfts = json::array(), e2els = json::array(), itls = json::array(), errors = json::array();
  for (const RequestResult& q : r.outcome.results) {
    input_lens.push_back(q.prompt_tokens);
    output_lens.push_back(q.output_tokens);
    requested.push_back(q.requested_tokens);
    ttfts.push_back(q.ok ? json(q.ttft) : json(nullptr));
    e2els.push_back(q.ok ? json(q.e2el) : json(nullptr));
    itls.push_back(q.itl);
    errors.push_back(q.error);
  }
  j["input_lens"] = input_lens;
  j["output_lens"] = output_lens;
  j["requested_output_lens"] = requested;
  j["ttfts"] = ttfts;
  j["e2els"] = e2els;
  j["itls"] = itls;
  j["errors"] = errors;
  return j;
}

std::string sweep_svg(const std::vector<RunReport>& runs, const std::string& title) {
  Series tpot_p99{"p99 TPOT", {}}, tpot_mean{"mean TPOT", {}}, ttft_p99{"p99 TTFT", {}},
      ttft_mean{"mean TTFT", {}};
  for (const RunReport& r : runs) {
    if (!std::isfinite(r.plan.rate) || r.metrics.completed == 0) continue;
    const double x = r.plan.rate;
    tpot_p99.points.emplace_back(x, r.metrics.tpot_ms.p99);
    tpot_mean.points.emplace_back(x, r.metrics.tpot_ms.mean);
    ttft_p99.points.emplace_back(x, r.metrics.ttft_ms.p99);
    ttft_mean.points.emplace_back(x, r.metrics.ttft_ms.mean);
  }
  const std::string x_label = "offered load (requests/s)";
  return svg_stack({svg_line_chart(title + ": time per output token", x_label, "TPOT (ms)",
                                   {tpot_p99, tpot_mean}),
                    svg_line_chart(title + ": time to first token", x_label, "TTFT (ms)",
                                   {ttft_p99, ttft_mean})});
}

}  // namespace fairkv::app::bench
