// GGUF reader: bounds-checked parse of a memory-mapped file (see gguf.h for the contract).
#include "formats/gguf.h"
#include "formats/gguf_internal.h"

#include <fcntl.h>
#include <fmt/format.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstring>
#include <limits>
#include <map>
#include <numeric>

namespace fairkv::gguf {

using detail::kDefaultAlignment;
using detail::kMaxDims;
using detail::printable;
using detail::shape_string;

namespace {

constexpr char kMagic[4] = {'G', 'G', 'U', 'F'};
// Inner arrays of an ARRAY of ARRAY are skipped recursively; a limit keeps a hostile file from
// exhausting the stack with millions of nested headers.
constexpr int kMaxArrayNesting = 8;
constexpr uint32_t kNumValueTypes = 13;

// Fixed encoded size of a scalar value type; 0 for STRING and ARRAY.
size_t scalar_size(ValueType t) {
  switch (t) {
    case ValueType::UINT8:
    case ValueType::INT8:
    case ValueType::BOOL:
      return 1;
    case ValueType::UINT16:
    case ValueType::INT16:
      return 2;
    case ValueType::UINT32:
    case ValueType::INT32:
    case ValueType::FLOAT32:
      return 4;
    case ValueType::UINT64:
    case ValueType::INT64:
    case ValueType::FLOAT64:
      return 8;
    case ValueType::STRING:
    case ValueType::ARRAY:
      return 0;
  }
  return 0;
}

// Smallest encoding of one array element of this type: what a count is checked against before
// anything is allocated.
size_t min_encoded_size(ValueType t) {
  if (t == ValueType::STRING) return 8;  // the length
  if (t == ValueType::ARRAY) return 12;  // element type + count
  return scalar_size(t);
}

// A bounds-checked cursor over the file image. Every read names its field; the field is built
// lazily (a callable) so that the hot path over 100k-token vocabularies formats nothing.
class Cursor {
 public:
  Cursor(const uint8_t* data, size_t size, const std::string& file)
      : data_(data), size_(size), file_(file) {}

  size_t pos() const { return pos_; }
  size_t left() const { return size_ - pos_; }

  template <class F>
  [[noreturn]] void fail(F&& field, std::string_view what) const {
    throw Error(fmt::format("{}: {}: {}", file_, field(), what));
  }

  template <class F>
  void need(uint64_t n, F&& field) const {
    if (n > left()) {
      fail(field, fmt::format("expected {} more bytes at offset {}, but the file ends at {} "
                              "(truncated)",
                              n, pos_, size_));
    }
  }

  template <class T, class F>
  T read(F&& field) {
    need(sizeof(T), field);
    T v;
    std::memcpy(&v, data_ + pos_, sizeof(T));  // GGUF is little-endian, as is every host we target
    pos_ += sizeof(T);
    return v;
  }

  template <class F>
  std::string_view read_string(F&& field) {
    uint64_t len = read<uint64_t>(field);
    if (len > left()) {
      fail(field, fmt::format("string length {} at offset {} is past the end of the file "
                              "({} bytes left of {})",
                              len, pos_ - 8, left(), size_));
    }
    std::string_view s(reinterpret_cast<const char*>(data_ + pos_), len);
    pos_ += len;
    return s;
  }

  template <class F>
  void skip(uint64_t n, F&& field) {
    need(n, field);
    pos_ += n;
  }

 private:
  const uint8_t* data_;
  size_t size_;
  size_t pos_ = 0;
  const std::string& file_;
};

template <class F>
ValueType read_value_type(Cursor& c, F&& field) {
  uint32_t t = c.read<uint32_t>(field);
  if (t >= kNumValueTypes) {
    c.fail(field, fmt::format("expected a value type 0..12, found {}", t));
  }
  return static_cast<ValueType>(t);
}

// Reads one scalar of type t into v (i / u / f / str).
template <class F>
void read_scalar(Cursor& c, ValueType t, Value& v, F&& field) {
  switch (t) {
    case ValueType::UINT8:
      v.i = c.read<uint8_t>(field);
      break;
    case ValueType::INT8:
      v.i = c.read<int8_t>(field);
      break;
    case ValueType::UINT16:
      v.i = c.read<uint16_t>(field);
      break;
    case ValueType::INT16:
      v.i = c.read<int16_t>(field);
      break;
    case ValueType::UINT32:
      v.i = c.read<uint32_t>(field);
      break;
    case ValueType::INT32:
      v.i = c.read<int32_t>(field);
      break;
    case ValueType::UINT64:
      v.u = c.read<uint64_t>(field);
      v.i = static_cast<int64_t>(v.u);
      break;
    case ValueType::INT64:
      v.i = c.read<int64_t>(field);
      break;
    case ValueType::FLOAT32:
      v.f = c.read<float>(field);
      break;
    case ValueType::FLOAT64:
      v.f = c.read<double>(field);
      break;
    case ValueType::BOOL: {
      uint8_t b = c.read<uint8_t>(field);
      if (b > 1) c.fail(field, fmt::format("expected a bool (0 or 1), found {}", b));
      v.i = b;
      break;
    }
    case ValueType::STRING:
      v.str = std::string(c.read_string(field));
      break;
    case ValueType::ARRAY:
      break;  // handled by read_array
  }
  if (t != ValueType::UINT64 && v.i >= 0) v.u = static_cast<uint64_t>(v.i);
}

// Reads an array's element type and count, checking the count against the bytes left before
// anything is allocated.
template <class F>
std::pair<ValueType, uint64_t> read_array_header(Cursor& c, F&& field) {
  ValueType et = read_value_type(c, [&] { return field() + ".element_type"; });
  uint64_t n = c.read<uint64_t>([&] { return field() + ".count"; });
  uint64_t min = min_encoded_size(et);
  if (n > c.left() / min) {
    c.fail(
        [&] { return field() + ".count"; },
        fmt::format("array of {} {} elements needs at least {} bytes, but only {} are left "
                    "in the file",
                    n, value_type_name(et),
                    n > std::numeric_limits<uint64_t>::max() / min ? std::string("more than 2^64")
                                                                   : std::to_string(n * min),
                    c.left()));
  }
  return {et, n};
}

// Checks and skips the inner arrays of an ARRAY of ARRAY. Not a template on the field (as the
// other readers are): the recursion would instantiate without end. Nested arrays are rare, so the
// field names are built eagerly.
void skip_array(Cursor& c, int depth, const std::string& field) {
  auto name = [&field] { return field; };
  if (depth > kMaxArrayNesting) {
    c.fail(name, fmt::format("expected arrays nested at most {} deep", kMaxArrayNesting));
  }
  auto [et, n] = read_array_header(c, name);
  for (uint64_t k = 0; k < n; ++k) {
    const std::string elem = fmt::format("{}[{}]", field, k);
    auto elem_name = [&elem] { return elem; };
    if (et == ValueType::ARRAY) {
      skip_array(c, depth + 1, elem);
    } else if (et == ValueType::STRING) {
      c.read_string(elem_name);
    } else if (et == ValueType::BOOL) {
      Value tmp;
      read_scalar(c, et, tmp, elem_name);
    } else {
      // read_array_header checked n * size against the bytes left.
      c.skip(scalar_size(et) * (n - k), elem_name);
      break;
    }
  }
}

template <class F>
void read_array(Cursor& c, Value& v, F&& field) {
  auto [et, n] = read_array_header(c, field);
  v.elem_type = et;
  v.count = n;
  if (et == ValueType::ARRAY) {
    for (uint64_t k = 0; k < n; ++k) {
      skip_array(c, 2, fmt::format("{}[{}]", field(), k));
    }
    return;
  }
  if (et == ValueType::STRING) {
    v.strings.reserve(n);
    for (uint64_t k = 0; k < n; ++k) {
      v.strings.emplace_back(c.read_string([&] { return fmt::format("{}[{}]", field(), k); }));
    }
    return;
  }
  v.numbers.reserve(n);
  const bool is_int = et != ValueType::FLOAT32 && et != ValueType::FLOAT64;
  if (is_int) v.ints.reserve(n);
  Value tmp;
  for (uint64_t k = 0; k < n; ++k) {
    read_scalar(c, et, tmp, [&] { return fmt::format("{}[{}]", field(), k); });
    if (is_int) {
      v.ints.push_back(tmp.i);
      v.numbers.push_back(et == ValueType::UINT64 ? static_cast<double>(tmp.u)
                                                  : static_cast<double>(tmp.i));
    } else {
      v.numbers.push_back(tmp.f);
    }
  }
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// File::Impl::parse

void File::Impl::parse() {
  Cursor c(base, size, path);
  auto at = [](const char* f) { return [f] { return std::string(f); }; };

  // Header.
  c.need(4, at("header.magic"));
  if (std::memcmp(base, kMagic, 4) != 0) {
    std::string found(reinterpret_cast<const char*>(base), 4);
    const bool legacy = found == "GGML" || found == "GGMF" || found == "GGJT" || found == "lmgg" ||
                        found == "fmgg" || found == "tjgg";
    c.fail(at("header.magic"),
           fmt::format("expected \"GGUF\", found \"{}\"{}", printable(found),
                       legacy ? " (a pre-GGUF ggml file: convert it with llama.cpp)" : ""));
  }
  c.skip(4, at("header.magic"));
  version = c.read<uint32_t>(at("header.version"));
  if (version == 1) {
    c.fail(at("header.version"),
           "GGUF version 1 is not supported (expected 2 or 3; re-convert the model with a "
           "current llama.cpp)");
  }
  if (version != 2 && version != 3) {
    c.fail(at("header.version"),
           fmt::format("expected version 2 or 3, found {}{}", version,
                       (version & 0xffff) == 0 ? " (a big-endian file?)" : ""));
  }
  const uint64_t n_tensors = c.read<uint64_t>(at("header.tensor_count"));
  const uint64_t n_kv = c.read<uint64_t>(at("header.metadata_kv_count"));
  // Smallest encodings: a tensor info is name length + n_dims + type + offset; a key/value pair
  // is key length + type + a one-byte value.
  constexpr uint64_t kMinTensorInfo = 8 + 4 + 4 + 8, kMinKv = 8 + 4 + 1;
  if (n_tensors > c.left() / kMinTensorInfo) {
    c.fail(at("header.tensor_count"),
           fmt::format("{} tensors need at least 24 bytes of tensor info each, but only {} bytes "
                       "are left in the file",
                       n_tensors, c.left()));
  }
  if (n_kv > c.left() / kMinKv) {
    c.fail(at("header.metadata_kv_count"),
           fmt::format("{} key/value pairs need at least 13 bytes each, but only {} bytes are "
                       "left in the file",
                       n_kv, c.left()));
  }

  // Metadata. The counts were checked against the bytes left, but a KeyValue is ~20 times its
  // smallest encoding: reserve no more than a sane model needs and let the vector grow.
  constexpr uint64_t kReserveCap = 1 << 16;
  kvs.reserve(std::min(n_kv, kReserveCap));
  for (uint64_t k = 0; k < n_kv; ++k) {
    std::string key(c.read_string([k] { return fmt::format("metadata[{}].key", k); }));
    if (key.empty()) {
      c.fail([k] { return fmt::format("metadata[{}].key", k); }, "expected a non-empty key");
    }
    auto field = [&key] { return fmt::format("metadata '{}'", printable(key)); };
    if (kv_index.count(key)) {
      c.fail(field, fmt::format("expected unique keys, but entries {} and {} both use this key",
                                kv_index.at(key), k));
    }
    Value v;
    v.type = read_value_type(c, [&] { return field() + ".type"; });
    if (v.type == ValueType::ARRAY) {
      read_array(c, v, field);
    } else {
      read_scalar(c, v.type, v, field);
    }
    kv_index.emplace(key, kvs.size());
    kvs.push_back({std::move(key), std::move(v)});
  }

  if (auto it = kv_index.find("general.alignment"); it != kv_index.end()) {
    const Value& v = kvs[it->second].value;
    auto field = at("metadata 'general.alignment'");
    if (v.type != ValueType::UINT32) {
      c.fail(field, fmt::format("expected type UINT32, found {}", value_type_name(v.type)));
    }
    if (v.i == 0 || (v.i & (v.i - 1)) != 0) {
      c.fail(field, fmt::format("expected a power of two, found {}", v.i));
    }
    alignment = static_cast<uint64_t>(v.i);
  }

  // Tensor infos.
  if (n_tensors > c.left() / kMinTensorInfo) {
    c.fail(at("header.tensor_count"),
           fmt::format("{} tensors need at least 24 bytes of tensor info each, but only {} bytes "
                       "are left after the metadata",
                       n_tensors, c.left()));
  }
  tensors.reserve(std::min(n_tensors, kReserveCap));
  for (uint64_t k = 0; k < n_tensors; ++k) {
    TensorInfo t;
    t.name = std::string(c.read_string([k] { return fmt::format("tensor[{}].name", k); }));
    const std::string ctx = fmt::format("tensor '{}'", printable(t.name));
    auto sub = [&ctx](const char* f) { return [&ctx, f] { return ctx + "." + f; }; };
    if (t.name.empty())
      c.fail([k] { return fmt::format("tensor[{}].name", k); }, "expected a name");
    if (auto it = tensor_index.find(t.name); it != tensor_index.end()) {
      c.fail(sub("name"), fmt::format("expected unique tensor names, but tensors {} and {} share "
                                      "this name",
                                      it->second, k));
    }
    const uint32_t n_dims = c.read<uint32_t>(sub("n_dims"));
    if (n_dims < 1 || n_dims > kMaxDims) {
      c.fail(sub("n_dims"), fmt::format("expected 1 to {} dimensions, found {}", kMaxDims, n_dims));
    }
    for (uint32_t d = 0; d < n_dims; ++d) {
      const uint64_t dim = c.read<uint64_t>([&] { return fmt::format("{}.dims[{}]", ctx, d); });
      if (dim == 0 || dim > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) {
        c.fail([&] { return fmt::format("{}.dims[{}]", ctx, d); },
               fmt::format("expected a dimension >= 1, found {}", static_cast<int64_t>(dim)));
      }
      t.dims.push_back(static_cast<int64_t>(dim));
    }
    const uint32_t type = c.read<uint32_t>(sub("type"));
    if (!is_tensor_type(type)) {
      c.fail(sub("type"), fmt::format("ggml type {} ({}) is not supported (fairkv reads {})", type,
                                      detail::ggml_type_name(type), supported_tensor_types()));
    }
    t.type = static_cast<TensorType>(type);
    t.n_bytes = tensor_bytes(t.type, t.dims, fmt::format("{}: {}", path, ctx));
    t.n_elements = 1;
    for (int64_t d : t.dims) t.n_elements *= d;
    t.offset = c.read<uint64_t>(sub("offset"));
    tensor_index.emplace(t.name, tensors.size());
    tensors.push_back(std::move(t));
  }

  // Data section: starts at the next multiple of the alignment.
  data_offset = (c.pos() + alignment - 1) / alignment * alignment;
  if (tensors.empty()) return;
  if (data_offset > size) {
    c.fail(at("data section"),
           fmt::format("expected tensor data from offset {} (aligned to {}), but the file ends "
                       "at {}",
                       data_offset, alignment, size));
  }
  const uint64_t data_size = size - data_offset;
  for (const TensorInfo& t : tensors) {
    auto field = [&t] { return fmt::format("tensor '{}'.offset", printable(t.name)); };
    if (t.offset % alignment != 0) {
      c.fail(field,
             fmt::format("expected a multiple of the alignment {}, found {}", alignment, t.offset));
    }
    if (t.offset > data_size || t.n_bytes > data_size - t.offset) {
      c.fail(field, fmt::format("offset {} + {} bytes is past the end of the data section ({} "
                                "bytes from file offset {}; file size {})",
                                t.offset, t.n_bytes, data_size, data_offset, size));
    }
  }
  std::vector<size_t> order(tensors.size());
  std::iota(order.begin(), order.end(), size_t{0});
  std::sort(order.begin(), order.end(),
            [&](size_t a, size_t b) { return tensors[a].offset < tensors[b].offset; });
  for (size_t k = 1; k < order.size(); ++k) {
    const TensorInfo& prev = tensors[order[k - 1]];
    const TensorInfo& t = tensors[order[k]];
    if (t.offset < prev.offset + prev.n_bytes) {
      c.fail([&t] { return fmt::format("tensor '{}'.offset", printable(t.name)); },
             fmt::format("expected tensor data not to overlap, but bytes [{}, {}) overlap tensor "
                         "'{}' at [{}, {})",
                         t.offset, t.offset + t.n_bytes, printable(prev.name), prev.offset,
                         prev.offset + prev.n_bytes));
    }
  }
}

}  // namespace fairkv::gguf
