// The GGUF reader's names and sizes of types, and Value's accessors: the tables behind gguf.h,
// apart from the parse.
#include <fmt/format.h>
#include <fmt/ranges.h>

#include <iterator>

#include "formats/gguf.h"
#include "formats/gguf_internal.h"

namespace fairkv::gguf {

namespace detail {

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

std::string printable(std::string_view s, size_t max_len) {
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

}  // namespace detail

using detail::kMaxDims;
using detail::printable;
using detail::shape_string;

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

}  // namespace fairkv::gguf
