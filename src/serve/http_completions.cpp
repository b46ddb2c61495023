// POST /v1/completions and /v1/chat/completions: a body becomes an engine request, and the
// engine's events become one JSON answer or a stream of server-sent events.
#include <chrono>

#include <fmt/format.h>

#include "model/chat_prompt.h"
#include "serve/http_internal.h"
#include "serve/peer_socket.h"

namespace fairkv::serve {

using nlohmann::json;

void Channel::push(const Event& e) {
  std::lock_guard lock(mu_);
  if (finished_) return;
  if (e.finish == FinishReason::Error)
    error_ = e.text;  // the reason, not output
  else
    text_ += e.text;
  logprobs_.insert(logprobs_.end(), e.logprobs.begin(), e.logprobs.end());
  if (e.finish != FinishReason::None) {
    finished_ = true;
    finish_ = e.finish;
    if (e.stats) stats_ = *e.stats;
  }
  cv_.notify_all();
}

void Channel::fail(const std::string& why) {
  std::lock_guard lock(mu_);
  if (finished_) return;
  finished_ = true;
  finish_ = FinishReason::Error;
  error_ = why;
  cv_.notify_all();
}

Channel::Piece Channel::take() {
  std::unique_lock lock(mu_);
  cv_.wait(lock, [&] { return finished_ || !text_.empty() || !logprobs_.empty(); });
  Piece p;
  p.text.swap(text_);
  p.logprobs.swap(logprobs_);
  p.finished = finished_;
  return p;
}

void Channel::wait_finished() {
  std::unique_lock lock(mu_);
  cv_.wait(lock, [&] { return finished_; });
}

bool Channel::wait_finished(std::chrono::milliseconds for_) {
  std::unique_lock lock(mu_);
  return cv_.wait_for(lock, for_, [&] { return finished_; });
}

bool Channel::finished() const {
  std::lock_guard lock(mu_);
  return finished_;
}

std::vector<int32_t> HttpServer::Impl::prompt_ids(const RequestSpec& spec) const {
  if (spec.messages) {
    if (!o.chat)
      throw ApiError(400, o.no_chat_reason, "invalid_request_error", "messages",
                     "no_chat_template");
    std::vector<tokenizer::ChatMessage> msgs;
    for (const ChatTurn& t : *spec.messages) msgs.push_back({t.role, t.content});
    try {
      return model::chat_prompt_ids(m, *o.chat, msgs);
    } catch (const tokenizer::ChatTemplateError& e) {
      throw ApiError(400, e.what(), "invalid_request_error", "messages");
    }
  }
  if (spec.prompt) return m.tokenizer.encode(*spec.prompt, m.tokenizer.add_bos());
  return spec.prompt_ids;
}

RequestId HttpServer::Impl::submit(Request r, const std::shared_ptr<Channel>& ch) {
  {
    std::lock_guard lock(mu);
    if (engine_failure)
      throw ApiError(500, "the engine failed: " + *engine_failure, "server_error");
  }
  const RequestId id = engine.submit(std::move(r), [this, ch](const Event& e) {
    if (e.finish != FinishReason::None && e.stats) metrics.observe_finish(e.finish, *e.stats);
    ch->push(e);
  });
  std::lock_guard lock(mu);
  live[id] = ch;
  if (engine_failure) ch->fail("the engine failed: " + *engine_failure);
  return id;
}

void HttpServer::Impl::release(RequestId id, const Channel& ch) {
  // A request whose answer will not be written (the client went away) must not keep running.
  if (!ch.finished()) engine.cancel(id);
  std::lock_guard lock(mu);
  live.erase(id);
}

namespace {

// The answer to a request that did not end by itself.
ApiError ended_error(const Channel& ch) {
  if (ch.finish() == FinishReason::Cancelled)
    return ApiError(503, "the request was cancelled: the server is shutting down",
                    "unavailable_error", "", "shutting_down");
  return ApiError(500, ch.error().empty() ? "the engine could not run the request" : ch.error(),
                  "server_error");
}

bool ended_well(FinishReason f) {
  return f == FinishReason::Stop || f == FinishReason::Length;
}

// Counts a completion answer as being written until it is destroyed, so that shutdown waits
// for the last chunks of every stream.
class ActiveAnswer {
 public:
  explicit ActiveAnswer(HttpServer::Impl& s) : s_(&s) {
    std::lock_guard lock(s_->mu);
    ++s_->active;
  }
  ~ActiveAnswer() {
    std::lock_guard lock(s_->mu);
    --s_->active;
    s_->cv.notify_all();
  }
  ActiveAnswer(const ActiveAnswer&) = delete;
  ActiveAnswer& operator=(const ActiveAnswer&) = delete;

 private:
  HttpServer::Impl* s_;
};

// What a stream's content provider keeps between its calls.
struct Stream {
  std::shared_ptr<Channel> ch;
  ResponseHead head;
  RequestId id = 0;
  bool include_usage = false, started = false;
  bool logprobs = false;
  int64_t text_offset = 0;  // of the next token's logprobs (completions' text_offset)
  std::shared_ptr<ActiveAnswer> active;
};

}  // namespace

void HttpServer::Impl::handle_completion(Api api, const httplib::Request& req,
                                         httplib::Response& res) {
  auto active = std::make_shared<ActiveAnswer>(*this);
  ApiRequest ar = parse_api_request(api, req.body, o.defaults, o.alias);
  Request r = std::move(ar.spec.request);
  r.prompt = prompt_ids(ar.spec);
  const int64_t n = int64_t(r.prompt.size()), ctx = engine.context();
  // As vLLM: an explicit max_tokens must fit beside the prompt; the default stops at the end.
  if (ar.max_tokens_given && n < ctx && n + r.max_tokens > ctx)
    throw ApiError(400,
                   fmt::format("max_tokens: the prompt's {} tokens and max_tokens {} exceed the "
                               "context of {} tokens",
                               n, r.max_tokens, ctx),
                   "invalid_request_error", "max_tokens", "context_length_exceeded");
  ResponseHead head{api, next_response_id(api),
                    std::chrono::duration_cast<std::chrono::seconds>(
                        std::chrono::system_clock::now().time_since_epoch())
                        .count(),
                    o.alias};
  if (r.tag.empty()) r.tag = head.id;
  const bool logprobs = r.logprobs >= 0;
  auto ch = std::make_shared<Channel>();
  const RequestId id = submit(std::move(r), ch);

  if (!ar.stream) {
    // The answer is written once complete; meanwhile the connection is watched so that a client
    // that goes away cancels its request (peer_socket.h says how, and why not otherwise).
    const int fd =
        find_connection_fd(req.local_addr, req.local_port, req.remote_addr, req.remote_port);
    while (!ch->wait_finished(std::chrono::milliseconds(fd >= 0 ? 20 : 1000))) {
      if (fd >= 0 && peer_closed(fd)) {
        release(id, *ch);
        res.status = 499;  // nginx's "client closed request": no one reads it
        return;
      }
    }
    release(id, *ch);
    if (!ended_well(ch->finish())) throw ended_error(*ch);
    const RequestStats& s = ch->stats();
    const Channel::Piece p = ch->take();
    int64_t offset = 0;
    const json lp = logprobs ? logprobs_json(api, p.logprobs, offset) : json();
    res.set_content(dump(response_json(head, p.text, finish_reason_name(ch->finish()),
                                       {s.prompt_tokens, s.generated_tokens}, &s, lp)),
                    "application/json; charset=utf-8");
    return;
  }

  auto st = std::make_shared<Stream>();
  st->ch = ch;
  st->head = head;
  st->id = id;
  st->include_usage = ar.include_usage;
  st->logprobs = logprobs;
  st->active = active;
  res.set_header("Cache-Control", "no-cache");
  res.set_header("X-Accel-Buffering", "no");
  res.set_chunked_content_provider(
      "text/event-stream",
      [st](size_t, httplib::DataSink& sink) {
        // A write that fails means the client is gone: returning false ends the response, and
        // the releaser below cancels the request.
        auto write = [&](const std::string& s) { return sink.write(s.data(), s.size()); };
        const ResponseHead& h = st->head;
        if (!st->started) {
          st->started = true;
          if (h.api == Api::Chat && !write(sse(chunk_json(h, "", std::nullopt, true))))
            return false;
        }
        const Channel::Piece p = st->ch->take();
        // Each chunk carries the logprobs of the tokens whose text it completes.
        const bool has_lp = st->logprobs && !p.logprobs.empty();
        const json lp = has_lp ? logprobs_json(h.api, p.logprobs, st->text_offset) : json();
        if ((!p.text.empty() || has_lp) &&
            !write(sse(chunk_json(h, p.text, std::nullopt, false, lp))))
          return false;
        if (!p.finished) return true;
        const FinishReason f = st->ch->finish();
        if (ended_well(f)) {
          if (!write(sse(chunk_json(h, "", std::string(finish_reason_name(f)))))) return false;
          const RequestStats& s = st->ch->stats();
          if (st->include_usage &&
              !write(sse(usage_chunk_json(h, {s.prompt_tokens, s.generated_tokens}))))
            return false;
        } else if (!write(sse(error_json(ended_error(*st->ch))))) {
          return false;
        }
        if (!write(kSseDone)) return false;
        sink.done();
        return true;
      },
      [this, st](bool) {
        release(st->id, *st->ch);
        st->active.reset();
      });
}

}  // namespace fairkv::serve
