#include "serve/request_json.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <stdexcept>

#include <fmt/format.h>

#include "placement/json_check.h"

namespace fairkv::serve {

namespace {

using nlohmann::json;

struct Reader {
  const json& obj;
  const std::string& where;

  [[noreturn]] void fail(const std::string& field, const std::string& expected,
                         const json& got) const {
    throw std::invalid_argument(fmt::format("{}: field \"{}\": expected {}, got {}", where, field,
                                            expected, placement::brief(got, 60)));
  }
  const json* get(const char* field) const {
    auto it = obj.find(field);
    return it == obj.end() || it->is_null() ? nullptr : &*it;
  }
  double number(const char* field, double lo, double hi, double fallback) const {
    const json* v = get(field);
    if (!v) return fallback;
    const std::string range = fmt::format("a number in [{}, {}]", lo, hi);
    if (!v->is_number()) fail(field, range, *v);
    const double x = v->get<double>();
    if (!(x >= lo && x <= hi)) fail(field, range, *v);
    return x;
  }
  int64_t integer(const char* field, int64_t lo, int64_t hi, int64_t fallback) const {
    const json* v = get(field);
    if (!v) return fallback;
    const std::string range = fmt::format("an integer in [{}, {}]", lo, hi);
    if (!v->is_number_integer()) fail(field, range, *v);
    if (v->is_number_unsigned() && v->get<uint64_t>() > uint64_t(hi)) fail(field, range, *v);
    const int64_t x = v->get<int64_t>();
    if (x < lo || x > hi) fail(field, range, *v);
    return x;
  }
  std::string text(const char* field, size_t max_bytes) const {
    const json* v = get(field);
    if (!v->is_string()) fail(field, "a string", *v);
    std::string s = v->get<std::string>();
    if (s.size() > max_bytes) fail(field, fmt::format("at most {} bytes", max_bytes), *v);
    return s;
  }
};

constexpr int64_t kMaxTokenId = std::numeric_limits<int32_t>::max();

}  // namespace

RequestSpec parse_request(const json& obj, const Request& defaults, const std::string& where,
                          const std::vector<std::string>& ignored) {
  if (!obj.is_object())
    throw std::invalid_argument(
        fmt::format("{}: expected a JSON object, got {}", where, obj.type_name()));
  static const std::vector<std::string> known = {"prompt",
                                                 "messages",
                                                 "max_tokens",
                                                 "n_predict",
                                                 "temperature",
                                                 "top_p",
                                                 "top_k",
                                                 "min_p",
                                                 "seed",
                                                 "presence_penalty",
                                                 "frequency_penalty",
                                                 "repeat_penalty",
                                                 "repeat_last_n",
                                                 "logit_bias",
                                                 "stop",
                                                 "ignore_eos",
                                                 "kv_policy",
                                                 "kv_budget",
                                                 "priority",
                                                 "id",
                                                 "arrival"};
  for (const auto& [key, value] : obj.items())
    if (std::find(known.begin(), known.end(), key) == known.end() &&
        std::find(ignored.begin(), ignored.end(), key) == ignored.end())
      throw std::invalid_argument(fmt::format("{}: unknown field \"{}\"", where, key));
  Reader r{obj, where};
  RequestSpec spec;
  Request& q = spec.request;
  q = defaults;

  const json* prompt = r.get("prompt");
  const json* messages = r.get("messages");
  if (!prompt == !messages)
    throw std::invalid_argument(
        fmt::format("{}: expected exactly one of the fields \"prompt\" and \"messages\"", where));
  if (prompt && prompt->is_string()) {
    spec.prompt = prompt->get<std::string>();
  } else if (prompt && prompt->is_array()) {
    for (const json& t : *prompt) {
      if (!t.is_number_integer() || t.get<int64_t>() < 0 || t.get<int64_t>() > kMaxTokenId)
        r.fail("prompt", "a string or a list of token ids", *prompt);
      spec.prompt_ids.push_back(t.get<int32_t>());
    }
    if (spec.prompt_ids.empty()) r.fail("prompt", "at least one token id", *prompt);
  } else if (prompt) {
    r.fail("prompt", "a string or a list of token ids", *prompt);
  }
  if (messages) {
    if (!messages->is_array() || messages->empty())
      r.fail("messages", "a non-empty list of {\"role\", \"content\"} objects", *messages);
    std::vector<ChatTurn> turns;
    for (const json& m : *messages) {
      if (!m.is_object() || !m.contains("role") || !m["role"].is_string() ||
          !m.contains("content") || !m["content"].is_string())
        r.fail("messages", "objects with string fields \"role\" and \"content\"", m);
      const std::string role = m["role"].get<std::string>();
      if (role != "system" && role != "user" && role != "assistant")
        r.fail("messages", "roles system, user or assistant", m["role"]);
      turns.push_back({role, m["content"].get<std::string>()});
    }
    spec.messages = std::move(turns);
  }

  const int64_t max_default = q.max_tokens;
  q.max_tokens = int(r.integer("n_predict", 1, 1 << 24, max_default));
  q.max_tokens = int(r.integer("max_tokens", 1, 1 << 24, q.max_tokens));
  q.sampling.temp = float(r.number("temperature", 0, 100, q.sampling.temp));
  q.sampling.top_p = float(r.number("top_p", 0, 1, q.sampling.top_p));
  if (r.get("top_p") && q.sampling.top_p == 0) r.fail("top_p", "a number in (0, 1]", obj["top_p"]);
  q.sampling.top_k = int(r.integer("top_k", 0, 1 << 30, q.sampling.top_k));
  q.sampling.min_p = float(r.number("min_p", 0, 1, q.sampling.min_p));
  if (const json* s = r.get("seed")) {
    if (!s->is_number_integer()) r.fail("seed", "an integer", *s);
    q.sampling.seed = s->is_number_unsigned() ? s->get<uint64_t>() : uint64_t(s->get<int64_t>());
  }
  q.sampling.presence_penalty =
      float(r.number("presence_penalty", -2, 2, q.sampling.presence_penalty));
  q.sampling.frequency_penalty =
      float(r.number("frequency_penalty", -2, 2, q.sampling.frequency_penalty));
  q.sampling.repeat_penalty = float(r.number("repeat_penalty", 0, 100, q.sampling.repeat_penalty));
  if (r.get("repeat_penalty") && q.sampling.repeat_penalty <= 0)
    r.fail("repeat_penalty", "a number > 0 (1: off)", obj["repeat_penalty"]);
  q.sampling.repeat_last_n = int(r.integer("repeat_last_n", -1, 1 << 24, q.sampling.repeat_last_n));
  if (const json* b = r.get("logit_bias")) {
    const std::string expected = "{\"token id\": bias} with biases in [-100, 100] or false";
    auto add = [&](int64_t id, const json& bias) {
      if (id < 0 || id > kMaxTokenId) r.fail("logit_bias", expected, *b);
      float v = 0;
      if (bias.is_boolean() && !bias.get<bool>()) {
        v = -std::numeric_limits<float>::infinity();  // llama-server: false bans the token
      } else if (bias.is_number() && bias.get<double>() >= -100 && bias.get<double>() <= 100) {
        v = bias.get<float>();
      } else {
        r.fail("logit_bias", expected, bias);
      }
      q.sampling.logit_bias.push_back({int32_t(id), v});
    };
    if (b->is_object()) {
      for (const auto& [key, bias] : b->items()) {
        size_t used = 0;
        int64_t id = -1;
        try {
          id = std::stoll(key, &used);
        } catch (const std::exception&) {
          used = 0;
        }
        if (used != key.size() || key.empty()) r.fail("logit_bias", expected, *b);
        add(id, bias);
      }
    } else if (b->is_array()) {
      for (const json& pair : *b) {
        if (!pair.is_array() || pair.size() != 2 || !pair[0].is_number_integer())
          r.fail("logit_bias", "[[token id, bias], ...]", *b);
        add(pair[0].get<int64_t>(), pair[1]);
      }
    } else {
      r.fail("logit_bias", expected, *b);
    }
  }
  if (const json* s = r.get("stop")) {
    std::vector<std::string> stops;
    if (s->is_string()) {
      stops.push_back(s->get<std::string>());
    } else if (s->is_array()) {
      for (const json& x : *s) {
        if (!x.is_string()) r.fail("stop", "a string or a list of strings", *s);
        stops.push_back(x.get<std::string>());
      }
    } else {
      r.fail("stop", "a string or a list of strings", *s);
    }
    q.stop = std::move(stops);
  }
  if (const json* e = r.get("ignore_eos")) {
    if (!e->is_boolean()) r.fail("ignore_eos", "true or false", *e);
    q.ignore_eos = e->get<bool>();
  }
  if (r.get("kv_policy") || r.get("kv_budget")) {
    kv::CompressionConfig c = q.compression ? *q.compression : kv::CompressionConfig{};
    if (r.get("kv_policy")) {
      try {
        c.policy = kv::parse_policy(r.text("kv_policy", 64), "kv_policy");
      } catch (const std::invalid_argument& e) {
        throw std::invalid_argument(fmt::format("{}: field {}", where, e.what()));
      }
    }
    if (r.get("kv_budget")) c.budget = r.integer("kv_budget", 1, int64_t(1) << 30, c.budget);
    q.compression = c;
  }
  q.priority = int(r.integer("priority", -1000, 1000, q.priority));
  if (const json* id = r.get("id")) {
    if (id->is_string())
      q.tag = id->get<std::string>().substr(0, 256);
    else if (id->is_number_integer())
      q.tag = id->dump();
    else
      r.fail("id", "a string or an integer", *id);
  }
  spec.arrival_s = r.number("arrival", 0, 1e7, 0);
  return spec;
}

std::vector<RequestLine> read_request_lines(std::istream& in, const Request& defaults,
                                            const std::string& where) {
  std::vector<RequestLine> out;
  std::string text;
  for (int n = 1; std::getline(in, text); ++n) {
    if (!text.empty() && text.back() == '\r') text.pop_back();
    if (text.find_first_not_of(" \t") == std::string::npos) continue;
    const std::string at = fmt::format("{}: line {}", where, n);
    json j;
    try {
      j = json::parse(text);
    } catch (const json::exception& e) {
      throw std::invalid_argument(fmt::format("{}: not JSON ({})", at, e.what()));
    }
    out.push_back({n, parse_request(j, defaults, at)});
  }
  return out;
}

}  // namespace fairkv::serve
