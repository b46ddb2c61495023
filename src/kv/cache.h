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

// One head's keys and values: len rows of head_dim elements each, K and V in separate arrays.
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
  // Raw rows: row i of K starts at k_data() + i * head_dim * kv_type_bytes(type()).
  const void* k_data() const { return k_.data(); }
  const void* v_data() const { return v_.data(); }
  // Bytes of the kept tokens (K and V), the figure FAIRKV.md's load counts.
  size_t bytes() const { return size_t(len_) * 2 * head_dim_ * kv_type_bytes(type_); }
  // Bytes allocated: equal to bytes() after construction, a prefill append or keep(); decode
  // appends grow the arrays by a quarter at a time (amortised O(1) per token, never a copy per
  // token), so that it stays within 1.25 x bytes() plus 16 rows.
  size_t capacity_bytes() const { return k_.capacity() + v_.capacity(); }
  void k_row(int64_t i, float* out) const;  // row i of K as float32
  void v_row(int64_t i, float* out) const;

 private:
  int64_t head_dim_ = 0;
  KvType type_ = KvType::F32;
  int64_t len_ = 0;
  StoreBytes k_, v_;  // large ones on huge pages (store_memory.h)
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
