// The inside of HttpServer, shared by http_server.cpp (life cycle, routes, the small endpoints)
// and http_completions.cpp (the two completion endpoints). Not part of the serve layer's API.
#pragma once

#include <httplib.h>
#include <sys/socket.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "serve/http_server.h"
#include "serve/openai_json.h"

namespace fairkv::serve {

// One request's events, carried from the engine's thread to the HTTP thread that answers it.
class Channel {
 public:
  struct Piece {
    std::string text;                    // released since the last take
    std::vector<TokenLogprob> logprobs;  // those of the tokens that text completes
    bool finished = false;
  };
  void push(const Event& e);
  // Engine failure: ends the request with an error unless it has ended.
  void fail(const std::string& why);
  // Waits for text or the end and takes what arrived.
  Piece take();
  void wait_finished();
  // Waits up to `for_` for the end; whether it came.
  bool wait_finished(std::chrono::milliseconds for_);
  bool finished() const;
  // Valid once finished.
  FinishReason finish() const { return finish_; }
  const RequestStats& stats() const { return stats_; }
  const std::string& error() const { return error_; }

 private:
  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::string text_;
  std::vector<TokenLogprob> logprobs_;
  bool finished_ = false;
  FinishReason finish_ = FinishReason::None;
  RequestStats stats_;
  std::string error_;
};

// cpp-httplib 0.11 listens with a backlog of 5 connections (a compile-time constant of the
// Debian library): a burst of clients overflows it, and the kernel then drops their handshakes,
// some of which end as connections closed before any answer. listen() again on the bound socket
// raises the backlog; the socket is a protected member, hence the subclass.
class Listener : public httplib::Server {
 public:
  void raise_backlog(int n) { ::listen(svr_sock_, n); }
};

struct HttpServer::Impl {
  Impl(const model::Model& m, Engine& engine, HttpOptions o);

  void add_routes();
  void handle_completion(Api api, const httplib::Request& req, httplib::Response& res);
  // The prompt's tokens: the chat rendered, the text tokenized, or the ids as given.
  std::vector<int32_t> prompt_ids(const RequestSpec& spec) const;
  // Submits and registers the request; throws ApiError for a refusal.
  RequestId submit(Request r, const std::shared_ptr<Channel>& ch);
  void release(RequestId id, const Channel& ch);  // cancels an unfinished request, unregisters
  void engine_main();
  bool authorized(const httplib::Request& req) const;
  std::string next_response_id(Api api);
  nlohmann::json stats_json() const;

  const model::Model& m;
  Engine& engine;
  HttpOptions o;
  Listener svr;
  ServerMetrics metrics;
  int64_t created = 0;  // the server's start, seconds since the epoch
  std::string id_prefix;
  std::atomic<uint64_t> next_id{1};

  std::thread engine_thread, listen_thread;
  mutable std::mutex mu;  // guards what follows
  std::condition_variable cv;
  std::map<RequestId, std::weak_ptr<Channel>> live;  // submitted, answer not yet sent
  int active = 0;                                    // completion answers being written
  bool started = false, shutting = false, engine_done = false, stopped = false;
  std::optional<std::string> engine_failure;
  std::chrono::steady_clock::time_point deadline;
};

}  // namespace fairkv::serve
