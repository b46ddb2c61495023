#include "serve/metrics.h"

#include <algorithm>

#include <fmt/format.h>

namespace fairkv::serve {

Histogram::Histogram(std::vector<double> upper_bounds)
    : bounds(std::move(upper_bounds)), counts(bounds.size() + 1, 0) {}

void Histogram::observe(double x) {
  const size_t b = size_t(std::lower_bound(bounds.begin(), bounds.end(), x) - bounds.begin());
  ++counts[b];
  sum += x;
  ++count;
}

void ServerMetrics::observe_finish(FinishReason why, const RequestStats& s) {
  std::lock_guard lock(mu_);
  ++s_.finished[size_t(why)];
  if (s.generated_tokens > 0 && s.first_token_ms >= 0) s_.ttft.observe(s.ttft_ms() / 1000);
  if (s.generated_tokens > 1) s_.tpot.observe(s.tpot_ms() / 1000);
}

void ServerMetrics::observe_response(int status) {
  std::lock_guard lock(mu_);
  ++s_.responses[status];
}

ServerMetrics::Snapshot ServerMetrics::snapshot() const {
  std::lock_guard lock(mu_);
  return s_;
}

namespace {

// Writes one metric family: its HELP and TYPE lines, then its samples.
class Writer {
 public:
  void family(const char* name, const char* type, const char* help) {
    out_ += fmt::format("# HELP fairkv_{} {}\n# TYPE fairkv_{} {}\n", name, help, name, type);
  }
  void sample(const std::string& name, double v, const std::string& labels = "") {
    out_ += fmt::format("fairkv_{}{}{} {}\n", name, labels.empty() ? "" : "{",
                        labels.empty() ? "" : labels + "}", v);
  }
  void one(const char* name, const char* type, const char* help, double v) {
    family(name, type, help);
    sample(name, v);
  }
  void histogram(const char* name, const char* help, const Histogram& h) {
    family(name, "histogram", help);
    uint64_t cumulative = 0;
    for (size_t i = 0; i < h.counts.size(); ++i) {
      cumulative += h.counts[i];
      const std::string le = i < h.bounds.size() ? fmt::format("{}", h.bounds[i]) : "+Inf";
      sample(std::string(name) + "_bucket", double(cumulative), fmt::format("le=\"{}\"", le));
    }
    sample(std::string(name) + "_sum", h.sum);
    sample(std::string(name) + "_count", double(h.count));
  }
  std::string take() { return std::move(out_); }

 private:
  std::string out_;
};

}  // namespace

std::string prometheus_text(const EngineStats& st, const ServerMetrics::Snapshot& m,
                            size_t kv_memory) {
  Writer w;
  w.one("requests_running", "gauge", "Requests running (prefilling or decoding).", st.running);
  w.one("requests_waiting", "gauge", "Requests waiting for admission.", st.waiting);
  w.one("requests_preempted", "gauge", "Requests preempted (swapped out or to recompute).",
        st.preempted);
  w.one("requests_submitted_total", "counter", "Requests the engine accepted.",
        double(st.submitted));
  w.one("requests_refused_total", "counter", "Requests refused because the queue was full.",
        double(st.refused));
  w.family("requests_finished_total", "counter", "Requests ended, by finish reason.");
  for (FinishReason r :
       {FinishReason::Stop, FinishReason::Length, FinishReason::Cancelled, FinishReason::Error})
    w.sample("requests_finished_total", double(m.finished[size_t(r)]),
             fmt::format("reason=\"{}\"", finish_reason_name(r)));
  w.one("prompt_tokens_total", "counter", "Prompt tokens run through the model.",
        double(st.prompt_tokens));
  w.one("generation_tokens_total", "counter", "Tokens generated.", double(st.generated_tokens));
  w.histogram("time_to_first_token_seconds", "Time from arrival to the first token.", m.ttft);
  w.histogram("time_per_output_token_seconds", "Mean time per output token after the first.",
              m.tpot);
  w.one("preemptions_total", "counter", "Times a running request was preempted.",
        double(st.preemptions));
  w.one("recomputations_total", "counter", "Preempted requests recomputed instead of swapped in.",
        double(st.recomputations));
  w.one("swap_ins_total", "counter", "Preempted requests swapped back in.", double(st.swap_ins));
  w.one("replans_total", "counter", "Times the shares of replicated units were re-divided.",
        double(st.replans));
  w.one("steps_total", "counter", "Engine steps run.", double(st.steps));
  w.one("busy_seconds_total", "counter", "Time spent in engine steps.", st.busy_ms / 1000);
  w.family("kv_bytes", "gauge", "Committed KV cache bytes per rank.");
  for (size_t r = 0; r < st.ranks.size(); ++r)
    w.sample("kv_bytes", double(st.ranks[r].kv_bytes), fmt::format("rank=\"{}\"", r));
  w.family("rank_step_seconds", "gauge", "The last step's time per rank.");
  for (size_t r = 0; r < st.ranks.size(); ++r)
    w.sample("rank_step_seconds", st.ranks[r].step_ms / 1000, fmt::format("rank=\"{}\"", r));
  w.family("rank_predicted_step_seconds", "gauge",
           "The cost model's prediction of the last step's time per rank (0: no model).");
  for (size_t r = 0; r < st.ranks.size(); ++r)
    w.sample("rank_predicted_step_seconds", st.ranks[r].predicted_ms / 1000,
             fmt::format("rank=\"{}\"", r));
  w.one("kv_memory_limit_bytes", "gauge", "KV memory limit per rank (0: none).", double(kv_memory));
  w.one("kv_imbalance", "gauge", "Max over mean of the ranks' KV bytes after the last step.",
        st.imbalance);
  w.one("kv_imbalance_mean", "gauge", "kv_imbalance averaged over the steps that held a cache.",
        st.mean_imbalance);
  w.family("swap_bytes", "gauge", "Bytes of swapped-out caches.");
  w.sample("swap_bytes", double(st.swap_host_bytes), "place=\"host\"");
  w.sample("swap_bytes", double(st.swap_file_bytes), "place=\"file\"");
  w.family("http_responses_total", "counter", "HTTP responses, by status.");
  for (const auto& [code, n] : m.responses)
    w.sample("http_responses_total", double(n), fmt::format("code=\"{}\"", code));
  return w.take();
}

}  // namespace fairkv::serve
