// GGUF reader (versions 2 and 3), memory-mapped.
//
// Every check that can fail on a malformed file throws gguf::Error whose message names the file,
// the field and what was expected ("model.gguf: tensor 'blk.0.attn_q.weight': offset 123 + 4096
// bytes is past the end of the file (2048 bytes)"). Nothing is read before it is bounds-checked,
// and no count is trusted before it is checked against the bytes left (a string length or array
// count of 2^60 fails without allocating). Accepted: versions 2 and 3, little-endian; keys
// unique; general.alignment a UINT32 power of two (default 32); tensors of 1-4 dims >= 1 whose
// element count and byte size fit in int64, of type F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q5_0, Q5_1,
// Q2_K, Q3_K, Q4_K, Q5_K or Q6_K with the inner
// dimension a multiple of the block, names unique, data aligned, inside the file and not
// overlapping. Arrays of arrays are checked and skipped (nesting at most 8 deep).
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

namespace fairkv::gguf {

// The most layers (and heads) a model may declare: far beyond any real model, and a bound that
// keeps a hostile block_count from sizing allocations. The model's reader and `fairkv synth`
// share it, so synth never writes a file its own reader refuses.
inline constexpr int64_t kMaxBlockCount = 4096;

struct Error : std::runtime_error {
  using std::runtime_error::runtime_error;
};

// Metadata value types, numbered as in the GGUF specification.
// clang-format off
enum class ValueType : uint32_t {
  UINT8 = 0, INT8 = 1, UINT16 = 2, INT16 = 3, UINT32 = 4, INT32 = 5, FLOAT32 = 6, BOOL = 7,
  STRING = 8, ARRAY = 9, UINT64 = 10, INT64 = 11, FLOAT64 = 12,
};
// clang-format on
const char* value_type_name(ValueType t);

// Tensor element types, numbered as ggml numbers them. Only these are accepted.
// clang-format off
enum class TensorType : uint32_t {
  F32 = 0, F16 = 1, Q4_0 = 2, Q4_1 = 3, Q5_0 = 6, Q5_1 = 7, Q8_0 = 8, Q2_K = 10, Q3_K = 11,
  Q4_K = 12, Q5_K = 13, Q6_K = 14, BF16 = 30,
};
// clang-format on
const char* tensor_type_name(TensorType t);
// The accepted types' names, for messages: "F32, F16, BF16, Q8_0, Q4_0, ..., Q6_K".
const char* supported_tensor_types();
// Elements per block (1 for F32/F16/BF16, 32 for the legacy quants, 256 for the K-quants) and
// bytes per block.
int64_t tensor_type_block(TensorType t);
int64_t tensor_type_block_bytes(TensorType t);
// Whether a ggml type number is one of the accepted TensorTypes.
bool is_tensor_type(uint32_t t);
// Parses "f32", "f16", "bf16", "q8_0", "q4_0" (case-insensitive), the types `fairkv synth` can
// write; nullopt for anything else.
std::optional<TensorType> tensor_type_from_name(std::string_view name);
// Encoded bytes of a tensor of this type and shape; throws Error (naming `what`) when a dimension
// is <= 0, there are more than 4 of them, the element count or byte size overflows, or the inner
// dimension is not a multiple of the block size.
uint64_t tensor_bytes(TensorType t, const std::vector<int64_t>& dims, const std::string& what);

// One metadata value. Scalars live in the matching field; arrays keep their element type and
// their elements (strings in `strings`, every numeric or bool element in `numbers` as double and
// in `ints` as int64 so that large integers stay exact).
struct Value {
  ValueType type = ValueType::UINT8;
  ValueType elem_type = ValueType::UINT8;  // for ARRAY
  int64_t i = 0;                           // every integer type and BOOL
  uint64_t u = 0;                          // UINT64 exactly
  double f = 0;                            // FLOAT32 / FLOAT64
  std::string str;                         // STRING
  std::vector<std::string> strings;        // ARRAY of STRING
  std::vector<double> numbers;             // ARRAY of numeric / BOOL
  std::vector<int64_t> ints;               // ARRAY of integer / BOOL
  // ARRAY: number of elements. For an ARRAY of ARRAY the inner arrays are bounds-checked and
  // skipped, so only this count is kept.
  uint64_t count = 0;
  size_t array_size() const;
  bool is_integer() const;                            // scalar integer or BOOL
  bool is_float() const;                              // scalar FLOAT32 / FLOAT64
  std::string to_string(size_t max_elems = 8) const;  // short human form for `inspect`
};

struct KeyValue {
  std::string key;
  Value value;
};

struct TensorInfo {
  std::string name;
  std::vector<int64_t> dims;  // ne[0] first: dims[0] is the contiguous (inner) dimension
  TensorType type = TensorType::F32;
  uint64_t offset = 0;  // relative to the start of the data section
  int64_t n_elements = 0;
  uint64_t n_bytes = 0;
};

// How open() brings the bytes in.
//  Map: mmap of the file (shared page cache, starts at once, pages fault in on first use).
//  Read: read into private anonymous memory advised to use transparent huge pages: costs the
//    read up front, but decode then streams the weights with far fewer TLB misses.
enum class Load { Map, Read };

class File {
 public:
  // Maps (or reads) and parses the file; throws gguf::Error on any malformation.
  static File open(const std::string& path, Load load = Load::Map);
  // Parses an in-memory image (used by the fuzzer and tests); `name` is used in messages.
  static File parse(const uint8_t* data, size_t size, const std::string& name);

  File(File&&) noexcept;
  File& operator=(File&&) noexcept;
  ~File();

  const std::string& path() const;
  uint32_t version() const;
  uint64_t alignment() const;
  size_t file_size() const;
  uint64_t data_offset() const;  // start of the tensor data section in the file

  const std::vector<KeyValue>& metadata() const;
  const Value* find(std::string_view key) const;
  // Typed getters: throw Error naming the file and the key when it is absent or of another type.
  std::string get_string(std::string_view key) const;
  int64_t get_int(std::string_view key) const;   // any integer type
  double get_float(std::string_view key) const;  // FLOAT32/FLOAT64, or an integer
  bool get_bool(std::string_view key) const;
  const std::vector<std::string>& get_strings(std::string_view key) const;  // ARRAY of STRING
  const std::vector<double>& get_numbers(std::string_view key) const;       // numeric ARRAY
  std::optional<std::string> find_string(std::string_view key) const;
  std::optional<int64_t> find_int(std::string_view key) const;
  std::optional<double> find_float(std::string_view key) const;

  const std::vector<TensorInfo>& tensors() const;
  const TensorInfo* find_tensor(std::string_view name) const;
  // Pointer to the tensor's bytes inside the mapping (valid while the File lives).
  const uint8_t* data(const TensorInfo& t) const;

 private:
  File();
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

// GGUF writer (version 3): used by `fairkv synth` and by the tests that build malformed files.
class Writer {
 public:
  void set_alignment(uint64_t a);
  void add_string(const std::string& key, const std::string& v);
  void add_u32(const std::string& key, uint32_t v);
  void add_i32(const std::string& key, int32_t v);
  void add_u64(const std::string& key, uint64_t v);
  void add_f32(const std::string& key, float v);
  void add_bool(const std::string& key, bool v);
  void add_strings(const std::string& key, const std::vector<std::string>& v);
  void add_f32s(const std::string& key, const std::vector<float>& v);
  void add_i32s(const std::string& key, const std::vector<int32_t>& v);
  void add_u8(const std::string& key, uint8_t v);
  void add_i8(const std::string& key, int8_t v);
  void add_u16(const std::string& key, uint16_t v);
  void add_i16(const std::string& key, int16_t v);
  void add_i64(const std::string& key, int64_t v);
  void add_f64(const std::string& key, double v);
  // Any value the reader returns (arrays from `ints`/`numbers`/`strings` by elem_type; an ARRAY
  // of ARRAY cannot be expressed by Value and throws).
  void add_value(const std::string& key, const Value& v);
  // A value whose encoding (everything after the type tag) the caller supplies verbatim: lets
  // tests build nested arrays and malformed payloads. Not interpreted: a general.alignment added
  // this way does not change the layout the writer uses (set_alignment does).
  void add_raw(const std::string& key, ValueType type, std::vector<uint8_t> payload);
  // dims[0] is the inner dimension; `bytes` must hold exactly the tensor's encoded size.
  void add_tensor(const std::string& name, TensorType type, std::vector<int64_t> dims,
                  std::vector<uint8_t> bytes);
  // A tensor whose bytes are produced while the file is written, so that a large model never
  // sits in memory whole. `fill(first_row, n_rows, dst)` writes the encoded rows
  // [first_row, first_row + n_rows) to dst; a row is dims[0] elements. It is called once per
  // chunk of at most about 64 MiB, in order.
  using RowSource = std::function<void(int64_t first_row, int64_t n_rows, uint8_t* dst)>;
  void add_tensor(const std::string& name, TensorType type, std::vector<int64_t> dims,
                  RowSource fill);
  // Called after every chunk of tensor data written (bytes done, total tensor bytes).
  void set_progress(std::function<void(uint64_t done, uint64_t total)> progress);
  // The whole file as bytes, and written to a path (throws Error on I/O failure).
  std::vector<uint8_t> serialize() const;
  void write(const std::string& path) const;

 private:
  void add_encoded(const std::string& key, ValueType type, std::vector<uint8_t> payload);
  void add_pending(const std::string& name, TensorType type, std::vector<int64_t> dims,
                   std::vector<uint8_t> bytes, RowSource fill);
  template <class Sink>
  void emit(Sink& sink) const;

  std::vector<std::vector<uint8_t>> kv_;  // encoded key/value pairs
  std::vector<std::string> keys_;
  struct PendingTensor {
    std::string name;
    TensorType type;
    std::vector<int64_t> dims;
    std::vector<uint8_t> bytes;  // when given up front
    RowSource fill;              // otherwise
    uint64_t n_bytes = 0;
  };
  std::vector<PendingTensor> tensors_;
  uint64_t alignment_ = 32;
  std::function<void(uint64_t, uint64_t)> progress_;
};

}  // namespace fairkv::gguf
