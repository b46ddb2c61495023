// GGUF reader: bounds-checked parse of a memory-mapped file (see gguf.h for the contract).
#include "formats/gguf.h"

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

namespace {

constexpr char kMagic[4] = {'G', 'G', 'U', 'F'};
constexpr uint64_t kDefaultAlignment = 32;
constexpr int kMaxDims = 4;
// Inner arrays of an ARRAY of ARRAY are skipped recursively; a limit keeps a hostile file from
// exhausting the stack with millions of nested headers.
constexpr int kMaxArrayNesting = 8;
constexpr uint32_t kNumValueTypes = 13;

// ggml's names for the type numbers we do not accept, so that the error says what the file holds.
const char* ggml_type_name(uint32_t t) {
  static const char* const names[] = {"F32",
                                      "F16",
                                      "Q4_0",
                                      "Q4_1",
                                      "Q4_2 (removed)",
                                      "Q4_3 (removed)",
                                      "Q5_0",
                                      "Q5_1",
                                      "Q8_0",
                                      "Q8_1",
                                      "Q2_K",
                                      "Q3_K",
                                      "Q4_K",
                                      "Q5_K",
                                      "Q6_K",
                                      "Q8_K",
                                      "IQ2_XXS",
                                      "IQ2_XS",
                                      "IQ3_XXS",
                                      "IQ1_S",
                                      "IQ4_NL",
                                      "IQ3_S",
                                      "IQ2_S",
                                      "IQ4_XS",
                                      "I8",
                                      "I16",
                                      "I32",
                                      "I64",
                                      "F64",
                                      "IQ1_M",
                                      "BF16",
                                      "Q4_0_4_4 (removed)",
                                      "Q4_0_4_8 (removed)",
                                      "Q4_0_8_8 (removed)",
                                      "TQ1_0",
                                      "TQ2_0",
                                      "IQ4_NL_4_4 (removed)",
                                      "IQ4_NL_4_8 (removed)",
                                      "IQ4_NL_8_8 (removed)",
                                      "MXFP4"};
  return t < std::size(names) ? names[t] : "unknown";
}

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

std::string printable(std::string_view s, size_t max_len = 64) {
  std::string out;
  for (size_t i = 0; i < s.size() && i < max_len; ++i) {
    unsigned char c = static_cast<unsigned char>(s[i]);
    if (c == '\\' || c == '"') {
      out += '\\';
      out += static_cast<char>(c);
    } else if (c >= 0x20 && c < 0x7f) {
      out += static_cast<char>(c);
    } else if (c >= 0x80) {
      out += static_cast<char>(c);  // keep UTF-8 (token pieces like "▁the")
    } else {
      out += fmt::format("\\x{:02x}", c);
    }
  }
  if (s.size() > max_len) out += "...";
  return out;
}

std::string shape_string(const std::vector<int64_t>& dims) {
  return fmt::format("[{}]", fmt::join(dims, ", "));
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

bool is_numeric(ValueType t) {
  return t != ValueType::STRING && t != ValueType::ARRAY;
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// Names and sizes of types

const char* value_type_name(ValueType t) {
  switch (t) {
    case ValueType::UINT8:
      return "UINT8";
    case ValueType::INT8:
      return "INT8";
    case ValueType::UINT16:
      return "UINT16";
    case ValueType::INT16:
      return "INT16";
    case ValueType::UINT32:
      return "UINT32";
    case ValueType::INT32:
      return "INT32";
    case ValueType::FLOAT32:
      return "FLOAT32";
    case ValueType::BOOL:
      return "BOOL";
    case ValueType::STRING:
      return "STRING";
    case ValueType::ARRAY:
      return "ARRAY";
    case ValueType::UINT64:
      return "UINT64";
    case ValueType::INT64:
      return "INT64";
    case ValueType::FLOAT64:
      return "FLOAT64";
  }
  return "unknown";
}

const char* tensor_type_name(TensorType t) {
  switch (t) {
    case TensorType::F32:
      return "F32";
    case TensorType::F16:
      return "F16";
    case TensorType::Q4_0:
      return "Q4_0";
    case TensorType::Q8_0:
      return "Q8_0";
    case TensorType::BF16:
      return "BF16";
    case TensorType::Q4_1:
      return "Q4_1";
    case TensorType::Q5_0:
      return "Q5_0";
    case TensorType::Q5_1:
      return "Q5_1";
    case TensorType::Q2_K:
      return "Q2_K";
    case TensorType::Q3_K:
      return "Q3_K";
    case TensorType::Q4_K:
      return "Q4_K";
    case TensorType::Q5_K:
      return "Q5_K";
    case TensorType::Q6_K:
      return "Q6_K";
  }
  return "unknown";
}

const char* supported_tensor_types() {
  return "F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, Q2_K, Q3_K, Q4_K, Q5_K, Q6_K";
}

int64_t tensor_type_block(TensorType t) {
  switch (t) {
    case TensorType::F32:
    case TensorType::F16:
    case TensorType::BF16:
      return 1;
    case TensorType::Q4_0:
    case TensorType::Q4_1:
    case TensorType::Q5_0:
    case TensorType::Q5_1:
    case TensorType::Q8_0:
      return 32;
    case TensorType::Q2_K:
    case TensorType::Q3_K:
    case TensorType::Q4_K:
    case TensorType::Q5_K:
    case TensorType::Q6_K:
      return 256;
  }
  return 1;
}

// ggml's block sizes (ggml-common.h); kernels/quant_blocks.h asserts the same numbers.
int64_t tensor_type_block_bytes(TensorType t) {
  switch (t) {
    case TensorType::F32:
      return 4;
    case TensorType::F16:
      return 2;
    case TensorType::BF16:
      return 2;
    case TensorType::Q8_0:
      return 34;  // fp16 scale + 32 int8
    case TensorType::Q4_0:
      return 18;  // fp16 scale + 32 nibbles
    case TensorType::Q4_1:
      return 20;  // fp16 scale and min + 32 nibbles
    case TensorType::Q5_0:
      return 22;  // fp16 scale + 32 high bits + 32 nibbles
    case TensorType::Q5_1:
      return 24;  // fp16 scale and min + 32 high bits + 32 nibbles
    case TensorType::Q2_K:
      return 84;  // 16 scale/min bytes + 64 bytes of 2-bit levels + fp16 d, dmin
    case TensorType::Q3_K:
      return 110;  // 32 bytes high bits + 64 bytes 2-bit levels + 12 scale bytes + fp16 d
    case TensorType::Q4_K:
      return 144;  // fp16 d, dmin + 12 scale bytes + 128 bytes of nibbles
    case TensorType::Q5_K:
      return 176;  // Q4_K + 32 bytes of high bits
    case TensorType::Q6_K:
      return 210;  // 128 bytes low nibbles + 64 bytes high bits + 16 int8 scales + fp16 d
  }
  return 0;
}

bool is_tensor_type(uint32_t t) {
  switch (static_cast<TensorType>(t)) {
    case TensorType::F32:
    case TensorType::F16:
    case TensorType::Q4_0:
    case TensorType::Q4_1:
    case TensorType::Q5_0:
    case TensorType::Q5_1:
    case TensorType::Q8_0:
    case TensorType::Q2_K:
    case TensorType::Q3_K:
    case TensorType::Q4_K:
    case TensorType::Q5_K:
    case TensorType::Q6_K:
    case TensorType::BF16:
      return true;
  }
  return false;
}

std::optional<TensorType> tensor_type_from_name(std::string_view name) {
  std::string s(name);
  for (char& ch : s) ch = static_cast<char>(std::tolower(static_cast<unsigned char>(ch)));
  if (s == "f32") return TensorType::F32;
  if (s == "f16") return TensorType::F16;
  if (s == "bf16") return TensorType::BF16;
  if (s == "q8_0") return TensorType::Q8_0;
  if (s == "q4_0") return TensorType::Q4_0;
  return std::nullopt;
}

uint64_t tensor_bytes(TensorType t, const std::vector<int64_t>& dims, const std::string& what) {
  if (dims.empty() || dims.size() > kMaxDims) {
    throw Error(fmt::format("{}: n_dims: expected 1 to {} dimensions, found {}", what, kMaxDims,
                            dims.size()));
  }
  int64_t n = 1;
  for (size_t k = 0; k < dims.size(); ++k) {
    if (dims[k] <= 0) {
      throw Error(
          fmt::format("{}: dims[{}]: expected a dimension >= 1, found {}", what, k, dims[k]));
    }
    if (dims[k] > std::numeric_limits<int64_t>::max() / n) {
      throw Error(fmt::format("{}: shape {}: expected an element count that fits in int64", what,
                              shape_string(dims)));
    }
    n *= dims[k];
  }
  const int64_t block = tensor_type_block(t);
  if (dims[0] % block != 0) {
    throw Error(fmt::format("{}: dims[0]: expected a multiple of the {} block size {}, found {}",
                            what, tensor_type_name(t), block, dims[0]));
  }
  const uint64_t blocks = static_cast<uint64_t>(n / block);
  const uint64_t bb = static_cast<uint64_t>(tensor_type_block_bytes(t));
  if (blocks > static_cast<uint64_t>(std::numeric_limits<int64_t>::max()) / bb) {
    throw Error(fmt::format("{}: shape {}: expected a byte size that fits in int64", what,
                            shape_string(dims)));
  }
  return blocks * bb;
}

// ---------------------------------------------------------------------------------------------
// Value

size_t Value::array_size() const {
  return type == ValueType::ARRAY ? count : 0;
}

bool Value::is_integer() const {
  switch (type) {
    case ValueType::UINT8:
    case ValueType::INT8:
    case ValueType::UINT16:
    case ValueType::INT16:
    case ValueType::UINT32:
    case ValueType::INT32:
    case ValueType::UINT64:
    case ValueType::INT64:
    case ValueType::BOOL:
      return true;
    default:
      return false;
  }
}

bool Value::is_float() const {
  return type == ValueType::FLOAT32 || type == ValueType::FLOAT64;
}

std::string Value::to_string(size_t max_elems) const {
  switch (type) {
    case ValueType::BOOL:
      return i ? "true" : "false";
    case ValueType::UINT64:
      return std::to_string(u);
    case ValueType::FLOAT32:
    case ValueType::FLOAT64:
      return fmt::format("{:g}", f);
    case ValueType::STRING:
      return "\"" + printable(str) + "\"";
    case ValueType::ARRAY: {
      std::string out = "[";
      size_t shown = 0;
      if (elem_type == ValueType::ARRAY) {
        return fmt::format("[{} arrays]", count);
      } else if (elem_type == ValueType::STRING) {
        for (; shown < strings.size() && shown < max_elems; ++shown) {
          out += (shown ? ", \"" : "\"") + printable(strings[shown], 24) + "\"";
        }
      } else {
        for (; shown < numbers.size() && shown < max_elems; ++shown) {
          if (shown) out += ", ";
          if (elem_type == ValueType::FLOAT32 || elem_type == ValueType::FLOAT64) {
            out += fmt::format("{:g}", numbers[shown]);
          } else if (elem_type == ValueType::UINT64) {
            out += std::to_string(static_cast<uint64_t>(ints[shown]));
          } else {
            out += std::to_string(ints[shown]);
          }
        }
      }
      if (shown < count)
        out += fmt::format("{}... ({} {})", shown ? ", " : "", count, value_type_name(elem_type));
      return out + "]";
    }
    default:
      return std::to_string(i);
  }
}

// ---------------------------------------------------------------------------------------------
// File

struct File::Impl {
  std::string path;
  void* map = nullptr;  // the mmap of open(), unmapped on destruction
  size_t map_size = 0;
  std::vector<uint8_t> owned;  // the copy made by parse()
  const uint8_t* base = nullptr;
  size_t size = 0;

  uint32_t version = 0;
  uint64_t alignment = kDefaultAlignment;
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
                                      ggml_type_name(type), supported_tensor_types()));
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
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) throw Error(fmt::format("{}: open: {}", path, std::strerror(errno)));
  struct stat st;
  if (fstat(fd, &st) != 0) {
    const int e = errno;
    ::close(fd);
    throw Error(fmt::format("{}: stat: {}", path, std::strerror(e)));
  }
  if (!S_ISREG(st.st_mode)) {
    ::close(fd);
    throw Error(fmt::format("{}: open: expected a regular file", path));
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
