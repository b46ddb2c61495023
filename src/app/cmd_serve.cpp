// `fairkv serve`: the serving engine behind an OpenAI-compatible HTTP server (serve/
// http_server.h). Under mpirun (--comm mpi) rank 0 serves HTTP and the other ranks follow it.
// SIGTERM or SIGINT: new requests are refused, running ones finish (for up to --shutdown-grace
// seconds, then they are cancelled) and the command exits 0; a second signal cancels at once.
#include <signal.h>

#include <chrono>
#include <cstdio>
#include <filesystem>
#include <memory>
#include <string>
#include <thread>

#include <fmt/format.h>

#include "app/commands.h"
#include "app/engine_options.h"
#include "app/kv_options.h"
#include "app/serve_options.h"
#include "model/chat_prompt.h"
#include "model/model.h"
#include "serve/engine.h"
#include "serve/http_server.h"

namespace fairkv::app {

namespace {

struct ServeArgs {
  std::string model, host = "127.0.0.1", api_key, alias, chat_template;
  int port = 8080, threads_http = 0, timeout_s = 30;
  double grace_s = 30;
  EngineOptions engine;
  KvOptions kv;
  ServeOptions serve;
};

// The chat template chat requests are rendered with: --chat-template's family, or the model's
// own; a model without one serves completions only, but one whose template fairkv cannot
// render is refused here, by name, rather than at the first chat request.
void choose_chat_template(const ServeArgs& a, const model::Model& m, serve::HttpOptions& ho) {
  const std::string text = m.file.find_string("tokenizer.chat_template").value_or("");
  ho.chat_template_text = text;
  const std::string families = "chatml, llama3, llama2 or mistral";
  if (!a.chat_template.empty()) {
    try {
      ho.chat = model::chat_template(m, a.chat_template);
    } catch (const tokenizer::ChatTemplateError& e) {
      throw UsageError(fmt::format("--chat-template: {}", e.what()));
    }
    return;
  }
  if (text.empty()) {
    ho.no_chat_reason = fmt::format(
        "this model has no chat template (tokenizer.chat_template): use /v1/completions, or "
        "start the server with --chat-template {}",
        families);
    return;
  }
  try {
    ho.chat = model::chat_template(m);
  } catch (const tokenizer::ChatTemplateError& e) {
    throw UsageError(
        fmt::format("the model's chat template cannot be rendered ({}); pick its family with "
                    "--chat-template {}",
                    e.what(), families));
  }
}

void run_serve(const ServeArgs& a) {
  // Only this thread takes SIGINT and SIGTERM (sigtimedwait below): the mask is set before any
  // thread starts (MPI's, the pools', the server's), and they inherit it. Ranks other than 0
  // keep them blocked: they follow rank 0, which ends them when it has drained.
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGINT);
  sigaddset(&signals, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);

  const auto m = model::Model::load(a.model, a.engine.load(a.model));
  if (a.serve.follow_if_not_rank0(*m, a.engine)) return;  // ranks 1.. of an mpirun job
  serve::HttpOptions ho;
  ho.host = a.host;
  ho.port = a.port;
  ho.api_key = a.api_key;
  ho.alias = a.alias.empty() ? std::filesystem::path(a.model).filename().string() : a.alias;
  ho.threads = a.threads_http > 0 ? a.threads_http : std::max(16, 4 * a.serve.parallel);
  ho.read_timeout_s = ho.write_timeout_s = a.timeout_s;
  ho.defaults = a.serve.request_defaults();
  choose_chat_template(a, *m, ho);

  serve::EngineOptions eo = a.serve.engine_options(a.kv);
  kernels::ThreadPool pool(a.engine.n_threads());
  std::unique_ptr<serve::Backend> backend = a.serve.make_backend(*m, pool, a.engine, a.kv, eo);
  serve::Engine engine(*m, std::move(backend), eo);
  serve::HttpServer server(*m, engine, ho);
  const int port = server.start();
  std::fprintf(stderr, "fairkv serve: %s as '%s', %s, chat template %s\n", a.model.c_str(),
               ho.alias.c_str(), engine.stats().backend.c_str(),
               ho.chat ? tokenizer::kind_name(ho.chat->kind) : "none (completions only)");
  std::fprintf(stderr, "listening on http://%s:%d\n", a.host.c_str(), port);
  std::fflush(stderr);

  std::thread drain;
  bool failed = false;
  while (!server.stopped()) {
    const timespec tick{0, 200 * 1000 * 1000};
    const int sig = sigtimedwait(&signals, nullptr, &tick);
    if (sig == SIGINT || sig == SIGTERM) {
      if (!drain.joinable()) {
        std::fprintf(stderr,
                     "fairkv serve: %s: finishing the running requests (up to %g s; signal "
                     "again to cancel them)\n",
                     sig == SIGINT ? "SIGINT" : "SIGTERM", a.grace_s);
        drain = std::thread([&server, &a] { server.shutdown(a.grace_s); });
      } else {
        std::fprintf(stderr, "fairkv serve: cancelling the running requests\n");
        server.shutdown(0);
      }
    }
    if (!failed && server.engine_failure()) {
      failed = true;
      if (!drain.joinable()) drain = std::thread([&server] { server.shutdown(0); });
    }
  }
  if (drain.joinable()) drain.join();
  if (failed) throw std::runtime_error("the engine failed: " + *server.engine_failure());
  const serve::EngineStats st = engine.stats();
  std::fprintf(stderr, "fairkv serve: stopped after %lld requests (%lld cancelled)\n",
               (long long)st.finished, (long long)st.cancelled);
}

}  // namespace

void add_serve_command(CLI::App& app) {
  auto a = std::make_shared<ServeArgs>();
  CLI::App* cmd = app.add_subcommand(
      "serve",
      "Serve the model over HTTP: OpenAI's /v1/completions and /v1/chat/completions (streamed "
      "or not), /v1/models, /tokenize, /detokenize, /health, /metrics, and a page at /");
  cmd->add_option("-m,--model", a->model, "GGUF model file")->required();
  cmd->add_option("--host", a->host, "Address to listen on")->capture_default_str();
  cmd->add_option("--port", a->port, "Port to listen on (0: any free port, printed)")
      ->check(CLI::Range(0, 65535))
      ->capture_default_str();
  cmd->add_option("--api-key", a->api_key,
                  "Require \"Authorization: Bearer KEY\" on every endpoint but / and /health");
  cmd->add_option("-a,--alias", a->alias,
                  "The model's name in /v1/models and responses; requests naming another model "
                  "are refused (default: the file name)");
  cmd->add_option("--chat-template", a->chat_template,
                  "Chat template family instead of the model's: chatml, llama3, llama2, mistral");
  cmd->add_option("--threads-http", a->threads_http,
                  "Connections served at once (0: max(16, 4 x --parallel))")
      ->check(CLI::Range(0, 1024))
      ->capture_default_str();
  cmd->add_option("--timeout", a->timeout_s,
                  "Seconds a connection may wait to read a request or write an answer")
      ->check(CLI::Range(1, 86400))
      ->capture_default_str();
  cmd->add_option("--shutdown-grace", a->grace_s,
                  "On SIGTERM/SIGINT: seconds running requests may take to finish before they "
                  "are cancelled")
      ->check(CLI::NonNegativeNumber)
      ->capture_default_str();
  add_engine_options(*cmd, a->engine);
  add_kv_options(*cmd, a->kv);
  add_serve_options(*cmd, a->serve);
  cmd->callback([a] { run_serve(*a); });
}

}  // namespace fairkv::app
