// Internal to the GGUF reader (gguf.cpp parses, gguf_file.cpp opens and answers, gguf_types.cpp
// names types and shows values): what those files share.
#pragma once

#include <sys/mman.h>

#include <cstdint>
#include <map>
#include <string>
#include <string_view>
#include <vector>

#include "formats/gguf.h"

namespace fairkv::gguf {

namespace detail {

inline constexpr uint64_t kDefaultAlignment = 32;
inline constexpr size_t kMaxDims = 4;

// ggml's name of a tensor type number, also for the types fairkv does not read, so that an error
// says what the file holds ("unknown" past the table).
const char* ggml_type_name(uint32_t t);
// s with quotes, backslashes and control bytes escaped (UTF-8 kept), cut at max_len bytes.
std::string printable(std::string_view s, size_t max_len = 64);
// "[d0, d1, ...]".
std::string shape_string(const std::vector<int64_t>& dims);

}  // namespace detail

struct File::Impl {
  std::string path;
  void* map = nullptr;  // the mmap of open(), unmapped on destruction
  size_t map_size = 0;
  std::vector<uint8_t> owned;  // the copy made by parse()
  const uint8_t* base = nullptr;
  size_t size = 0;

  uint32_t version = 0;
  uint64_t alignment = detail::kDefaultAlignment;
  uint64_t data_offset = 0;
  std::vector<KeyValue> kvs;
  std::map<std::string, size_t, std::less<>> kv_index;
  std::vector<TensorInfo> tensors;
  std::map<std::string, size_t, std::less<>> tensor_index;

  Impl() = default;
  Impl(const Impl&) = delete;
  Impl& operator=(const Impl&) = delete;
  ~Impl() {
    if (map) munmap(map, map_size);
  }

  void parse();
  const Value& get(std::string_view key, const char* expected) const;
  [[noreturn]] void type_error(std::string_view key, const Value& v, const char* expected) const;
};

}  // namespace fairkv::gguf
