#include "serve/engine.h"

#include "model/prefill_compression.h"

#include <algorithm>
#include <cmath>
#include <utility>

#include <fmt/format.h>

#include "kernels/clock.h"
#include "model/prefill_compression.h"
#include "model/sampler.h"
#include "serve/stop_strings.h"

namespace fairkv::serve {

const char* finish_reason_name(FinishReason r) {
  switch (r) {
    case FinishReason::Stop:
      return "stop";
    case FinishReason::Length:
      return "length";
    case FinishReason::Cancelled:
      return "cancelled";
    case FinishReason::Error:
      return "error";
    default:
      return "none";
  }
}

std::vector<int64_t> prompt_chunk_ends(int64_t n, int64_t chunk, int64_t window) {
  return model::prefill_block_ends(n, chunk, window);
}

std::vector<PromptChunk> prompt_chunks(int64_t n, int64_t chunk, const kv::CompressionConfig& c) {
  std::vector<PromptChunk> out;
  const int64_t window = c.needs_scores() ? c.window : 0;
  if (!c.blockwise()) {
    for (int64_t e : prompt_chunk_ends(n, chunk, window)) out.push_back({e, e == n});
    return out;
  }
  // Block-wise prefill: blocks as one device cuts them, each in chunks that fit a step, its
  // last chunk holding the block's window; the cache is compressed after every block.
  int64_t b = 0;
  for (int64_t e : model::prefill_block_ends(n, c.epicache_block, window)) {
    for (int64_t ce : prompt_chunk_ends(e - b, chunk, window)) out.push_back({b + ce, false});
    out.back().compress = true;
    b = e;
  }
  return out;
}

enum class State { Waiting, Prefill, Decode, Preempted };

struct Engine::Seq {
  RequestId id = 0;
  Request req;
  EventFn on_event;
  RequestStats stats;
  State state = State::Waiting;
  kv::CompressionConfig compression;
  model::Sampler sampler;
  StopMatcher stop;
  std::vector<PromptChunk> chunks;
  size_t next_chunk = 0;
  std::vector<int32_t> output;  // generated tokens
  size_t fed = 0;               // of the output, tokens already in the cache
  bool swapped = false;         // preempted with its cache swapped out (else dropped)
  int64_t max_rows = 0;         // per head: prompt + output
  bool cancel = false;
  // With logprobs: those of tokens whose text is still held back, and where each token's text
  // ends in the generated text; released_bytes: how much of that text has been sent.
  std::vector<TokenLogprob> held_logprobs;
  std::vector<size_t> held_ends;
  size_t text_bytes = 0, released_bytes = 0;

  Seq(Request r, const kv::CompressionConfig& c, int64_t n_vocab)
      : req(std::move(r)), compression(c), sampler(req.sampling, n_vocab), stop(req.stop) {
    // Penalties count the prompt too, as llama.cpp's do.
    sampler.accept(req.prompt);
  }
};

Engine::Engine(const model::Model& m, std::unique_ptr<Backend> backend, const EngineOptions& opt)
    : m_(m), backend_(std::move(backend)), opt_(opt), t0_(std::chrono::steady_clock::now()) {
  auto fail = [](const std::string& what) { throw std::invalid_argument(what); };
  if (opt_.parallel < 1 || opt_.parallel > 4096)
    fail(fmt::format("--parallel: expected 1 to 4096 requests, got {}", opt_.parallel));
  if (opt_.prefill_chunk < 1)
    fail(fmt::format("--ubatch-size: expected a positive count, got {}", opt_.prefill_chunk));
  if (opt_.step_tokens < opt_.prefill_chunk + opt_.parallel)
    fail(
        fmt::format("--batch-size: expected at least --ubatch-size + --parallel = {} tokens (one "
                    "prompt chunk beside every decoding request), got {}",
                    opt_.prefill_chunk + opt_.parallel, opt_.step_tokens));
  opt_.compression.resolve();
  if (opt_.compression.window > opt_.prefill_chunk)
    fail(fmt::format("--ubatch-size: expected at least the observation window ({}), got {}",
                     opt_.compression.window, opt_.prefill_chunk));
  ctx_ = opt_.ctx_size > 0 ? opt_.ctx_size : m.config.n_ctx_train;
  if (ctx_ <= 0) ctx_ = 4096;
  counters_.backend = stats_.backend = backend_->describe();
  stats_.ranks = backend_->loads();
}

Engine::~Engine() = default;

double Engine::now_ms() const {
  return kernels::ms_since(t0_);
}

RequestId Engine::submit(Request r, EventFn on_event) {
  auto refuse = [](Refused::Kind k, const std::string& what) { throw Refused(k, what); };
  using K = Refused::Kind;
  if (r.prompt.empty()) refuse(K::Invalid, "prompt: expected at least one token, got none");
  const int64_t V = m_.config.n_vocab;
  for (size_t i = 0; i < r.prompt.size(); ++i)
    if (r.prompt[i] < 0 || r.prompt[i] >= V)
      refuse(K::Invalid, fmt::format("prompt: token {} at position {} is outside the vocabulary "
                                     "[0, {})",
                                     r.prompt[i], i, V));
  for (int32_t t : r.stop_tokens)
    if (t < 0 || t >= V)
      refuse(K::Invalid, fmt::format("stop tokens: {} is outside the vocabulary [0, {})", t, V));
  if (r.max_tokens < 1)
    refuse(K::Invalid, fmt::format("max_tokens: expected at least 1, got {}", r.max_tokens));
  if (r.logprobs < -1 || r.logprobs > kMaxTopLogprobs)
    refuse(K::Invalid, fmt::format("logprobs: expected -1 (none) or 0 to {} alternatives, got {}",
                                   kMaxTopLogprobs, r.logprobs));
  if (int64_t(r.prompt.size()) >= ctx_)
    refuse(K::TooLarge, fmt::format("prompt: {} tokens do not fit the context of {} tokens "
                                    "(prompt + at least one output token)",
                                    r.prompt.size(), ctx_));
  kv::CompressionConfig comp = r.compression ? *r.compression : opt_.compression;
  std::unique_ptr<Seq> s;
  try {
    comp.resolve();
    model::check_sampler(r.sampling, V);
    check_stop_strings(r.stop);
    s = std::make_unique<Seq>(std::move(r), comp, V);
  } catch (const Refused&) {
    throw;
  } catch (const std::invalid_argument& e) {
    refuse(K::Invalid, e.what());
  }
  if (comp.window > opt_.prefill_chunk)
    refuse(K::Invalid, fmt::format("kv window: expected at most the prompt chunk ({}), got {}",
                                   opt_.prefill_chunk, comp.window));
  s->on_event = std::move(on_event);
  const int64_t n = int64_t(s->req.prompt.size());
  s->max_rows = std::min<int64_t>(ctx_, n + s->req.max_tokens);
  if (comp.blockwise() && comp.ratio > 0) {
    // Every block compresses to the budget of the whole prompt.
    s->compression.budget = comp.budget_for(n);
    s->compression.ratio = 0;
  }
  s->chunks = prompt_chunks(n, opt_.prefill_chunk, s->compression);
  s->stats.prompt_tokens = n;
  if (opt_.kv_memory > 0 && need_bytes(*s) > opt_.kv_memory)
    refuse(K::TooLarge,
           fmt::format("kv memory: the request needs {:.1f} MiB of KV cache (prompt of {} tokens, "
                       "up to {} output tokens), more than --kv-memory {:.1f} MiB",
                       double(need_bytes(*s)) / (1 << 20), n, s->req.max_tokens,
                       double(opt_.kv_memory) / (1 << 20)));
  std::lock_guard lock(mu_);
  if (stopping_) refuse(K::ShuttingDown, "the engine is shutting down");
  if (queued_ >= int64_t(opt_.queue_limit)) {
    ++stats_.refused;
    refuse(K::QueueFull,
           fmt::format("the queue is full ({} requests waiting); retry later", queued_));
  }
  s->id = next_id_++;
  s->stats.arrival_ms = now_ms();
  ++queued_;
  ++stats_.submitted;
  const RequestId id = s->id;
  inbox_.push_back(std::move(s));
  wake_.notify_all();
  return id;
}

void Engine::cancel(RequestId id) {
  std::lock_guard lock(mu_);
  cancels_.push_back(id);
  wake_.notify_all();
}

void Engine::stop(bool cancel_all) {
  std::lock_guard lock(mu_);
  stopping_ = true;
  cancel_all_ = cancel_all_ || cancel_all;
  wake_.notify_all();
}

void Engine::take_inbox() {
  std::vector<std::unique_ptr<Seq>> in;
  std::vector<RequestId> cancels;
  bool cancel_all = false;
  {
    std::lock_guard lock(mu_);
    in.swap(inbox_);
    cancels.swap(cancels_);
    cancel_all = cancel_all_;
  }
  for (auto& s : in) {
    waiting_.push_back(s.get());
    ++counters_.submitted;
    const RequestId id = s->id;
    seqs_[id] = std::move(s);
  }
  if (cancel_all)
    for (auto& [id, s] : seqs_) cancels.push_back(id);
  for (RequestId id : cancels) {
    auto it = seqs_.find(id);
    if (it != seqs_.end()) it->second->cancel = true;
  }
  // Cancelled requests leave before anything is scheduled, freeing their memory now.
  std::vector<Seq*> gone;
  for (auto& [id, s] : seqs_)
    if (s->cancel) gone.push_back(s.get());
  for (Seq* s : gone) finish(*s, FinishReason::Cancelled);
}

size_t Engine::need_bytes(const Seq& s) const {
  // The prompt's rows before compression, or the kept rows and the output, whichever is more.
  const int64_t n = int64_t(s.req.prompt.size());
  const int64_t kept = s.compression.policy == kv::Policy::Full ? n : s.compression.budget_for(n);
  // A block-wise prefill holds at most the budget and one block (its window included).
  const int64_t held = s.compression.blockwise()
                           ? std::min(n, kept + s.compression.epicache_block + s.compression.window)
                           : n;
  const int64_t rows = std::max(held, std::min(kept, n) + int64_t(s.req.max_tokens));
  return backend_->bytes_for(std::min(rows, s.max_rows), s.max_rows);
}

bool Engine::fits(const Seq& s, size_t committed) const {
  if (opt_.kv_memory == 0) return true;
  // Prompts still being prefilled will hold all their rows before compression.
  size_t pending = 0;
  for (const Seq* r : running_)
    if (r->state == State::Prefill) {
      const int64_t done = r->next_chunk ? r->chunks[r->next_chunk - 1].end : 0;
      pending += backend_->bytes_for(int64_t(r->req.prompt.size()), r->max_rows) -
                 backend_->bytes_for(done, r->max_rows);
    }
  return committed + pending + need_bytes(s) <= opt_.kv_memory;
}

void Engine::admit() {
  // Preempted requests first (highest priority, then least service), then the new ones in order.
  std::stable_sort(preempted_.begin(), preempted_.end(), [](const Seq* a, const Seq* b) {
    if (a->req.priority != b->req.priority) return a->req.priority > b->req.priority;
    return a->output.size() < b->output.size();
  });
  std::stable_sort(waiting_.begin(), waiting_.end(),
                   [](const Seq* a, const Seq* b) { return a->req.priority > b->req.priority; });
  size_t committed = backend_->max_rank_bytes();
  while (int(running_.size()) < opt_.parallel && !preempted_.empty()) {
    Seq* s = preempted_.front();
    if (!fits(*s, committed)) return;  // wait: those preempted earlier go back first
    preempted_.erase(preempted_.begin());
    if (s->swapped) {
      backend_->swap_in(s->id);
      ++counters_.swap_ins;
      s->state = State::Decode;
    } else {
      // Recompute: the prompt again, then the output fed back (fed counts it).
      s->state = State::Prefill;
      s->next_chunk = 0;
      s->fed = 0;
      ++s->stats.recomputations;
      ++counters_.recomputations;
    }
    running_.push_back(s);
    batch_changed_ = true;
    committed = backend_->max_rank_bytes();
  }
  while (int(running_.size()) < opt_.parallel && !waiting_.empty() &&
         int(running_.size() + preempted_.size()) < open_limit(opt_.parallel)) {
    Seq* s = waiting_.front();
    if (!fits(*s, committed)) return;
    waiting_.pop_front();
    {
      std::lock_guard lock(mu_);
      --queued_;
    }
    backend_->open(s->id, s->max_rows);
    s->state = State::Prefill;
    s->stats.admitted_ms = now_ms();
    running_.push_back(s);
    batch_changed_ = true;
  }
}

Engine::Seq* Engine::choose_victim() {
  // FastSwitch's fairness: protect high priority and those that have received little service.
  Seq* v = nullptr;
  for (Seq* s : running_) {
    if (!v || s->req.priority < v->req.priority ||
        (s->req.priority == v->req.priority &&
         (s->output.size() > v->output.size() ||
          (s->output.size() == v->output.size() && s->id > v->id))))
      v = s;
  }
  return v;
}

void Engine::preempt(Seq& s) {
  running_.erase(std::find(running_.begin(), running_.end(), &s));
  if (s.state == State::Prefill && s.output.empty()) {
    // Nothing generated yet: starting the prompt over costs no more than swapping it.
    backend_->close(s.id);
    backend_->open(s.id, s.max_rows);
    s.swapped = false;
  } else {
    s.swapped = backend_->swap_out(s.id) != SwapPlace::None;
  }
  s.state = State::Preempted;
  batch_changed_ = true;
  ++s.stats.preemptions;
  ++counters_.preemptions;
  preempted_.push_back(&s);
}

void Engine::finish(Seq& s, FinishReason why, const std::string& text) {
  std::string tail = text;
  if (why != FinishReason::Cancelled && why != FinishReason::Error) tail = s.stop.flush() + tail;
  s.stats.finished_ms = now_ms();
  if (s.state != State::Waiting) {
    backend_->close(s.id);
    batch_changed_ = true;
  }
  running_.erase(std::remove(running_.begin(), running_.end(), &s), running_.end());
  preempted_.erase(std::remove(preempted_.begin(), preempted_.end(), &s), preempted_.end());
  if (auto it = std::find(waiting_.begin(), waiting_.end(), &s); it != waiting_.end()) {
    waiting_.erase(it);
    std::lock_guard lock(mu_);
    --queued_;
  }
  ++counters_.finished;
  if (why == FinishReason::Cancelled) ++counters_.cancelled;
  Event e;
  e.id = s.id;
  e.text = std::move(tail);
  e.finish = why;
  e.stats = &s.stats;
  if (why != FinishReason::Cancelled && why != FinishReason::Error)
    e.logprobs = std::move(s.held_logprobs);  // every token's, past a stop string's start too
  if (s.on_event) s.on_event(e);
  const RequestId id = s.id;  // s dies with its entry
  seqs_.erase(id);
}

void Engine::deliver(Seq& s, int32_t token, std::span<const float> logits) {
  std::string piece = m_.tokenizer.decode_token(token);
  if (s.req.logprobs >= 0) {
    // Computed from the raw row here, where the token is sampled, only for those who ask.
    TokenLogprob lp = token_logprob(logits, token, s.req.logprobs);
    lp.text = piece;
    for (TopLogprob& t : lp.top) t.text = m_.tokenizer.decode_token(t.token);
    s.held_logprobs.push_back(std::move(lp));
    s.text_bytes += piece.size();
    s.held_ends.push_back(s.text_bytes);
  }
  s.output.push_back(token);
  ++s.stats.generated_tokens;
  ++counters_.generated_tokens;
  s.sampler.accept(token);
  if (s.stats.first_token_ms < 0) s.stats.first_token_ms = now_ms();
  const bool eog = !s.req.ignore_eos && m_.tokenizer.is_eog(token);
  const bool stop_token = std::find(s.req.stop_tokens.begin(), s.req.stop_tokens.end(), token) !=
                          s.req.stop_tokens.end();
  if (eog || stop_token) return finish(s, FinishReason::Stop);
  StopMatcher::Output fed = s.stop.feed(piece);
  if (fed.stopped) return finish(s, FinishReason::Stop, fed.text);
  Event e;
  e.id = s.id;
  e.token = token;
  s.released_bytes += fed.text.size();
  e.text = std::move(fed.text);
  // The logprobs of the tokens whose text is now wholly sent go with it.
  size_t done = 0;
  while (done < s.held_ends.size() && s.held_ends[done] <= s.released_bytes) ++done;
  if (done > 0) {
    e.logprobs.assign(std::make_move_iterator(s.held_logprobs.begin()),
                      std::make_move_iterator(s.held_logprobs.begin() + ptrdiff_t(done)));
    s.held_logprobs.erase(s.held_logprobs.begin(), s.held_logprobs.begin() + ptrdiff_t(done));
    s.held_ends.erase(s.held_ends.begin(), s.held_ends.begin() + ptrdiff_t(done));
  }
  if (s.on_event) s.on_event(e);
  const int64_t len = int64_t(s.req.prompt.size() + s.output.size());
  if (int(s.output.size()) >= s.req.max_tokens || len >= ctx_) finish(s, FinishReason::Length);
}

bool Engine::step() {
  const auto t0 = std::chrono::steady_clock::now();
  take_inbox();
  admit();
  maybe_replan();
  if (running_.empty()) {
    publish_stats(0);
    return false;
  }
  // Decode rows first (one per decoding request), then prompt chunks while the budget lasts.
  struct Planned {
    Seq* s;
    StepItem item;
  };
  std::vector<Planned> plan;
  int64_t budget = opt_.step_tokens;
  for (Seq* s : running_)
    if (s->state == State::Decode) {
      plan.push_back({s, {s->id, {&s->output[s->fed], 1}}});
      --budget;
    }
  for (Seq* s : running_) {
    if (s->state != State::Prefill) continue;
    const int64_t b = s->next_chunk ? s->chunks[s->next_chunk - 1].end : 0;
    const PromptChunk& ch = s->chunks[s->next_chunk];
    const int64_t e = ch.end;
    if (e - b > budget && !plan.empty()) break;  // in admission order: no overtaking
    StepItem it{s->id, {s->req.prompt.data() + b, size_t(e - b)}};
    if (ch.compress && s->compression.needs_scores()) it.compress = &s->compression;
    it.full_prompt_done = s->next_chunk + 1 == s->chunks.size();
    plan.push_back({s, it});
    budget -= e - b;
  }
  // Memory: the rows this step appends must fit, else preempt until they do.
  if (opt_.kv_memory > 0) {
    for (;;) {
      size_t grow = 0;
      for (const Planned& p : plan)
        grow +=
            backend_->growth_bytes(p.s->id, int64_t(p.item.tokens.size()), p.item.full_prompt_done);
      if (backend_->max_rank_bytes() + grow <= opt_.kv_memory || running_.size() <= 1) break;
      Seq* v = choose_victim();
      preempt(*v);
      plan.erase(
          std::remove_if(plan.begin(), plan.end(), [v](const Planned& p) { return p.s == v; }),
          plan.end());
    }
  }
  std::vector<StepItem> items;
  for (const Planned& p : plan) items.push_back(p.item);
  const std::span<const float> logits = backend_->run(items);
  const size_t V = size_t(backend_->n_vocab());
  for (size_t i = 0; i < plan.size(); ++i) {
    Seq& s = *plan[i].s;
    const std::span<const float> row = logits.subspan(i * V, V);
    if (s.state == State::Prefill) {
      counters_.prompt_tokens += int64_t(plan[i].item.tokens.size());
      if (++s.next_chunk < s.chunks.size()) continue;
      s.state = State::Decode;
      batch_changed_ = true;  // its compressed cache changes the loads
      if (s.stats.kv_rows_kept == 0) s.stats.kv_rows_kept = backend_->rows(s.id);
      if (!s.output.empty()) continue;  // recomputed: the output is fed back next
    } else {
      ++s.fed;
      if (s.fed < s.output.size()) continue;  // still feeding back a recomputed output
    }
    deliver(s, s.sampler.sample(row), row);
  }
  ++counters_.steps;
  publish_stats(kernels::ms_since(t0));
  return true;
}

void Engine::maybe_replan() {
  if (!opt_.replan_cost || !batch_changed_ || backend_->ranks() < 2 || running_.empty()) return;
  batch_changed_ = false;
  // The gain: the predicted step time saved, over the running requests' expected remaining
  // decode steps; the cost: the cached bytes that would move, at replan_gbs.
  const ReplanEstimate e = backend_->estimate_replan(*opt_.replan_cost);
  double remaining = 0;
  for (const Seq* s : running_) remaining += double(s->req.max_tokens) - double(s->output.size());
  remaining /= double(running_.size());
  const double gain_ms = (e.step_ms_now - e.step_ms_after) * remaining;
  const double move_ms = e.move_bytes / (opt_.replan_gbs * 1e6);
  if (gain_ms > move_ms && backend_->replan(*opt_.replan_cost)) ++counters_.replans;
}

void Engine::publish_stats(double step_ms) {
  EngineStats s = counters_;
  s.busy_ms += step_ms;
  counters_.busy_ms = s.busy_ms;
  s.running = int(running_.size());
  s.preempted = int(preempted_.size());
  s.ranks = backend_->loads();
  double mx = 0, sum = 0;
  for (const RankLoad& l : s.ranks) {
    mx = std::max(mx, double(l.kv_bytes));
    sum += double(l.kv_bytes);
  }
  s.imbalance = sum > 0 ? mx * double(s.ranks.size()) / sum : 1;
  if (sum > 0 && step_ms > 0) {
    imbalance_sum_ += s.imbalance;
    ++imbalance_steps_;
  }
  s.mean_imbalance = imbalance_steps_ ? imbalance_sum_ / double(imbalance_steps_) : 1;
  s.swap_host_bytes = backend_->swap_bytes_host();
  s.swap_file_bytes = backend_->swap_bytes_file();
  std::lock_guard lock(mu_);
  s.waiting = int(queued_);
  s.submitted = stats_.submitted;
  s.refused = stats_.refused;
  stats_ = std::move(s);
}

EngineStats Engine::stats() const {
  std::lock_guard lock(mu_);
  return stats_;
}

void Engine::run_until_idle() {
  while (step()) {
  }
}

void Engine::run_forever() {
  for (;;) {
    if (step()) continue;
    std::unique_lock lock(mu_);
    if (stopping_ && inbox_.empty() && cancels_.empty() && seqs_.empty()) return;
    if (stopping_ && cancel_all_ && inbox_.empty() && seqs_.empty()) return;
    wake_.wait_for(lock, std::chrono::milliseconds(50),
                   [&] { return !inbox_.empty() || !cancels_.empty() || stopping_; });
    if (stopping_ && inbox_.empty() && seqs_.empty()) return;
  }
}

}  // namespace fairkv::serve
