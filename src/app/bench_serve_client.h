// The HTTP side of `fairkv bench-serve`: one streamed request to an OpenAI-compatible server
// (/v1/completions or /v1/chat/completions, server-sent events) timed chunk by chunk, the
// server's model name, and its tokenizer's count through POST /tokenize where it has one.
#pragma once

#include <cstdint>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

#include "app/bench_serve_requests.h"
#include "app/bench_serve_stats.h"

namespace fairkv::app::bench {

struct Target {
  std::string host = "127.0.0.1";
  int port = 8080;
  std::string endpoint = "/v1/completions";
  std::string model, api_key;
  double timeout_s = 300;  // the longest wait for the next bytes of an answer
  double connect_timeout_s = 10;
  bool ignore_eos = false;
  double temperature = 0;
  bool chat() const { return endpoint.find("chat") != std::string::npos; }
  std::string url() const;
};

// "http://HOST[:PORT][/]" into target's host and port (default 80); throws
// std::invalid_argument naming --base-url and what was expected.
void parse_base_url(const std::string& url, Target& target);

// The server cannot be reached, or does not answer within --timeout.
struct Unreachable : std::runtime_error {
  using std::runtime_error::runtime_error;
};

// GET /v1/models: the first model's id. Throws Unreachable (naming the address tried), or
// std::runtime_error with what the server answered.
std::string first_model(const Target& target);

// POST /tokenize {"content": text}: how many tokens the server's tokenizer makes of text
// (fairkv serve and llama-server both answer it), or nothing when the server has no such route.
std::optional<int64_t> count_tokens(const Target& target, const std::string& text);

// The request's JSON body: streamed, with usage asked for, greedy unless temperature says.
std::string request_body(const Target& target, const BenchRequest& r);

// Reads a server-sent event stream as it arrives and times its text chunks.
class StreamParser {
 public:
  explicit StreamParser(bool chat) : chat_(chat) {}
  // Bytes received at time t (seconds after the request was sent).
  void feed(std::string_view bytes, double t);
  // Ends the measurement at time t: fills r's times, counts and error.
  void finish(double t, RequestResult& r) const;
  bool done() const { return done_; }

 private:
  void event(std::string_view data, double t);
  bool chat_;
  std::string buf_;
  std::vector<double> chunk_times_;
  int64_t prompt_tokens_ = -1, completion_tokens_ = -1;
  bool done_ = false;
  std::string error_;
};

// Sends one request and measures it; never throws (a failure is r.ok = false with its reason).
RequestResult send_request(const Target& target, const BenchRequest& request);

}  // namespace fairkv::app::bench
