// What the HTTP server's tests share: the server in-process on a free port with the shared
// stories260K model, a backend whose steps the test can hold (so that "running", "waiting" and
// "queue full" are states the test sets up rather than races it hopes to win), and clients.
#pragma once

#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <httplib.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <filesystem>
#include <functional>
#include <memory>
#include <mutex>
#include <nlohmann/json.hpp>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "model/model.h"
#include "serve/engine.h"
#include "serve/http_server.h"
#include "serve/solo_backend.h"
#include "serve/stories_test_util.h"

namespace fairkv::serve::testing {

using nlohmann::json;

// SoloBackend whose run() waits while the gate is closed, and may sleep per step.
class GatedBackend final : public Backend {
 public:
  explicit GatedBackend(std::unique_ptr<Backend> inner) : in_(std::move(inner)) {}
  void close_gate() {
    std::lock_guard lock(mu_);
    open_ = false;
  }
  void open_gate() {
    std::lock_guard lock(mu_);
    open_ = true;
    cv_.notify_all();
  }
  // Waits until a step is held at the closed gate.
  bool wait_held(double seconds = 10) {
    std::unique_lock lock(mu_);
    return cv_.wait_for(lock, std::chrono::milliseconds(int64_t(seconds * 1000)),
                        [&] { return held_; });
  }
  std::atomic<int> step_delay_us{0};
  std::atomic<bool> fail{false};  // run() throws, as a lost device would

  int ranks() const override { return in_->ranks(); }
  int64_t n_vocab() const override { return in_->n_vocab(); }
  size_t row_bytes() const override { return in_->row_bytes(); }
  void open(SeqId s, int64_t max_rows) override { in_->open(s, max_rows); }
  void close(SeqId s) override { in_->close(s); }
  std::span<const float> run(std::span<const StepItem> items) override {
    {
      std::unique_lock lock(mu_);
      held_ = !open_;
      cv_.notify_all();
      cv_.wait(lock, [&] { return open_; });
      held_ = false;
    }
    if (step_delay_us > 0) std::this_thread::sleep_for(std::chrono::microseconds(step_delay_us));
    if (fail) throw std::runtime_error("the device is lost");
    return in_->run(items);
  }
  int64_t rows(SeqId s) const override { return in_->rows(s); }
  size_t bytes_for(int64_t rows, int64_t max_rows) const override {
    return in_->bytes_for(rows, max_rows);
  }
  size_t growth_bytes(SeqId s, int64_t n, bool done) const override {
    return in_->growth_bytes(s, n, done);
  }
  std::vector<RankLoad> loads() const override { return in_->loads(); }
  SwapPlace swap_out(SeqId s) override { return in_->swap_out(s); }
  void swap_in(SeqId s) override { in_->swap_in(s); }
  size_t swap_bytes_host() const override { return in_->swap_bytes_host(); }
  size_t swap_bytes_file() const override { return in_->swap_bytes_file(); }
  std::string describe() const override { return in_->describe(); }

 private:
  std::unique_ptr<Backend> in_;
  std::mutex mu_;
  std::condition_variable cv_;
  bool open_ = true, held_ = false;
};

inline EngineOptions test_engine(int parallel = 4) {
  EngineOptions eo;
  eo.parallel = parallel;
  eo.prefill_chunk = 32;
  eo.step_tokens = 32 + parallel + 16;
  eo.compression.window = 8;
  return eo;
}

inline HttpOptions test_http() {
  HttpOptions ho;
  ho.port = 0;
  ho.alias = "stories260K";
  ho.threads = 48;
  ho.defaults.max_tokens = 16;
  ho.defaults.sampling.temp = 0;
  return ho;
}

struct TestServer {
  kernels::ThreadPool pool{1};
  GatedBackend* backend = nullptr;
  std::unique_ptr<Engine> engine;
  std::unique_ptr<HttpServer> http;
  int port = 0;

  TestServer(const model::Model& m, EngineOptions eo = test_engine(),
             HttpOptions ho = test_http()) {
    auto b = std::make_unique<GatedBackend>(std::make_unique<SoloBackend>(m, pool, SoloOptions{}));
    backend = b.get();
    engine = std::make_unique<Engine>(m, std::move(b), eo);
    http = std::make_unique<HttpServer>(m, *engine, std::move(ho));
    port = http->start();
  }
  ~TestServer() {
    backend->open_gate();
    http.reset();
  }
  httplib::Client client() const {
    httplib::Client c("127.0.0.1", port);
    c.set_read_timeout(120);
    c.set_write_timeout(30);
    return c;
  }
  // Polls the engine's stats until `done` holds (or 10 s pass).
  bool wait_for(const std::function<bool(const EngineStats&)>& done) const {
    for (int i = 0; i < 2000; ++i) {
      if (done(engine->stats())) return true;
      std::this_thread::sleep_for(std::chrono::milliseconds(5));
    }
    return false;
  }
};

struct Reply {
  int status = 0;
  std::string body;
  json j;  // the body parsed (null when it is not JSON)
  std::string retry_after;
};

inline Reply post(httplib::Client& c, const std::string& path, const std::string& body,
                  const httplib::Headers& headers = {}) {
  Reply r;
  auto res = c.Post(path.c_str(), headers, body, "application/json");
  if (!res) {
    r.body = "no response: " + httplib::to_string(res.error());
    return r;
  }
  r.status = res->status;
  r.body = res->body;
  r.retry_after = res->get_header_value("Retry-After");
  r.j = json::parse(r.body, nullptr, false);
  if (r.j.is_discarded()) r.j = nullptr;
  return r;
}

inline Reply post(httplib::Client& c, const std::string& path, const json& body) {
  return post(c, path, body.dump());
}

inline Reply get(httplib::Client& c, const std::string& path, const httplib::Headers& h = {}) {
  Reply r;
  auto res = c.Get(path.c_str(), h);
  if (!res) return r;
  r.status = res->status;
  r.body = res->body;
  r.j = json::parse(r.body, nullptr, false);
  if (r.j.is_discarded()) r.j = nullptr;
  return r;
}

// The data lines of a server-sent event stream, in order ("[DONE]" included), and whether the
// stream is exactly "data: <line>\n\n" events.
struct Events {
  std::vector<std::string> data;
  bool well_formed = true;
};

inline Events parse_events(const std::string& body) {
  Events ev;
  size_t pos = 0;
  while (pos < body.size()) {
    const size_t end = body.find("\n\n", pos);
    if (end == std::string::npos || body.compare(pos, 6, "data: ") != 0) {
      ev.well_formed = false;
      break;
    }
    const std::string line = body.substr(pos + 6, end - pos - 6);
    if (line.find('\n') != std::string::npos) ev.well_formed = false;
    ev.data.push_back(line);
    pos = end + 2;
  }
  return ev;
}

// The text a stream delivered (chat deltas or completion texts).
inline std::string streamed_text(const Events& ev) {
  std::string text;
  for (const std::string& d : ev.data) {
    if (d == "[DONE]") break;
    const json j = json::parse(d);
    if (!j.contains("choices") || j["choices"].empty()) continue;
    const json& c = j["choices"][0];
    if (c.contains("delta"))
      text += c["delta"].value("content", "");
    else
      text += c["text"].get<std::string>();
  }
  return text;
}

// A raw connection that posts `body` and reads until the first streamed event has arrived; the
// caller closes it to play a client that goes away mid-stream. -1 when that fails.
inline int open_stream(int port, const std::string& path, const std::string& body) {
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(uint16_t(port));
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (fd < 0 || connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0) return -1;
  const std::string req = "POST " + path +
                          " HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                          "Content-Length: " +
                          std::to_string(body.size()) + "\r\n\r\n" + body;
  if (write(fd, req.data(), req.size()) != ssize_t(req.size())) return close(fd), -1;
  std::string got;
  char buf[4096];
  while (got.find("data: ") == std::string::npos) {
    const ssize_t n = read(fd, buf, sizeof buf);
    if (n <= 0) return close(fd), -1;
    got.append(buf, size_t(n));
  }
  return fd;
}

// Checks OpenAI's error object: {"error": {"message": string, "type": string, "param": string
// or null, "code": string or null}}.
inline void expect_error_shape(const Reply& r) {
  ASSERT_TRUE(r.j.is_object()) << r.body;
  ASSERT_TRUE(r.j.contains("error")) << r.body;
  const json& e = r.j["error"];
  EXPECT_TRUE(e["message"].is_string()) << r.body;
  EXPECT_FALSE(e["message"].get<std::string>().empty()) << r.body;
  EXPECT_TRUE(e["type"].is_string()) << r.body;
  EXPECT_TRUE(e.contains("param") && (e["param"].is_null() || e["param"].is_string())) << r.body;
  EXPECT_TRUE(e.contains("code") && (e["code"].is_null() || e["code"].is_string())) << r.body;
}

class HttpTest : public Stories260KTest {};

}  // namespace fairkv::serve::testing
