#include "serve/openai_json.h"

#include <algorithm>
#include <cctype>
#include <cmath>
#include <vector>

#include <fmt/format.h>

namespace fairkv::serve {

namespace {

using nlohmann::json;

std::string short_dump(const json& v) {
  std::string s = dump(v);
  return s.size() > 60 ? s.substr(0, 57) + "..." : s;
}

ApiError bad(const std::string& field, const std::string& message) {
  return ApiError(400, message, "invalid_request_error", field);
}

ApiError unsupported(const std::string& field, const std::string& what) {
  return ApiError(400, fmt::format("\"{}\": {} not supported yet by fairkv", field, what),
                  "invalid_request_error", field, "unsupported_parameter");
}

const json* get(const json& j, const char* field) {
  auto it = j.find(field);
  return it == j.end() || it->is_null() ? nullptr : &*it;
}

bool flag(const json& j, const char* field) {
  const json* v = get(j, field);
  if (!v) return false;
  if (!v->is_boolean())
    throw bad(field, fmt::format("\"{}\": expected true or false, got {}", field, short_dump(*v)));
  return v->get<bool>();
}

// Fields the engine cannot honour, each accepted only at the value that asks for nothing.
void refuse_unsupported(Api api, const json& j) {
  if (const json* n = get(j, "n"); n && !(n->is_number_integer() && n->get<int64_t>() == 1))
    throw unsupported(
        "n", fmt::format("n = {} (one choice per request; n = 1 only) is", short_dump(*n)));
  if (const json* b = get(j, "best_of"); b && !(b->is_number_integer() && b->get<int64_t>() == 1))
    throw unsupported("best_of", "best_of other than 1 is");
  if (flag(j, "echo")) throw unsupported("echo", "echoing the prompt is");
  if (const json* s = get(j, "suffix"); s && !(s->is_string() && s->get<std::string>().empty()))
    throw unsupported("suffix", "a suffix (fill in the middle) is");
  for (const char* f : {"tools", "functions"})
    if (const json* t = get(j, f); t && !(t->is_array() && t->empty()))
      throw unsupported(f, "tool calls are");
  for (const char* f : {"tool_choice", "function_call"})
    if (const json* t = get(j, f); t && !(t->is_string() && t->get<std::string>() == "none"))
      throw unsupported(f, "tool calls are");
  if (const json* r = get(j, "response_format");
      r && !(r->is_object() && r->value("type", json()) == "text"))
    throw unsupported("response_format", "response formats other than {\"type\": \"text\"} are");
  if (api == Api::Completions && j.contains("messages"))
    throw bad("messages",
              "\"messages\" belongs to /v1/chat/completions; /v1/completions takes \"prompt\"");
  if (api == Api::Chat && j.contains("prompt"))
    throw bad("prompt",
              "\"prompt\" belongs to /v1/completions; /v1/chat/completions takes \"messages\"");
  if (j.contains("arrival")) throw bad("arrival", "unknown field \"arrival\" (request files only)");
}

int64_t count_in(const json& v, const char* field, int64_t lo, int64_t hi) {
  if (!v.is_number_integer() || v.get<int64_t>() < lo || v.get<int64_t>() > hi ||
      (v.is_number_unsigned() && v.get<uint64_t>() > uint64_t(hi)))
    throw bad(field, fmt::format("\"{}\": expected an integer in [{}, {}], got {}", field, lo, hi,
                                 short_dump(v)));
  return v.get<int64_t>();
}

// The request's logprobs as the engine takes them (-1: none). Completions: "logprobs": n
// alternatives; chat: "logprobs": true with "top_logprobs": n (as OpenAI and vLLM spell them).
int parse_logprobs(Api api, const json& j) {
  const json* l = get(j, "logprobs");
  const json* t = get(j, "top_logprobs");
  if (api == Api::Completions) {
    if (t && !(t->is_number_integer() && t->get<int64_t>() == 0))
      throw bad("top_logprobs",
                "\"top_logprobs\" belongs to /v1/chat/completions; /v1/completions takes "
                "\"logprobs\": the number of alternatives");
    return l ? int(count_in(*l, "logprobs", 0, kMaxTopLogprobs)) : -1;
  }
  const bool on = flag(j, "logprobs");
  const int top = t ? int(count_in(*t, "top_logprobs", 0, kMaxTopLogprobs)) : 0;
  if (top > 0 && !on) throw bad("top_logprobs", "\"top_logprobs\": requires \"logprobs\": true");
  return on ? top : -1;
}

// OpenAI's richer message shapes, as the engine's {role, content} strings.
void normalize_messages(json& j) {
  json* msgs = j.contains("messages") ? &j["messages"] : nullptr;
  if (!msgs || !msgs->is_array()) return;
  for (json& m : *msgs) {
    if (!m.is_object()) continue;
    if (m.value("role", json()) == "developer") m["role"] = "system";
    json& c = m["content"];
    if (c.is_null() && m.value("role", json()) == "assistant") c = "";
    if (!c.is_array()) continue;
    std::string text;
    for (const json& part : c) {
      if (!part.is_object() || part.value("type", json()) != "text" || !part.contains("text") ||
          !part["text"].is_string())
        throw unsupported("messages", "content parts other than {\"type\": \"text\"} are");
      text += part["text"].get<std::string>();
    }
    c = text;
  }
}

}  // namespace

std::string dump(const json& j) {
  return j.dump(-1, ' ', false, json::error_handler_t::replace);
}

json error_json(const ApiError& e) {
  return {{"error",
           {{"message", e.what()},
            {"type", e.type},
            {"param", e.param.empty() ? json() : json(e.param)},
            {"code", e.code.empty() ? json() : json(e.code)}}}};
}

std::string param_of(const std::string& message) {
  const std::string key = "field \"";
  if (size_t at = message.find(key); at != std::string::npos) {
    const size_t b = at + key.size(), e = message.find('"', b);
    if (e != std::string::npos) return message.substr(b, e - b);
  }
  const size_t colon = message.find(':');
  if (colon == std::string::npos || colon == 0) return "";
  const std::string head = message.substr(0, colon);
  for (char c : head)
    if (!(std::islower(static_cast<unsigned char>(c)) || c == '_')) return "";
  return head;
}

ApiError api_error_of(const Refused& r) {
  using K = Refused::Kind;
  const std::string msg = r.what();
  switch (r.kind) {
    case K::Invalid:
      return ApiError(400, msg, "invalid_request_error", param_of(msg));
    case K::TooLarge:
      return ApiError(400, msg, "invalid_request_error", param_of(msg),
                      msg.starts_with("prompt:") ? "context_length_exceeded" : "request_too_large");
    case K::QueueFull: {
      ApiError e(503, msg, "unavailable_error", "", "queue_full");
      e.retry_after_s = 1;
      return e;
    }
    case K::ShuttingDown:
      break;
  }
  return ApiError(503, msg, "unavailable_error", "", "shutting_down");
}

ApiRequest parse_api_request(Api api, const std::string& body, const Request& defaults,
                             const std::string& model) {
  json j;
  try {
    j = json::parse(body);
  } catch (const json::exception& e) {
    throw ApiError(400, fmt::format("the body is not valid JSON: {}", e.what()),
                   "invalid_request_error", "", "invalid_json");
  }
  if (!j.is_object())
    throw ApiError(400, fmt::format("the body must be a JSON object, got {}", j.type_name()));
  if (const json* m = get(j, "model")) {
    if (!m->is_string())
      throw bad("model", fmt::format("\"model\": expected a string, got {}", short_dump(*m)));
    if (m->get<std::string>() != model)
      throw ApiError(404,
                     fmt::format("The model '{}' does not exist: this server serves '{}'",
                                 m->get<std::string>(), model),
                     "invalid_request_error", "model", "model_not_found");
  }
  refuse_unsupported(api, j);
  if (api == Api::Completions && !get(j, "prompt"))
    throw bad("prompt", "\"prompt\": required (text or a list of token ids)");
  if (api == Api::Chat && !get(j, "messages"))
    throw bad("messages", "\"messages\": required (a list of {\"role\", \"content\"})");

  ApiRequest out;
  out.stream = flag(j, "stream");
  const int logprobs = parse_logprobs(api, j);
  if (const json* so = get(j, "stream_options")) {
    if (!out.stream)
      throw bad("stream_options", "\"stream_options\": only allowed when \"stream\" is true");
    if (!so->is_object())
      throw bad("stream_options", "\"stream_options\": expected an object {\"include_usage\"}");
    out.include_usage = flag(*so, "include_usage");
  }
  // Completions: a list holding one prompt is that prompt; several would be several choices.
  if (json* p = j.contains("prompt") ? &j["prompt"] : nullptr; p && p->is_array() && !p->empty()) {
    if ((*p)[0].is_string() || (*p)[0].is_array()) {
      if (p->size() > 1) throw unsupported("prompt", "several prompts in one request are");
      *p = json((*p)[0]);
    }
  }
  if (api == Api::Chat) normalize_messages(j);
  if (const json* mct = get(j, "max_completion_tokens"); mct && !get(j, "max_tokens"))
    j["max_tokens"] = *mct;
  out.max_tokens_given = get(j, "max_tokens") || get(j, "n_predict");
  static const std::vector<std::string> skipped = {"model",
                                                   "stream",
                                                   "stream_options",
                                                   "n",
                                                   "best_of",
                                                   "logprobs",
                                                   "top_logprobs",
                                                   "echo",
                                                   "suffix",
                                                   "tools",
                                                   "functions",
                                                   "tool_choice",
                                                   "function_call",
                                                   "response_format",
                                                   "user",
                                                   "metadata",
                                                   "store",
                                                   "service_tier",
                                                   "cache_prompt",
                                                   "parallel_tool_calls",
                                                   "max_completion_tokens"};
  try {
    out.spec = parse_request(j, defaults, "request", skipped);
  } catch (const std::invalid_argument& e) {
    std::string msg = e.what();
    if (msg.starts_with("request: ")) msg = msg.substr(9);
    throw ApiError(400, msg, "invalid_request_error", param_of(msg));
  }
  out.spec.request.logprobs = logprobs;
  return out;
}

namespace {

json usage(const Usage& u) {
  return {{"prompt_tokens", u.prompt_tokens},
          {"completion_tokens", u.completion_tokens},
          {"total_tokens", u.prompt_tokens + u.completion_tokens}};
}

json head(const ResponseHead& h, const char* object) {
  return {{"id", h.id},
          {"object", object},
          {"created", h.created},
          {"model", h.model},
          {"system_fingerprint", "fairkv"}};
}

}  // namespace

json response_json(const ResponseHead& h, const std::string& text, const std::string& finish,
                   const Usage& u, const RequestStats* s, const json& logprobs) {
  const bool chat = h.api == Api::Chat;
  json j = head(h, chat ? "chat.completion" : "text_completion");
  json choice = {{"index", 0}};
  if (chat)
    choice["message"] = {{"role", "assistant"}, {"content", text}};
  else
    choice["text"] = text;
  choice["logprobs"] = logprobs;
  choice["finish_reason"] = finish;
  j["choices"] = json::array({choice});
  j["usage"] = usage(u);
  if (s) {
    const double predicted_ms = s->generated_tokens > 0 ? s->finished_ms - s->first_token_ms : 0;
    j["timings"] = {{"prompt_n", s->prompt_tokens},
                    {"prompt_ms", s->first_token_ms >= 0 ? s->ttft_ms() : 0},
                    {"predicted_n", s->generated_tokens},
                    {"predicted_ms", predicted_ms},
                    {"predicted_per_token_ms", s->tpot_ms()},
                    {"predicted_per_second",
                     predicted_ms > 0 ? double(s->generated_tokens - 1) * 1000 / predicted_ms : 0},
                    {"queue_ms", s->admitted_ms >= 0 ? s->admitted_ms - s->arrival_ms : 0},
                    {"preemptions", s->preemptions},
                    {"kv_rows_kept", s->kv_rows_kept}};
  }
  return j;
}

json chunk_json(const ResponseHead& h, const std::string& text,
                const std::optional<std::string>& finish, bool role, const json& logprobs) {
  const bool chat = h.api == Api::Chat;
  json j = head(h, chat ? "chat.completion.chunk" : "text_completion");
  json choice = {{"index", 0}};
  if (chat) {
    json delta = json::object();
    if (role) delta["role"] = "assistant";
    if (!finish || !text.empty()) delta["content"] = text;
    choice["delta"] = delta;
  } else {
    choice["text"] = text;
  }
  choice["logprobs"] = logprobs;
  choice["finish_reason"] = finish ? json(*finish) : json();
  j["choices"] = json::array({choice});
  return j;
}

json usage_chunk_json(const ResponseHead& h, const Usage& u) {
  json j = head(h, h.api == Api::Chat ? "chat.completion.chunk" : "text_completion");
  j["choices"] = json::array();
  j["usage"] = usage(u);
  return j;
}

namespace {

// vLLM's stand-in for a logprob JSON cannot carry (-inf: a token the logits rule out).
double finite(float lp) {
  return std::isfinite(lp) ? double(lp) : -9999.0;
}

json bytes_of(const std::string& s) {
  json b = json::array();
  for (char c : s) b.push_back(int(static_cast<unsigned char>(c)));
  return b;
}

// Characters of UTF-8 text (bytes that do not continue a character), as text_offset counts.
int64_t chars_of(const std::string& s) {
  int64_t n = 0;
  for (char c : s) n += (static_cast<unsigned char>(c) & 0xC0) != 0x80;
  return n;
}

}  // namespace

json logprobs_json(Api api, std::span<const TokenLogprob> lps, int64_t& text_offset) {
  if (api == Api::Chat) {
    json content = json::array();
    for (const TokenLogprob& lp : lps) {
      json top = json::array();
      for (const TopLogprob& t : lp.top)
        top.push_back(
            {{"token", t.text}, {"logprob", finite(t.logprob)}, {"bytes", bytes_of(t.text)}});
      content.push_back({{"token", lp.text},
                         {"logprob", finite(lp.logprob)},
                         {"bytes", bytes_of(lp.text)},
                         {"top_logprobs", top}});
    }
    return {{"content", content}};
  }
  json tokens = json::array(), values = json::array(), tops = json::array(),
       offsets = json::array();
  for (const TokenLogprob& lp : lps) {
    tokens.push_back(lp.text);
    values.push_back(finite(lp.logprob));
    // As OpenAI's legacy completions: the n most likely, and the chosen token beside them.
    json top = json::object();
    for (const TopLogprob& t : lp.top) top[t.text] = finite(t.logprob);
    if (!top.contains(lp.text)) top[lp.text] = finite(lp.logprob);
    tops.push_back(top);
    offsets.push_back(text_offset);
    text_offset += chars_of(lp.text);
  }
  return {{"tokens", tokens},
          {"token_logprobs", values},
          {"top_logprobs", tops},
          {"text_offset", offsets}};
}

std::string sse(const json& j) {
  return "data: " + dump(j) + "\n\n";
}

}  // namespace fairkv::serve
