#include "serve/http_server.h"

#include <chrono>
#include <cstdio>
#include <random>
#include <stdexcept>

#include <fmt/format.h>

#include "model/chat_prompt.h"
#include "serve/http_internal.h"
#include "serve/page.h"

namespace fairkv::serve {

using nlohmann::json;

namespace {

void send_json(httplib::Response& res, const json& j, int status = 200) {
  res.status = status;
  res.set_content(dump(j), "application/json; charset=utf-8");
}

void send_error(httplib::Response& res, const ApiError& e) {
  if (e.retry_after_s > 0) res.set_header("Retry-After", std::to_string(e.retry_after_s));
  send_json(res, error_json(e), e.status);
}

json body_object(const httplib::Request& req) {
  json j;
  try {
    j = json::parse(req.body);
  } catch (const json::exception& e) {
    throw ApiError(400, fmt::format("the body is not valid JSON: {}", e.what()),
                   "invalid_request_error", "", "invalid_json");
  }
  if (!j.is_object())
    throw ApiError(400, fmt::format("the body must be a JSON object, got {}", j.type_name()));
  return j;
}

// Compares without stopping at the first difference, so that the time taken does not tell how
// much of a guessed key was right.
bool same_secret(const std::string& given, const std::string& key) {
  if (key.empty()) return false;
  unsigned diff = given.size() == key.size() ? 0 : 1;
  for (size_t i = 0; i < given.size(); ++i) diff |= unsigned(given[i] ^ key[i % key.size()]);
  return diff == 0;
}

}  // namespace

HttpServer::Impl::Impl(const model::Model& m, Engine& engine, HttpOptions o)
    : m(m), engine(engine), o(std::move(o)) {
  std::random_device rd;
  id_prefix = fmt::format("{:08x}", rd());
}

std::string HttpServer::Impl::next_response_id(Api api) {
  return fmt::format("{}-{}{:06x}", api == Api::Chat ? "chatcmpl" : "cmpl", id_prefix,
                     next_id.fetch_add(1));
}

bool HttpServer::Impl::authorized(const httplib::Request& req) const {
  if (o.api_key.empty()) return true;
  const std::string auth = req.get_header_value("Authorization");
  const std::string bearer = "Bearer ";
  return auth.starts_with(bearer) && same_secret(auth.substr(bearer.size()), o.api_key);
}

json HttpServer::Impl::stats_json() const {
  const EngineStats st = engine.stats();
  json ranks = json::array();
  for (const RankLoad& l : st.ranks)
    ranks.push_back(
        {{"kv_bytes", l.kv_bytes}, {"step_ms", l.step_ms}, {"predicted_ms", l.predicted_ms}});
  return {{"model", o.alias},
          {"backend", st.backend},
          {"chat", o.chat.has_value()},
          {"parallel", engine.options().parallel},
          {"n_ctx", engine.context()},
          {"kv_memory", engine.options().kv_memory},
          {"running", st.running},
          {"waiting", st.waiting},
          {"preempted", st.preempted},
          {"submitted", st.submitted},
          {"finished", st.finished},
          {"cancelled", st.cancelled},
          {"refused", st.refused},
          {"prompt_tokens", st.prompt_tokens},
          {"generated_tokens", st.generated_tokens},
          {"preemptions", st.preemptions},
          {"recomputations", st.recomputations},
          {"swap_ins", st.swap_ins},
          {"replans", st.replans},
          {"steps", st.steps},
          {"busy_ms", st.busy_ms},
          {"imbalance", st.imbalance},
          {"mean_imbalance", st.mean_imbalance},
          {"swap_host_bytes", st.swap_host_bytes},
          {"swap_file_bytes", st.swap_file_bytes},
          {"ranks", ranks}};
}

void HttpServer::Impl::add_routes() {
  // Every handler answers a refusal as an OpenAI error object, whatever threw it. The key is
  // checked here, after cpp-httplib has read the body: refused before (a pre-routing handler),
  // the unread body would be taken for the connection's next request.
  auto guard = [this](auto fn) {
    return [this, fn](const httplib::Request& req, httplib::Response& res) {
      try {
        if (req.path != "/health" && !authorized(req))
          throw ApiError(401, "Invalid API key: send it as \"Authorization: Bearer KEY\"",
                         "authentication_error", "", "invalid_api_key");
        fn(req, res);
      } catch (const ApiError& e) {
        send_error(res, e);
      } catch (const Refused& e) {
        send_error(res, api_error_of(e));
      } catch (const std::exception& e) {
        send_error(res, ApiError(500, e.what(), "server_error"));
      }
    };
  };
  svr.set_default_headers({{"Access-Control-Allow-Origin", "*"}});
  // What cpp-httplib refuses before any handler runs (no route, a body over the limit, a
  // malformed request) gets the same error object.
  svr.set_error_handler(httplib::Server::HandlerWithResponse(
      [this](const httplib::Request& req, httplib::Response& res) {
        if (!res.body.empty()) return httplib::Server::HandlerResponse::Unhandled;
        std::string msg = fmt::format("HTTP {}", res.status);
        if (res.status == 404) msg = fmt::format("no such endpoint: {} {}", req.method, req.path);
        if (res.status == 413)
          msg = fmt::format("the body is larger than {} bytes", o.max_body_bytes);
        if (res.status == 414) msg = "the request line is longer than 8 KiB";
        if (res.status == 400) msg = "malformed request (or a header line longer than 8 KiB)";
        send_error(res, ApiError(res.status, msg,
                                 res.status == 404 ? "not_found_error" : "invalid_request_error"));
        return httplib::Server::HandlerResponse::Handled;
      }));
  svr.set_exception_handler(
      [](const httplib::Request&, httplib::Response& res, std::exception_ptr) {
        send_error(res, ApiError(500, "internal error", "server_error"));
      });
  svr.set_logger([this](const httplib::Request&, const httplib::Response& res) {
    metrics.observe_response(res.status);
  });
  svr.Options(".*", [](const httplib::Request&, httplib::Response& res) {
    res.set_header("Access-Control-Allow-Methods", "GET, POST, OPTIONS");
    res.set_header("Access-Control-Allow-Headers", "Content-Type, Authorization");
    res.status = 204;
  });

  svr.Post("/v1/completions", guard([this](const httplib::Request& req, httplib::Response& res) {
             handle_completion(Api::Completions, req, res);
           }));
  svr.Post("/v1/chat/completions",
           guard([this](const httplib::Request& req, httplib::Response& res) {
             handle_completion(Api::Chat, req, res);
           }));
  svr.Get("/health", guard([this](const httplib::Request&, httplib::Response& res) {
            std::lock_guard lock(mu);
            if (engine_failure)
              throw ApiError(503, "the engine failed: " + *engine_failure, "unavailable_error");
            if (shutting)
              throw ApiError(503, "the server is shutting down", "unavailable_error", "",
                             "shutting_down");
            send_json(res, {{"status", "ok"}});
          }));
  auto models = guard([this](const httplib::Request&, httplib::Response& res) {
    json meta = {{"n_vocab", m.config.n_vocab},
                 {"n_ctx_train", m.config.n_ctx_train},
                 {"n_ctx", engine.context()}};
    send_json(res, {{"object", "list"},
                    {"data", json::array({{{"id", o.alias},
                                           {"object", "model"},
                                           {"created", created},
                                           {"owned_by", "fairkv"},
                                           {"meta", meta}}})}});
  });
  svr.Get("/v1/models", models);
  svr.Get("/models", models);
  svr.Post("/tokenize", guard([this](const httplib::Request& req, httplib::Response& res) {
             const json j = body_object(req);
             if (!j.contains("content") || !j["content"].is_string())
               throw ApiError(400, "\"content\": expected a string", "invalid_request_error",
                              "content");
             auto flag = [&](const char* f) {
               if (!j.contains(f) || j[f].is_null()) return false;
               if (!j[f].is_boolean())
                 throw ApiError(400, fmt::format("\"{}\": expected true or false", f),
                                "invalid_request_error", f);
               return j[f].get<bool>();
             };
             const bool add_special = flag("add_special"), with_pieces = flag("with_pieces");
             const auto ids = m.tokenizer.encode(j["content"].get<std::string>(),
                                                 add_special && m.tokenizer.add_bos(), true);
             json tokens = json::array();
             for (int32_t t : ids)
               if (with_pieces)
                 tokens.push_back({{"id", t}, {"piece", m.tokenizer.decode_token(t, true)}});
               else
                 tokens.push_back(t);
             send_json(res, {{"tokens", tokens}});
           }));
  svr.Post("/detokenize", guard([this](const httplib::Request& req, httplib::Response& res) {
             const json j = body_object(req);
             std::vector<int32_t> ids;
             const int64_t V = m.tokenizer.vocab_size();
             const auto bad = ApiError(
                 400, fmt::format("\"tokens\": expected a list of token ids in [0, {})", V),
                 "invalid_request_error", "tokens");
             if (!j.contains("tokens") || !j["tokens"].is_array()) throw bad;
             for (const json& t : j["tokens"]) {
               if (!t.is_number_integer() || t.get<int64_t>() < 0 || t.get<int64_t>() >= V)
                 throw bad;
               ids.push_back(t.get<int32_t>());
             }
             send_json(res, {{"content", m.tokenizer.decode(ids)}});
           }));
  svr.Post("/apply-template", guard([this](const httplib::Request& req, httplib::Response& res) {
             const ApiRequest ar = parse_api_request(Api::Chat, req.body, o.defaults, o.alias);
             if (!o.chat)
               throw ApiError(400, o.no_chat_reason, "invalid_request_error", "messages",
                              "no_chat_template");
             std::vector<tokenizer::ChatMessage> msgs;
             for (const ChatTurn& t : *ar.spec.messages) msgs.push_back({t.role, t.content});
             try {
               send_json(res, {{"prompt", tokenizer::render_chat(*o.chat, msgs)}});
             } catch (const tokenizer::ChatTemplateError& e) {
               throw ApiError(400, e.what(), "invalid_request_error", "messages");
             }
           }));
  svr.Get("/props", guard([this](const httplib::Request&, httplib::Response& res) {
            const auto& tok = m.tokenizer;
            const Request& d = o.defaults;
            send_json(res,
                      {{"model_alias", o.alias},
                       {"chat_template", o.chat_template_text},
                       {"chat_template_family",
                        o.chat ? json(tokenizer::kind_name(o.chat->kind)) : json()},
                       {"bos_token", tok.bos() >= 0 ? std::string(tok.token_text(tok.bos())) : ""},
                       {"eos_token", tok.eos() >= 0 ? std::string(tok.token_text(tok.eos())) : ""},
                       {"total_slots", engine.options().parallel},
                       {"n_ctx", engine.context()},
                       {"default_generation_settings",
                        {{"n_predict", d.max_tokens},
                         {"temperature", d.sampling.temp},
                         {"top_k", d.sampling.top_k},
                         {"top_p", d.sampling.top_p},
                         {"min_p", d.sampling.min_p},
                         {"seed", d.sampling.seed}}},
                       {"build_info", "fairkv 0.1"}});
          }));
  svr.Get("/metrics", guard([this](const httplib::Request&, httplib::Response& res) {
            res.set_content(
                prometheus_text(engine.stats(), metrics.snapshot(), engine.options().kv_memory),
                "text/plain; version=0.0.4; charset=utf-8");
          }));
  svr.Get("/stats", guard([this](const httplib::Request&, httplib::Response& res) {
            send_json(res, stats_json());
          }));
  svr.Get("/", [](const httplib::Request&, httplib::Response& res) {
    res.set_content(index_page(), "text/html; charset=utf-8");
  });
}

void HttpServer::Impl::engine_main() {
  try {
    engine.run_forever();
  } catch (const std::exception& e) {
    std::fprintf(stderr, "fairkv serve: the engine failed: %s\n", e.what());
    std::vector<std::shared_ptr<Channel>> waiting;
    {
      std::lock_guard lock(mu);
      engine_failure = e.what();
      for (auto& [id, w] : live)
        if (auto ch = w.lock()) waiting.push_back(ch);
    }
    for (auto& ch : waiting) ch->fail(std::string("the engine failed: ") + e.what());
  }
  std::lock_guard lock(mu);
  engine_done = true;
  cv.notify_all();
}

HttpServer::HttpServer(const model::Model& m, Engine& engine, HttpOptions o)
    : impl_(std::make_unique<Impl>(m, engine, std::move(o))) {}

HttpServer::~HttpServer() {
  if (impl_->started) shutdown(0);
}

int HttpServer::start() {
  Impl& I = *impl_;
  if (I.started) throw std::logic_error("HttpServer::start: already started");
  I.created = std::chrono::duration_cast<std::chrono::seconds>(
                  std::chrono::system_clock::now().time_since_epoch())
                  .count();
  const size_t threads = size_t(std::max(1, I.o.threads));
  I.svr.new_task_queue = [threads] { return new httplib::ThreadPool(threads); };
  I.svr.set_payload_max_length(I.o.max_body_bytes);
  I.svr.set_read_timeout(I.o.read_timeout_s);
  I.svr.set_write_timeout(I.o.write_timeout_s);
  I.svr.set_keep_alive_timeout(5);
  // cpp-httplib's default sets SO_REUSEPORT, with which a second server binds the same port and
  // silently takes half of its connections; SO_REUSEADDR alone still allows a quick restart.
  I.svr.set_socket_options([](socket_t sock) {
    int yes = 1;
    setsockopt(sock, SOL_SOCKET, SO_REUSEADDR, &yes, sizeof yes);
  });
  I.add_routes();
  int port = I.o.port;
  if (port == 0)
    port = I.svr.bind_to_any_port(I.o.host);
  else if (!I.svr.bind_to_port(I.o.host, port))
    port = -1;
  if (port <= 0)
    throw std::runtime_error(fmt::format(
        "cannot listen on {}:{} (the port is taken, or the host is not an address of this "
        "machine)",
        I.o.host, I.o.port));
  I.svr.raise_backlog(512);
  I.engine_thread = std::thread([&I] { I.engine_main(); });
  I.listen_thread = std::thread([&I] { I.svr.listen_after_bind(); });
  // cpp-httplib's stop() does nothing until the accept loop has begun: a shutdown that came
  // before it would leave the loop running and the join waiting for ever.
  for (int ms = 0; !I.svr.is_running(); ++ms) {
    if (ms == 10000) {
      I.svr.stop();
      I.engine.stop(true);
      I.listen_thread.join();
      I.engine_thread.join();
      throw std::runtime_error("the HTTP listener did not start");
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  std::lock_guard lock(I.mu);
  I.started = true;
  return port;
}

void HttpServer::shutdown(double grace_s) {
  Impl& I = *impl_;
  using clock = std::chrono::steady_clock;
  const auto deadline =
      clock::now() + std::chrono::milliseconds(int64_t(std::max(0.0, grace_s) * 1000));
  std::unique_lock lock(I.mu);
  if (I.shutting) {  // someone is shutting down already: hurry them, wait for them
    if (deadline < I.deadline) I.deadline = deadline;
    I.cv.notify_all();
    I.cv.wait(lock, [&] { return I.stopped; });
    return;
  }
  I.shutting = true;
  I.deadline = deadline;
  if (!I.started) {
    I.stopped = true;
    return;
  }
  // New requests are refused from here on; running ones go on until the deadline.
  lock.unlock();
  I.engine.stop(false);
  lock.lock();
  bool cancelled = false;
  while (!I.engine_done) {
    if (!cancelled && clock::now() >= I.deadline) {
      cancelled = true;
      lock.unlock();
      I.engine.stop(true);
      lock.lock();
      continue;
    }
    if (cancelled)
      I.cv.wait(lock);
    else
      I.cv.wait_until(lock, I.deadline);
  }
  // Every request has its final event; give the streams a moment to write their last chunks
  // (closing the listener ends chunked responses still being written).
  I.cv.wait_for(lock, std::chrono::seconds(5), [&] { return I.active == 0; });
  lock.unlock();
  I.svr.stop();
  I.listen_thread.join();
  I.engine_thread.join();
  lock.lock();
  I.stopped = true;
  I.cv.notify_all();
}

bool HttpServer::stopped() const {
  std::lock_guard lock(impl_->mu);
  return impl_->stopped;
}

std::optional<std::string> HttpServer::engine_failure() const {
  std::lock_guard lock(impl_->mu);
  return impl_->engine_failure;
}

const ServerMetrics& HttpServer::metrics() const {
  return impl_->metrics;
}

}  // namespace fairkv::serve
