// A RULER-style long-context suite (Hsieh et al., arXiv 2404.06654), generated locally and
// deterministically from a seed: the same (task, context, samples, seed) and the same token
// counter always give the same prompts and answers.
//
// Tasks, after RULER's templates:
//   niah_single_1   one needle (word key -> 7-digit number) in a repeated filler sentence
//   niah_single_2   one needle (word key -> 7-digit number) in essay-like text
//   niah_single_3   one needle (word key -> UUID) in essay-like text
//   niah_multikey   four needles with different keys, one asked for
//   niah_multivalue four numbers under the same key, all asked for
//   niah_multiquery four needles with different keys, all asked for
//   vt              variable tracking: one chain of five assignments VAR X = 12345, VAR Y = VAR X
//   cwe             common-words extraction: the 10 most common words of a numbered list
//   fwe             frequent-words extraction: the 3 most frequent coded words (Zipf, alpha 2)
// The essay-like text is made of sentences of words drawn from a built-in word list (RULER uses
// Paul Graham's essays, which a local, seed-only suite cannot ship).
//
// Scoring is RULER's string_match_all: the share of expected answers that occur, case-folded,
// anywhere in the generated text.
#pragma once

#include <cstdint>
#include <functional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace fairkv::app::ruler {

struct Sample {
  std::string task;
  int64_t context = 0;        // the context length it was made for (tokens)
  std::string input;          // the user message: instructions, haystack and question
  std::string answer_prefix;  // the start of the answer, appended after the assistant header
  std::vector<std::string> answers;
  int n_predict = 32;  // greedy tokens to generate
};

std::span<const std::string_view> task_names();

// Tokens of a piece of text (no BOS). Pieces are counted one by one and their counts added, so
// a sample's input comes within a few tokens of its target.
using TokenCount = std::function<int64_t(const std::string&)>;

// `samples` samples of one task whose input holds about context - reserve tokens, reserve
// covering the chat template, the answer prefix and the answer. Sample i depends only on (task,
// context, seed, i). Throws std::invalid_argument for an unknown task or a context too small.
std::vector<Sample> generate(std::string_view task, int64_t context, int samples, uint64_t seed,
                             const TokenCount& count, int64_t reserve = 64);

// RULER's string_match_all: the share of answers found (case-insensitive) in output, in [0, 1].
double score(std::string_view output, std::span<const std::string> answers);

// "1k,2k,4k" or "1024,2048" to token counts; throws std::invalid_argument naming --contexts.
std::vector<int64_t> parse_contexts(const std::string& text);

}  // namespace fairkv::app::ruler
