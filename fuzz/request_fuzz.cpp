// libFuzzer target of the request file reader (request_inputs.h); see CMakeLists.txt here.
#include "request_inputs.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  fairkv::fuzz::read_request_input(data, size);
  return 0;
}
