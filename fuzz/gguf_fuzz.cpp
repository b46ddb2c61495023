// libFuzzer target for the GGUF reader. Any input must either parse or throw gguf::Error; a
// parsed file must answer every accessor within its bounds, and writing it back with the Writer
// must give a file that parses to the same metadata and tensors.
#include <cstdint>
#include <cstring>
#include <string>

#include "formats/gguf.h"

using namespace fairkv::gguf;

namespace {

void check(bool ok) {
  if (!ok) __builtin_trap();
}

// Touches every byte range the reader hands out, so that ASan sees an out-of-bounds range.
uint64_t touch(const File& f) {
  uint64_t sum = 0;
  for (const KeyValue& kv : f.metadata()) {
    sum += kv.value.to_string(4).size() + kv.value.array_size();
    check(f.find(kv.key) == &kv.value);
  }
  for (const TensorInfo& t : f.tensors()) {
    check(f.find_tensor(t.name) == &t);
    check(t.offset % f.alignment() == 0);
    const uint8_t* p = f.data(t);
    sum += p[0] + p[t.n_bytes - 1];
  }
  // The typed getters on whatever the common keys hold: a value or an Error, nothing else.
  for (const char* key : {"general.architecture", "general.alignment", "llama.block_count",
                          "tokenizer.ggml.tokens", "tokenizer.ggml.scores"}) {
    try {
      sum += f.get_string(key).size();
    } catch (const Error&) {
    }
    try {
      sum += static_cast<uint64_t>(f.get_int(key));
    } catch (const Error&) {
    }
    try {
      sum += static_cast<uint64_t>(f.get_float(key) != 0);
    } catch (const Error&) {
    }
    try {
      sum += f.get_strings(key).size() + f.get_numbers(key).size();
    } catch (const Error&) {
    }
  }
  return sum;
}

void round_trip(const File& f) {
  // A valid file may ask for a huge alignment; its rewrite would be that large (in memory).
  if (f.alignment() > 65536) return;
  Writer w;
  for (const KeyValue& kv : f.metadata()) {
    if (kv.value.type == ValueType::ARRAY && kv.value.elem_type == ValueType::ARRAY) return;
    w.add_value(kv.key, kv.value);
  }
  for (const TensorInfo& t : f.tensors()) {
    w.add_tensor(t.name, t.type, t.dims, std::vector<uint8_t>(f.data(t), f.data(t) + t.n_bytes));
  }
  const std::vector<uint8_t> img = w.serialize();
  File g = File::parse(img.data(), img.size(), "round-trip");
  check(g.metadata().size() == f.metadata().size());
  for (size_t k = 0; k < f.metadata().size(); ++k) {
    check(g.metadata()[k].key == f.metadata()[k].key);
    check(g.metadata()[k].value.to_string(1000) == f.metadata()[k].value.to_string(1000));
  }
  check(g.tensors().size() == f.tensors().size());
  for (size_t k = 0; k < f.tensors().size(); ++k) {
    const TensorInfo& a = f.tensors()[k];
    const TensorInfo& b = g.tensors()[k];
    check(a.name == b.name && a.type == b.type && a.dims == b.dims && a.n_bytes == b.n_bytes);
    check(std::memcmp(f.data(a), g.data(b), a.n_bytes) == 0);
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  try {
    File f = File::parse(data, size, "fuzz.gguf");
    volatile uint64_t sink = touch(f);
    (void)sink;
    round_trip(f);
  } catch (const Error& e) {
    // Every message names the file first.
    check(std::strncmp(e.what(), "fuzz.gguf: ", 11) == 0);
  }
  return 0;
}
