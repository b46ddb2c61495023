// fairkv's HTTP server: the OpenAI API (and llama-server's extras) in front of the engine.
//
// The HTTP layer only validates, translates and streams: each request's handler parses its body
// (openai_json.h), tokenizes the prompt or renders the chat, submits to the engine and waits for
// its events; the engine's own thread runs every step. A streamed response is written event by
// event as server-sent events; a write that fails (the client went away) cancels the request,
// which frees its cache at the next step boundary.
//
// Endpoints: POST /v1/completions, /v1/chat/completions, /tokenize, /detokenize,
// /apply-template; GET /v1/models, /health, /metrics (Prometheus), /stats (JSON for the page),
// /props (llama-server's: the chat template and defaults), / (the page).
//
// Limits: bodies over max_body_bytes are refused (413), request lines and header lines beyond
// cpp-httplib's 8 KiB (414 / 400); `threads` connections are served at once, the others wait
// their turn; a client that stops reading is dropped after the write timeout.
//
// Shutdown (SIGTERM in `fairkv serve`): new requests are refused (503), running ones finish or,
// after the grace period, are cancelled; then the listener closes and every thread is joined.
#pragma once

#include <cstddef>
#include <memory>
#include <optional>
#include <string>

#include "model/model.h"
#include "serve/engine.h"
#include "serve/metrics.h"
#include "serve/request.h"
#include "tokenizer/chat_template.h"

namespace fairkv::serve {

struct HttpOptions {
  std::string host = "127.0.0.1";
  int port = 8080;      // 0: any free port (start() returns it)
  std::string api_key;  // not empty: /v1/* and the others but /health and / need it as Bearer
  std::string alias;    // the model's name in /v1/models and responses
  int threads = 16;     // connections served at once
  size_t max_body_bytes = size_t(8) << 20;
  int read_timeout_s = 30, write_timeout_s = 30;
  // How chat requests are rendered; none: they are refused with no_chat_reason.
  std::optional<tokenizer::ChatTemplate> chat;
  std::string no_chat_reason = "this model has no chat template";
  std::string chat_template_text;  // the model's own (tokenizer.chat_template), for /props
  Request defaults;                // what a body leaves out (max_tokens, sampling)
};

class HttpServer {
 public:
  HttpServer(const model::Model& m, Engine& engine, HttpOptions o);
  ~HttpServer();  // shutdown(0) when still running
  HttpServer(const HttpServer&) = delete;
  HttpServer& operator=(const HttpServer&) = delete;

  // Binds host:port, starts the engine's thread and the HTTP threads, and returns the port.
  // Throws std::runtime_error when the address cannot be bound.
  int start();
  // Stops taking requests, lets the running ones finish for up to grace_s seconds, cancels the
  // rest, then stops the engine and the HTTP threads. Thread-safe: a second call only shortens
  // the grace period. Returns when everything has stopped.
  void shutdown(double grace_s);
  bool stopped() const;
  // Why the engine's thread failed (a step threw); requests are then refused with it.
  std::optional<std::string> engine_failure() const;

  const ServerMetrics& metrics() const;

  struct Impl;  // http_internal.h, for the server's own files

 private:
  std::unique_ptr<Impl> impl_;
};

}  // namespace fairkv::serve
