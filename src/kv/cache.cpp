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

}  // namespace

void HeadStore::regrow(int64_t rows) {
  const size_t row = row_bytes(), n = size_t(len_) * row;
  StoreBytes a(2 * size_t(rows) * row);
  if (n > 0) {
    std::memcpy(a.data(), k_ptr(), n);
    std::memcpy(a.data() + size_t(rows) * row, v_ptr(), n);
  }
  kv_.swap(a);
  cap_ = rows;
}

void HeadStore::append(const float* k, const float* v, int64_t n) {
  if (n < 0) throw std::invalid_argument("HeadStore::append: negative row count");
  if (n == 0) return;
  // Grow by a quarter (at least 16 rows), so that decode appends copy the store only O(log n)
  // times in all; the first append (a prefill) allocates exactly.
  if (len_ + n > cap_) regrow(cap_ == 0 ? n : std::max(len_ + n, cap_ + cap_ / 4 + 16));
  const size_t at = size_t(len_) * row_bytes();
  kernels::quantize_row(dtype_of(type_), k, k_ptr() + at, n * head_dim_);
  kernels::quantize_row(dtype_of(type_), v, v_ptr() + at, n * head_dim_);
  const int64_t sealed = panel_keys();
  len_ += n;
  seal_panels(sealed);
}

void HeadStore::reserve(int64_t rows) {
  if (rows < 0) throw std::invalid_argument("HeadStore::reserve: negative row count");
  if (rows > cap_) regrow(rows);
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
  // Gather the kept rows into an exactly-sized array: the memory held must equal the tokens kept.
  const size_t m = indices.size();
  StoreBytes a(2 * m * row);
  for (size_t j = 0; j < m; ++j) {
    raw_key(indices[j], a.data() + j * row);
    std::memcpy(a.data() + (m + j) * row, v_ptr() + size_t(indices[j]) * row, row);
  }
  kv_.swap(a);
  cap_ = int64_t(m);
  len_ = int64_t(m);
  seal_panels(0);
}

void HeadStore::clear() {
  len_ = 0;
  StoreBytes().swap(kv_);
  cap_ = 0;
}

void HeadStore::k_row(int64_t i, float* out) const {
  if (i >= panel_keys()) {
    kernels::dequantize_row(dtype_of(type_), k_ptr() + size_t(i) * row_bytes(), out, head_dim_);
    return;
  }
  const uint8_t* panel = k_ptr() + size_t(i / kKeyPanel * kKeyPanel) * row_bytes();
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
    std::memcpy(dst, k_ptr() + size_t(i) * row, row);
    return;
  }
  const uint8_t* panel = k_ptr() + size_t(i / kKeyPanel * kKeyPanel) * row;
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
    uint8_t* panel = k_ptr() + size_t(p) * row;
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
  kernels::dequantize_row(dtype_of(type_), v_ptr() + size_t(i) * row_bytes(), out, head_dim_);
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
