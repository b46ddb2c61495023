// Requests written as JSON, in the OpenAI API's field names (with llama-server's and fairkv's
// extensions): what a request file line of `fairkv batch` holds and what the HTTP server reads.
#pragma once

#include <istream>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

#include "serve/request.h"

namespace fairkv::serve {

struct ChatTurn {
  std::string role, content;
};

// A request as written, before its prompt is tokenized.
struct RequestSpec {
  Request request;  // everything but the prompt's tokens (prompt_ids when given as ids)
  std::optional<std::string> prompt;              // "prompt": text
  std::vector<int32_t> prompt_ids;                // "prompt": [ids]
  std::optional<std::vector<ChatTurn>> messages;  // "messages": a chat
  double arrival_s = 0;  // "arrival": seconds after the start (request files)
};

// Reads the fields of obj into a spec, starting from `defaults` for what obj leaves out:
//   prompt (text or token ids) | messages [{role, content}], max_tokens (alias n_predict),
//   temperature, top_p, top_k, min_p, seed, presence_penalty, frequency_penalty, repeat_penalty,
//   repeat_last_n, logit_bias {"id": bias} (or [[id, bias], ...]), stop (string or list),
//   ignore_eos, kv_policy, kv_budget, priority, id (a name echoed back), arrival.
// Fields named in `ignored` are skipped (the server reads stream, model, n itself). Any other
// field, a wrong type or an out-of-range value throws std::invalid_argument whose message starts
// with `where` and names the field and what was expected. Exactly one of prompt and messages.
RequestSpec parse_request(const nlohmann::json& obj, const Request& defaults,
                          const std::string& where, const std::vector<std::string>& ignored = {});

// One request of a request file and its line number (from 1).
struct RequestLine {
  int line = 0;
  RequestSpec spec;
};

// The requests of a request file (`fairkv batch --requests`): one JSON object per line as
// parse_request reads it; blank lines are skipped and a CR before the newline dropped. A line that
// is not JSON or not a request throws std::invalid_argument starting with "<where>: line N: ".
std::vector<RequestLine> read_request_lines(std::istream& in, const Request& defaults,
                                            const std::string& where);

}  // namespace fairkv::serve
