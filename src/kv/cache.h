// The per-head KV cache: one ragged store per (sequence, layer, KV head), each with its own length.
//
// Per-head compression (Ada-KV, HeadKV, ...) keeps a different number of tokens in every head, so
// the cache is not a [layer][head][token] box: each head's store holds exactly the tokens it kept.
// Keys are stored after RoPE, so a compacted store needs no positions to be attended.
#pragma once

#include <algorithm>
#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "kernels/types.h"
#include "kv/store_memory.h"

namespace fairkv::kv {

// Element types of a cache, as llama.cpp's --cache-type-k / --cache-type-v name them. Q8_0 and Q4_0
// rows are ggml's blocks of 32 elements (kernels/types.h), so a quantized head needs a head_dim
// that is a multiple of 32.
enum class KvType { F32, F16, BF16, Q8_0, Q4_0 };
const char* kv_type_name(KvType t);
// The type named s ("f32", "f16", "bf16", "q8_0", "q4_0"); throws std::invalid_argument naming
// `what` (the option) and the names accepted.
KvType parse_kv_type(const std::string& s, const std::string& what);
bool kv_type_quantized(KvType t);
// The element type (kernels/types.h) whose rows a store of type t holds.
kernels::DType kv_dtype(KvType t);
// Bytes of one row of head_dim elements (head_dim a multiple of 32 for the quantized types, else
// it throws as check_kv_type, naming the type).
size_t kv_row_bytes(KvType t, int64_t head_dim);
// Throws std::invalid_argument naming `what` when head_dim cannot be stored in t.
void check_kv_type(KvType t, int64_t head_dim, const std::string& what);

// The types of keys and values, chosen independently (-ctk / -ctv). Converts from one KvType for
// both, which is what a cache had before the two could differ.
struct KvTypes {
  KvType k = KvType::F32, v = KvType::F32;
  KvTypes() = default;
  KvTypes(KvType t) : k(t), v(t) {}  // NOLINT(google-explicit-constructor): the common case
  KvTypes(KvType kt, KvType vt) : k(kt), v(vt) {}
  // Bytes of one token of one head: a key row and a value row. Throws as check_kv_types.
  size_t token_bytes(int64_t head_dim) const;
  friend bool operator==(const KvTypes&, const KvTypes&) = default;
};
// "f16" when both are f16, else "K q8_0 / V f16".
std::string kv_types_name(KvTypes t);
// check_kv_type for both, naming --cache-type-k / --cache-type-v.
void check_kv_types(KvTypes t, int64_t head_dim);

// Keys of every type are held in panels of this many tokens (see HeadStore).
inline constexpr int64_t kKeyPanel = 16;
// A q8_0 panel, block by block (block b of the head at b * kQ8PanelBlockBytes): 8 rows of 64 bytes,
// row g holding dimensions 4g..4g+3 of the block for the 16 keys (key t at byte 4t), each byte
// k + 128 (the signed q with its sign bit flipped), then the 16 keys' fp16 scales. One vpdpbusd
// (u8 x s8) then scores 16 keys x 4 dimensions against 4 query bytes broadcast, with no
// horizontal sums; the +128 comes back as -128 x sum(q) per query block.
inline constexpr size_t kQ8PanelRow = 64;
inline constexpr size_t kQ8PanelBlockBytes = 8 * kQ8PanelRow + 2 * kKeyPanel;  // 16 x 34
// A q4_0 panel the same way in half the rows: 4 rows of 64 bytes, row g holding dimensions
// 8g..8g+7 of the 16 keys (key t at byte 4t), byte i of a key's four: dimension 8g + i in the low
// nibble, 8g + 4 + i in the high one (the nibbles as stored, k + 8), then the 16 scales. A row
// masked and shifted gives the two vectors of 16 keys x 4 unsigned bytes that vpdpbusd takes.
inline constexpr size_t kQ4PanelBlockBytes = 4 * kQ8PanelRow + 2 * kKeyPanel;  // 16 x 18

// Where element i of key t (< kKeyPanel) lies in a bf16 key panel, in elements from the panel's
// start: dimensions in pairs, pair m = (2m, 2m + 1) of the panel's 16 keys forming one 64-byte
// row (key t's two elements side by side), so that 16 such rows are an AMX B tile of Q.K^T
// (kv/attention_amx.h); an odd head_dim's last dimension follows as 16 elements.
inline int64_t bf16_key_index(int64_t t, int64_t i, int64_t d) {
  return i < d / 2 * 2 ? i / 2 * 2 * kKeyPanel + 2 * t + (i & 1) : (d - 1) * kKeyPanel + t;
}
// A bf16 store's values are held in panels of this many tokens: one panel per 32-key chunk of
// P.V on AMX.
inline constexpr int64_t kValuePanel = 32;

// Where element c of value t (< kValuePanel) lies in a bf16 value panel: columns in tiles of 16
// (the last one narrower when head_dim is not a multiple of 16), each tile holding the 16 pairs
// of values (2m, 2m + 1) as rows of its columns, (v_2m[c], v_2m+1[c]) side by side, so that a
// whole tile (16 rows x 64 bytes, 1 KiB, contiguous) is an AMX B tile of P.V.
inline int64_t bf16_value_index(int64_t t, int64_t c, int64_t d) {
  const int64_t tile = c / 16, width = std::min<int64_t>(16, d - tile * 16);
  return tile * 16 * kValuePanel + t / 2 * 2 * width + 2 * (c % 16) + (t & 1);
}

// One head's keys and values: len rows of head_dim elements each, K then V in one array.
//
// Keys are held in panels of kKeyPanel tokens, and the last size() % kKeyPanel keys row-major
// after the full panels. An f32 or f16 panel is dimension-major (element i of the panel's key t
// at i * kKeyPanel + t): a query row's scores against a panel are then kKeyPanel-wide vectors
// built from one conversion and one FMA per element, with no horizontal sums, which is what lets
// a GQA group's decode attention keep up with the read. A bf16 panel holds the same elements as
// AMX tiles want them (bf16_key_index), and so do a bf16 store's values, in panels of
// kValuePanel (bf16_value_index, panel_values()): decode reads the store straight into tiles,
// with no conversion. Other values are row-major. q8_0 and q4_0 keys use the panel layouts
// described at kQ8PanelBlockBytes and kQ4PanelBlockBytes (ggml's blocks' bytes reordered, q8_0's
// quants with their sign bits flipped): their scores are integer dot products
// (attention_quant.h), 16 keys per instruction; the tail rows of a quantized store are ggml's
// blocks as llama.cpp stores them, and k_raw_row() gives any key's row as ggml's blocks. A panel
// is sealed (transposed in place) when its last token arrives, so the bytes stay exactly the
// tokens kept, they depend on size() alone, and a decode append costs O(head_dim * kKeyPanel) at
// worst.
//
// Keys and values may have different types (K rows of kv_row_bytes(types().k, head_dim) bytes,
// V rows of kv_row_bytes(types().v, head_dim)).
//
// The array lives in one of two kinds of memory. Ordinarily it is allocated (store_memory.h) and
// decode appends regrow it by a quarter, copying. After reserve_virtual(max_rows) it is an
// address range reserved for max_rows rows (V at max_rows rows from K, as a capacity of max_rows
// would put it), whose pages are committed as rows arrive and released by keep(): appends never
// copy, the rows never move, and the memory held follows the rows, at the price of a fixed limit
// and a few map entries per store (ReservedRange). The layout, and so every reader, is the same.
class HeadStore {
 public:
  HeadStore() = default;
  // Throws std::invalid_argument when a quantized type cannot hold rows of head_dim.
  HeadStore(int64_t head_dim, KvTypes types);
  HeadStore(const HeadStore& o);
  HeadStore(HeadStore&&) noexcept = default;
  HeadStore& operator=(const HeadStore& o);
  HeadStore& operator=(HeadStore&&) noexcept = default;
  ~HeadStore() = default;
  int64_t size() const { return len_; }
  int64_t head_dim() const { return head_dim_; }
  KvTypes types() const { return types_; }
  // Appends n rows (float32 in, converted to the store's type). Amortised O(n). Past a reserved
  // store's limit it throws std::length_error and appends nothing.
  void append(const float* k, const float* v, int64_t n);
  // Room for `rows` rows in all, allocated exactly, so that appends up to that size copy nothing
  // (a reserved store has that room up to its limit, beyond which this throws std::length_error).
  void reserve(int64_t rows);
  // Moves the store (once, if it holds rows) into an address range reserved for max_rows rows, in
  // which it then grows in place. max_rows below size() throws std::length_error.
  void reserve_virtual(int64_t max_rows);
  int64_t reserved_rows() const { return vm_.data() ? cap_ : 0; }  // 0: ordinary memory
  // Keeps only the rows at the given strictly increasing indices, in order; frees the rest (a
  // reserved store compacts in place and releases the pages left empty).
  void keep(std::span<const int64_t> indices);
  // Drops the rows and the memory, a reservation included.
  void clear();
  // Raw keys: panel p (keys [p, p + 1) * kKeyPanel) starts at byte p * kKeyPanel * k_row_bytes(),
  // and a key i >= panel_keys() at byte i * k_row_bytes().
  const void* k_data() const { return k_ptr(); }
  int64_t panel_keys() const { return len_ / kKeyPanel * kKeyPanel; }
  // Key i's bytes as one row-major row of the store's type (ggml's blocks for q8_0), whichever
  // layout holds it: k_row_bytes() bytes to dst. Every reader of single keys goes through it.
  void k_raw_row(int64_t i, uint8_t* dst) const;
  // Raw values: the panel of values [p, p + 1) * kValuePanel (bf16 only, below panel_values())
  // starts at byte p * kValuePanel * v_row_bytes(), and a value i >= panel_values() (every value
  // of another type) at byte i * v_row_bytes().
  const void* v_data() const { return v_ptr(); }
  int64_t panel_values() const {
    return types_.v == KvType::BF16 ? len_ / kValuePanel * kValuePanel : 0;
  }
  // Bytes of the kept tokens (K and V), the figure FAIRKV.md's load counts.
  size_t bytes() const { return size_t(len_) * (k_row_bytes() + v_row_bytes()); }
  size_t k_row_bytes() const { return kv_row_bytes(types_.k, head_dim_); }
  size_t v_row_bytes() const { return kv_row_bytes(types_.v, head_dim_); }
  // Bytes allocated: equal to bytes() after construction, a prefill append or keep(); decode
  // appends grow the array by a quarter at a time (amortised O(1) per token, never a copy per
  // token), so that it stays within 1.25 x bytes() plus 16 rows. A reserved store: its address
  // range, 2 x max_rows rows rounded up to a page.
  size_t capacity_bytes() const { return vm_.data() ? vm_.size() : kv_.capacity(); }
  // Memory held: capacity_bytes() for an ordinary store; for a reserved one, the pages its rows
  // touch in K's region and in V's (so at most bytes() rounded up to pages, plus a page).
  size_t committed_bytes() const;
  // What committed_bytes() will be once the store holds `rows` rows (appends alone): what the
  // serving engine checks a step against its memory limit with.
  size_t committed_bytes_at(int64_t rows) const;
  // committed_bytes() of a store reserved for max_rows rows of head_dim elements of types t,
  // holding `rows` rows.
  static size_t reserved_bytes(int64_t rows, int64_t max_rows, int64_t head_dim, KvTypes t);
  void k_row(int64_t i, float* out) const;  // row i of K as float32
  void v_row(int64_t i, float* out) const;

  // For swapping (kv/cache_swap.h): a store's bytes depend on its size alone, never on how it
  // grew, so the size()-row prefixes of k_data() and v_data() restore it bit-exactly. This makes
  // the store hold `rows` rows of unspecified contents (an ordinary store allocated exactly, a
  // reserved one committed up to its limit) and returns where their K and V bytes go.
  struct RawRows {
    uint8_t* k;
    uint8_t* v;
  };
  RawRows resize_raw(int64_t rows);

 private:
  uint8_t* k_ptr() { return base_; }
  const uint8_t* k_ptr() const { return base_; }
  uint8_t* v_ptr() { return base_ + size_t(cap_) * k_row_bytes(); }
  const uint8_t* v_ptr() const { return base_ + size_t(cap_) * k_row_bytes(); }
  // Moves the rows into an array of room for `rows` rows.
  void regrow(int64_t rows);
  // A reserved store's commitment from `from` rows to `to` rows: commits or releases the pages
  // between, never one that the other region's rows still use.
  void commit_rows(int64_t from, int64_t to);
  void release_rows(int64_t from, int64_t to);
  void keep_in_place(std::span<const int64_t> indices);
  // Copies value i's stored elements (any layout) to dst, row-major.
  void raw_value(int64_t i, uint8_t* dst) const;
  // Transposes every full panel of keys (and of bf16 values) that rows [from, size()) complete,
  // written row-major, into the panel layout.
  void seal_panels(int64_t from);
  int64_t head_dim_ = 0;
  KvTypes types_;
  int64_t len_ = 0;
  // Room for cap_ rows of K, then cap_ rows of V, in one array: a store reaches the huge-page
  // threshold (store_memory.h) at half the keys two arrays would need, and a store's 4 KiB-page
  // tail is one, not two (decode attention reads ~10% slower per key from 4 KiB pages).
  StoreBytes kv_;
  ReservedRange vm_;         // instead of kv_ once reserve_virtual() ran
  uint8_t* base_ = nullptr;  // kv_.data() or vm_.data() (both keep their address when moved)
  int64_t cap_ = 0;          // room in rows (the limit for a reserved store)
};

// The stores of one sequence: [layer][kv head]. A model that serves a subset of heads (a shard)
// simply leaves the stores of the heads it does not serve empty.
class SequenceCache {
 public:
  SequenceCache(int n_layers, int n_kv_heads, int64_t head_dim, KvTypes types);
  HeadStore& head(int layer, int kv_head) { return stores_[size_t(layer) * n_kv_heads_ + kv_head]; }
  const HeadStore& head(int layer, int kv_head) const {
    return stores_[size_t(layer) * n_kv_heads_ + kv_head];
  }
  int n_layers() const { return n_layers_; }
  int n_kv_heads() const { return n_kv_heads_; }
  int64_t head_dim() const { return head_dim_; }
  KvTypes types() const { return types_; }
  // Tokens of the sequence consumed so far (the position of the next token), which is not any
  // head's length once the cache is compressed.
  int64_t n_past = 0;
  size_t bytes() const;
  size_t committed_bytes() const;  // the stores' HeadStore::committed_bytes()
  // HeadStore::reserve_virtual on every store.
  void reserve_virtual(int64_t max_rows);
  void clear();

 private:
  int n_layers_;
  int n_kv_heads_;
  int64_t head_dim_;
  KvTypes types_;
  std::vector<HeadStore> stores_;
};

}  // namespace fairkv::kv
