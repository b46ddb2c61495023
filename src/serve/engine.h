// The serving engine: continuous batching of requests over per-head compressed caches.
//
// Iteration-level scheduling, as Orca and vLLM do it: between two steps the engine takes new
// requests and cancellations, resumes preempted requests and admits waiting ones while slots
// (--parallel) and KV memory (--kv-memory) allow, then runs one step over every decoding request
// (one token each) and as many prompt chunks as the step's token budget leaves room for. Prompt
// chunks have a fixed size per request, so a running request's inter-token latency is bounded by
// the budget. When a prompt's last chunk has run, its cache is compressed by the request's own
// policy and scores; the request then decodes in the batch and leaves it the step it finishes.
//
// Memory: a request is admitted when its prompt (before compression) and its compressed cache
// plus its decode growth fit beside what the running requests hold; decode growth of the running
// requests is not reserved, so when a step would exceed the limit the engine preempts by its
// fairness rule (lowest priority first, then the request that has received the most service, then
// the latest arrival), swapping the victim's cache out, or dropping it when the swap space is full
// and recomputing it later (its prompt, then its generated tokens fed back one per step, so that
// it continues exactly as it would have). Preempted requests come back before new ones.
//
// Invariance: with a batch-invariant backend, a request's tokens do not depend on the other
// requests, their number or their timing: each decode row is computed as if alone, each prompt
// chunk on its own, and each request samples from its own seeded generator.
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <deque>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <span>
#include <stdexcept>
#include <string>
#include <vector>

#include "kv/compress.h"
#include "model/model.h"
#include "placement/cost.h"
#include "serve/backend.h"
#include "serve/request.h"

namespace fairkv::serve {

struct EngineOptions {
  int parallel = 4;             // requests running at once (decoding or prefilling)
  int64_t step_tokens = 512;    // tokens one step runs at most: decode rows + prompt chunks
  int64_t prefill_chunk = 256;  // prompt tokens per chunk (the last chunk holds the window)
  int64_t ctx_size = 0;         // per request: prompt + output (0: the model's training context)
  size_t kv_memory = 0;         // KV bytes per rank (0: no limit)
  size_t queue_limit = 256;     // waiting requests beyond which submit() refuses
  kv::CompressionConfig compression;  // the default policy (resolved by the engine)
  // Dynamic FairKV: with a cost model, the engine asks the backend to re-divide the shares of
  // replicated units when the running batch changed and the predicted gain over the expected
  // remaining decode outweighs moving the caches (bytes over replan_gbs); none: never.
  std::optional<placement::CostModel> replan_cost;
  double replan_gbs = 20;
};

// Why submit() refused a request.
class Refused : public std::invalid_argument {
 public:
  enum class Kind { Invalid, QueueFull, TooLarge, ShuttingDown };
  Refused(Kind kind, const std::string& what) : std::invalid_argument(what), kind(kind) {}
  Kind kind;
};

struct EngineStats {
  int running = 0, waiting = 0, preempted = 0;
  int64_t submitted = 0, finished = 0, cancelled = 0, refused = 0;
  int64_t prompt_tokens = 0, generated_tokens = 0;  // run through the model so far
  int64_t preemptions = 0, recomputations = 0, swap_ins = 0, replans = 0;
  int64_t steps = 0;
  double busy_ms = 0;           // time spent in steps
  std::vector<RankLoad> ranks;  // after the last step
  double imbalance = 1;         // max / mean of the ranks' KV bytes (1: even or empty)
  double mean_imbalance = 1;    // its mean over the steps that held any cache
  size_t swap_host_bytes = 0, swap_file_bytes = 0;
  std::string backend;
};

// The ends of a prompt's chunks: n tokens cut every `chunk` tokens, except that the last chunk
// holds at least `window` tokens (the observation window must see every prompt row in one
// step) when the prompt has that many. Depends only on the request, so its chunks (and with a
// batch-invariant backend its cache) are the same alone or beside others.
std::vector<int64_t> prompt_chunk_ends(int64_t n, int64_t chunk, int64_t window);

// A prompt's chunks under a compression: where each ends and whether the cache is compressed
// after it. One-shot policies compress after the last chunk; a block-wise one (EpiCache) after
// the last chunk of every block, the blocks cut as one device cuts them
// (model::prefill_block_ends), so that a request's cache is the one `fairkv run` leaves.
struct PromptChunk {
  int64_t end = 0;
  bool compress = false;
  bool operator==(const PromptChunk&) const = default;
};
std::vector<PromptChunk> prompt_chunks(int64_t n, int64_t chunk, const kv::CompressionConfig& c);

class Engine {
 public:
  Engine(const model::Model& m, std::unique_ptr<Backend> backend, const EngineOptions& opt);
  ~Engine();

  // Queues a request and returns its id; events reach on_event from the engine's thread.
  // Thread-safe. Throws Refused naming the field at fault, or saying that the queue is full.
  RequestId submit(Request r, EventFn on_event);
  // Ends the request at the next step boundary (final event: cancelled) and frees its cache.
  // Thread-safe; unknown or finished ids are ignored.
  void cancel(RequestId id);

  // One scheduling iteration and model step. Returns false when there was nothing to do.
  bool step();
  // Steps until no request is waiting, running or preempted.
  void run_until_idle();
  // Steps until stop() is called, sleeping while idle (the server's engine thread).
  void run_forever();
  // Makes run_forever() return after the current step; cancel_all: end every request first.
  void stop(bool cancel_all = false);

  EngineStats stats() const;  // thread-safe snapshot, updated after every step
  // Sequences a backend holds open at once for an engine of `parallel`: the running ones and
  // as many preempted (a preempted sequence keeps its slot while swapped out).
  static int open_limit(int parallel) { return 2 * parallel; }
  const EngineOptions& options() const { return opt_; }
  int64_t context() const { return ctx_; }  // tokens per request, prompt and output
  Backend& backend() { return *backend_; }

 private:
  struct Seq;
  void take_inbox();
  void admit();
  bool fits(const Seq& s, size_t committed) const;
  size_t need_bytes(const Seq& s) const;
  void preempt(Seq& s);
  Seq* choose_victim();
  void finish(Seq& s, FinishReason why, const std::string& text = {});
  void deliver(Seq& s, int32_t token, std::span<const float> logits);
  void publish_stats(double step_ms);
  void maybe_replan();
  double now_ms() const;

  const model::Model& m_;
  std::unique_ptr<Backend> backend_;
  EngineOptions opt_;
  int64_t ctx_ = 0;

  std::map<RequestId, std::unique_ptr<Seq>> seqs_;  // every request not yet finished
  std::deque<Seq*> waiting_;                        // new, in arrival order
  std::vector<Seq*> running_;                       // in admission order
  std::vector<Seq*> preempted_;

  mutable std::mutex mu_;  // guards the inbox, the cancel list and stats_
  std::condition_variable wake_;
  std::vector<std::unique_ptr<Seq>> inbox_;
  std::vector<RequestId> cancels_;
  RequestId next_id_ = 1;
  bool stopping_ = false, cancel_all_ = false;
  EngineStats stats_;
  EngineStats counters_;        // the engine thread's running counts
  int64_t queued_ = 0;          // waiting + inbox, for the queue limit
  bool batch_changed_ = false;  // a request joined or left since the last re-plan check
  double imbalance_sum_ = 0;    // over imbalance_steps_ steps
  int64_t imbalance_steps_ = 0;
  const std::chrono::steady_clock::time_point t0_;
};

}  // namespace fairkv::serve
