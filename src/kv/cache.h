// The per-head KV cache: one ragged store per (sequence, layer, KV head), each with its own length.
//
// Per-head compression (Ada-KV, HeadKV, ...) keeps a different number of tokens in every head, so
// the cache is not a [layer][head][token] box: each head's store holds exactly the tokens it kept.
// Keys are stored after RoPE, so a compacted store needs no positions to be attended.
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include "kv/store_memory.h"

namespace fairkv::kv {

enum class KvType { F32, F16 };
const char* kv_type_name(KvType t);
size_t kv_type_bytes(KvType t);

// Keys are stored in panels of this many tokens (see HeadStore).
inline constexpr int64_t kKeyPanel = 16;

// One head's keys and values: len rows of head_dim elements each, K then V in one array.
//
// Values are row-major. Keys are held in panels of kKeyPanel tokens, each panel dimension-major
// (element i of the panel's key t at i * kKeyPanel + t), and the last size() % kKeyPanel keys
// row-major after the full panels: a query row's scores against a panel are then kKeyPanel-wide
// vectors built from one conversion and one FMA per element, with no horizontal sums, which is
// what lets a GQA group's decode attention keep up with the read. A panel is sealed (transposed
// in place) when its last key arrives, so the bytes stay exactly the keys kept and a decode
// append costs O(head_dim * kKeyPanel) at worst.
class HeadStore {
 public:
  HeadStore() = default;
  HeadStore(int64_t head_dim, KvType type) : head_dim_(head_dim), type_(type) {}
  int64_t size() const { return len_; }
  int64_t head_dim() const { return head_dim_; }
  KvType type() const { return type_; }
  // Appends n rows (float32 in, converted to the store's type). Amortised O(n).
  void append(const float* k, const float* v, int64_t n);
  // Room for `rows` rows in all, allocated exactly, so that appends up to that size copy nothing.
  void reserve(int64_t rows);
  // Keeps only the rows at the given strictly increasing indices, in order; frees the rest.
  void keep(std::span<const int64_t> indices);
  void clear();
  // Raw keys: panel p (keys [p, p + 1) * kKeyPanel) starts at byte p * kKeyPanel * row bytes,
  // and a key i >= panel_keys() at byte i * row bytes (row bytes: head_dim * element size).
  const void* k_data() const { return k_ptr(); }
  int64_t panel_keys() const { return len_ / kKeyPanel * kKeyPanel; }
  // Raw values: row i starts at v_data() + i * head_dim * kv_type_bytes(type()).
  const void* v_data() const { return v_ptr(); }
  // Bytes of the kept tokens (K and V), the figure FAIRKV.md's load counts.
  size_t bytes() const { return size_t(len_) * 2 * head_dim_ * kv_type_bytes(type_); }
  // Bytes allocated: equal to bytes() after construction, a prefill append or keep(); decode
  // appends grow the array by a quarter at a time (amortised O(1) per token, never a copy per
  // token), so that it stays within 1.25 x bytes() plus 16 rows.
  size_t capacity_bytes() const { return kv_.capacity(); }
  void k_row(int64_t i, float* out) const;  // row i of K as float32
  void v_row(int64_t i, float* out) const;

 private:
  size_t row_bytes() const { return size_t(head_dim_) * kv_type_bytes(type_); }
  uint8_t* k_ptr() { return kv_.data(); }
  const uint8_t* k_ptr() const { return kv_.data(); }
  uint8_t* v_ptr() { return kv_.data() + size_t(cap_) * row_bytes(); }
  const uint8_t* v_ptr() const { return kv_.data() + size_t(cap_) * row_bytes(); }
  // Moves the rows into an array of room for `rows` rows.
  void regrow(int64_t rows);
  // Copies key i's stored elements (either layout) to dst, row-major.
  void raw_key(int64_t i, uint8_t* dst) const;
  // Transposes every full panel of keys from `from` (a multiple of kKeyPanel) up, written
  // row-major, into the panel layout.
  void seal_panels(int64_t from);
  int64_t head_dim_ = 0;
  KvType type_ = KvType::F32;
  int64_t len_ = 0;
  // Room for cap_ rows of K, then cap_ rows of V, in one array: a store reaches the huge-page
  // threshold (store_memory.h) at half the keys two arrays would need, and a store's 4 KiB-page
  // tail is one, not two (decode attention reads ~10% slower per key from 4 KiB pages).
  StoreBytes kv_;
  int64_t cap_ = 0;
};

// The stores of one sequence: [layer][kv head]. A model that serves a subset of heads (a shard)
// simply leaves the stores of the heads it does not serve empty.
class SequenceCache {
 public:
  SequenceCache(int n_layers, int n_kv_heads, int64_t head_dim, KvType type);
  HeadStore& head(int layer, int kv_head) { return stores_[size_t(layer) * n_kv_heads_ + kv_head]; }
  const HeadStore& head(int layer, int kv_head) const {
    return stores_[size_t(layer) * n_kv_heads_ + kv_head];
  }
  int n_layers() const { return n_layers_; }
  int n_kv_heads() const { return n_kv_heads_; }
  // Tokens of the sequence consumed so far (the position of the next token), which is not any
  // head's length once the cache is compressed.
  int64_t n_past = 0;
  size_t bytes() const;
  void clear();

 private:
  int n_layers_;
  int n_kv_heads_;
  std::vector<HeadStore> stores_;
};

}  // namespace fairkv::kv
