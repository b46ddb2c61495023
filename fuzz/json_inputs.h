// The JSON and JSONL files fairkv reads, behind one entry point for the fuzzer and the corpus
// replay: the first byte picks the reader, the rest is the file's text.
//   0 profile (placement/profile.h)      1 placement (placement/placement.h)
//   2 head importance (app/head_importance_file.h)   3 prompts, .jsonl (app/prompts.h)
// Every input must either be read or be refused with a std::exception; nothing else may happen.
#pragma once

#include <cstddef>
#include <cstdint>
#include <sstream>
#include <stdexcept>
#include <string>

#include <nlohmann/json.hpp>

#include "app/head_importance_file.h"
#include "app/prompts.h"
#include "placement/placement.h"
#include "placement/profile.h"

namespace fairkv::fuzz {

constexpr int kReaders = 4;

// Reads `data` with the reader its first byte picks; true when it was read, false when it was
// refused (the std::exception's message in *why).
inline bool read_json_input(const uint8_t* data, size_t size, std::string* why = nullptr) {
  if (size == 0) return false;
  const int reader = data[0] % kReaders;
  const std::string text(reinterpret_cast<const char*>(data + 1), size - 1);
  try {
    if (reader == 3) {
      std::istringstream in(text);
      app::read_jsonl_prompts(in, "input.jsonl");
      return true;
    }
    // Not JSON at all is the readers' callers' error to report (read_json_file); it is refused
    // here the same way.
    const nlohmann::json j = nlohmann::json::parse(text, nullptr, false);
    if (j.is_discarded()) throw std::runtime_error("input.json: not JSON");
    if (reader == 0) placement::profile_from_json(j, "input.json");
    if (reader == 1) placement::placement_from_json(j, "input.json");
    if (reader == 2) app::head_importance_from_json(j, "input.json");
    return true;
  } catch (const std::exception& e) {
    if (why) *why = e.what();
    return false;
  }
}

}  // namespace fairkv::fuzz
