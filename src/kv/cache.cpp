#include "kv/cache.h"

#include <cstring>
#include <stdexcept>
#include <string>

#include "kernels/types.h"

namespace fairkv::kv {

const char* kv_type_name(KvType t) {
  return t == KvType::F16 ? "f16" : "f32";
}
size_t kv_type_bytes(KvType t) {
  return t == KvType::F16 ? 2 : 4;
}

namespace {

kernels::DType dtype_of(KvType t) {
  return t == KvType::F16 ? kernels::DType::F16 : kernels::DType::F32;
}

// Room for `rows` more rows of `row` bytes; grows by a quarter (at least 16 rows) so that a decode
// append copies the store only O(log n) times in all, and a prefill append allocates exactly.
void make_room(StoreBytes& a, size_t row, size_t rows) {
  const size_t need = a.size() + rows * row;
  if (need <= a.capacity()) return;
  const size_t grown = a.empty() ? need : a.capacity() + a.capacity() / 4 + 16 * row;
  a.reserve(std::max(need, grown));
}

}  // namespace

void HeadStore::append(const float* k, const float* v, int64_t n) {
  if (n < 0) throw std::invalid_argument("HeadStore::append: negative row count");
  if (n == 0) return;
  const size_t row = size_t(head_dim_) * kv_type_bytes(type_);
  const size_t old = size_t(len_) * row;
  make_room(k_, row, size_t(n));
  make_room(v_, row, size_t(n));
  k_.resize(old + size_t(n) * row);
  v_.resize(old + size_t(n) * row);
  kernels::quantize_row(dtype_of(type_), k, k_.data() + old, n * head_dim_);
  kernels::quantize_row(dtype_of(type_), v, v_.data() + old, n * head_dim_);
  len_ += n;
}

void HeadStore::reserve(int64_t rows) {
  if (rows < 0) throw std::invalid_argument("HeadStore::reserve: negative row count");
  const size_t bytes = size_t(rows) * size_t(head_dim_) * kv_type_bytes(type_);
  k_.reserve(bytes);
  v_.reserve(bytes);
}

void HeadStore::keep(std::span<const int64_t> indices) {
  const size_t row = size_t(head_dim_) * kv_type_bytes(type_);
  int64_t prev = -1;
  for (size_t j = 0; j < indices.size(); ++j) {
    const int64_t i = indices[j];
    if (i <= prev || i >= len_)
      throw std::invalid_argument("HeadStore::keep: index " + std::to_string(i) + " at position " +
                                  std::to_string(j) + ": indices must be increasing and below " +
                                  std::to_string(len_));
    prev = i;
  }
  // Gather the kept rows into exactly-sized arrays: the memory held must equal the tokens kept.
  StoreBytes k(indices.size() * row), v(indices.size() * row);
  for (size_t j = 0; j < indices.size(); ++j) {
    std::memcpy(k.data() + j * row, k_.data() + size_t(indices[j]) * row, row);
    std::memcpy(v.data() + j * row, v_.data() + size_t(indices[j]) * row, row);
  }
  k_.swap(k);
  v_.swap(v);
  len_ = int64_t(indices.size());
}

void HeadStore::clear() {
  len_ = 0;
  StoreBytes().swap(k_);
  StoreBytes().swap(v_);
}

void HeadStore::k_row(int64_t i, float* out) const {
  const size_t row = size_t(head_dim_) * kv_type_bytes(type_);
  kernels::dequantize_row(dtype_of(type_), k_.data() + size_t(i) * row, out, head_dim_);
}

void HeadStore::v_row(int64_t i, float* out) const {
  const size_t row = size_t(head_dim_) * kv_type_bytes(type_);
  kernels::dequantize_row(dtype_of(type_), v_.data() + size_t(i) * row, out, head_dim_);
}

SequenceCache::SequenceCache(int n_layers, int n_kv_heads, int64_t head_dim, KvType type)
    : n_layers_(n_layers), n_kv_heads_(n_kv_heads) {
  stores_.assign(size_t(n_layers) * size_t(n_kv_heads), HeadStore(head_dim, type));
}

size_t SequenceCache::bytes() const {
  size_t b = 0;
  for (const auto& s : stores_) b += s.bytes();
  return b;
}

void SequenceCache::clear() {
  for (auto& s : stores_) s.clear();
  n_past = 0;
}

}  // namespace fairkv::kv
