// `fairkv bench-serve`: a serving benchmark against any OpenAI-compatible server (fairkv serve,
// llama-server, vLLM), in the manner of vLLM's `bench serve`: requests from a JSON-lines file or
// random words, sent at Poisson (gamma, with --burstiness) or fixed intervals under an optional
// concurrency cap, every answer streamed and timed; TTFT, TPOT, ITL, end-to-end latency,
// throughput and goodput as a table and JSON, and for a list of rates an SVG of latency against
// offered load. Exit 1 when the server cannot be reached, the first (test) request fails, or a
// run completes no request; failed requests are otherwise counted and reported.
#include <unistd.h>

#include <cmath>
#include <cstdio>
#include <ctime>
#include <fstream>
#include <functional>
#include <limits>
#include <memory>
#include <string>
#include <vector>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "app/bench_serve_client.h"
#include "app/bench_serve_report.h"
#include "app/bench_serve_requests.h"
#include "app/bench_serve_run.h"
#include "app/bench_serve_stats.h"
#include "app/commands.h"

namespace fairkv::app {

namespace {

using namespace bench;
using nlohmann::json;

struct BenchServeArgs {
  std::string base_url, host = "127.0.0.1", endpoint = "/v1/completions", model, api_key;
  int port = 8080;
  std::string dataset_path;
  int64_t input_len = 128, output_len = 128;
  double range_ratio = 0;
  size_t num_prompts = 100, max_concurrency = 0;
  std::string request_rate = "inf", arrival = "poisson";
  double burstiness = 1, timeout_s = 300, temperature = 0;
  uint64_t seed = 0;
  bool ignore_eos = false;
  std::vector<std::string> goodput;
  std::string result_file, svg;
};

std::vector<double> parse_rates(const std::string& text) {
  std::vector<double> rates;
  for (const std::string& item : split_list(text)) {
    if (item == "inf") {
      rates.push_back(std::numeric_limits<double>::infinity());
      continue;
    }
    size_t used = 0;
    double v = -1;
    try {
      v = std::stod(item, &used);
    } catch (const std::exception&) {
      used = 0;
    }
    if (used != item.size() || !(v > 0) || !std::isfinite(v))
      throw UsageError(fmt::format(
          "--request-rate: '{}' is not a positive number of requests per second or inf", item));
    rates.push_back(v);
  }
  if (rates.empty()) throw UsageError("--request-rate: expected inf, a rate, or a list (1,2,4)");
  return rates;
}

void write_file(const std::string& path, const std::string& text, const char* option) {
  std::ofstream f(path);
  f << text;
  if (!f) throw std::runtime_error(fmt::format("{}: cannot write '{}'", option, path));
}

std::string utc_now() {
  const std::time_t t = std::time(nullptr);
  char buf[32];
  std::strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%SZ", std::gmtime(&t));
  return buf;
}

void run_bench_serve(const BenchServeArgs& a, bool host_or_port_given) {
  // Options first: nothing is sent before every one of them is known to be usable.
  Target target;
  if (!a.base_url.empty()) {
    if (host_or_port_given) throw UsageError("give --base-url or --host/--port, not both");
    try {
      parse_base_url(a.base_url, target);
    } catch (const std::invalid_argument& e) {
      throw UsageError(e.what());
    }
  } else {
    target.host = a.host;
    target.port = a.port;
  }
  if (a.endpoint.empty() || a.endpoint[0] != '/')
    throw UsageError(fmt::format(
        "--endpoint '{}': expected a path such as /v1/completions or /v1/chat/completions",
        a.endpoint));
  target.endpoint = a.endpoint;
  target.api_key = a.api_key;
  target.timeout_s = a.timeout_s;
  target.ignore_eos = a.ignore_eos;
  target.temperature = a.temperature;
  const std::vector<double> rates = parse_rates(a.request_rate);
  Slo slo;
  try {
    slo = parse_slo(a.goodput);
  } catch (const std::invalid_argument& e) {
    throw UsageError(e.what());
  }
  const Arrival arrival = a.arrival == "fixed" ? Arrival::Fixed : Arrival::Poisson;
  if (!a.svg.empty() && rates.size() < 2)
    throw UsageError("--svg plots a sweep: give --request-rate a list of rates, e.g. 1,2,4,8");

  // The server: its model's name (which also proves it answers), and its tokenizer's words.
  if (a.model.empty()) {
    target.model = first_model(target);
  } else {
    target.model = a.model;
    try {
      first_model(target);  // only whether it answers: a server may list no models
    } catch (const Unreachable&) {
      throw;
    } catch (const std::exception&) {
    }
  }
  std::vector<BenchRequest> requests;
  std::function<std::vector<BenchRequest>(uint64_t)> make_random;
  std::string dataset;
  if (!a.dataset_path.empty()) {
    requests = load_dataset(a.dataset_path, a.num_prompts);
    dataset = a.dataset_path;
  } else {
    double tokens_per_word = 1;
    const std::string sample = random_words(256, a.seed ^ 0x5eedULL);
    if (const auto n = count_tokens(target, sample)) {
      tokens_per_word = std::max(0.25, double(*n) / 256);
    } else {
      std::fprintf(stderr,
                   "note: the server has no POST /tokenize: random prompts have "
                   "--random-input-len words, about one token each\n");
    }
    // Each run of a sweep draws its own prompts (seed + run): a server with a prompt cache
    // (llama-server's) would otherwise skip the prefill of every run after the first.
    make_random = [&a, tokens_per_word](uint64_t seed) {
      return random_requests(a.num_prompts, a.input_len, a.output_len, a.range_ratio, seed,
                             tokens_per_word);
    };
    requests = make_random(a.seed);
    dataset = fmt::format("random (input {} tokens, output {}, range ratio {}, {:.2f} tokens/word)",
                          a.input_len, a.output_len, a.range_ratio, tokens_per_word);
  }
  std::printf("Server %s%s, model '%s', %zu requests: %s\n", target.url().c_str(),
              target.endpoint.c_str(), target.model.c_str(), requests.size(), dataset.c_str());

  // One request alone first, as vLLM does: a server that refuses the benchmark's requests (an
  // unknown model, a prompt too long) says so here, once, rather than in every failed request.
  // Its prompt is none of the runs' (for random requests), so that no run finds it cached.
  BenchRequest first = requests.front();
  if (make_random) first = make_random(a.seed + rates.size()).front();
  const RequestResult test = send_request(target, first);
  if (!test.ok)
    throw std::runtime_error(fmt::format("the test request to {}{} failed: {}", target.url(),
                                         target.endpoint, test.error));
  std::printf("Initial test run completed.\n");
  if (!test.usage)
    std::printf(
        "note: the server streamed no usage (stream_options.include_usage): output tokens are "
        "counted as text chunks and prompt tokens are unknown\n");

  std::vector<RunReport> runs;
  const bool tty = isatty(STDERR_FILENO);
  for (size_t run = 0; run < rates.size(); ++run) {
    const double rate = rates[run];
    RunReport r;
    r.plan = {rate, arrival, a.burstiness, a.max_concurrency, a.seed + run, tty};
    if (make_random && run > 0) requests = make_random(r.plan.seed);
    std::printf(
        "\nRequest rate %s, %s arrivals%s\n", rate_name(rate).c_str(),
        std::isfinite(rate) ? a.arrival.c_str() : "all at once",
        a.max_concurrency ? fmt::format(", at most {} at once", a.max_concurrency).c_str() : "");
    std::fflush(stdout);
    r.outcome = run_requests(target, requests, r.plan);
    r.metrics = compute_metrics(r.outcome.results, r.outcome.duration, slo);
    std::printf("%s", result_table(r, slo).c_str());
    if (r.metrics.failed > 0) {
      for (const RequestResult& q : r.outcome.results)
        if (!q.ok) {
          std::printf("warning: %zu of %zu requests failed; the first: %s\n", r.metrics.failed,
                      requests.size(), q.error.c_str());
          break;
        }
    }
    if (r.metrics.without_usage > 0)
      std::printf("note: %zu answers came without usage: their output tokens are text chunks\n",
                  r.metrics.without_usage);
    std::fflush(stdout);
    runs.push_back(std::move(r));
  }
  if (runs.size() > 1) std::printf("\n%s", sweep_table(runs).c_str());

  if (!a.result_file.empty()) {
    json j = {
        {"date", utc_now()},        {"base_url", target.url()},   {"endpoint", target.endpoint},
        {"model_id", target.model}, {"dataset", dataset},         {"num_prompts", requests.size()},
        {"seed", a.seed},           {"ignore_eos", a.ignore_eos}, {"temperature", a.temperature},
        {"runs", json::array()}};
    if (slo.any()) {
      json g = json::object();
      if (slo.ttft_ms) g["ttft"] = *slo.ttft_ms;
      if (slo.tpot_ms) g["tpot"] = *slo.tpot_ms;
      if (slo.e2el_ms) g["e2el"] = *slo.e2el_ms;
      j["goodput_slo_ms"] = g;
    }
    for (const RunReport& r : runs) j["runs"].push_back(run_json(r, slo));
    write_file(a.result_file, j.dump(1) + "\n", "--result-file");
  }
  if (!a.svg.empty()) write_file(a.svg, sweep_svg(runs, target.model), "--svg");
  for (const RunReport& r : runs)
    if (r.metrics.completed == 0)
      throw std::runtime_error(
          fmt::format("no request completed at request rate {}", rate_name(r.plan.rate)));
}

}  // namespace

void add_bench_serve_command(CLI::App& app) {
  auto a = std::make_shared<BenchServeArgs>();
  auto* cmd = app.add_subcommand(
      "bench-serve",
      "Benchmark an OpenAI-compatible server (fairkv serve, llama-server): TTFT, TPOT, ITL, "
      "throughput and goodput under a request rate");
  cmd->add_option("--base-url", a->base_url, "Server address, http://HOST:PORT");
  auto* host =
      cmd->add_option("--host", a->host, "Server host (without --base-url)")->capture_default_str();
  auto* port = cmd->add_option("--port", a->port, "Server port (without --base-url)")
                   ->check(CLI::Range(1, 65535))
                   ->capture_default_str();
  cmd->add_option("--endpoint", a->endpoint, "/v1/completions or /v1/chat/completions")
      ->capture_default_str();
  cmd->add_option("--model", a->model, "Model name sent (default: the server's first model)");
  cmd->add_option("--api-key", a->api_key, "Bearer token, when the server asks for one");
  cmd->add_option("--dataset-path", a->dataset_path,
                  "JSON lines of {\"prompt\": ..., \"max_tokens\": N} (default: random prompts)")
      ->check(CLI::ExistingFile);
  cmd->add_option("--random-input-len", a->input_len, "Prompt tokens of random requests")
      ->check(CLI::Range(int64_t(1), int64_t(1) << 20))
      ->capture_default_str();
  cmd->add_option("--random-output-len", a->output_len, "max_tokens of random requests")
      ->check(CLI::Range(int64_t(1), int64_t(1) << 20))
      ->capture_default_str();
  cmd->add_option("--random-range-ratio", a->range_ratio,
                  "Lengths drawn uniformly in [len (1 - r), len (1 + r)]")
      ->check(CLI::Range(0.0, 0.999))
      ->capture_default_str();
  cmd->add_option("--num-prompts", a->num_prompts, "Requests per run")
      ->check(CLI::Range(size_t(1), size_t(1) << 20))
      ->capture_default_str();
  cmd->add_option("--request-rate", a->request_rate,
                  "Requests per second, inf (all at once), or a list for a sweep (1,2,4,8)")
      ->capture_default_str();
  cmd->add_option("--burstiness", a->burstiness,
                  "Gamma shape of the intervals: 1 Poisson, < 1 burstier, > 1 more regular")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  cmd->add_option("--arrival", a->arrival, "Intervals: poisson (gamma) or fixed (1/rate)")
      ->check(CLI::IsMember({"poisson", "fixed"}))
      ->capture_default_str();
  cmd->add_option("--max-concurrency", a->max_concurrency,
                  fmt::format("Requests in flight at most (default: no cap; {} client threads at "
                              "most)",
                              kMaxClients))
      ->check(CLI::Range(size_t(1), kMaxClients));
  cmd->add_option("--seed", a->seed, "Seed of prompts, lengths and arrivals")
      ->capture_default_str();
  cmd->add_flag("--ignore-eos", a->ignore_eos,
                "Send ignore_eos: true, so that every answer has max_tokens tokens");
  cmd->add_option("--temperature", a->temperature, "Sampling temperature sent (0: greedy)")
      ->check(CLI::Range(0.0, 2.0))
      ->capture_default_str();
  cmd->add_option("--goodput", a->goodput,
                  "SLOs a good request meets: ttft:MS tpot:MS e2el:MS (any of them)");
  cmd->add_option("--timeout", a->timeout_s,
                  "Seconds to wait for a server's next bytes before a request fails")
      ->check(CLI::Range(0.1, 86400.0))
      ->capture_default_str();
  cmd->add_option("--result-file", a->result_file, "Write every run's metrics as JSON");
  cmd->add_option("--svg", a->svg, "Write TPOT and TTFT against the request rate (a sweep)");
  cmd->callback([a, host, port] { run_bench_serve(*a, host->count() + port->count() > 0); });
}

}  // namespace fairkv::app
