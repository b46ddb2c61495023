// What a client asks the serving engine for, and what it hears back.
//
// A request is prompt tokens, sampling parameters, limits and (optionally) its own KV policy and
// budget. The engine answers with events on the request's callback: one per token as it is
// produced (its text, held back while it could still be the start of a stop string), and one
// final event with the reason the request ended and its timings.
#pragma once

#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "kv/compress.h"
#include "model/sampler.h"
#include "serve/logprobs.h"

namespace fairkv::serve {

using RequestId = uint64_t;

enum class FinishReason {
  None,       // still running
  Stop,       // an end-of-generation token, a stop token or a stop string
  Length,     // max_tokens, or the context is full
  Cancelled,  // cancel() or the client went away
  Error,      // the engine could not run it (the event's text says why)
};
const char* finish_reason_name(FinishReason r);  // "stop", "length", "cancelled", "error"

struct Request {
  std::vector<int32_t> prompt;
  model::SamplerConfig sampling;  // temp <= 0: greedy
  int max_tokens = 16;
  std::vector<std::string> stop;     // stop strings: the output ends before the first match
  std::vector<int32_t> stop_tokens;  // ids that end the output, besides end-of-generation ones
  bool ignore_eos = false;           // keep going past end-of-generation tokens
  // This request's KV policy and budget; none: the engine's default.
  std::optional<kv::CompressionConfig> compression;
  int priority = 0;  // higher is admitted first and preempted last
  // Log-probabilities to report with each generated token (logprobs.h): -1 none; n in
  // [0, kMaxTopLogprobs]: the chosen token's and the n most likely tokens'.
  int logprobs = -1;
  std::string tag;  // the caller's name for it, echoed in stats (a line number, an HTTP id)
};

// Timings and counts of one request, in milliseconds since the engine started.
struct RequestStats {
  double arrival_ms = 0, admitted_ms = -1, first_token_ms = -1, finished_ms = -1;
  int64_t prompt_tokens = 0, generated_tokens = 0;
  int64_t kv_rows_kept = 0;  // rows of all heads after compression (the prompt's, summed)
  int preemptions = 0;       // times its cache was swapped out or dropped for recomputation
  int recomputations = 0;    // of those, times it was recomputed rather than swapped back in
  double ttft_ms() const { return first_token_ms - arrival_ms; }
  // Mean time per output token after the first.
  double tpot_ms() const {
    return generated_tokens > 1 ? (finished_ms - first_token_ms) / double(generated_tokens - 1) : 0;
  }
};

struct Event {
  RequestId id = 0;
  int32_t token = -1;  // -1 on the final event
  std::string text;    // text released by this event (the final one releases what was held)
  FinishReason finish = FinishReason::None;  // set on the final event only
  const RequestStats* stats = nullptr;       // on the final event
  // With Request::logprobs: those of the tokens whose text this event completes (a token held
  // back with a possible stop string waits with its text; the final event carries the rest).
  std::vector<TokenLogprob> logprobs;
};

// Called on the engine's thread, in token order, never after the final event.
using EventFn = std::function<void(const Event&)>;

}  // namespace fairkv::serve
