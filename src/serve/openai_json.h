// The OpenAI API's JSON, as fairkv's HTTP server reads and writes it: the bodies of
// /v1/completions and /v1/chat/completions (the engine's fields from request_json.h, plus the
// API's own: model, stream, stream_options, n, logprobs...), the responses and the streamed
// chunks shaped as OpenAI's and llama-server's, and the error object. No sockets here: what the
// server sends is decided by these functions, which the tests check without a model.
#pragma once

#include <cstdint>
#include <nlohmann/json.hpp>
#include <optional>
#include <span>
#include <stdexcept>
#include <string>

#include "serve/engine.h"
#include "serve/request.h"
#include "serve/request_json.h"

namespace fairkv::serve {

enum class Api { Completions, Chat };

// A request the API refuses, with the HTTP status and OpenAI's error fields that carry it.
struct ApiError : std::runtime_error {
  ApiError(int status, const std::string& message, std::string type = "invalid_request_error",
           std::string param = "", std::string code = "")
      : std::runtime_error(message),
        status(status),
        type(std::move(type)),
        param(std::move(param)),
        code(std::move(code)) {}
  int status;
  std::string type, param, code;  // empty param or code: null
  int retry_after_s = 0;          // > 0: sent as Retry-After
};

// {"error": {"message", "type", "param", "code"}}.
nlohmann::json error_json(const ApiError& e);

// The field a request_json or engine message names: `field "x"` or a leading `x:` (else "").
std::string param_of(const std::string& message);

// An engine refusal as the API answers it: Invalid and TooLarge are the client's 400 (a prompt
// over the context is OpenAI's context_length_exceeded), QueueFull and ShuttingDown are 503 (the
// first with Retry-After).
ApiError api_error_of(const Refused& r);

struct ApiRequest {
  RequestSpec spec;
  bool stream = false;
  bool include_usage = false;     // stream_options.include_usage: a last chunk with the usage
  bool max_tokens_given = false;  // max_tokens (or an alias) was in the body
};

// Reads a body of `api`. `model` is the name the server answers to: a body naming another model
// is refused (404 model_not_found, as OpenAI and vLLM do). Fields the engine cannot honour are
// refused by name rather than ignored: n other than 1, echo, suffix, tools, a response_format
// other than text. Log-probabilities are read into spec.request.logprobs: completions'
// "logprobs": n, chat's "logprobs": true with "top_logprobs": n (n in [0, 20]). Harmless ones
// (user, metadata, store...) are skipped. Chat contents given as [{"type": "text", "text"}] parts
// are joined, and the "developer" role is read as "system". Throws ApiError (400, or 404 for the
// model).
ApiRequest parse_api_request(Api api, const std::string& body, const Request& defaults,
                             const std::string& model);

// What every response and chunk of one request starts with.
struct ResponseHead {
  Api api = Api::Completions;
  std::string id;  // "cmpl-..." or "chatcmpl-..."
  int64_t created = 0;
  std::string model;
};

struct Usage {
  int64_t prompt_tokens = 0, completion_tokens = 0;
};

// The non-streamed response: one choice with its text (or message) and finish_reason, usage,
// and llama-server's "timings" (ms) when stats are given.
// `logprobs`: the choice's (logprobs_json), null when not asked for.
nlohmann::json response_json(const ResponseHead& h, const std::string& text,
                             const std::string& finish_reason, const Usage& u,
                             const RequestStats* stats = nullptr,
                             const nlohmann::json& logprobs = nullptr);

// One streamed chunk: a piece of text (chat: the delta's content; `role` adds the assistant
// role, as the first chunk does), or the last one with the finish_reason and an empty delta.
nlohmann::json chunk_json(const ResponseHead& h, const std::string& text,
                          const std::optional<std::string>& finish_reason, bool role = false,
                          const nlohmann::json& logprobs = nullptr);

// A choice's "logprobs" for these tokens. Completions: {tokens, token_logprobs, top_logprobs
// ({token: logprob} maps of the n most likely and the chosen one), text_offset (characters from
// the start of the generated text; text_offset carries it from one chunk to the next)}. Chat:
// {content: [{token, logprob, bytes, top_logprobs: [{token, logprob, bytes}]}]}.
nlohmann::json logprobs_json(Api api, std::span<const TokenLogprob> lps, int64_t& text_offset);
// The chunk after the last one when stream_options.include_usage: no choices, the usage.
nlohmann::json usage_chunk_json(const ResponseHead& h, const Usage& u);

// A server-sent event: "data: <json>\n\n" (invalid UTF-8 replaced, never thrown).
std::string sse(const nlohmann::json& j);
inline constexpr const char* kSseDone = "data: [DONE]\n\n";

// JSON text that never throws on invalid UTF-8 (replaced by U+FFFD).
std::string dump(const nlohmann::json& j);

}  // namespace fairkv::serve
