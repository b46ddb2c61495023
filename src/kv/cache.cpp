#include "kv/cache.h"

#include <cstring>
#include <stdexcept>
#include <string>
#include <vector>

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
  const size_t row = row_bytes();
  const size_t old = size_t(len_) * row;
  make_room(k_, row, size_t(n));
  make_room(v_, row, size_t(n));
  k_.resize(old + size_t(n) * row);
  v_.resize(old + size_t(n) * row);
  kernels::quantize_row(dtype_of(type_), k, k_.data() + old, n * head_dim_);
  kernels::quantize_row(dtype_of(type_), v, v_.data() + old, n * head_dim_);
  const int64_t sealed = panel_keys();
  len_ += n;
  seal_panels(sealed);
}

void HeadStore::reserve(int64_t rows) {
  if (rows < 0) throw std::invalid_argument("HeadStore::reserve: negative row count");
  const size_t bytes = size_t(rows) * size_t(head_dim_) * kv_type_bytes(type_);
  k_.reserve(bytes);
  v_.reserve(bytes);
}

void HeadStore::keep(std::span<const int64_t> indices) {
  const size_t row = row_bytes();
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
    raw_key(indices[j], k.data() + j * row);
    std::memcpy(v.data() + j * row, v_.data() + size_t(indices[j]) * row, row);
  }
  k_.swap(k);
  v_.swap(v);
  len_ = int64_t(indices.size());
  seal_panels(0);
}

void HeadStore::clear() {
  len_ = 0;
  StoreBytes().swap(k_);
  StoreBytes().swap(v_);
}

void HeadStore::k_row(int64_t i, float* out) const {
  if (i >= panel_keys()) {
    kernels::dequantize_row(dtype_of(type_), k_.data() + size_t(i) * row_bytes(), out, head_dim_);
    return;
  }
  const uint8_t* panel = k_.data() + size_t(i / kKeyPanel * kKeyPanel) * row_bytes();
  const int64_t t = i % kKeyPanel;
  if (type_ == KvType::F16) {
    const auto* p = reinterpret_cast<const uint16_t*>(panel);
    for (int64_t e = 0; e < head_dim_; ++e) out[e] = kernels::fp16_to_fp32(p[e * kKeyPanel + t]);
  } else {
    const auto* p = reinterpret_cast<const float*>(panel);
    for (int64_t e = 0; e < head_dim_; ++e) out[e] = p[e * kKeyPanel + t];
  }
}

namespace {

// Element-wise moves between a key's row-major elements and its column of a panel, for the
// element type E (the store's bits, copied as they are).
template <class E>
void row_to_panel(const uint8_t* src, int64_t d, uint8_t* panel, int64_t t) {
  const auto* s = reinterpret_cast<const E*>(src);
  auto* p = reinterpret_cast<E*>(panel);
  for (int64_t e = 0; e < d; ++e) p[e * kKeyPanel + t] = s[e];
}
template <class E>
void panel_to_row(const uint8_t* panel, int64_t t, int64_t d, uint8_t* dst) {
  const auto* p = reinterpret_cast<const E*>(panel);
  auto* s = reinterpret_cast<E*>(dst);
  for (int64_t e = 0; e < d; ++e) s[e] = p[e * kKeyPanel + t];
}

}  // namespace

void HeadStore::raw_key(int64_t i, uint8_t* dst) const {
  const size_t row = row_bytes();
  if (i >= panel_keys()) {
    std::memcpy(dst, k_.data() + size_t(i) * row, row);
    return;
  }
  const uint8_t* panel = k_.data() + size_t(i / kKeyPanel * kKeyPanel) * row;
  if (type_ == KvType::F16)
    panel_to_row<uint16_t>(panel, i % kKeyPanel, head_dim_, dst);
  else
    panel_to_row<uint32_t>(panel, i % kKeyPanel, head_dim_, dst);
}

void HeadStore::seal_panels(int64_t from) {
  if (from + kKeyPanel > len_) return;  // most decode appends
  const size_t row = row_bytes();
  std::vector<uint8_t> rows(size_t(kKeyPanel) * row);
  for (int64_t p = from; p + kKeyPanel <= len_; p += kKeyPanel) {
    uint8_t* panel = k_.data() + size_t(p) * row;
    std::memcpy(rows.data(), panel, rows.size());
    for (int64_t t = 0; t < kKeyPanel; ++t) {
      if (type_ == KvType::F16)
        row_to_panel<uint16_t>(rows.data() + size_t(t) * row, head_dim_, panel, t);
      else
        row_to_panel<uint32_t>(rows.data() + size_t(t) * row, head_dim_, panel, t);
    }
  }
}

void HeadStore::v_row(int64_t i, float* out) const {
  kernels::dequantize_row(dtype_of(type_), v_.data() + size_t(i) * row_bytes(), out, head_dim_);
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
