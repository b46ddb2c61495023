// Prompt sets for `fairkv eval` and `fairkv profile`: a text file with one prompt per line, a
// folder of .txt files with one prompt each, or a .jsonl file of {"prompt", "answer"} records.
#pragma once

#include <istream>
#include <optional>
#include <string>
#include <vector>

namespace fairkv::app {

struct Prompt {
  std::string name;  // file name or "line N"
  std::string text;
  std::optional<std::string> answer;  // from .jsonl
};

// Throws std::runtime_error naming the path (and the line for .jsonl) on bad input.
std::vector<Prompt> read_prompts(const std::string& path);
// The records of a .jsonl prompt file from a stream; `path` names it in messages.
std::vector<Prompt> read_jsonl_prompts(std::istream& in, const std::string& path);

}  // namespace fairkv::app
