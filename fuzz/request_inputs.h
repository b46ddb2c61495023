// Request files (`fairkv batch --requests`, serve/request_json.h) behind one entry point for the
// fuzzer and the corpus replay: the input is the file's text, read line by line as the command
// reads it. Every input must either be read or be refused with std::invalid_argument (a line that
// is not JSON or not a request) or nlohmann::json::exception; anything else escapes to the caller,
// which for the fuzzer is a crash.
#pragma once

#include <cstddef>
#include <cstdint>
#include <sstream>
#include <stdexcept>
#include <string>

#include <nlohmann/json.hpp>

#include "serve/request_json.h"

namespace fairkv::fuzz {

// Reads `data` as a request file; true when every line was read, false when it was refused (the
// message in *why).
inline bool read_request_input(const uint8_t* data, size_t size, std::string* why = nullptr) {
  std::istringstream in(std::string(reinterpret_cast<const char*>(data), size));
  try {
    serve::read_request_lines(in, serve::Request{}, "input.jsonl");
    return true;
  } catch (const std::invalid_argument& e) {
    if (why) *why = e.what();
  } catch (const nlohmann::json::exception& e) {
    if (why) *why = e.what();
  }
  return false;
}

}  // namespace fairkv::fuzz
