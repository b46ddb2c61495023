// The HTTP server's streams and load, in-process on stories260K: the server-sent event format,
// a client that goes away mid-stream or before a non-streamed answer (its request is cancelled
// and its cache freed), a full queue (503 with Retry-After), 32 concurrent clients of mixed
// lengths, some of them leaving, each answered exactly as when alone, the shutdown drain, and an
// engine that fails.
#include <gtest/gtest.h>

#include <map>
#include <string>
#include <thread>
#include <vector>

#include "serve/http_server.h"
#include "serve/http_test_util.h"

namespace fairkv::serve::testing {
namespace {

TEST_F(HttpTest, StreamedCompletionIsServerSentEvents) {
  TestServer s(m());
  auto c = s.client();
  const json body = {{"prompt", "Once upon a time"}, {"max_tokens", 20}, {"temperature", 0}};
  const Reply whole = post(c, "/v1/completions", body);
  ASSERT_EQ(whole.status, 200);
  json sbody = body;
  sbody["stream"] = true;
  sbody["stream_options"] = {{"include_usage", true}};
  auto res = c.Post("/v1/completions", sbody.dump(), "application/json");
  ASSERT_TRUE(res);
  EXPECT_EQ(res->status, 200);
  EXPECT_NE(res->get_header_value("Content-Type").find("text/event-stream"), std::string::npos);
  const Events ev = parse_events(res->body);
  ASSERT_TRUE(ev.well_formed) << res->body;
  ASSERT_GE(ev.data.size(), 4u);
  EXPECT_EQ(ev.data.back(), "[DONE]");
  EXPECT_EQ(streamed_text(ev), whole.j["choices"][0]["text"]);
  std::string id;
  for (size_t i = 0; i + 1 < ev.data.size(); ++i) {
    const json j = json::parse(ev.data[i]);
    EXPECT_EQ(j["object"], "text_completion");
    EXPECT_EQ(j["model"], "stories260K");
    if (i == 0) id = j["id"];
    EXPECT_EQ(j["id"], id);  // one id for the whole stream
    const bool usage = i + 2 == ev.data.size(), last = i + 3 == ev.data.size();
    if (usage) {
      EXPECT_TRUE(j["choices"].empty());
      EXPECT_EQ(j["usage"], whole.j["usage"]);
    } else {
      EXPECT_EQ(j["choices"][0]["finish_reason"],
                last ? whole.j["choices"][0]["finish_reason"] : json());
      EXPECT_TRUE(j["choices"][0]["logprobs"].is_null());
    }
  }
}

TEST_F(HttpTest, StreamedChatStartsWithTheRoleAndEndsWithTheReason) {
  HttpOptions ho = test_http();
  ho.chat = tokenizer::ChatTemplate{};  // ChatML
  TestServer s(m(), test_engine(), ho);
  auto c = s.client();
  const json body = {{"messages", {{{"role", "user"}, {"content", "Tell me about a dog."}}}},
                     {"max_tokens", 16},
                     {"temperature", 0.8},
                     {"seed", 3}};
  const Reply whole = post(c, "/v1/chat/completions", body);
  ASSERT_EQ(whole.status, 200) << whole.body;
  json sbody = body;
  sbody["stream"] = true;
  auto res = c.Post("/v1/chat/completions", sbody.dump(), "application/json");
  ASSERT_TRUE(res);
  const Events ev = parse_events(res->body);
  ASSERT_TRUE(ev.well_formed) << res->body;
  ASSERT_GE(ev.data.size(), 3u);
  EXPECT_EQ(ev.data.back(), "[DONE]");
  const json first = json::parse(ev.data.front());
  EXPECT_EQ(first["object"], "chat.completion.chunk");
  EXPECT_EQ(first["choices"][0]["delta"]["role"], "assistant");
  const json last = json::parse(ev.data[ev.data.size() - 2]);
  EXPECT_EQ(last["choices"][0]["delta"], json::object());
  EXPECT_EQ(last["choices"][0]["finish_reason"], whole.j["choices"][0]["finish_reason"]);
  EXPECT_EQ(streamed_text(ev), whole.j["choices"][0]["message"]["content"]);  // seeded
}

TEST_F(HttpTest, ClientLeavingMidStreamCancelsAndFreesTheCache) {
  TestServer s(m());
  s.backend->step_delay_us = 2000;  // 400 tokens would take most of a second
  const json body = {
      {"prompt", "Once upon a time"}, {"max_tokens", 400}, {"ignore_eos", true}, {"stream", true}};
  const int fd = open_stream(s.port, "/v1/completions", body.dump());
  ASSERT_GE(fd, 0);
  ASSERT_TRUE(s.wait_for([](const EngineStats& st) { return st.ranks[0].kv_bytes > 0; }));
  close(fd);
  ASSERT_TRUE(s.wait_for([](const EngineStats& st) {
    return st.cancelled == 1 && st.running == 0 && st.ranks[0].kv_bytes == 0;
  })) << "cancelled "
      << s.engine->stats().cancelled;
  EXPECT_LT(s.engine->stats().generated_tokens, 400);
  EXPECT_EQ(s.http->metrics().snapshot().finished[size_t(FinishReason::Cancelled)], 1);
  // The server goes on serving.
  auto c = s.client();
  EXPECT_EQ(post(c, "/v1/completions", json{{"prompt", "Hi"}}).status, 200);
}

TEST_F(HttpTest, ClientLeavingANonStreamedRequestCancelsIt) {
  TestServer s(m());
  s.backend->step_delay_us = 2000;  // 400 tokens would take most of a second
  const std::string body =
      json{{"prompt", "Once upon a time"}, {"max_tokens", 400}, {"ignore_eos", true}}.dump();
  // A raw client: it sends the request and leaves before any answer comes.
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(uint16_t(s.port));
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  ASSERT_EQ(connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr), 0);
  const std::string req =
      "POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
      "Content-Length: " +
      std::to_string(body.size()) + "\r\n\r\n" + body;
  ASSERT_EQ(write(fd, req.data(), req.size()), ssize_t(req.size()));
  ASSERT_TRUE(s.wait_for([](const EngineStats& st) { return st.ranks[0].kv_bytes > 0; }));
  close(fd);
  ASSERT_TRUE(s.wait_for([](const EngineStats& st) {
    return st.cancelled == 1 && st.running == 0 && st.ranks[0].kv_bytes == 0;
  })) << "cancelled "
      << s.engine->stats().cancelled;
  EXPECT_LT(s.engine->stats().generated_tokens, 400);
  EXPECT_EQ(s.http->metrics().snapshot().finished[size_t(FinishReason::Cancelled)], 1);
  // A client that stays gets its whole answer, however long the wait: it is not taken for gone.
  s.backend->step_delay_us = 0;
  auto c = s.client();
  const Reply r = post(c, "/v1/completions", body);
  ASSERT_EQ(r.status, 200) << r.body;
  EXPECT_EQ(r.j["usage"]["completion_tokens"], 400);
  EXPECT_EQ(s.engine->stats().cancelled, 1);
}

TEST_F(HttpTest, FullQueueIs503WithRetryAfter) {
  EngineOptions eo = test_engine(1);
  eo.queue_limit = 1;
  TestServer s(m(), eo);
  s.backend->close_gate();
  const json body = {{"prompt", "Once"}, {"max_tokens", 4}};
  Reply running, waiting;
  std::thread a([&] {
    auto c = s.client();
    running = post(c, "/v1/completions", body);
  });
  ASSERT_TRUE(s.backend->wait_held());  // the first request is in a step
  std::thread b([&] {
    auto c = s.client();
    waiting = post(c, "/v1/completions", body);
  });
  ASSERT_TRUE(s.wait_for([](const EngineStats& st) { return st.submitted == 2; }));
  auto c = s.client();
  const Reply full = post(c, "/v1/completions", body);
  EXPECT_EQ(full.status, 503);
  EXPECT_EQ(full.retry_after, "1");
  expect_error_shape(full);
  EXPECT_EQ(full.j["error"]["code"], "queue_full");
  s.backend->open_gate();
  a.join();
  b.join();
  EXPECT_EQ(running.status, 200);
  EXPECT_EQ(waiting.status, 200);
  EXPECT_EQ(post(c, "/v1/completions", body).status, 200);  // room again
}

TEST_F(HttpTest, ConcurrentClientsGetTheirSoloAnswers) {
  TestServer s(m());
  s.backend->step_delay_us = 200;  // keeps several requests in the batch at once
  const char* prompts[] = {"Once upon a time", "The dog ran to the park",
                           "Lily and Tom were friends. One day", "A big red ball"};
  struct Client {
    json body;
    bool stream = false, leaves = false;
    std::string want, got;
    int status = 0;
  };
  std::vector<Client> clients(32);
  for (size_t i = 0; i < clients.size(); ++i) {
    Client& k = clients[i];
    k.body = {{"prompt", prompts[i % 4]}, {"max_tokens", 4 + int(i * 7) % 60}};
    if (i % 3 == 1)
      k.body["temperature"] = 0.9, k.body["seed"] = int(i);
    else
      k.body["temperature"] = 0;
    k.stream = i % 2 == 0;
    k.leaves = i % 8 == 5;
  }
  auto c = s.client();
  for (Client& k : clients) {
    if (k.leaves) continue;
    const Reply r = post(c, "/v1/completions", k.body);
    ASSERT_EQ(r.status, 200) << r.body;
    k.want = r.j["choices"][0]["text"];
  }
  // A reply can reach the client before the engine's step that sent it has counted the request
  // as finished: the baseline is read once the engine is idle.
  ASSERT_TRUE(s.wait_for([](const EngineStats& st) { return st.running == 0 && st.waiting == 0; }));
  const int64_t solo_finished = s.engine->stats().finished;
  std::vector<std::thread> threads;
  for (Client& k : clients)
    threads.emplace_back([&s, &k] {
      json body = k.body;
      if (k.leaves) {
        body["max_tokens"] = 400;
        body["ignore_eos"] = true;
        body["stream"] = true;
        const int fd = open_stream(s.port, "/v1/completions", body.dump());
        k.status = fd >= 0 ? 200 : -1;
        if (fd >= 0) close(fd);
        return;
      }
      auto cl = s.client();
      if (k.stream) body["stream"] = true;
      const Reply r = post(cl, "/v1/completions", body);
      k.status = r.status;
      if (r.status != 200)
        k.got = "HTTP " + std::to_string(r.status) + ": " + r.body;
      else
        k.got = k.stream ? streamed_text(parse_events(r.body))
                         : r.j["choices"][0]["text"].get<std::string>();
    });
  for (auto& t : threads) t.join();
  int leavers = 0;
  for (size_t i = 0; i < clients.size(); ++i) {
    const Client& k = clients[i];
    EXPECT_EQ(k.status, 200) << "client " << i;
    leavers += k.leaves;
    if (!k.leaves) {
      EXPECT_EQ(k.got, k.want) << "client " << i << ": " << k.body.dump();
    }
  }
  ASSERT_TRUE(s.wait_for([&](const EngineStats& st) {
    return st.finished == solo_finished + 32 && st.running == 0 && st.ranks[0].kv_bytes == 0;
  })) << "finished "
      << s.engine->stats().finished - solo_finished << " of 32";
  EXPECT_EQ(s.engine->stats().cancelled, leavers);
}

TEST_F(HttpTest, ShutdownLetsRunningRequestsFinishAndRefusesNewOnes) {
  TestServer s(m());
  s.backend->close_gate();
  Reply stream;
  std::thread a([&] {
    auto c = s.client();
    stream =
        post(c, "/v1/completions",
             json{{"prompt", "Once"}, {"max_tokens", 12}, {"ignore_eos", true}, {"stream", true}});
  });
  ASSERT_TRUE(s.backend->wait_held());
  std::thread stopper([&] { s.http->shutdown(60); });
  auto c = s.client();
  for (int i = 0; i < 400 && get(c, "/health").status != 503; ++i)
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  const Reply late = post(c, "/v1/completions", json{{"prompt", "Hi"}});
  EXPECT_EQ(late.status, 503);
  EXPECT_EQ(late.j["error"]["code"], "shutting_down");
  s.backend->open_gate();
  stopper.join();
  a.join();
  EXPECT_TRUE(s.http->stopped());
  const Events ev = parse_events(stream.body);
  ASSERT_TRUE(ev.well_formed) << stream.body;
  EXPECT_EQ(ev.data.back(), "[DONE]");
  EXPECT_EQ(json::parse(ev.data[ev.data.size() - 2])["choices"][0]["finish_reason"], "length");
  EXPECT_FALSE(c.Get("/health"));  // the listener is closed
}

TEST_F(HttpTest, ShutdownCancelsAfterTheGracePeriod) {
  TestServer s(m());
  s.backend->close_gate();
  Reply stream, whole;
  std::thread a([&] {
    auto c = s.client();
    stream = post(c, "/v1/completions", json{{"prompt", "Once"}, {"stream", true}});
  });
  std::thread b([&] {
    auto c = s.client();
    whole = post(c, "/v1/completions", json{{"prompt", "Twice"}});
  });
  ASSERT_TRUE(s.wait_for([](const EngineStats& st) { return st.submitted == 2; }));
  std::thread opener([&] {
    std::this_thread::sleep_for(std::chrono::milliseconds(300));
    s.backend->open_gate();  // the step in progress may end; the rest is cancelled
  });
  s.http->shutdown(0.1);
  opener.join();
  a.join();
  b.join();
  const Events ev = parse_events(stream.body);
  ASSERT_TRUE(ev.well_formed) << stream.body;
  ASSERT_GE(ev.data.size(), 2u);
  EXPECT_EQ(ev.data.back(), "[DONE]");
  EXPECT_EQ(json::parse(ev.data[ev.data.size() - 2])["error"]["code"], "shutting_down");
  EXPECT_EQ(whole.status, 503);
  EXPECT_EQ(whole.j["error"]["code"], "shutting_down");
}

TEST_F(HttpTest, AFailedEngineAnswers500AndHealthSays503) {
  TestServer s(m());
  s.backend->fail = true;
  auto c = s.client();
  const Reply r = post(c, "/v1/completions", json{{"prompt", "Once"}});
  EXPECT_EQ(r.status, 500);
  expect_error_shape(r);
  EXPECT_NE(r.j["error"]["message"].get<std::string>().find("the device is lost"),
            std::string::npos)
      << r.body;
  EXPECT_TRUE(s.http->engine_failure());
  EXPECT_EQ(post(c, "/v1/completions", json{{"prompt", "Again"}}).status, 500);
  EXPECT_EQ(get(c, "/health").status, 503);
  s.http->shutdown(1);  // the engine's thread has ended already
  EXPECT_TRUE(s.http->stopped());
}

}  // namespace
}  // namespace fairkv::serve::testing
