// `fairkv batch`: the serving engine driven by a request file instead of HTTP. Each line of the
// file is one request (serve/request_json.h) with its arrival offset; requests are submitted as
// their time comes, run with continuous batching, and each one's output is printed as it ends,
// then a summary (TTFT, TPOT, throughput, preemptions, re-plans).
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "app/commands.h"
#include "app/engine_options.h"
#include "app/kv_options.h"
#include "app/serve_options.h"
#include "kernels/clock.h"
#include "model/chat_prompt.h"
#include "model/model.h"
#include "serve/engine.h"
#include "serve/request_json.h"

namespace fairkv::app {

namespace {

struct BatchArgs {
  std::string model, requests, chat_template;
  EngineOptions engine;
  KvOptions kv;
  ServeOptions serve;
  bool json = false;
};

struct Line {
  serve::RequestSpec spec;
  std::string name;  // "line N" or the request's id
};

std::vector<Line> read_request_file(const std::string& path, const serve::Request& defaults) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw UsageError(path + ": cannot read the request file (--requests)");
  std::vector<Line> lines;
  for (serve::RequestLine& r : serve::read_request_lines(in, defaults, path)) {
    Line l;
    l.spec = std::move(r.spec);
    l.name = l.spec.request.tag.empty() ? fmt::format("line {}", r.line) : l.spec.request.tag;
    l.spec.request.tag = l.name;
    lines.push_back(std::move(l));
  }
  if (lines.empty()) throw UsageError(path + ": no requests in the file (--requests)");
  std::stable_sort(lines.begin(), lines.end(), [](const Line& a, const Line& b) {
    return a.spec.arrival_s < b.spec.arrival_s;
  });
  return lines;
}

double percentile(std::vector<double> v, double q) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  const double pos = q * double(v.size() - 1);
  const size_t i = size_t(pos);
  const double f = pos - double(i);
  return i + 1 < v.size() ? v[i] * (1 - f) + v[i + 1] * f : v[i];
}

double mean(const std::vector<double>& v) {
  double s = 0;
  for (double x : v) s += x;
  return v.empty() ? 0 : s / double(v.size());
}

struct Result {
  std::string name, text;
  int64_t tokens = 0;
  serve::FinishReason finish = serve::FinishReason::None;
  serve::RequestStats stats;
  std::string error;
  std::vector<double> token_ms;  // when each token event arrived
};

void run_batch(const BatchArgs& a) {
  set_activity("loading the model " + a.model);
  const auto m = model::Model::load(a.model, a.engine.load(a.model));
  if (a.serve.follow_if_not_rank0(*m, a.engine)) return;  // ranks 1.. of an mpirun job
  serve::Request defaults = a.serve.request_defaults();
  set_activity("reading the requests " + a.requests);
  std::vector<Line> lines = read_request_file(a.requests, defaults);
  std::optional<tokenizer::ChatTemplate> chat;
  for (Line& l : lines) {
    serve::Request& r = l.spec.request;
    if (l.spec.messages) {
      if (!chat) chat = model::chat_template(*m, a.chat_template);
      std::vector<tokenizer::ChatMessage> msgs;
      for (const auto& t : *l.spec.messages) msgs.push_back({t.role, t.content});
      r.prompt = model::chat_prompt_ids(*m, *chat, msgs);
    } else if (l.spec.prompt) {
      r.prompt = m->tokenizer.encode(*l.spec.prompt, m->tokenizer.add_bos());
    } else {
      r.prompt = l.spec.prompt_ids;
    }
  }
  set_activity(fmt::format("serving the {} requests of {}", lines.size(), a.requests));
  serve::EngineOptions eo = a.serve.engine_options(a.kv);
  kernels::ThreadPool pool(a.engine.n_threads());
  std::unique_ptr<serve::Backend> backend = a.serve.make_backend(*m, pool, a.engine, a.kv, eo);
  serve::Engine engine(*m, std::move(backend), eo);

  std::vector<Result> results(lines.size());
  const auto t0 = std::chrono::steady_clock::now();
  size_t next = 0, done = 0;
  auto submit_due = [&] {
    const double now_s = kernels::ms_since(t0) / 1000;
    for (; next < lines.size() && lines[next].spec.arrival_s <= now_s; ++next) {
      Result& res = results[next];
      res.name = lines[next].name;
      try {
        engine.submit(lines[next].spec.request, [&res, &done, &a, t0](const serve::Event& e) {
          res.text += e.text;
          if (e.token >= 0) {
            ++res.tokens;
            res.token_ms.push_back(kernels::ms_since(t0));
          }
          if (e.finish == serve::FinishReason::None) return;
          res.finish = e.finish;
          res.stats = *e.stats;
          ++done;
          if (a.json) return;
          std::printf("[%s] %s, %lld tokens, TTFT %.1f ms, TPOT %.2f ms\n%s\n\n", res.name.c_str(),
                      serve::finish_reason_name(res.finish), (long long)res.tokens,
                      res.stats.ttft_ms(), res.stats.tpot_ms(), res.text.c_str());
          std::fflush(stdout);
        });
      } catch (const serve::Refused& e) {
        res.error = e.what();
        res.finish = serve::FinishReason::Error;
        ++done;
        std::fprintf(stderr, "fairkv batch: %s refused: %s\n", res.name.c_str(), e.what());
      }
    }
  };
  while (done < lines.size()) {
    submit_due();
    if (engine.step()) continue;
    if (next < lines.size()) {
      const double wait_ms = lines[next].spec.arrival_s * 1000 - kernels::ms_since(t0);
      if (wait_ms > 0)
        std::this_thread::sleep_for(std::chrono::microseconds(int64_t(wait_ms * 1000)));
    }
  }
  const double wall_s = kernels::ms_since(t0) / 1000;
  const serve::EngineStats st = engine.stats();

  std::vector<double> ttft, tpot, itl;
  int64_t out_tokens = 0, ok = 0;
  for (const Result& r : results) {
    if (r.finish == serve::FinishReason::Error) continue;
    ++ok;
    out_tokens += r.tokens;
    ttft.push_back(r.stats.ttft_ms());
    if (r.tokens > 1) tpot.push_back(r.stats.tpot_ms());
    for (size_t i = 1; i < r.token_ms.size(); ++i) itl.push_back(r.token_ms[i] - r.token_ms[i - 1]);
  }
  if (a.json) {
    for (const Result& r : results) {
      nlohmann::json j = {{"id", r.name},
                          {"finish_reason", serve::finish_reason_name(r.finish)},
                          {"text", r.text},
                          {"completion_tokens", r.tokens},
                          {"prompt_tokens", r.stats.prompt_tokens},
                          {"ttft_ms", r.stats.ttft_ms()},
                          {"tpot_ms", r.stats.tpot_ms()},
                          {"preemptions", r.stats.preemptions}};
      if (!r.error.empty()) j["error"] = r.error;
      std::printf("%s\n", j.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace).c_str());
    }
  }
  FILE* out = a.json ? stderr : stdout;
  std::fprintf(out, "\n%s\n", std::string(64, '-').c_str());
  std::fprintf(out, "requests            %lld done, %lld refused, in %.2f s (%s)\n", (long long)ok,
               (long long)(int64_t(results.size()) - ok), wall_s, st.backend.c_str());
  std::fprintf(out, "throughput          %.2f requests/s, %.1f output tokens/s\n",
               double(ok) / wall_s, double(out_tokens) / wall_s);
  std::fprintf(out, "TTFT ms             mean %.1f  p50 %.1f  p90 %.1f  p99 %.1f\n", mean(ttft),
               percentile(ttft, 0.5), percentile(ttft, 0.9), percentile(ttft, 0.99));
  std::fprintf(out, "TPOT ms             mean %.2f  p50 %.2f  p90 %.2f  p99 %.2f\n", mean(tpot),
               percentile(tpot, 0.5), percentile(tpot, 0.9), percentile(tpot, 0.99));
  std::fprintf(out, "ITL ms              mean %.2f  p50 %.2f  p90 %.2f  p99 %.2f\n", mean(itl),
               percentile(itl, 0.5), percentile(itl, 0.9), percentile(itl, 0.99));
  std::fprintf(out, "steps               %lld (%.1f ms busy)\n", (long long)st.steps, st.busy_ms);
  std::fprintf(out, "preemptions         %lld (%lld recomputed, %lld swapped back in)\n",
               (long long)st.preemptions, (long long)st.recomputations, (long long)st.swap_ins);
  std::fprintf(out, "re-plans            %lld\n", (long long)st.replans);
  if (st.ranks.size() > 1)
    std::fprintf(out,
                 "KV imbalance        %.3f (max / mean of the ranks' KV bytes, mean over steps)\n",
                 st.mean_imbalance);
}

}  // namespace

void add_batch_command(CLI::App& app) {
  auto a = std::make_shared<BatchArgs>();
  CLI::App* cmd = app.add_subcommand(
      "batch",
      "Serve the requests of a file (JSON lines) with continuous batching, as they arrive");
  cmd->add_option("-m,--model", a->model, "GGUF model file")->required();
  cmd->add_option("--requests", a->requests,
                  "Request file: one JSON object per line (prompt or messages, max_tokens, "
                  "temperature, seed, stop, kv_policy, kv_budget, arrival in seconds, ...)")
      ->required();
  cmd->add_option("--chat-template", a->chat_template,
                  "Chat template family for \"messages\" instead of the model's: chatml, llama3, "
                  "llama2, mistral");
  cmd->add_flag("--json", a->json, "Print one JSON object per request (the summary on stderr)");
  add_engine_options(*cmd, a->engine);
  add_kv_options(*cmd, a->kv);
  add_serve_options(*cmd, a->serve);
  cmd->callback([a] { run_batch(*a); });
}

}  // namespace fairkv::app
