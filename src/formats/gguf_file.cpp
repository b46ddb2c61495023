// Opening GGUF files (memory-mapped or read into memory) and the File accessors; the parse is
// in gguf.cpp.
#include <fcntl.h>
#include <fmt/format.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "formats/gguf.h"
#include "formats/gguf_internal.h"

namespace fairkv::gguf {

using detail::printable;

namespace {

bool is_numeric(ValueType t) {
  return t != ValueType::STRING && t != ValueType::ARRAY;
}

}  // namespace

const Value& File::Impl::get(std::string_view key, const char* expected) const {
  auto it = kv_index.find(key);
  if (it == kv_index.end()) {
    throw Error(
        fmt::format("{}: metadata '{}': expected {}, but the key is absent", path, key, expected));
  }
  return kvs[it->second].value;
}

void File::Impl::type_error(std::string_view key, const Value& v, const char* expected) const {
  std::string found = value_type_name(v.type);
  if (v.type == ValueType::ARRAY) found = fmt::format("ARRAY of {}", value_type_name(v.elem_type));
  throw Error(fmt::format("{}: metadata '{}': expected {}, found {}", path, key, expected, found));
}

File::File() : impl_(std::make_unique<Impl>()) {}
File::File(File&&) noexcept = default;
File& File::operator=(File&&) noexcept = default;
File::~File() = default;

namespace {

// The whole file in anonymous memory (huge pages advised); fd is left open for the caller.
void* read_into_memory(int fd, size_t size, const std::string& path) {
  void* p = mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (p == MAP_FAILED)
    throw Error(fmt::format("{}: allocating {} bytes to read the file into: {}", path, size,
                            std::strerror(errno)));
#ifdef MADV_HUGEPAGE
  madvise(p, size, MADV_HUGEPAGE);  // advice only: without THP the read still works
#endif
  auto* dst = static_cast<uint8_t*>(p);
  size_t done = 0;
  while (done < size) {
    const ssize_t n =
        ::pread(fd, dst + done, std::min<size_t>(size - done, size_t(1) << 30), off_t(done));
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      const int e = n < 0 ? errno : 0;
      munmap(p, size);
      throw Error(fmt::format("{}: read at byte {} of {}: {}", path, done, size,
                              e ? std::strerror(e) : "unexpected end of file"));
    }
    done += size_t(n);
  }
  mprotect(p, size, PROT_READ);  // weights are read-only from here on, as with the mapping
  return p;
}

}  // namespace

File File::open(const std::string& path, Load load) {
  File f;
  f.impl_->path = path;
  // O_NONBLOCK: opening a FIFO for reading would otherwise wait for a writer forever; a regular
  // file ignores the flag, and anything else is refused below.
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK);
  if (fd < 0) throw Error(fmt::format("{}: open: {}", path, std::strerror(errno)));
  struct stat st;
  if (fstat(fd, &st) != 0) {
    const int e = errno;
    ::close(fd);
    throw Error(fmt::format("{}: stat: {}", path, std::strerror(e)));
  }
  if (!S_ISREG(st.st_mode)) {
    ::close(fd);
    const char* kind = S_ISDIR(st.st_mode)    ? "a directory"
                       : S_ISFIFO(st.st_mode) ? "a FIFO"
                       : S_ISCHR(st.st_mode)  ? "a character device"
                       : S_ISBLK(st.st_mode)  ? "a block device"
                       : S_ISSOCK(st.st_mode) ? "a socket"
                                              : "not a regular file";
    throw Error(fmt::format("{}: open: expected a regular GGUF file, found {}", path, kind));
  }
  const size_t size = static_cast<size_t>(st.st_size);
  if (size > 0) {
    void* p = nullptr;
    if (load == Load::Read) {
      try {
        p = read_into_memory(fd, size, path);
      } catch (...) {
        ::close(fd);
        throw;
      }
    } else {
      p = mmap(nullptr, size, PROT_READ, MAP_PRIVATE, fd, 0);
      if (p == MAP_FAILED) {
        const int e = errno;
        ::close(fd);
        throw Error(fmt::format("{}: mmap of {} bytes: {}", path, size, std::strerror(e)));
      }
    }
    f.impl_->map = p;
    f.impl_->map_size = size;
    f.impl_->base = static_cast<const uint8_t*>(p);
  }
  ::close(fd);  // the mapping keeps the file alive
  f.impl_->size = size;
  f.impl_->parse();
  return f;
}

File File::parse(const uint8_t* data, size_t size, const std::string& name) {
  File f;
  f.impl_->path = name;
  f.impl_->owned.assign(data, data + size);
  f.impl_->base = f.impl_->owned.data();
  f.impl_->size = size;
  f.impl_->parse();
  return f;
}

const std::string& File::path() const {
  return impl_->path;
}
uint32_t File::version() const {
  return impl_->version;
}
uint64_t File::alignment() const {
  return impl_->alignment;
}
size_t File::file_size() const {
  return impl_->size;
}
uint64_t File::data_offset() const {
  return impl_->data_offset;
}
const std::vector<KeyValue>& File::metadata() const {
  return impl_->kvs;
}
const std::vector<TensorInfo>& File::tensors() const {
  return impl_->tensors;
}

const Value* File::find(std::string_view key) const {
  auto it = impl_->kv_index.find(key);
  return it == impl_->kv_index.end() ? nullptr : &impl_->kvs[it->second].value;
}

std::string File::get_string(std::string_view key) const {
  const Value& v = impl_->get(key, "a STRING");
  if (v.type != ValueType::STRING) impl_->type_error(key, v, "a STRING");
  return v.str;
}

int64_t File::get_int(std::string_view key) const {
  const Value& v = impl_->get(key, "an integer");
  if (!v.is_integer()) impl_->type_error(key, v, "an integer");
  if (v.type == ValueType::UINT64 && v.u > static_cast<uint64_t>(INT64_MAX)) {
    throw Error(fmt::format("{}: metadata '{}': expected an integer that fits in int64, found {}",
                            impl_->path, key, v.u));
  }
  return v.i;
}

double File::get_float(std::string_view key) const {
  const Value& v = impl_->get(key, "a number");
  if (v.is_float()) return v.f;
  if (v.is_integer() && v.type != ValueType::BOOL) {
    return v.type == ValueType::UINT64 ? static_cast<double>(v.u) : static_cast<double>(v.i);
  }
  impl_->type_error(key, v, "a number");
}

bool File::get_bool(std::string_view key) const {
  const Value& v = impl_->get(key, "a BOOL");
  if (v.type != ValueType::BOOL) impl_->type_error(key, v, "a BOOL");
  return v.i != 0;
}

const std::vector<std::string>& File::get_strings(std::string_view key) const {
  const Value& v = impl_->get(key, "an ARRAY of STRING");
  if (v.type != ValueType::ARRAY || v.elem_type != ValueType::STRING) {
    impl_->type_error(key, v, "an ARRAY of STRING");
  }
  return v.strings;
}

const std::vector<double>& File::get_numbers(std::string_view key) const {
  const Value& v = impl_->get(key, "a numeric ARRAY");
  if (v.type != ValueType::ARRAY || !is_numeric(v.elem_type)) {
    impl_->type_error(key, v, "a numeric ARRAY");
  }
  return v.numbers;
}

std::optional<std::string> File::find_string(std::string_view key) const {
  if (!find(key)) return std::nullopt;
  return get_string(key);
}

std::optional<int64_t> File::find_int(std::string_view key) const {
  if (!find(key)) return std::nullopt;
  return get_int(key);
}

std::optional<double> File::find_float(std::string_view key) const {
  if (!find(key)) return std::nullopt;
  return get_float(key);
}

const TensorInfo* File::find_tensor(std::string_view name) const {
  auto it = impl_->tensor_index.find(name);
  return it == impl_->tensor_index.end() ? nullptr : &impl_->tensors[it->second];
}

const uint8_t* File::data(const TensorInfo& t) const {
  return impl_->base + impl_->data_offset + t.offset;
}

}  // namespace fairkv::gguf
