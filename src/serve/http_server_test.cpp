// The HTTP server in-process on stories260K, through cpp-httplib's client: every endpoint's
// answer, and every refusal at the HTTP level (its status and OpenAI's error object). Streams,
// disconnects, concurrency and shutdown are in http_stream_test.cpp.
#include "serve/http_server.h"

#include <gtest/gtest.h>

#include <string>

#include "serve/http_test_util.h"

namespace fairkv::serve::testing {
namespace {

TEST_F(HttpTest, HealthModelsPropsAndThePage) {
  TestServer s(m());
  auto c = s.client();
  const Reply health = get(c, "/health");
  EXPECT_EQ(health.status, 200);
  EXPECT_EQ(health.j, json::parse(R"({"status": "ok"})"));

  const Reply models = get(c, "/v1/models");
  ASSERT_EQ(models.status, 200);
  EXPECT_EQ(models.j["object"], "list");
  ASSERT_EQ(models.j["data"].size(), 1u);
  EXPECT_EQ(models.j["data"][0]["id"], "stories260K");
  EXPECT_EQ(models.j["data"][0]["object"], "model");
  EXPECT_EQ(models.j["data"][0]["owned_by"], "fairkv");

  const Reply props = get(c, "/props");
  ASSERT_EQ(props.status, 200);
  EXPECT_EQ(props.j["chat_template"], "");  // stories260K has none
  EXPECT_TRUE(props.j["chat_template_family"].is_null());
  EXPECT_EQ(props.j["total_slots"], 4);

  auto page = c.Get("/");
  ASSERT_TRUE(page);
  EXPECT_EQ(page->status, 200);
  EXPECT_NE(page->get_header_value("Content-Type").find("text/html"), std::string::npos);
  for (const char* part :
       {"<!doctype html>", "/v1/chat/completions", "/v1/completions", "/stats", "</html>"})
    EXPECT_NE(page->body.find(part), std::string::npos) << part;
}

TEST_F(HttpTest, APortInUseIsRefused) {
  TestServer s(m());
  kernels::ThreadPool pool(1);
  Engine e(m(), std::make_unique<SoloBackend>(m(), pool, SoloOptions{}), test_engine());
  HttpOptions ho = test_http();
  ho.port = s.port;
  HttpServer second(m(), e, ho);
  EXPECT_THROW(second.start(), std::runtime_error);  // not shared (no SO_REUSEPORT)
}

TEST_F(HttpTest, TokenizeAndDetokenizeRoundTrip) {
  TestServer s(m());
  auto c = s.client();
  const std::string text = "Once upon a time, there was a cat.";
  const Reply tok = post(c, "/tokenize", json{{"content", text}});
  ASSERT_EQ(tok.status, 200) << tok.body;
  const auto expected = m().tokenizer.encode(text, false, true);
  EXPECT_EQ(tok.j["tokens"].get<std::vector<int32_t>>(), expected);
  const Reply with_bos = post(c, "/tokenize", json{{"content", text}, {"add_special", true}});
  EXPECT_EQ(with_bos.j["tokens"][0], m().tokenizer.bos());
  const Reply pieces = post(c, "/tokenize", json{{"content", "cat"}, {"with_pieces", true}});
  ASSERT_TRUE(pieces.j["tokens"][0].is_object()) << pieces.body;
  EXPECT_TRUE(pieces.j["tokens"][0].contains("piece"));

  const Reply detok = post(c, "/detokenize", json{{"tokens", tok.j["tokens"]}});
  ASSERT_EQ(detok.status, 200);
  EXPECT_EQ(detok.j["content"], m().tokenizer.decode(expected));

  const std::pair<const char*, const char*> bad[] = {{"/tokenize", R"({"content": 5})"},
                                                     {"/tokenize", "{}"},
                                                     {"/tokenize", "not json"},
                                                     {"/detokenize", R"({"tokens": [1, -1]})"},
                                                     {"/detokenize", R"({"tokens": [99999]})"},
                                                     {"/detokenize", R"({"tokens": "1"})"}};
  for (const auto& [path, body] : bad) {
    const Reply r = post(c, path, std::string(body));
    EXPECT_EQ(r.status, 400) << path << " " << body;
    expect_error_shape(r);
  }
}

TEST_F(HttpTest, CompletionEqualsTheEngineAlone) {
  const std::string prompt = "Once upon a time, there was a little girl named Lily.";
  // The same request straight to an engine, without HTTP.
  std::string direct;
  {
    kernels::ThreadPool pool(1);
    Engine e(m(), std::make_unique<SoloBackend>(m(), pool, SoloOptions{}), test_engine());
    Request r;
    r.prompt = m().tokenizer.encode(prompt, m().tokenizer.add_bos());
    r.max_tokens = 24;
    r.sampling.temp = 0;
    e.submit(r, [&](const Event& ev) { direct += ev.text; });
    e.run_until_idle();
  }
  TestServer s(m());
  auto c = s.client();
  const Reply r = post(
      c, "/v1/completions",
      json{{"model", "stories260K"}, {"prompt", prompt}, {"max_tokens", 24}, {"temperature", 0}});
  ASSERT_EQ(r.status, 200) << r.body;
  EXPECT_EQ(r.j["object"], "text_completion");
  EXPECT_TRUE(r.j["id"].get<std::string>().starts_with("cmpl-"));
  EXPECT_EQ(r.j["model"], "stories260K");
  EXPECT_TRUE(r.j["created"].is_number_integer());
  const json& choice = r.j["choices"][0];
  EXPECT_EQ(choice["index"], 0);
  EXPECT_EQ(choice["text"], direct);
  EXPECT_TRUE(choice["logprobs"].is_null());
  EXPECT_TRUE(choice["finish_reason"] == "length" || choice["finish_reason"] == "stop");
  const json& u = r.j["usage"];
  EXPECT_EQ(u["prompt_tokens"].get<int64_t>(),
            int64_t(m().tokenizer.encode(prompt, m().tokenizer.add_bos()).size()));
  EXPECT_EQ(u["total_tokens"],
            u["prompt_tokens"].get<int64_t>() + u["completion_tokens"].get<int64_t>());
  EXPECT_LE(u["completion_tokens"].get<int64_t>(), 24);

  // Token ids as the prompt, a stop string, and the server's default max_tokens (16).
  const Reply ids = post(c, "/v1/completions",
                         json{{"prompt", m().tokenizer.encode(prompt, true)}, {"stop", "."}});
  ASSERT_EQ(ids.status, 200) << ids.body;
  EXPECT_LE(ids.j["usage"]["completion_tokens"].get<int64_t>(), 16);
  EXPECT_EQ(ids.j["choices"][0]["text"].get<std::string>().find('.'), std::string::npos);
}

TEST_F(HttpTest, ChatWithoutATemplateIsRefusedByName) {
  TestServer s(m());
  auto c = s.client();
  const json chat = {{"messages", {{{"role", "user"}, {"content", "Hi"}}}}};
  const Reply r = post(c, "/v1/chat/completions", chat);
  EXPECT_EQ(r.status, 400);
  expect_error_shape(r);
  EXPECT_EQ(r.j["error"]["code"], "no_chat_template");
  EXPECT_NE(r.j["error"]["message"].get<std::string>().find("chat template"), std::string::npos);
  EXPECT_EQ(post(c, "/apply-template", chat).status, 400);
  // Completions still work.
  EXPECT_EQ(post(c, "/v1/completions", json{{"prompt", "Hi"}}).status, 200);
}

TEST_F(HttpTest, ChatWithANamedFamily) {
  HttpOptions ho = test_http();
  tokenizer::ChatTemplate t;
  t.kind = tokenizer::ChatKind::ChatML;
  ho.chat = t;
  TestServer s(m(), test_engine(), ho);
  auto c = s.client();
  const json body = {{"messages",
                      {{{"role", "system"}, {"content", "Be kind."}},
                       {{"role", "user"}, {"content", "Tell me a story."}}}},
                     {"max_tokens", 12},
                     {"temperature", 0}};
  const Reply r = post(c, "/v1/chat/completions", body);
  ASSERT_EQ(r.status, 200) << r.body;
  EXPECT_EQ(r.j["object"], "chat.completion");
  EXPECT_TRUE(r.j["id"].get<std::string>().starts_with("chatcmpl-"));
  EXPECT_EQ(r.j["choices"][0]["message"]["role"], "assistant");
  EXPECT_TRUE(r.j["choices"][0]["message"]["content"].is_string());
  const Reply tpl = post(c, "/apply-template", body);
  ASSERT_EQ(tpl.status, 200);
  EXPECT_EQ(tpl.j["prompt"],
            "<|im_start|>system\nBe kind.<|im_end|>\n<|im_start|>user\nTell me a "
            "story.<|im_end|>\n<|im_start|>assistant\n");
  // The rendered prompt's tokens are what the request counted.
  EXPECT_EQ(r.j["usage"]["prompt_tokens"].get<size_t>(),
            m().tokenizer.encode(tpl.j["prompt"].get<std::string>(), m().tokenizer.add_bos(), true)
                .size());
}

TEST_F(HttpTest, RefusalsHaveStatusAndErrorObject) {
  EngineOptions eo = test_engine();
  eo.ctx_size = 64;
  HttpOptions ho = test_http();
  ho.max_body_bytes = 4096;
  TestServer s(m(), eo, ho);
  auto c = s.client();
  struct Case {
    const char* path;
    std::string body;
    int status;
    const char* param;
    const char* code;
  };
  const std::vector<int32_t> long_prompt(80, 100), mid_prompt(40, 100);
  const Case cases[] = {
      {"/v1/completions", "{\"prompt\": \"x\"", 400, nullptr, "invalid_json"},
      {"/v1/completions", "[]", 400, nullptr, nullptr},
      {"/v1/completions", R"({"prompt": "x", "temperature": "hot"})", 400, "temperature", nullptr},
      {"/v1/completions", R"({"prompt": "x", "top_p": 1.5})", 400, "top_p", nullptr},
      {"/v1/completions", R"({"prompt": "x", "max_tokens": -3})", 400, "max_tokens", nullptr},
      {"/v1/completions", R"({"model": "gpt-4o", "prompt": "x"})", 404, "model", "model_not_found"},
      {"/v1/completions", R"({"prompt": "x", "n": 3})", 400, "n", "unsupported_parameter"},
      {"/v1/completions", R"({"prompt": "x", "logprobs": 30})", 400, "logprobs", nullptr},
      {"/v1/chat/completions", R"({"messages": []})", 400, "messages", nullptr},
      {"/v1/completions", json{{"prompt", long_prompt}}.dump(), 400, "prompt",
       "context_length_exceeded"},
      {"/v1/completions", json{{"prompt", mid_prompt}, {"max_tokens", 40}}.dump(), 400,
       "max_tokens", "context_length_exceeded"},
      {"/v1/completions", R"({"prompt": [600]})", 400, "prompt", nullptr},  // outside the vocab
      {"/v1/completions", R"({"prompt": "x", "stop": ["", "a"]})", 400, nullptr, nullptr},
      {"/v1/completions", "{\"prompt\": \"" + std::string(5000, 'a') + "\"}", 413, nullptr,
       nullptr},
      {"/v1/nothing", "{}", 404, nullptr, nullptr},
  };
  for (const Case& k : cases) {
    SCOPED_TRACE(std::string(k.path) + " " + k.body.substr(0, 80));
    const Reply r = post(c, k.path, k.body);
    EXPECT_EQ(r.status, k.status) << r.body;
    expect_error_shape(r);
    if (!r.j.is_object()) continue;
    if (k.param) {
      EXPECT_EQ(r.j["error"]["param"], k.param) << r.body;
    }
    if (k.code) {
      EXPECT_EQ(r.j["error"]["code"], k.code) << r.body;
    }
  }
  // Without max_tokens, a prompt whose default output (16) would pass the context runs to the
  // end of the context instead of being refused.
  const Reply fits = post(c, "/v1/completions",
                          json{{"prompt", std::vector<int32_t>(56, 100)}, {"ignore_eos", true}});
  ASSERT_EQ(fits.status, 200) << fits.body;
  EXPECT_EQ(fits.j["choices"][0]["finish_reason"], "length");
  EXPECT_EQ(fits.j["usage"]["completion_tokens"], 64 - 56);
  EXPECT_EQ(get(c, "/v1/nothing").status, 404);
  expect_error_shape(get(c, "/v1/nothing"));
}

TEST_F(HttpTest, ApiKeyGuardsAllButHealthAndPage) {
  HttpOptions ho = test_http();
  ho.api_key = "sesame";
  TestServer s(m(), test_engine(), ho);
  auto c = s.client();
  EXPECT_EQ(get(c, "/health").status, 200);
  EXPECT_EQ(get(c, "/").status, 200);
  for (const char* path : {"/v1/models", "/metrics", "/stats", "/props"}) {
    const Reply r = get(c, path);
    EXPECT_EQ(r.status, 401) << path;
    expect_error_shape(r);
    EXPECT_EQ(r.j["error"]["type"], "authentication_error");
    EXPECT_EQ(get(c, path, {{"Authorization", "Bearer wrong"}}).status, 401) << path;
    EXPECT_EQ(get(c, path, {{"Authorization", "Bearer sesame"}}).status, 200) << path;
  }
  EXPECT_EQ(post(c, "/v1/completions", std::string(R"({"prompt": "x"})")).status, 401);
  EXPECT_EQ(post(c, "/v1/completions", std::string(R"({"prompt": "x"})"),
                 {{"Authorization", "Bearer sesame"}})
                .status,
            200);
}

TEST_F(HttpTest, MetricsAndStatsDescribeTheEngine) {
  TestServer s(m());
  auto c = s.client();
  ASSERT_EQ(post(c, "/v1/completions", json{{"prompt", "Once"}, {"max_tokens", 8}}).status, 200);
  // The answer can arrive before the engine publishes the step that ended the request.
  ASSERT_TRUE(
      s.wait_for([](const EngineStats& st) { return st.running == 0 && st.finished == 1; }));
  auto res = c.Get("/metrics");
  ASSERT_TRUE(res);
  EXPECT_EQ(res->status, 200);
  EXPECT_NE(res->get_header_value("Content-Type").find("text/plain"), std::string::npos);
  for (const char* want :
       {"fairkv_requests_running 0", "fairkv_requests_waiting 0", "fairkv_prompt_tokens_total ",
        "fairkv_generation_tokens_total ", "fairkv_time_to_first_token_seconds_count 1",
        "fairkv_time_per_output_token_seconds_bucket{le=\"+Inf\"} 1", "fairkv_preemptions_total 0",
        "fairkv_replans_total 0", "fairkv_kv_bytes{rank=\"0\"} 0", "fairkv_kv_imbalance ",
        "fairkv_kv_imbalance_mean ", "fairkv_requests_finished_total{reason=\""})
    EXPECT_NE(res->body.find(want), std::string::npos) << want;
  const Reply st = get(c, "/stats");
  ASSERT_EQ(st.status, 200);
  EXPECT_EQ(st.j["ranks"].size(), 1u);
  EXPECT_EQ(st.j["finished"], 1);
  EXPECT_FALSE(st.j["chat"].get<bool>());
  for (const char* k : {"running", "waiting", "imbalance", "mean_imbalance", "backend"})
    EXPECT_TRUE(st.j.contains(k)) << k;
}

}  // namespace
}  // namespace fairkv::serve::testing
