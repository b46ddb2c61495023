#include "app/bench_serve_client.h"

#include <httplib.h>

#include <chrono>
#include <stdexcept>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

namespace fairkv::app::bench {

using nlohmann::json;

namespace {

httplib::Client client(const Target& t) {
  httplib::Client c(t.host, t.port);
  const auto secs = [](double s, auto f) { f(time_t(s), time_t((s - double(time_t(s))) * 1e6)); };
  secs(t.connect_timeout_s, [&](time_t s, time_t us) { c.set_connection_timeout(s, us); });
  secs(t.timeout_s, [&](time_t s, time_t us) { c.set_read_timeout(s, us); });
  secs(t.timeout_s, [&](time_t s, time_t us) { c.set_write_timeout(s, us); });
  if (!t.api_key.empty()) c.set_bearer_token_auth(t.api_key);
  return c;
}

// The message of an OpenAI-style error body ({"error": {"message": ...}}), else the body's start.
std::string error_message(const std::string& body) {
  const json j = json::parse(body, nullptr, false);
  if (j.is_object() && j.contains("error")) {
    const json& e = j["error"];
    if (e.is_object() && e.contains("message") && e["message"].is_string())
      return e["message"].get<std::string>();
    if (e.is_string()) return e.get<std::string>();
  }
  return body.substr(0, 200);
}

// Why a request got no HTTP answer, in words a user can act on.
std::string transport_error(const Target& t, httplib::Error e) {
  if (e == httplib::Error::Connection || e == httplib::Error::ConnectionTimeout)
    return fmt::format(
        "cannot reach the server at {} ({}): is it running, and is that its address?", t.url(),
        httplib::to_string(e));
  if (e == httplib::Error::Read)
    return fmt::format(
        "no answer from {} within --timeout {} s, or the connection closed mid-answer (Read)",
        t.url(), t.timeout_s);
  return fmt::format("HTTP request to {} failed ({})", t.url(), httplib::to_string(e));
}

}  // namespace

std::string Target::url() const {
  return fmt::format("http://{}:{}", host, port);
}

void parse_base_url(const std::string& url, Target& t) {
  const std::string scheme = "http://";
  const auto bad = [&](const std::string& why) {
    return std::invalid_argument(fmt::format(
        "--base-url '{}': {} (expected http://HOST[:PORT], e.g. http://127.0.0.1:8080)", url, why));
  };
  if (url.rfind("https://", 0) == 0) throw bad("https is not supported");
  if (url.rfind(scheme, 0) != 0) throw bad("it does not start with http://");
  std::string rest = url.substr(scheme.size());
  while (!rest.empty() && rest.back() == '/') rest.pop_back();
  if (rest.find('/') != std::string::npos)
    throw bad("a path belongs in --endpoint, not in the base URL");
  const size_t colon = rest.rfind(':');
  std::string host = rest.substr(0, colon);
  int port = 80;
  if (colon != std::string::npos) {
    const std::string p = rest.substr(colon + 1);
    size_t used = 0;
    try {
      port = std::stoi(p, &used);
    } catch (const std::exception&) {
      used = 0;
    }
    if (p.empty() || used != p.size() || port < 1 || port > 65535)
      throw bad("the port is not a number in 1-65535");
  }
  if (host.empty()) throw bad("no host");
  t.host = host;
  t.port = port;
}

std::string first_model(const Target& t) {
  httplib::Client c = client(t);
  const httplib::Result res = c.Get("/v1/models");
  if (!res) throw Unreachable(transport_error(t, res.error()));
  if (res->status != 200)
    throw std::runtime_error(fmt::format("{}/v1/models answered HTTP {}: {}", t.url(), res->status,
                                         error_message(res->body)));
  const json j = json::parse(res->body, nullptr, false);
  if (!j.is_object() || !j.contains("data") || !j["data"].is_array() || j["data"].empty() ||
      !j["data"][0].is_object() || !j["data"][0].contains("id") || !j["data"][0]["id"].is_string())
    throw std::runtime_error(fmt::format(
        "{}/v1/models did not list a model (expected {{\"data\": [{{\"id\": ...}}]}}); name it "
        "with --model",
        t.url()));
  return j["data"][0]["id"].get<std::string>();
}

std::optional<int64_t> count_tokens(const Target& t, const std::string& text) {
  httplib::Client c = client(t);
  const json body = {{"content", text}, {"add_special", false}};
  const httplib::Result res = c.Post("/tokenize", body.dump(), "application/json");
  if (!res || res->status != 200) return std::nullopt;
  const json j = json::parse(res->body, nullptr, false);
  if (!j.is_object() || !j.contains("tokens") || !j["tokens"].is_array()) return std::nullopt;
  return int64_t(j["tokens"].size());
}

std::string request_body(const Target& t, const BenchRequest& r) {
  json j = {{"model", t.model},
            {"max_tokens", r.max_tokens},
            {"temperature", t.temperature},
            {"stream", true},
            {"stream_options", {{"include_usage", true}}}};
  if (t.chat())
    j["messages"] = json::array({{{"role", "user"}, {"content", r.prompt}}});
  else
    j["prompt"] = r.prompt;
  if (t.ignore_eos) j["ignore_eos"] = true;
  return j.dump();
}

void StreamParser::feed(std::string_view bytes, double t) {
  buf_.append(bytes);
  // Events end with a blank line; "\r\n" line ends are allowed by the SSE format.
  for (;;) {
    size_t end = buf_.find("\n\n"), len = 2;
    const size_t crlf = buf_.find("\r\n\r\n");
    if (crlf != std::string::npos && (end == std::string::npos || crlf < end)) end = crlf, len = 4;
    if (end == std::string::npos) break;
    const std::string ev = buf_.substr(0, end);
    buf_.erase(0, end + len);
    std::string data;
    size_t b = 0;
    while (b <= ev.size()) {
      size_t e = ev.find('\n', b);
      if (e == std::string::npos) e = ev.size();
      std::string_view line(ev.data() + b, e - b);
      if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
      if (line.rfind("data:", 0) == 0) {
        line.remove_prefix(5);
        if (!line.empty() && line.front() == ' ') line.remove_prefix(1);
        if (!data.empty()) data += '\n';
        data += line;
      }
      b = e + 1;
    }
    if (!data.empty()) event(data, t);
  }
}

void StreamParser::event(std::string_view data, double t) {
  if (data == "[DONE]") {
    done_ = true;
    return;
  }
  const json j = json::parse(data, nullptr, false);
  if (!j.is_object()) {
    if (error_.empty())
      error_ = "a stream event that is not JSON: " + std::string(data.substr(0, 120));
    return;
  }
  if (j.contains("error")) {
    if (error_.empty())
      error_ = "the stream ended with an error: " + error_message(std::string(data));
    return;
  }
  if (j.contains("usage") && j["usage"].is_object()) {
    const json& u = j["usage"];
    if (u.contains("prompt_tokens") && u["prompt_tokens"].is_number_integer())
      prompt_tokens_ = u["prompt_tokens"].get<int64_t>();
    if (u.contains("completion_tokens") && u["completion_tokens"].is_number_integer())
      completion_tokens_ = u["completion_tokens"].get<int64_t>();
  }
  if (!j.contains("choices") || !j["choices"].is_array() || j["choices"].empty()) return;
  const json& c = j["choices"][0];
  const json* text = nullptr;
  if (chat_) {
    if (c.contains("delta") && c["delta"].is_object() && c["delta"].contains("content"))
      text = &c["delta"]["content"];
  } else if (c.contains("text")) {
    text = &c["text"];
  }
  if (text && text->is_string() && !text->get_ref<const std::string&>().empty())
    chunk_times_.push_back(t);
}

void StreamParser::finish(double t, RequestResult& r) const {
  r.e2el = t;
  r.error = error_;
  if (r.error.empty() && !done_) r.error = "the stream ended without data: [DONE]";
  if (r.error.empty() && chunk_times_.empty()) r.error = "the answer streamed no text";
  r.ok = r.error.empty();
  r.usage = completion_tokens_ >= 0;
  r.prompt_tokens = prompt_tokens_;
  r.output_tokens = r.usage ? completion_tokens_ : int64_t(chunk_times_.size());
  r.itl.clear();
  if (!chunk_times_.empty()) {
    r.ttft = chunk_times_.front();
    for (size_t i = 1; i < chunk_times_.size(); ++i)
      r.itl.push_back(chunk_times_[i] - chunk_times_[i - 1]);
  }
}

RequestResult send_request(const Target& t, const BenchRequest& request) {
  RequestResult r;
  r.requested_tokens = request.max_tokens;
  try {
    httplib::Client c = client(t);
    StreamParser parser(t.chat());
    httplib::Request req;
    req.method = "POST";
    req.path = t.endpoint;
    req.body = request_body(t, request);
    req.set_header("Content-Type", "application/json");
    req.set_header("Accept", "text/event-stream");
    int status = 0;
    std::string error_body;
    const auto start = std::chrono::steady_clock::now();
    const auto now = [&] {
      return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    };
    req.response_handler = [&](const httplib::Response& res) {
      status = res.status;
      return true;
    };
    req.content_receiver = [&](const char* data, size_t n, uint64_t, uint64_t) {
      if (status == 200)
        parser.feed(std::string_view(data, n), now());
      else if (error_body.size() < 4096)
        error_body.append(data, n);
      return true;
    };
    const httplib::Result res = c.send(req);
    const double end = now();
    if (!res) {
      r.error = transport_error(t, res.error());
      // What the stream measured before it broke is dropped: the request failed.
      return r;
    }
    if (status != 200) {
      r.error = fmt::format("HTTP {}: {}", status, error_message(error_body));
      return r;
    }
    parser.finish(end, r);
  } catch (const std::exception& e) {
    r.ok = false;
    r.error = e.what();
  }
  return r;
}

}  // namespace fairkv::app::bench
