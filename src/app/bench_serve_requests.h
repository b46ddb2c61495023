// The requests `fairkv bench-serve` sends: read from a JSON-lines dataset, or synthetic prompts
// of random common English words (so that any server's tokenizer reads them, each word being
// about one token of a BPE vocabulary) with lengths drawn around a target.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

namespace fairkv::app::bench {

struct BenchRequest {
  std::string prompt;
  int64_t max_tokens = 0;
};

// One {"prompt": "...", "max_tokens" or "output_len": N} object per non-empty line; the first n
// lines, taken again from the top when the file has fewer. Throws std::runtime_error naming the
// file, the line and the field that is wrong.
std::vector<BenchRequest> load_dataset(const std::string& path, size_t n);

// n prompts of about input_len words (times words_per_token's inverse, see below) and outputs of
// output_len tokens, each drawn uniformly in [len (1 - ratio), len (1 + ratio)] (at least 1),
// deterministic from seed. tokens_per_word scales the word count so that a prompt has about
// input_len tokens in the server's tokenizer (1 when unknown).
std::vector<BenchRequest> random_requests(size_t n, int64_t input_len, int64_t output_len,
                                          double range_ratio, uint64_t seed,
                                          double tokens_per_word = 1.0);

// A prompt of `words` random words from the list, deterministic from seed.
std::string random_words(int64_t words, uint64_t seed);

}  // namespace fairkv::app::bench
