// The OpenAI API's JSON without a server: bodies read with every API field and refused with
// OpenAI's error shape and the right status, and responses and chunks shaped as OpenAI's.
#include "serve/openai_json.h"

#include <gtest/gtest.h>

#include <limits>
#include <string>
#include <vector>

#include "serve/engine.h"

namespace fairkv::serve {
namespace {

using nlohmann::json;

ApiRequest parse(Api api, const std::string& body) {
  Request defaults;
  defaults.max_tokens = 64;
  return parse_api_request(api, body, defaults, "tiny");
}

ApiError error_of(Api api, const std::string& body) {
  try {
    parse(api, body);
  } catch (const ApiError& e) {
    return e;
  }
  return ApiError(0, "(accepted)");
}

TEST(OpenAiJson, ReadsTheApiFields) {
  const ApiRequest r = parse(Api::Completions, R"({"model": "tiny", "prompt": "Once",
      "stream": true, "stream_options": {"include_usage": true}, "n": 1, "logprobs": null,
      "max_tokens": 9, "temperature": 0, "user": "someone", "echo": false})");
  EXPECT_TRUE(r.stream);
  EXPECT_TRUE(r.include_usage);
  EXPECT_TRUE(r.max_tokens_given);
  ASSERT_TRUE(r.spec.prompt);
  EXPECT_EQ(*r.spec.prompt, "Once");
  EXPECT_EQ(r.spec.request.max_tokens, 9);

  const ApiRequest d = parse(Api::Completions, R"({"prompt": [[1, 2, 3]]})");
  EXPECT_FALSE(d.stream);
  EXPECT_FALSE(d.max_tokens_given);
  EXPECT_EQ(d.spec.request.max_tokens, 64);  // the server's default
  EXPECT_EQ(d.spec.prompt_ids, (std::vector<int32_t>{1, 2, 3}));
}

TEST(OpenAiJson, ChatMessagesInOpenAisShapes) {
  const ApiRequest r = parse(Api::Chat, R"({"messages": [
      {"role": "developer", "content": "Be brief."},
      {"role": "user", "content": [{"type": "text", "text": "Hello "}, {"type": "text", "text": "there"}]},
      {"role": "assistant", "content": null}, {"role": "user", "content": "Again"}],
      "max_completion_tokens": 5})");
  ASSERT_TRUE(r.spec.messages);
  const auto& m = *r.spec.messages;
  ASSERT_EQ(m.size(), 4u);
  EXPECT_EQ(m[0].role, "system");
  EXPECT_EQ(m[1].content, "Hello there");
  EXPECT_EQ(m[2].content, "");
  EXPECT_EQ(r.spec.request.max_tokens, 5);
  EXPECT_TRUE(r.max_tokens_given);
}

TEST(OpenAiJson, RefusalsCarryStatusTypeParamAndCode) {
  struct Case {
    Api api;
    const char* body;
    int status;
    const char* param;
    const char* code;
    const char* says;
  };
  const Case cases[] = {
      {Api::Completions, "{\"prompt\": ", 400, "", "invalid_json", "not valid JSON"},
      {Api::Completions, "[1, 2]", 400, "", "", "JSON object"},
      {Api::Completions, R"({"model": "gpt-4", "prompt": "x"})", 404, "model", "model_not_found",
       "'tiny'"},
      {Api::Completions, R"({"model": 3, "prompt": "x"})", 400, "model", "", "string"},
      {Api::Completions, R"({"prompt": "x", "n": 2})", 400, "n", "unsupported_parameter", "n = 1"},
      {Api::Completions, R"({"prompt": "x", "logprobs": 21})", 400, "logprobs", "", "[0, 20]"},
      {Api::Chat, R"({"messages": [{"role": "user", "content": "x"}], "logprobs": 2})", 400,
       "logprobs", "", "true or false"},
      {Api::Chat, R"({"messages": [{"role": "user", "content": "x"}], "top_logprobs": 3})", 400,
       "top_logprobs", "", "\"logprobs\": true"},
      {Api::Chat, R"({"messages": [{"role": "user", "content": "x"}], "tools": [{}]})", 400,
       "tools", "unsupported_parameter", "tool calls"},
      {Api::Completions, R"({"prompt": "x", "echo": true})", 400, "echo", "unsupported_parameter",
       ""},
      {Api::Completions, R"({"prompt": ["a", "b"]})", 400, "prompt", "unsupported_parameter",
       "several prompts"},
      {Api::Completions, R"({"messages": [{"role": "user", "content": "x"}]})", 400, "messages", "",
       "/v1/chat/completions"},
      {Api::Chat, R"({"prompt": "x"})", 400, "prompt", "", "/v1/completions"},
      {Api::Completions, R"({"max_tokens": 3})", 400, "prompt", "", "required"},
      {Api::Chat, R"({"messages": []})", 400, "messages", "", "non-empty"},
      {Api::Chat, R"({"messages": [{"role": "tool", "content": "x"}]})", 400, "messages", "",
       "roles"},
      {Api::Completions, R"({"prompt": "x", "temperature": -1})", 400, "temperature", "",
       "[0, 100]"},
      {Api::Completions, R"({"prompt": "x", "top_p": "high"})", 400, "top_p", "", "number"},
      {Api::Completions, R"({"prompt": "x", "max_tokens": 0})", 400, "max_tokens", "", ""},
      {Api::Completions, R"({"prompt": "x", "stream": "yes"})", 400, "stream", "", "true or"},
      {Api::Completions, R"({"prompt": "x", "stream_options": {"include_usage": true}})", 400,
       "stream_options", "", "only allowed"},
      {Api::Completions, R"({"prompt": "x", "frobnicate": 1})", 400, "frobnicate", "",
       "unknown field"},
      {Api::Completions, R"({"prompt": "x", "arrival": 1})", 400, "arrival", "", ""},
  };
  for (const Case& c : cases) {
    const ApiError e = error_of(c.api, c.body);
    SCOPED_TRACE(c.body);
    EXPECT_EQ(e.status, c.status) << e.what();
    EXPECT_EQ(e.param, c.param) << e.what();
    EXPECT_EQ(e.code, c.code) << e.what();
    EXPECT_NE(std::string(e.what()).find(c.says), std::string::npos) << e.what();
    const json j = error_json(e);
    ASSERT_TRUE(j.contains("error"));
    for (const char* k : {"message", "type", "param", "code"}) EXPECT_TRUE(j["error"].contains(k));
    EXPECT_EQ(j["error"]["type"], c.status == 404 ? "invalid_request_error" : e.type);
    if (!*c.param) {
      EXPECT_TRUE(j["error"]["param"].is_null());
    }
  }
}

TEST(OpenAiJson, EngineRefusalsMapToStatuses) {
  using K = Refused::Kind;
  const ApiError full = api_error_of(Refused(K::QueueFull, "the queue is full"));
  EXPECT_EQ(full.status, 503);
  EXPECT_EQ(full.retry_after_s, 1);
  EXPECT_EQ(full.code, "queue_full");
  const ApiError big = api_error_of(Refused(K::TooLarge, "prompt: 600 tokens do not fit"));
  EXPECT_EQ(big.status, 400);
  EXPECT_EQ(big.param, "prompt");
  EXPECT_EQ(big.code, "context_length_exceeded");
  EXPECT_EQ(api_error_of(Refused(K::Invalid, "max_tokens: expected at least 1")).param,
            "max_tokens");
  EXPECT_EQ(api_error_of(Refused(K::ShuttingDown, "shutting down")).status, 503);
  EXPECT_EQ(param_of("kv memory: the request needs 3 MiB"), "");
  EXPECT_EQ(param_of("field \"top_k\": expected"), "top_k");
}

TEST(OpenAiJson, ResponsesAndChunksAreShapedAsOpenAis) {
  const ResponseHead text{Api::Completions, "cmpl-1", 1700000000, "tiny"};
  const json r = response_json(text, "Once upon", "length", {3, 2});
  EXPECT_EQ(r["object"], "text_completion");
  EXPECT_EQ(r["id"], "cmpl-1");
  EXPECT_EQ(r["created"], 1700000000);
  EXPECT_EQ(r["model"], "tiny");
  EXPECT_EQ(r["choices"][0]["index"], 0);
  EXPECT_EQ(r["choices"][0]["text"], "Once upon");
  EXPECT_TRUE(r["choices"][0]["logprobs"].is_null());
  EXPECT_EQ(r["choices"][0]["finish_reason"], "length");
  EXPECT_EQ(r["usage"], json::parse(R"({"prompt_tokens": 3, "completion_tokens": 2,
                                        "total_tokens": 5})"));

  const ResponseHead chat{Api::Chat, "chatcmpl-1", 1, "tiny"};
  const json c = response_json(chat, "Hi", "stop", {1, 1});
  EXPECT_EQ(c["object"], "chat.completion");
  EXPECT_EQ(c["choices"][0]["message"], json::parse(R"({"role": "assistant", "content": "Hi"})"));

  const json first = chunk_json(chat, "", std::nullopt, true);
  EXPECT_EQ(first["object"], "chat.completion.chunk");
  EXPECT_EQ(first["choices"][0]["delta"], json::parse(R"({"role": "assistant", "content": ""})"));
  EXPECT_TRUE(first["choices"][0]["finish_reason"].is_null());
  EXPECT_EQ(chunk_json(chat, "yo", std::nullopt)["choices"][0]["delta"],
            json::parse(R"({"content": "yo"})"));
  const json last = chunk_json(chat, "", std::string("stop"));
  EXPECT_EQ(last["choices"][0]["delta"], json::object());
  EXPECT_EQ(last["choices"][0]["finish_reason"], "stop");
  const json piece = chunk_json(text, "up", std::nullopt);
  EXPECT_EQ(piece["object"], "text_completion");
  EXPECT_EQ(piece["choices"][0]["text"], "up");
  const json usage = usage_chunk_json(chat, {4, 6});
  EXPECT_TRUE(usage["choices"].empty());
  EXPECT_EQ(usage["usage"]["total_tokens"], 10);

  EXPECT_EQ(sse(json{{"a", 1}}), "data: {\"a\":1}\n\n");
  EXPECT_EQ(dump(json("\xff")), "\"\xEF\xBF\xBD\"");  // invalid UTF-8 replaced, not thrown
}

TEST(OpenAiJson, LogprobsAreReadPerApi) {
  auto lp = [](Api api, const std::string& body) {
    return parse_api_request(api, body, Request{}, "tiny").spec.request.logprobs;
  };
  const std::string msgs = R"("messages": [{"role": "user", "content": "x"}])";
  EXPECT_EQ(lp(Api::Completions, R"({"prompt": "x"})"), -1);
  EXPECT_EQ(lp(Api::Completions, R"({"prompt": "x", "logprobs": 0})"), 0);
  EXPECT_EQ(lp(Api::Completions, R"({"prompt": "x", "logprobs": 20})"), 20);
  EXPECT_EQ(lp(Api::Chat, "{" + msgs + "}"), -1);
  EXPECT_EQ(lp(Api::Chat, "{" + msgs + R"(, "logprobs": false, "top_logprobs": 0})"), -1);
  EXPECT_EQ(lp(Api::Chat, "{" + msgs + R"(, "logprobs": true})"), 0);
  EXPECT_EQ(lp(Api::Chat, "{" + msgs + R"(, "logprobs": true, "top_logprobs": 7})"), 7);
}

TEST(OpenAiJson, LogprobsAreShapedAsOpenAis) {
  const float inf = std::numeric_limits<float>::infinity();
  std::vector<TokenLogprob> lps(2);
  lps[0] = {5, -0.5f, "H\xC3\xA9", {{5, -0.5f, "H\xC3\xA9"}, {6, -1.5f, "Ho"}}};
  lps[1] = {9, -inf, "!", {{5, -0.25f, "H\xC3\xA9"}}};  // sampled outside the top
  int64_t offset = 4;
  const json c = logprobs_json(Api::Completions, lps, offset);
  EXPECT_EQ(c["tokens"], json::parse(R"(["H\u00e9", "!"])"));
  // -inf is vLLM's -9999, which JSON can carry.
  EXPECT_EQ(c["token_logprobs"], json::parse("[-0.5, -9999.0]"));
  EXPECT_EQ(c["top_logprobs"],
            json::parse(R"([{"H\u00e9": -0.5, "Ho": -1.5}, {"H\u00e9": -0.25, "!": -9999.0}])"));
  EXPECT_EQ(c["text_offset"], json::parse("[4, 6]"));  // characters: "Hé" is two
  EXPECT_EQ(offset, 7);
  int64_t unused = 0;
  const json ch = logprobs_json(Api::Chat, lps, unused);
  EXPECT_EQ(ch, json::parse(R"({"content": [
      {"token": "H\u00e9", "logprob": -0.5, "bytes": [72, 195, 169],
       "top_logprobs": [{"token": "H\u00e9", "logprob": -0.5, "bytes": [72, 195, 169]},
                        {"token": "Ho", "logprob": -1.5, "bytes": [72, 111]}]},
      {"token": "!", "logprob": -9999.0, "bytes": [33],
       "top_logprobs": [{"token": "H\u00e9", "logprob": -0.25, "bytes": [72, 195, 169]}]}]})"));
  const ResponseHead head{Api::Chat, "chatcmpl-1", 1, "tiny"};
  EXPECT_EQ(response_json(head, "x", "stop", {1, 1}, nullptr, ch)["choices"][0]["logprobs"], ch);
  EXPECT_EQ(chunk_json(head, "x", std::nullopt, false, ch)["choices"][0]["logprobs"], ch);
}

}  // namespace
}  // namespace fairkv::serve
