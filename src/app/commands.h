// The subcommands of `fairkv`. Each registers itself on the CLI11 app and runs when chosen;
// a command reports bad input by throwing fairkv::app::UsageError or any std::exception, which
// main prints as "fairkv: error: <message>" with exit code 1.
#pragma once

#include <CLI/CLI.hpp>
#include <stdexcept>
#include <string>
#include <vector>

namespace fairkv::app {

struct UsageError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

// The items of a comma-separated option value ("1,2,4"), empty items dropped.
inline std::vector<std::string> split_list(const std::string& s) {
  std::vector<std::string> out;
  size_t b = 0;
  while (b <= s.size()) {
    size_t e = s.find(',', b);
    if (e == std::string::npos) e = s.size();
    if (e > b) out.push_back(s.substr(b, e - b));
    b = e + 1;
  }
  return out;
}

// The process's command line as main received it: what the ranks of an MPI job compare before
// they start (runtime/job_fingerprint.h).
std::vector<std::string>& command_line();

// What the running command is doing now ("planning split on 1024 devices"), set as it goes: an
// error that cannot say what it was about (std::bad_alloc) is printed by main with the command's
// name and this (main.cpp).
void set_activity(std::string what);

void add_run_command(CLI::App& app);      // generate text (cmd_run.cpp)
void add_inspect_command(CLI::App& app);  // describe a GGUF file (cmd_inspect.cpp)
// Write a random-weight GGUF of a real model's shape (cmd_synth.cpp).
void add_synth_command(CLI::App& app);
void add_plan_command(CLI::App& app);        // place units on devices (cmd_plan.cpp)
void add_eval_command(CLI::App& app);        // fidelity of KV compression (cmd_eval.cpp)
void add_profile_command(CLI::App& app);     // measure a load profile (cmd_profile.cpp)
void add_bench_command(CLI::App& app);       // placements side by side (cmd_bench.cpp)
void add_importance_command(CLI::App& app);  // HeadKV head importance (cmd_importance.cpp)
// Perplexity over a text file, as llama-perplexity (cmd_perplexity.cpp).
void add_perplexity_command(CLI::App& app);
// Serve a file of requests with continuous batching (cmd_batch.cpp).
void add_batch_command(CLI::App& app);
// Serve the model over HTTP, OpenAI's API (cmd_serve.cpp).
void add_serve_command(CLI::App& app);
// Prefill and decode speed at a depth, as llama-bench (cmd_bench_model.cpp).
void add_bench_model_command(CLI::App& app);
// Benchmark an OpenAI-compatible server, as vLLM's bench serve (cmd_bench_serve.cpp).
void add_bench_serve_command(CLI::App& app);

}  // namespace fairkv::app
