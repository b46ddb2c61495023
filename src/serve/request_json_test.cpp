// Request JSON: every field read as documented, defaults kept, and every bad field refused with a
// message that names it.
#include "serve/request_json.h"

#include <gtest/gtest.h>

#include <cmath>
#include <string>

namespace fairkv::serve {
namespace {

using nlohmann::json;

RequestSpec parse(const std::string& text, const Request& defaults = {}) {
  return parse_request(json::parse(text), defaults, "req.jsonl: line 3");
}

std::string error_of(const std::string& text) {
  try {
    parse(text);
  } catch (const std::invalid_argument& e) {
    return e.what();
  }
  return "(accepted)";
}

TEST(RequestJson, ReadsEveryField) {
  const RequestSpec s = parse(R"({"prompt": "hi", "max_tokens": 7, "temperature": 0.5,
      "top_p": 0.9, "top_k": 5, "min_p": 0.1, "seed": 42, "presence_penalty": 0.5,
      "frequency_penalty": -0.5, "repeat_penalty": 1.1, "repeat_last_n": 32,
      "logit_bias": {"13": -100, "7": 2.5, "9": false}, "stop": ["\n", "END"],
      "ignore_eos": true, "kv_policy": "adakv", "kv_budget": 64, "priority": 2,
      "id": "q1", "arrival": 1.5})");
  ASSERT_TRUE(s.prompt);
  EXPECT_EQ(*s.prompt, "hi");
  const Request& r = s.request;
  EXPECT_EQ(r.max_tokens, 7);
  EXPECT_FLOAT_EQ(r.sampling.temp, 0.5f);
  EXPECT_FLOAT_EQ(r.sampling.top_p, 0.9f);
  EXPECT_EQ(r.sampling.top_k, 5);
  EXPECT_FLOAT_EQ(r.sampling.min_p, 0.1f);
  EXPECT_EQ(r.sampling.seed, 42u);
  EXPECT_FLOAT_EQ(r.sampling.presence_penalty, 0.5f);
  EXPECT_FLOAT_EQ(r.sampling.frequency_penalty, -0.5f);
  EXPECT_FLOAT_EQ(r.sampling.repeat_penalty, 1.1f);
  EXPECT_EQ(r.sampling.repeat_last_n, 32);
  ASSERT_EQ(r.sampling.logit_bias.size(), 3u);
  bool banned = false;
  for (const auto& [id, bias] : r.sampling.logit_bias)
    if (id == 9) banned = std::isinf(bias) && bias < 0;
  EXPECT_TRUE(banned);
  EXPECT_EQ(r.stop, (std::vector<std::string>{"\n", "END"}));
  EXPECT_TRUE(r.ignore_eos);
  ASSERT_TRUE(r.compression);
  EXPECT_EQ(r.compression->policy, kv::Policy::AdaKV);
  EXPECT_EQ(r.compression->budget, 64);
  EXPECT_EQ(r.priority, 2);
  EXPECT_EQ(r.tag, "q1");
  EXPECT_DOUBLE_EQ(s.arrival_s, 1.5);
}

TEST(RequestJson, KeepsDefaultsAndReadsIdsAndMessages) {
  Request d;
  d.max_tokens = 99;
  d.sampling.temp = 0.3f;
  const RequestSpec s = parse(R"({"prompt": [1, 2, 3]})", d);
  EXPECT_EQ(s.prompt_ids, (std::vector<int32_t>{1, 2, 3}));
  EXPECT_EQ(s.request.max_tokens, 99);
  EXPECT_FLOAT_EQ(s.request.sampling.temp, 0.3f);
  const RequestSpec c = parse(R"({"messages": [{"role": "system", "content": "be brief"},
      {"role": "user", "content": "hello"}], "n_predict": 3, "stop": "x"})");
  ASSERT_TRUE(c.messages);
  EXPECT_EQ(c.messages->size(), 2u);
  EXPECT_EQ((*c.messages)[1].content, "hello");
  EXPECT_EQ(c.request.max_tokens, 3);
  EXPECT_EQ(c.request.stop, (std::vector<std::string>{"x"}));
}

TEST(RequestJson, RefusesBadFieldsNamingThem) {
  struct Case {
    const char* text;
    const char* needle;
  } cases[] = {
      {R"([1, 2])", "expected a JSON object"},
      {R"({"max_tokens": 3})", "exactly one of"},
      {R"({"prompt": "a", "messages": []})", "exactly one of"},
      {R"({"prompt": 5})", "\"prompt\""},
      {R"({"prompt": []})", "\"prompt\""},
      {R"({"prompt": [1, -2]})", "\"prompt\""},
      {R"({"prompt": "a", "max_tokens": 0})", "\"max_tokens\""},
      {R"({"prompt": "a", "max_tokens": "5"})", "\"max_tokens\""},
      {R"({"prompt": "a", "max_tokens": 1.5})", "\"max_tokens\""},
      {R"({"prompt": "a", "max_tokens": 18446744073709551615})", "\"max_tokens\""},
      {R"({"prompt": "a", "temperature": -1})", "\"temperature\""},
      {R"({"prompt": "a", "top_p": 0})", "\"top_p\""},
      {R"({"prompt": "a", "top_p": 1.5})", "\"top_p\""},
      {R"({"prompt": "a", "min_p": 2})", "\"min_p\""},
      {R"({"prompt": "a", "top_k": -1})", "\"top_k\""},
      {R"({"prompt": "a", "seed": "x"})", "\"seed\""},
      {R"({"prompt": "a", "presence_penalty": 3})", "\"presence_penalty\""},
      {R"({"prompt": "a", "repeat_penalty": 0})", "\"repeat_penalty\""},
      {R"({"prompt": "a", "logit_bias": {"x": 1}})", "\"logit_bias\""},
      {R"({"prompt": "a", "logit_bias": {"5": 500}})", "\"logit_bias\""},
      {R"({"prompt": "a", "logit_bias": 3})", "\"logit_bias\""},
      {R"({"prompt": "a", "stop": [1]})", "\"stop\""},
      {R"({"prompt": "a", "ignore_eos": 1})", "\"ignore_eos\""},
      {R"({"prompt": "a", "kv_policy": "nope"})", "kv_policy"},
      {R"({"prompt": "a", "kv_budget": 0})", "\"kv_budget\""},
      {R"({"prompt": "a", "priority": 1e9})", "\"priority\""},
      {R"({"prompt": "a", "id": [1]})", "\"id\""},
      {R"({"prompt": "a", "arrival": -1})", "\"arrival\""},
      {R"({"prompt": "a", "temprature": 1})", "unknown field \"temprature\""},
      {R"({"messages": [{"role": "robot", "content": "x"}]})", "\"messages\""},
      {R"({"messages": [{"role": "user"}]})", "\"messages\""},
  };
  for (const Case& c : cases) {
    const std::string e = error_of(c.text);
    EXPECT_NE(e.find("req.jsonl: line 3"), std::string::npos) << c.text << " -> " << e;
    EXPECT_NE(e.find(c.needle), std::string::npos) << c.text << " -> " << e;
  }
  // Fields the caller handles itself are skipped when named.
  EXPECT_NO_THROW(
      parse_request(json::parse(R"({"prompt": "a", "stream": true})"), {}, "x", {"stream"}));
}

}  // namespace
}  // namespace fairkv::serve
