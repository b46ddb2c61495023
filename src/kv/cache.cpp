#include "kv/cache.h"

#include <algorithm>
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

size_t round_up(size_t x, size_t m) {
  return (x + m - 1) / m * m;
}

// The pages that the first `rows` rows of a store reserved for max_rows rows touch: K's bytes
// [0, k_end), V's [v_begin, v_end) (empty for no rows). When max_rows rows of K do not end on a
// page, K's last page is V's first.
struct Pages {
  size_t k_end, v_begin, v_end;
};
Pages pages_of(int64_t rows, size_t row, int64_t max_rows) {
  const size_t pg = store_page_size(), v0 = size_t(max_rows) * row, n = size_t(rows) * row;
  const size_t v_begin = v0 / pg * pg;
  return {round_up(n, pg), v_begin, rows == 0 ? v_begin : round_up(v0 + n, pg)};
}

std::string str(int64_t x) {
  return std::to_string(x);
}

}  // namespace

HeadStore::HeadStore(const HeadStore& o)
    : head_dim_(o.head_dim_), type_(o.type_), len_(o.len_), kv_(o.kv_), cap_(o.cap_) {
  base_ = kv_.data();
  if (!o.vm_.data()) return;
  len_ = 0;
  reserve_virtual(o.cap_);
  const RawRows r = resize_raw(o.len_);
  const size_t n = size_t(o.len_) * row_bytes();
  if (n > 0) {
    std::memcpy(r.k, o.k_ptr(), n);
    std::memcpy(r.v, o.v_ptr(), n);
  }
}

HeadStore& HeadStore::operator=(const HeadStore& o) {
  if (this != &o) *this = HeadStore(o);
  return *this;
}

void HeadStore::regrow(int64_t rows) {
  const size_t row = row_bytes(), n = size_t(len_) * row;
  StoreBytes a(2 * size_t(rows) * row);
  if (n > 0) {
    std::memcpy(a.data(), k_ptr(), n);
    std::memcpy(a.data() + size_t(rows) * row, v_ptr(), n);
  }
  kv_.swap(a);
  base_ = kv_.data();
  cap_ = rows;
}

void HeadStore::commit_rows(int64_t from, int64_t to) {
  const Pages a = pages_of(from, row_bytes(), cap_), b = pages_of(to, row_bytes(), cap_);
  // Re-committing V's first page from K's side (or the other way) is harmless: mprotect keeps
  // the contents of pages already readable and writable.
  vm_.commit(a.k_end, b.k_end);
  vm_.commit(a.v_end, b.v_end);
}

void HeadStore::release_rows(int64_t from, int64_t to) {
  const Pages a = pages_of(from, row_bytes(), cap_), b = pages_of(to, row_bytes(), cap_);
  // K's pages stop short of V's first page while V still has rows there; V's pages past its
  // rows lie beyond K's (K's rows end before max_rows rows, V's first page at the latest).
  vm_.release(b.k_end, to > 0 ? std::min(a.k_end, b.v_begin) : a.k_end);
  vm_.release(b.v_end, a.v_end);
}

size_t HeadStore::committed_bytes() const {
  return vm_.data() ? committed_bytes_at(len_) : kv_.capacity();
}

size_t HeadStore::reserved_bytes(int64_t rows, int64_t max_rows, int64_t head_dim, KvType t) {
  const Pages p = pages_of(rows, size_t(head_dim) * kv_type_bytes(t), max_rows);
  const size_t shared = p.v_end > p.v_begin && p.k_end > p.v_begin ? p.k_end - p.v_begin : 0;
  return p.k_end + (p.v_end - p.v_begin) - shared;
}

size_t HeadStore::committed_bytes_at(int64_t rows) const {
  if (!vm_.data()) return std::max(kv_.capacity(), size_t(rows) * 2 * row_bytes());
  return reserved_bytes(rows, cap_, head_dim_, type_);
}

void HeadStore::reserve_virtual(int64_t max_rows) {
  if (head_dim_ <= 0 || max_rows <= 0)
    throw std::invalid_argument("HeadStore::reserve_virtual: " + str(max_rows) +
                                " rows of head_dim " + str(head_dim_) + ": both must be positive");
  if (max_rows < len_)
    throw std::length_error("HeadStore::reserve_virtual: the store holds " + str(len_) +
                            " rows, more than the limit of " + str(max_rows));
  const size_t row = row_bytes(), n = size_t(len_) * row;
  ReservedRange r(2 * size_t(max_rows) * row);
  const Pages p = pages_of(len_, row, max_rows);
  r.commit(0, p.k_end);
  r.commit(p.v_begin, p.v_end);
  if (n > 0) {
    std::memcpy(r.data(), k_ptr(), n);
    std::memcpy(r.data() + size_t(max_rows) * row, v_ptr(), n);
  }
  StoreBytes().swap(kv_);
  vm_ = std::move(r);
  base_ = vm_.data();
  cap_ = max_rows;
}

void HeadStore::append(const float* k, const float* v, int64_t n) {
  if (n < 0) throw std::invalid_argument("HeadStore::append: negative row count");
  if (n == 0) return;
  if (len_ + n > cap_) {
    if (vm_.data())
      throw std::length_error("HeadStore::append: " + str(len_ + n) +
                              " rows exceed the store's reserved limit of " + str(cap_));
    // Grow by a quarter (at least 16 rows), so that decode appends copy the store only O(log n)
    // times in all; the first append (a prefill) allocates exactly.
    regrow(cap_ == 0 ? n : std::max(len_ + n, cap_ + cap_ / 4 + 16));
  } else if (vm_.data()) {
    commit_rows(len_, len_ + n);
  }
  const size_t at = size_t(len_) * row_bytes();
  kernels::quantize_row(dtype_of(type_), k, k_ptr() + at, n * head_dim_);
  kernels::quantize_row(dtype_of(type_), v, v_ptr() + at, n * head_dim_);
  const int64_t sealed = panel_keys();
  len_ += n;
  seal_panels(sealed);
}

void HeadStore::reserve(int64_t rows) {
  if (rows < 0) throw std::invalid_argument("HeadStore::reserve: negative row count");
  if (rows > cap_ && vm_.data())
    throw std::length_error("HeadStore::reserve: " + str(rows) +
                            " rows exceed the store's reserved limit of " + str(cap_));
  if (rows > cap_) regrow(rows);
}

HeadStore::RawRows HeadStore::resize_raw(int64_t rows) {
  if (rows < 0) throw std::invalid_argument("HeadStore::resize_raw: negative row count");
  if (vm_.data()) {
    if (rows > cap_)
      throw std::length_error("HeadStore::resize_raw: " + str(rows) +
                              " rows exceed the store's reserved limit of " + str(cap_));
    if (rows < len_)
      release_rows(len_, rows);
    else
      commit_rows(len_, rows);
  } else {
    StoreBytes a(2 * size_t(rows) * row_bytes());
    kv_.swap(a);
    base_ = kv_.data();
    cap_ = rows;
  }
  len_ = rows;
  return {k_ptr(), v_ptr()};
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
  if (vm_.data()) {
    keep_in_place(indices);
    return;
  }
  // Gather the kept rows into an exactly-sized array: the memory held must equal the tokens kept.
  const size_t m = indices.size();
  StoreBytes a(2 * m * row);
  for (size_t j = 0; j < m; ++j) {
    raw_key(indices[j], a.data() + j * row);
    std::memcpy(a.data() + (m + j) * row, v_ptr() + size_t(indices[j]) * row, row);
  }
  kv_.swap(a);
  base_ = kv_.data();
  cap_ = int64_t(m);
  len_ = int64_t(m);
  seal_panels(0);
}

// Kept row j comes from row indices[j] >= j. Keys are gathered a panel's worth at a time and
// written back row-major over panel j / kKeyPanel: a key's bytes (sealed or not) lie within its
// own panel's extent, and the keys of that extent are only wanted at or before their own place,
// so nothing still to be read is overwritten. The panels are sealed again at the end.
void HeadStore::keep_in_place(std::span<const int64_t> indices) {
  const size_t row = row_bytes(), m = indices.size();
  std::vector<uint8_t> keys(size_t(kKeyPanel) * row);
  for (size_t j0 = 0; j0 < m; j0 += size_t(kKeyPanel)) {
    const size_t n = std::min(size_t(kKeyPanel), m - j0);
    for (size_t j = 0; j < n; ++j) raw_key(indices[j0 + j], keys.data() + j * row);
    std::memcpy(k_ptr() + j0 * row, keys.data(), n * row);
  }
  for (size_t j = 0; j < m; ++j)
    if (size_t(indices[j]) != j)
      std::memcpy(v_ptr() + j * row, v_ptr() + size_t(indices[j]) * row, row);
  const int64_t had = len_;
  len_ = int64_t(m);
  seal_panels(0);
  release_rows(had, len_);
}

void HeadStore::clear() {
  len_ = 0;
  StoreBytes().swap(kv_);
  vm_ = ReservedRange();
  base_ = nullptr;
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
    : n_layers_(n_layers), n_kv_heads_(n_kv_heads), head_dim_(head_dim), type_(type) {
  stores_.assign(size_t(n_layers) * size_t(n_kv_heads), HeadStore(head_dim, type));
}

size_t SequenceCache::bytes() const {
  size_t b = 0;
  for (const auto& s : stores_) b += s.bytes();
  return b;
}

size_t SequenceCache::committed_bytes() const {
  size_t b = 0;
  for (const auto& s : stores_) b += s.committed_bytes();
  return b;
}

void SequenceCache::reserve_virtual(int64_t max_rows) {
  for (auto& s : stores_) s.reserve_virtual(max_rows);
}

void SequenceCache::clear() {
  for (auto& s : stores_) s.clear();
  n_past = 0;
}

}  // namespace fairkv::kv
