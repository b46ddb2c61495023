// Log-probabilities over HTTP, in-process on stories260K: the shapes OpenAI and vLLM answer with
// (completions' tokens / token_logprobs / top_logprobs / text_offset, chat's content list), the
// greedy choice the most likely, streamed chunks carrying exactly the non-streamed answer's
// logprobs (each with the text it completes), and out-of-range values refused naming the field.
#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "serve/http_server.h"
#include "serve/http_test_util.h"

namespace fairkv::serve::testing {
namespace {

int64_t chars(const std::string& s) {
  int64_t n = 0;
  for (char c : s) n += (static_cast<unsigned char>(c) & 0xC0) != 0x80;
  return n;
}

// The completions logprobs of a stream's chunks joined, checking that each chunk's tokens are
// those its text completes: the tokens so far spell a prefix of the text so far.
json joined_completion_logprobs(const Events& ev) {
  json all = {{"tokens", json::array()},
              {"token_logprobs", json::array()},
              {"top_logprobs", json::array()},
              {"text_offset", json::array()}};
  std::string text, spelled;
  for (const std::string& d : ev.data) {
    if (d == "[DONE]") break;
    const json j = json::parse(d);
    if (j["choices"].empty()) continue;
    const json& c = j["choices"][0];
    text += c["text"].get<std::string>();
    if (c["logprobs"].is_null()) continue;
    for (const char* f : {"tokens", "token_logprobs", "top_logprobs", "text_offset"})
      for (const json& x : c["logprobs"][f]) all[f].push_back(x);
    for (const json& t : c["logprobs"]["tokens"]) spelled += t.get<std::string>();
    if (c["finish_reason"].is_null()) {
      EXPECT_TRUE(text.starts_with(spelled)) << d;
    }
  }
  return all;
}

TEST_F(HttpTest, CompletionLogprobsStreamedEqualWhole) {
  TestServer s(m());
  auto c = s.client();
  json body = {{"prompt", "Once upon a time"},
               {"max_tokens", 24},
               {"temperature", 0},
               {"logprobs", 3},
               {"stop", {"ezq", " zq"}}};
  const Reply whole = post(c, "/v1/completions", body);
  ASSERT_EQ(whole.status, 200) << whole.body;
  const json& lp = whole.j["choices"][0]["logprobs"];
  ASSERT_TRUE(lp.is_object()) << whole.body;
  const size_t n = lp["tokens"].size();
  EXPECT_EQ(int64_t(n), whole.j["usage"]["completion_tokens"].get<int64_t>());
  ASSERT_EQ(lp["token_logprobs"].size(), n);
  ASSERT_EQ(lp["top_logprobs"].size(), n);
  ASSERT_EQ(lp["text_offset"].size(), n);
  std::string spelled;
  int64_t offset = 0;
  for (size_t i = 0; i < n; ++i) {
    const std::string tok = lp["tokens"][i];
    const double v = lp["token_logprobs"][i];
    const json& top = lp["top_logprobs"][i];
    EXPECT_LE(v, 0.0);
    EXPECT_EQ(lp["text_offset"][i], offset);
    offset += chars(tok);
    spelled += tok;
    // The 3 most likely and the chosen one; greedy: the chosen one is the most likely.
    EXPECT_GE(top.size(), 1u);
    EXPECT_LE(top.size(), 4u);
    ASSERT_TRUE(top.contains(tok)) << top.dump();
    EXPECT_EQ(top[tok].get<double>(), v);
    for (const auto& [t, x] : top.items()) EXPECT_LE(x.get<double>(), v) << t;
  }
  EXPECT_TRUE(spelled.starts_with(whole.j["choices"][0]["text"].get<std::string>()));

  body["stream"] = true;
  auto res = c.Post("/v1/completions", body.dump(), "application/json");
  ASSERT_TRUE(res);
  const Events ev = parse_events(res->body);
  ASSERT_TRUE(ev.well_formed) << res->body;
  EXPECT_EQ(streamed_text(ev), whole.j["choices"][0]["text"]);
  EXPECT_EQ(joined_completion_logprobs(ev), lp);

  // Without the field, no logprobs.
  body.erase("logprobs");
  body.erase("stream");
  EXPECT_TRUE(post(c, "/v1/completions", body).j["choices"][0]["logprobs"].is_null());
}

TEST_F(HttpTest, ChatLogprobsStreamedEqualWhole) {
  HttpOptions ho = test_http();
  ho.chat = tokenizer::ChatTemplate{};  // ChatML
  TestServer s(m(), test_engine(), ho);
  auto c = s.client();
  json body = {{"messages", {{{"role", "user"}, {"content", "Tell me about a dog."}}}},
               {"max_tokens", 16},
               {"temperature", 0.7},
               {"seed", 11},
               {"logprobs", true},
               {"top_logprobs", 2}};
  const Reply whole = post(c, "/v1/chat/completions", body);
  ASSERT_EQ(whole.status, 200) << whole.body;
  const json& content = whole.j["choices"][0]["logprobs"]["content"];
  ASSERT_TRUE(content.is_array()) << whole.body;
  EXPECT_EQ(int64_t(content.size()), whole.j["usage"]["completion_tokens"].get<int64_t>());
  for (const json& t : content) {
    const std::string tok = t["token"];
    std::vector<int> bytes;
    for (char ch : tok) bytes.push_back(int(static_cast<unsigned char>(ch)));
    if (tok.find("\xEF\xBF\xBD") == std::string::npos) {
      EXPECT_EQ(t["bytes"].get<std::vector<int>>(), bytes);
    }
    ASSERT_EQ(t["top_logprobs"].size(), 2u);
    const double a = t["top_logprobs"][0]["logprob"], b = t["top_logprobs"][1]["logprob"];
    EXPECT_GE(a, b);
    EXPECT_LE(t["logprob"].get<double>(), a);  // sampled: at most the most likely
    EXPECT_TRUE(t["top_logprobs"][0]["bytes"].is_array());
  }

  body["stream"] = true;
  auto res = c.Post("/v1/chat/completions", body.dump(), "application/json");
  ASSERT_TRUE(res);
  const Events ev = parse_events(res->body);
  ASSERT_TRUE(ev.well_formed) << res->body;
  EXPECT_EQ(streamed_text(ev), whole.j["choices"][0]["message"]["content"]);  // seeded
  json joined = json::array();
  for (const std::string& d : ev.data) {
    if (d == "[DONE]") break;
    const json j = json::parse(d);
    const json& lp = j["choices"][0]["logprobs"];
    if (!lp.is_null())
      for (const json& t : lp["content"]) joined.push_back(t);
  }
  EXPECT_EQ(joined, content);

  // logprobs alone: the chosen tokens with no alternatives.
  body.erase("stream");
  body.erase("top_logprobs");
  const Reply bare = post(c, "/v1/chat/completions", body);
  ASSERT_EQ(bare.status, 200) << bare.body;
  for (const json& t : bare.j["choices"][0]["logprobs"]["content"])
    EXPECT_TRUE(t["top_logprobs"].empty());
}

TEST_F(HttpTest, LogprobsOutOfRangeNameTheField) {
  HttpOptions ho = test_http();
  ho.chat = tokenizer::ChatTemplate{};
  TestServer s(m(), test_engine(), ho);
  auto c = s.client();
  const std::string msgs = R"("messages": [{"role": "user", "content": "x"}])";
  const std::pair<std::string, std::string> cases[] = {
      {"/v1/completions", R"({"prompt": "x", "logprobs": 21})"},
      {"/v1/completions", R"({"prompt": "x", "logprobs": -1})"},
      {"/v1/completions", R"({"prompt": "x", "logprobs": true})"},
      {"/v1/completions", R"({"prompt": "x", "logprobs": 1.5})"},
      {"/v1/completions", R"({"prompt": "x", "top_logprobs": 2})"},
      {"/v1/chat/completions", "{" + msgs + R"(, "logprobs": 3})"},
      {"/v1/chat/completions", "{" + msgs + R"(, "logprobs": true, "top_logprobs": 21})"},
      {"/v1/chat/completions", "{" + msgs + R"(, "logprobs": true, "top_logprobs": -2})"},
      {"/v1/chat/completions", "{" + msgs + R"(, "top_logprobs": 2})"},
  };
  for (const auto& [path, body] : cases) {
    SCOPED_TRACE(path + " " + body);
    const Reply r = post(c, path, body);
    EXPECT_EQ(r.status, 400) << r.body;
    expect_error_shape(r);
    const std::string field =
        body.find("top_logprobs") != std::string::npos ? "top_logprobs" : "logprobs";
    EXPECT_EQ(r.j["error"]["param"], field) << r.body;
  }
}

}  // namespace
}  // namespace fairkv::serve::testing
