// GGUF writer (version 3). Tensor data is streamed: a tensor given as a RowSource is produced in
// chunks while the file is written, so the whole model never sits in memory.
#include <fmt/format.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>

#include "formats/gguf.h"

namespace fairkv::gguf {

namespace {

constexpr size_t kChunkBytes = size_t{64} << 20;

template <class T>
void put(std::vector<uint8_t>& b, T v) {
  const auto* p = reinterpret_cast<const uint8_t*>(&v);
  b.insert(b.end(), p, p + sizeof(T));
}

void put_string(std::vector<uint8_t>& b, std::string_view s) {
  put<uint64_t>(b, s.size());
  b.insert(b.end(), s.begin(), s.end());
}

uint64_t pad_to(uint64_t n, uint64_t a) {
  return (n + a - 1) / a * a;
}

bool is_pow2(uint64_t a) {
  return a != 0 && (a & (a - 1)) == 0;
}

// Encodes one scalar of type t taken from an integer or a float.
void put_scalar(std::vector<uint8_t>& b, ValueType t, int64_t i, uint64_t u, double f) {
  switch (t) {
    case ValueType::UINT8:
      put<uint8_t>(b, static_cast<uint8_t>(i));
      break;
    case ValueType::INT8:
      put<int8_t>(b, static_cast<int8_t>(i));
      break;
    case ValueType::UINT16:
      put<uint16_t>(b, static_cast<uint16_t>(i));
      break;
    case ValueType::INT16:
      put<int16_t>(b, static_cast<int16_t>(i));
      break;
    case ValueType::UINT32:
      put<uint32_t>(b, static_cast<uint32_t>(i));
      break;
    case ValueType::INT32:
      put<int32_t>(b, static_cast<int32_t>(i));
      break;
    case ValueType::UINT64:
      put<uint64_t>(b, u);
      break;
    case ValueType::INT64:
      put<int64_t>(b, i);
      break;
    case ValueType::FLOAT32:
      put<float>(b, static_cast<float>(f));
      break;
    case ValueType::FLOAT64:
      put<double>(b, f);
      break;
    case ValueType::BOOL:
      put<uint8_t>(b, i != 0);
      break;
    case ValueType::STRING:
    case ValueType::ARRAY:
      break;
  }
}

// Padding, written in pieces so that a large alignment costs no memory.
template <class Sink>
void write_zeros(Sink& sink, uint64_t n) {
  static const uint8_t zeros[4096] = {};
  while (n > 0) {
    const size_t k = static_cast<size_t>(std::min<uint64_t>(n, sizeof zeros));
    sink.write(zeros, k);
    n -= k;
  }
}

struct VectorSink {
  std::vector<uint8_t>& out;
  void write(const uint8_t* p, size_t n) { out.insert(out.end(), p, p + n); }
};

struct FileSink {
  std::FILE* f;
  const std::string& path;
  void write(const uint8_t* p, size_t n) {
    if (n && std::fwrite(p, 1, n, f) != n) {
      throw Error(fmt::format("{}: write: {}", path, std::strerror(errno)));
    }
  }
};

}  // namespace

void Writer::set_alignment(uint64_t a) {
  if (!is_pow2(a) || a > UINT32_MAX) {
    throw Error(
        fmt::format("gguf writer: general.alignment: expected a power of two that fits "
                    "in UINT32, found {}",
                    a));
  }
  auto it = std::find(keys_.begin(), keys_.end(), "general.alignment");
  if (it != keys_.end()) {
    std::vector<uint8_t> b;
    put_string(b, "general.alignment");
    put<uint32_t>(b, static_cast<uint32_t>(ValueType::UINT32));
    put<uint32_t>(b, static_cast<uint32_t>(a));
    kv_[it - keys_.begin()] = std::move(b);
    alignment_ = a;
  } else {
    add_u32("general.alignment", static_cast<uint32_t>(a));
  }
}

void Writer::add_encoded(const std::string& key, ValueType type, std::vector<uint8_t> payload) {
  if (key.empty()) throw Error("gguf writer: metadata key: expected a non-empty key");
  if (std::find(keys_.begin(), keys_.end(), key) != keys_.end()) {
    throw Error(
        fmt::format("gguf writer: metadata '{}': expected unique keys, but it was "
                    "already added",
                    key));
  }
  std::vector<uint8_t> b;
  b.reserve(key.size() + 12 + payload.size());
  put_string(b, key);
  put<uint32_t>(b, static_cast<uint32_t>(type));
  b.insert(b.end(), payload.begin(), payload.end());
  keys_.push_back(key);
  kv_.push_back(std::move(b));
}

void Writer::add_string(const std::string& key, const std::string& v) {
  std::vector<uint8_t> b;
  put_string(b, v);
  add_encoded(key, ValueType::STRING, std::move(b));
}

void Writer::add_u32(const std::string& key, uint32_t v) {
  if (key == "general.alignment" && !is_pow2(v)) {
    throw Error(
        fmt::format("gguf writer: general.alignment: expected a power of two, found {}", v));
  }
  std::vector<uint8_t> b;
  put<uint32_t>(b, v);
  add_encoded(key, ValueType::UINT32, std::move(b));
  if (key == "general.alignment") alignment_ = v;
}

void Writer::add_i32(const std::string& key, int32_t v) {
  std::vector<uint8_t> b;
  put<int32_t>(b, v);
  add_encoded(key, ValueType::INT32, std::move(b));
}

void Writer::add_u64(const std::string& key, uint64_t v) {
  std::vector<uint8_t> b;
  put<uint64_t>(b, v);
  add_encoded(key, ValueType::UINT64, std::move(b));
}

void Writer::add_f32(const std::string& key, float v) {
  std::vector<uint8_t> b;
  put<float>(b, v);
  add_encoded(key, ValueType::FLOAT32, std::move(b));
}

void Writer::add_bool(const std::string& key, bool v) {
  std::vector<uint8_t> b;
  put<uint8_t>(b, v ? 1 : 0);
  add_encoded(key, ValueType::BOOL, std::move(b));
}

void Writer::add_u8(const std::string& key, uint8_t v) {
  add_encoded(key, ValueType::UINT8, {v});
}

void Writer::add_i8(const std::string& key, int8_t v) {
  add_encoded(key, ValueType::INT8, {static_cast<uint8_t>(v)});
}

void Writer::add_u16(const std::string& key, uint16_t v) {
  std::vector<uint8_t> b;
  put<uint16_t>(b, v);
  add_encoded(key, ValueType::UINT16, std::move(b));
}

void Writer::add_i16(const std::string& key, int16_t v) {
  std::vector<uint8_t> b;
  put<int16_t>(b, v);
  add_encoded(key, ValueType::INT16, std::move(b));
}

void Writer::add_i64(const std::string& key, int64_t v) {
  std::vector<uint8_t> b;
  put<int64_t>(b, v);
  add_encoded(key, ValueType::INT64, std::move(b));
}

void Writer::add_f64(const std::string& key, double v) {
  std::vector<uint8_t> b;
  put<double>(b, v);
  add_encoded(key, ValueType::FLOAT64, std::move(b));
}

void Writer::add_strings(const std::string& key, const std::vector<std::string>& v) {
  std::vector<uint8_t> b;
  put<uint32_t>(b, static_cast<uint32_t>(ValueType::STRING));
  put<uint64_t>(b, v.size());
  for (const std::string& s : v) put_string(b, s);
  add_encoded(key, ValueType::ARRAY, std::move(b));
}

void Writer::add_f32s(const std::string& key, const std::vector<float>& v) {
  std::vector<uint8_t> b;
  b.reserve(12 + 4 * v.size());
  put<uint32_t>(b, static_cast<uint32_t>(ValueType::FLOAT32));
  put<uint64_t>(b, v.size());
  for (float x : v) put<float>(b, x);
  add_encoded(key, ValueType::ARRAY, std::move(b));
}

void Writer::add_i32s(const std::string& key, const std::vector<int32_t>& v) {
  std::vector<uint8_t> b;
  b.reserve(12 + 4 * v.size());
  put<uint32_t>(b, static_cast<uint32_t>(ValueType::INT32));
  put<uint64_t>(b, v.size());
  for (int32_t x : v) put<int32_t>(b, x);
  add_encoded(key, ValueType::ARRAY, std::move(b));
}

void Writer::add_value(const std::string& key, const Value& v) {
  if (key == "general.alignment") {
    if (v.type != ValueType::UINT32) {
      throw Error(fmt::format("gguf writer: general.alignment: expected UINT32, found {}",
                              value_type_name(v.type)));
    }
    add_u32(key, static_cast<uint32_t>(v.i));
    return;
  }
  std::vector<uint8_t> b;
  if (v.type == ValueType::STRING) {
    put_string(b, v.str);
  } else if (v.type != ValueType::ARRAY) {
    put_scalar(b, v.type, v.i, v.u, v.f);
  } else if (v.elem_type == ValueType::ARRAY) {
    throw Error(
        fmt::format("gguf writer: metadata '{}': an ARRAY of ARRAY cannot be built from "
                    "a Value (use add_raw)",
                    key));
  } else {
    put<uint32_t>(b, static_cast<uint32_t>(v.elem_type));
    if (v.elem_type == ValueType::STRING) {
      put<uint64_t>(b, v.strings.size());
      for (const std::string& s : v.strings) put_string(b, s);
    } else if (v.elem_type == ValueType::FLOAT32 || v.elem_type == ValueType::FLOAT64) {
      put<uint64_t>(b, v.numbers.size());
      for (double x : v.numbers) put_scalar(b, v.elem_type, 0, 0, x);
    } else {
      put<uint64_t>(b, v.ints.size());
      for (int64_t x : v.ints) put_scalar(b, v.elem_type, x, static_cast<uint64_t>(x), 0);
    }
  }
  add_encoded(key, v.type, std::move(b));
}

void Writer::add_raw(const std::string& key, ValueType type, std::vector<uint8_t> payload) {
  add_encoded(key, type, std::move(payload));
}

void Writer::add_pending(const std::string& name, TensorType type, std::vector<int64_t> dims,
                         std::vector<uint8_t> bytes, RowSource fill) {
  const std::string what = fmt::format("gguf writer: tensor '{}'", name);
  if (name.empty()) throw Error("gguf writer: tensor name: expected a non-empty name");
  for (const PendingTensor& t : tensors_) {
    if (t.name == name) throw Error(what + ": name: expected unique tensor names");
  }
  const uint64_t n = tensor_bytes(type, dims, what);
  if (!fill && bytes.size() != n) {
    throw Error(fmt::format("{}: data: expected {} bytes for {} {}, got {}", what, n,
                            tensor_type_name(type), fmt::join(dims, "x"), bytes.size()));
  }
  tensors_.push_back({name, type, std::move(dims), std::move(bytes), std::move(fill), n});
}

void Writer::add_tensor(const std::string& name, TensorType type, std::vector<int64_t> dims,
                        std::vector<uint8_t> bytes) {
  add_pending(name, type, std::move(dims), std::move(bytes), nullptr);
}

void Writer::add_tensor(const std::string& name, TensorType type, std::vector<int64_t> dims,
                        RowSource fill) {
  if (!fill) throw Error(fmt::format("gguf writer: tensor '{}': expected a row source", name));
  add_pending(name, type, std::move(dims), {}, std::move(fill));
}

void Writer::set_progress(std::function<void(uint64_t, uint64_t)> progress) {
  progress_ = std::move(progress);
}

template <class Sink>
void Writer::emit(Sink& sink) const {
  std::vector<uint8_t> head;
  head.insert(head.end(), {'G', 'G', 'U', 'F'});
  put<uint32_t>(head, 3);
  put<uint64_t>(head, tensors_.size());
  put<uint64_t>(head, kv_.size());
  for (const auto& kv : kv_) head.insert(head.end(), kv.begin(), kv.end());
  uint64_t offset = 0, total = 0;
  for (const PendingTensor& t : tensors_) {
    put_string(head, t.name);
    put<uint32_t>(head, static_cast<uint32_t>(t.dims.size()));
    for (int64_t d : t.dims) put<uint64_t>(head, static_cast<uint64_t>(d));
    put<uint32_t>(head, static_cast<uint32_t>(t.type));
    put<uint64_t>(head, offset);
    offset += pad_to(t.n_bytes, alignment_);
    total += t.n_bytes;
  }
  sink.write(head.data(), head.size());
  write_zeros(sink, pad_to(head.size(), alignment_) - head.size());

  uint64_t done = 0;
  for (const PendingTensor& t : tensors_) {
    if (!t.fill) {
      sink.write(t.bytes.data(), t.bytes.size());
      done += t.n_bytes;
      if (progress_) progress_(done, total);
    } else {
      int64_t n_rows = 1;
      for (size_t k = 1; k < t.dims.size(); ++k) n_rows *= t.dims[k];
      const uint64_t row_bytes = t.n_bytes / static_cast<uint64_t>(n_rows);
      const int64_t per_chunk =
          static_cast<int64_t>(std::max<uint64_t>(1, kChunkBytes / row_bytes));
      std::vector<uint8_t> buf(static_cast<size_t>(std::min<int64_t>(per_chunk, n_rows)) *
                               row_bytes);
      for (int64_t r = 0; r < n_rows; r += per_chunk) {
        const int64_t n = std::min(per_chunk, n_rows - r);
        t.fill(r, n, buf.data());
        sink.write(buf.data(), static_cast<size_t>(n) * row_bytes);
        done += static_cast<uint64_t>(n) * row_bytes;
        if (progress_) progress_(done, total);
      }
    }
    write_zeros(sink, pad_to(t.n_bytes, alignment_) - t.n_bytes);
  }
}

std::vector<uint8_t> Writer::serialize() const {
  std::vector<uint8_t> out;
  VectorSink sink{out};
  emit(sink);
  return out;
}

void Writer::write(const std::string& path) const {
  // Write beside the target and rename, so that an interrupted write leaves no truncated model
  // under the real name. Special files (/dev/null, a pipe) are written in place.
  struct stat st;
  const bool special = ::stat(path.c_str(), &st) == 0 && !S_ISREG(st.st_mode);
  const std::string tmp = special ? path : path + ".partial";
  std::FILE* f = std::fopen(tmp.c_str(), "wb");
  if (!f) throw Error(fmt::format("{}: open for writing: {}", path, std::strerror(errno)));
  std::vector<char> buffer(size_t{1} << 20);
  std::setvbuf(f, buffer.data(), _IOFBF, buffer.size());
  try {
    FileSink sink{f, path};
    emit(sink);
    if (std::fflush(f) != 0) throw Error(fmt::format("{}: write: {}", path, std::strerror(errno)));
  } catch (...) {
    std::fclose(f);
    if (!special) ::unlink(tmp.c_str());
    throw;
  }
  if (std::fclose(f) != 0) {
    const int e = errno;
    if (!special) ::unlink(tmp.c_str());
    throw Error(fmt::format("{}: close: {}", path, std::strerror(e)));
  }
  if (!special && std::rename(tmp.c_str(), path.c_str()) != 0) {
    const int e = errno;
    ::unlink(tmp.c_str());
    throw Error(fmt::format("{}: rename from {}: {}", path, tmp, std::strerror(e)));
  }
}

}  // namespace fairkv::gguf
