// libFuzzer target of the JSON and JSONL readers (json_inputs.h); see CMakeLists.txt here.
#include "json_inputs.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  fairkv::fuzz::read_json_input(data, size);
  return 0;
}
