// `fairkv bench-model`: prefill and decode speed of one device at a given depth, in the manner of
// llama-bench (its flags, its tests "pp512 @ d4096" and "tg128 @ d4096", its JSON field names),
// so that the two engines can be run side by side on the same file and compared row by row
// (scripts/bench-llama-cpp).
//
// A test at depth d first fills the cache with d random tokens in --ubatch-size chunks (not
// timed), then times either one prefill of n_prompt tokens or n_gen decode steps of one token.
// Every repetition starts from an empty cache, as llama-bench's do.
#include <fmt/format.h>
#include <unistd.h>
#include <CLI/CLI.hpp>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <memory>
#include <nlohmann/json.hpp>
#include <random>
#include <string>
#include <vector>

#include "app/commands.h"
#include "app/engine_options.h"
#include "app/kv_options.h"
#include "kernels/clock.h"
#include "model/forward.h"
#include "model/model.h"

namespace fairkv::app {
namespace {

struct BenchModelArgs {
  std::string model;
  std::string n_prompt = "512", n_gen = "128", n_depth = "0";
  int repetitions = 5;
  int64_t ubatch = 512;
  std::string output = "md";
  bool no_warmup = false;
  EngineOptions engine;
  KvOptions kv;
};

// One row of the results: llama-bench's test, n_prompt or n_gen tokens after n_depth.
struct Test {
  int64_t n_prompt = 0, n_gen = 0, n_depth = 0;
  std::vector<double> ns;  // per repetition

  std::string name() const {
    std::string s = n_prompt > 0 ? fmt::format("pp{}", n_prompt) : fmt::format("tg{}", n_gen);
    if (n_depth > 0) s += fmt::format(" @ d{}", n_depth);
    return s;
  }
  std::vector<double> rates() const {  // tokens per second of each repetition
    std::vector<double> r;
    for (double t : ns) r.push_back(1e9 * double(n_prompt + n_gen) / t);
    return r;
  }
};

std::vector<int64_t> counts(const std::string& text, const char* option, int64_t min) {
  std::vector<int64_t> out;
  for (const std::string& item : split_list(text)) {
    size_t used = 0;
    long long v = -1;
    try {
      v = std::stoll(item, &used);
    } catch (const std::exception&) {
    }
    if (used != item.size() || v < min)
      throw UsageError(fmt::format("{}: expected a comma-separated list of numbers >= {}, got '{}'",
                                   option, min, text));
    out.push_back(v);
  }
  if (out.empty()) throw UsageError(fmt::format("{}: expected at least one number", option));
  return out;
}

double mean(const std::vector<double>& v) {
  double s = 0;
  for (double x : v) s += x;
  return v.empty() ? 0 : s / double(v.size());
}

double stddev(const std::vector<double>& v) {
  if (v.size() < 2) return 0;
  const double m = mean(v);
  double s = 0;
  for (double x : v) s += (x - m) * (x - m);
  return std::sqrt(s / double(v.size() - 1));
}

class Bench {
 public:
  Bench(const model::Model& m, kernels::ThreadPool& pool, const BenchModelArgs& a)
      : m_(m), fwd_(m.config, m.weights, pool, a.engine.act()), a_(a), type_(a.kv.kv_type()) {}

  // Nanoseconds of one repetition of t.
  double run(const Test& t) {
    const model::ModelConfig& c = m_.config;
    kv::SequenceCache cache(c.n_layers, c.n_kv_heads, c.head_dim, type_);
    for (int64_t done = 0; done < t.n_depth;)  // the depth, in chunks, not timed
      done += prefill(cache, std::min(a_.ubatch, t.n_depth - done));
    const auto t0 = std::chrono::steady_clock::now();
    for (int64_t done = 0; done < t.n_prompt;)
      done += prefill(cache, std::min(a_.ubatch, t.n_prompt - done));
    for (int64_t i = 0; i < t.n_gen; ++i) prefill(cache, 1);
    return 1e6 * kernels::ms_since(t0);
  }

 private:
  int64_t prefill(kv::SequenceCache& cache, int64_t n) {
    tokens_.resize(size_t(n));
    std::uniform_int_distribution<int32_t> tok(0, m_.config.n_vocab - 1);
    for (auto& t : tokens_) t = tok(rng_);  // random ids, as llama-bench's
    model::BatchItem item{&cache, tokens_, false};
    fwd_.run({&item, 1});
    return n;
  }

  const model::Model& m_;
  model::Forward fwd_;
  const BenchModelArgs& a_;
  kv::KvTypes type_;
  std::vector<int32_t> tokens_;
  std::mt19937 rng_{1234};
};

void bench_model(const BenchModelArgs& a) {
  if (a.repetitions < 1) throw UsageError("-r/--repetitions: expected a number >= 1");
  if (a.ubatch < 1) throw UsageError("--ubatch-size: expected a number of tokens >= 1");
  if (a.output != "md" && a.output != "jsonl" && a.output != "json")
    throw UsageError("-o/--output: expected md, jsonl or json, got '" + a.output + "'");
  std::vector<Test> tests;
  for (int64_t d : counts(a.n_depth, "-d/--n-depth", 0)) {
    for (int64_t p : counts(a.n_prompt, "-p/--n-prompt", 0))
      if (p > 0) tests.push_back({p, 0, d, {}});
    for (int64_t n : counts(a.n_gen, "-n/--n-gen", 0))
      if (n > 0) tests.push_back({0, n, d, {}});
  }
  if (tests.empty()) throw UsageError("-p and -n are all 0: nothing to measure");
  const kv::KvTypes type = a.kv.kv_type();

  set_activity("loading the model " + a.model);
  const auto m = model::Model::load(a.model, a.engine.load(a.model));
  const model::ModelConfig& c = m->config;
  int64_t most = 0;
  for (const Test& t : tests) most = std::max(most, t.n_depth + t.n_prompt + t.n_gen);
  try {
    kv::check_kv_types(type, c.head_dim);
  } catch (const std::invalid_argument& e) {
    throw UsageError(e.what());
  }
  check_fits(double(most) * c.n_layers * c.n_kv_heads * double(type.token_bytes(c.head_dim)),
             fmt::format("-d/-p/-n: the KV cache of {} tokens", most));
  int64_t params = 0;
  for (const auto& t : m->file.tensors()) params += t.n_elements;
  const auto size = std::filesystem::file_size(a.model);
  const std::string name = std::filesystem::path(a.model).filename().string();
  const int threads = a.engine.n_threads();
  kernels::ThreadPool pool(threads);
  Bench bench(*m, pool, a);
  if (!a.no_warmup) bench.run({0, 1, 0, {}});   // first touches of weights and scratch
  const bool tty = isatty(STDERR_FILENO) != 0;  // progress in place, else a line per test

  for (size_t i = 0; i < tests.size(); ++i) {
    Test& t = tests[i];
    for (int r = 0; r < a.repetitions; ++r) {
      set_activity(fmt::format("{} repetition {}", t.name(), r + 1));
      if (tty)
        std::fprintf(stderr, "\rbench-model: test %zu/%zu %s, repetition %d/%d   ", i + 1,
                     tests.size(), t.name().c_str(), r + 1, a.repetitions);
      t.ns.push_back(bench.run(t));
    }
    if (!tty)
      std::fprintf(stderr, "bench-model: test %zu/%zu %s: %.2f t/s\n", i + 1, tests.size(),
                   t.name().c_str(), mean(t.rates()));
  }
  if (tty) std::fprintf(stderr, "\n");

  auto row_json = [&](const Test& t) {
    return nlohmann::json{{"model_filename", a.model},
                          {"model_size", size},
                          {"model_n_params", params},
                          {"n_threads", threads},
                          {"type_k", kv::kv_type_name(type.k)},
                          {"type_v", kv::kv_type_name(type.v)},
                          {"n_ubatch", a.ubatch},
                          {"activations", a.engine.activations},
                          {"n_prompt", t.n_prompt},
                          {"n_gen", t.n_gen},
                          {"n_depth", t.n_depth},
                          {"avg_ns", int64_t(mean(t.ns))},
                          {"stddev_ns", int64_t(stddev(t.ns))},
                          {"avg_ts", mean(t.rates())},
                          {"stddev_ts", stddev(t.rates())},
                          {"samples_ns", t.ns},
                          {"samples_ts", t.rates()}};
  };
  if (a.output == "jsonl") {
    for (const Test& t : tests) std::printf("%s\n", row_json(t).dump().c_str());
  } else if (a.output == "json") {
    nlohmann::json all = nlohmann::json::array();
    for (const Test& t : tests) all.push_back(row_json(t));
    std::printf("%s\n", all.dump(2).c_str());
  } else {
    std::printf("| model | size | params | threads | type_k | type_v | test | t/s |\n");
    std::printf("| --- | ---: | ---: | ---: | --- | --- | ---: | ---: |\n");
    for (const Test& t : tests)
      std::printf("| %s | %.2f MiB | %.2f M | %d | %s | %s | %s | %.2f ± %.2f |\n", name.c_str(),
                  double(size) / (1 << 20), double(params) / 1e6, threads,
                  kv::kv_type_name(type.k), kv::kv_type_name(type.v), t.name().c_str(),
                  mean(t.rates()), stddev(t.rates()));
  }
  std::fflush(stdout);
}

}  // namespace

void add_bench_model_command(CLI::App& app) {
  auto a = std::make_shared<BenchModelArgs>();
  a->kv.type = "f16";  // llama.cpp's default cache type: the like-for-like comparison
  CLI::App* cmd = app.add_subcommand(
      "bench-model", "Prefill and decode speed at a depth, as llama-bench measures them");
  cmd->add_option("-m,--model", a->model, "GGUF model file")->required();
  cmd->add_option("-p,--n-prompt", a->n_prompt, "Prompt sizes to time (comma-separated)")
      ->capture_default_str();
  cmd->add_option("-n,--n-gen", a->n_gen, "Numbers of decode steps to time (comma-separated)")
      ->capture_default_str();
  cmd->add_option("-d,--n-depth", a->n_depth,
                  "Tokens already in the cache before each test (comma-separated)")
      ->capture_default_str();
  cmd->add_option("-r,--repetitions", a->repetitions, "Repetitions of each test")
      ->capture_default_str();
  cmd->add_option("--ubatch-size", a->ubatch, "Tokens per forward call of a prefill")
      ->capture_default_str();
  cmd->add_option("-o,--output", a->output, "md, jsonl or json (llama-bench's field names)")
      ->capture_default_str();
  cmd->add_flag("--no-warmup", a->no_warmup, "Skip the warm-up step");
  add_kv_type_options(*cmd, a->kv);
  add_engine_options(*cmd, a->engine);
  cmd->callback([a] { bench_model(*a); });
}

}  // namespace fairkv::app
