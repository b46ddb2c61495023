#include "kv/cache.h"

#include <algorithm>
#include <cstring>
#include <stdexcept>
#include <string>
#include <vector>

#include "kernels/types.h"

namespace fairkv::kv {

namespace {

constexpr KvType kAllTypes[] = {KvType::F32, KvType::F16, KvType::BF16, KvType::Q8_0, KvType::Q4_0};

}  // namespace

kernels::DType kv_dtype(KvType t) {
  switch (t) {
    case KvType::F16:
      return kernels::DType::F16;
    case KvType::BF16:
      return kernels::DType::BF16;
    case KvType::Q8_0:
      return kernels::DType::Q8_0;
    case KvType::Q4_0:
      return kernels::DType::Q4_0;
    default:
      return kernels::DType::F32;
  }
}

namespace {

// Bytes of one element of a panel-layout type (f32, f16, bf16).
size_t element_bytes(KvType t) {
  return t == KvType::F32 ? 4 : 2;
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
Pages pages_of(int64_t rows, size_t k_row, size_t v_row, int64_t max_rows) {
  const size_t pg = store_page_size(), v0 = size_t(max_rows) * k_row;
  const size_t v_begin = v0 / pg * pg;
  return {round_up(size_t(rows) * k_row, pg), v_begin,
          rows == 0 ? v_begin : round_up(v0 + size_t(rows) * v_row, pg)};
}

std::string str(int64_t x) {
  return std::to_string(x);
}

}  // namespace

const char* kv_type_name(KvType t) {
  switch (t) {
    case KvType::F16:
      return "f16";
    case KvType::BF16:
      return "bf16";
    case KvType::Q8_0:
      return "q8_0";
    case KvType::Q4_0:
      return "q4_0";
    default:
      return "f32";
  }
}

KvType parse_kv_type(const std::string& s, const std::string& what) {
  for (KvType t : kAllTypes)
    if (s == kv_type_name(t)) return t;
  throw std::invalid_argument(what + ": expected one of f32, f16, bf16, q8_0, q4_0, got '" + s +
                              "'");
}

bool kv_type_quantized(KvType t) {
  return t == KvType::Q8_0 || t == KvType::Q4_0;
}

size_t kv_row_bytes(KvType t, int64_t head_dim) {
  if (kv_type_quantized(t)) {
    check_kv_type(t, head_dim, "KV cache type");
    return kernels::row_bytes(kv_dtype(t), head_dim);
  }
  return size_t(head_dim) * element_bytes(t);
}

void check_kv_type(KvType t, int64_t head_dim, const std::string& what) {
  if (kv_type_quantized(t) && head_dim % kernels::kQK != 0)
    throw std::invalid_argument(what + " " + kv_type_name(t) + ": rows are blocks of " +
                                str(kernels::kQK) + " elements, but the head size is " +
                                str(head_dim));
}

void check_kv_types(KvTypes t, int64_t head_dim) {
  check_kv_type(t.k, head_dim, "--cache-type-k");
  check_kv_type(t.v, head_dim, "--cache-type-v");
}

size_t KvTypes::token_bytes(int64_t head_dim) const {
  check_kv_types(*this, head_dim);
  return kv_row_bytes(k, head_dim) + kv_row_bytes(v, head_dim);
}

std::string kv_types_name(KvTypes t) {
  if (t.k == t.v) return kv_type_name(t.k);
  return std::string("K ") + kv_type_name(t.k) + " / V " + kv_type_name(t.v);
}

HeadStore::HeadStore(int64_t head_dim, KvTypes types) : head_dim_(head_dim), types_(types) {
  check_kv_types(types, head_dim);
}

HeadStore::HeadStore(const HeadStore& o)
    : head_dim_(o.head_dim_), types_(o.types_), len_(o.len_), kv_(o.kv_), cap_(o.cap_) {
  base_ = kv_.data();
  if (!o.vm_.data()) return;
  len_ = 0;
  reserve_virtual(o.cap_);
  const RawRows r = resize_raw(o.len_);
  if (o.len_ > 0) {
    std::memcpy(r.k, o.k_ptr(), size_t(o.len_) * k_row_bytes());
    std::memcpy(r.v, o.v_ptr(), size_t(o.len_) * v_row_bytes());
  }
}

HeadStore& HeadStore::operator=(const HeadStore& o) {
  if (this != &o) *this = HeadStore(o);
  return *this;
}

void HeadStore::regrow(int64_t rows) {
  const size_t kr = k_row_bytes(), vr = v_row_bytes();
  StoreBytes a(size_t(rows) * (kr + vr));
  if (len_ > 0) {
    std::memcpy(a.data(), k_ptr(), size_t(len_) * kr);
    std::memcpy(a.data() + size_t(rows) * kr, v_ptr(), size_t(len_) * vr);
  }
  kv_.swap(a);
  base_ = kv_.data();
  cap_ = rows;
}

void HeadStore::commit_rows(int64_t from, int64_t to) {
  const Pages a = pages_of(from, k_row_bytes(), v_row_bytes(), cap_),
              b = pages_of(to, k_row_bytes(), v_row_bytes(), cap_);
  // Re-committing V's first page from K's side (or the other way) is harmless: mprotect keeps
  // the contents of pages already readable and writable.
  vm_.commit(a.k_end, b.k_end);
  vm_.commit(a.v_end, b.v_end);
}

void HeadStore::release_rows(int64_t from, int64_t to) {
  const Pages a = pages_of(from, k_row_bytes(), v_row_bytes(), cap_),
              b = pages_of(to, k_row_bytes(), v_row_bytes(), cap_);
  // K's pages stop short of V's first page while V still has rows there; V's pages past its
  // rows lie beyond K's (K's rows end before max_rows rows, V's first page at the latest).
  vm_.release(b.k_end, to > 0 ? std::min(a.k_end, b.v_begin) : a.k_end);
  vm_.release(b.v_end, a.v_end);
}

size_t HeadStore::committed_bytes() const {
  return vm_.data() ? committed_bytes_at(len_) : kv_.capacity();
}

size_t HeadStore::reserved_bytes(int64_t rows, int64_t max_rows, int64_t head_dim, KvTypes t) {
  const Pages p =
      pages_of(rows, kv_row_bytes(t.k, head_dim), kv_row_bytes(t.v, head_dim), max_rows);
  const size_t shared = p.v_end > p.v_begin && p.k_end > p.v_begin ? p.k_end - p.v_begin : 0;
  return p.k_end + (p.v_end - p.v_begin) - shared;
}

size_t HeadStore::committed_bytes_at(int64_t rows) const {
  if (!vm_.data()) return std::max(kv_.capacity(), size_t(rows) * (k_row_bytes() + v_row_bytes()));
  return reserved_bytes(rows, cap_, head_dim_, types_);
}

void HeadStore::reserve_virtual(int64_t max_rows) {
  if (head_dim_ <= 0 || max_rows <= 0)
    throw std::invalid_argument("HeadStore::reserve_virtual: " + str(max_rows) +
                                " rows of head_dim " + str(head_dim_) + ": both must be positive");
  if (max_rows < len_)
    throw std::length_error("HeadStore::reserve_virtual: the store holds " + str(len_) +
                            " rows, more than the limit of " + str(max_rows));
  const size_t kr = k_row_bytes(), vr = v_row_bytes();
  ReservedRange r(size_t(max_rows) * (kr + vr));
  const Pages p = pages_of(len_, kr, vr, max_rows);
  r.commit(0, p.k_end);
  r.commit(p.v_begin, p.v_end);
  if (len_ > 0) {
    std::memcpy(r.data(), k_ptr(), size_t(len_) * kr);
    std::memcpy(r.data() + size_t(max_rows) * kr, v_ptr(), size_t(len_) * vr);
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
  kernels::quantize_row(kv_dtype(types_.k), k, k_ptr() + size_t(len_) * k_row_bytes(),
                        n * head_dim_);
  kernels::quantize_row(kv_dtype(types_.v), v, v_ptr() + size_t(len_) * v_row_bytes(),
                        n * head_dim_);
  const int64_t had = len_;
  len_ += n;
  seal_panels(had);
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
    StoreBytes a(size_t(rows) * (k_row_bytes() + v_row_bytes()));
    kv_.swap(a);
    base_ = kv_.data();
    cap_ = rows;
  }
  len_ = rows;
  return {k_ptr(), v_ptr()};
}

void HeadStore::keep(std::span<const int64_t> indices) {
  const size_t kr = k_row_bytes(), vr = v_row_bytes();
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
  StoreBytes a(m * (kr + vr));
  for (size_t j = 0; j < m; ++j) {
    k_raw_row(indices[j], a.data() + j * kr);
    raw_value(indices[j], a.data() + m * kr + j * vr);
  }
  kv_.swap(a);
  base_ = kv_.data();
  cap_ = int64_t(m);
  len_ = int64_t(m);
  seal_panels(0);
}

// Kept row j comes from row indices[j] >= j. Keys and values are gathered kValuePanel rows at a
// time (a whole number of panels of either side) and written back row-major over those rows: a
// row's bytes (sealed or not) lie within its own panel's extent, and the rows of that extent are
// only wanted at or before their own place, so nothing still to be read is overwritten. The
// panels are sealed again at the end.
void HeadStore::keep_in_place(std::span<const int64_t> indices) {
  static_assert(kValuePanel % kKeyPanel == 0);
  const size_t kr = k_row_bytes(), vr = v_row_bytes(), m = indices.size();
  std::vector<uint8_t> keys(size_t(kValuePanel) * kr), values(size_t(kValuePanel) * vr);
  for (size_t j0 = 0; j0 < m; j0 += size_t(kValuePanel)) {
    const size_t n = std::min(size_t(kValuePanel), m - j0);
    for (size_t j = 0; j < n; ++j) {
      k_raw_row(indices[j0 + j], keys.data() + j * kr);
      raw_value(indices[j0 + j], values.data() + j * vr);
    }
    std::memcpy(k_ptr() + j0 * kr, keys.data(), n * kr);
    std::memcpy(v_ptr() + j0 * vr, values.data(), n * vr);
  }
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

namespace {

// How a store keeps one side's rows: row-major, or in panels of kKeyPanel rows as cache.h
// describes (f32 / f16 keys dimension-major, bf16 keys in dimension pairs, bf16 values in key
// pairs, q8_0 / q4_0 keys in the blocks of kQ8PanelBlockBytes / kQ4PanelBlockBytes). Every read
// and write of a store's elements goes through panel_index, or the quantized panels' moves.
enum class Layout { Rows, Columns, KeyPairs, ValuePairs, Q8Blocks, Q4Blocks };

Layout key_layout(KvType t) {
  return t == KvType::Q8_0   ? Layout::Q8Blocks
         : t == KvType::Q4_0 ? Layout::Q4Blocks
         : t == KvType::BF16 ? Layout::KeyPairs
                             : Layout::Columns;
}
Layout value_layout(KvType t) {
  return t == KvType::BF16 ? Layout::ValuePairs : Layout::Rows;
}

// Rows per panel of layout l (not Rows).
int64_t panel_rows(Layout l) {
  return l == Layout::ValuePairs ? kValuePanel : kKeyPanel;
}

// Element e of row t of a panel of layout l (not Rows), in elements from the panel's start.
int64_t panel_index(Layout l, int64_t t, int64_t e, int64_t d) {
  switch (l) {
    case Layout::KeyPairs:
      return bf16_key_index(t, e, d);
    case Layout::ValuePairs:
      return bf16_value_index(t, e, d);
    default:
      return e * kKeyPanel + t;
  }
}

// Element-wise moves between a row's elements and its place in a panel, for the element type E
// (the store's bits, copied as they are).
template <class E>
void row_to_panel(Layout l, const uint8_t* src, int64_t d, uint8_t* panel, int64_t t) {
  const auto* s = reinterpret_cast<const E*>(src);
  auto* p = reinterpret_cast<E*>(panel);
  for (int64_t e = 0; e < d; ++e) p[panel_index(l, t, e, d)] = s[e];
}
template <class E>
void panel_to_row(Layout l, const uint8_t* panel, int64_t t, int64_t d, uint8_t* dst) {
  const auto* p = reinterpret_cast<const E*>(panel);
  auto* s = reinterpret_cast<E*>(dst);
  for (int64_t e = 0; e < d; ++e) s[e] = p[panel_index(l, t, e, d)];
}

// The same for q8_0 (kQ8PanelBlockBytes): a row of nb ggml blocks and key t's place in a panel.
void q8_row_to_panel(const uint8_t* src, int64_t nb, uint8_t* panel, int64_t t) {
  for (int64_t b = 0; b < nb; ++b, src += sizeof(kernels::BlockQ8_0), panel += kQ8PanelBlockBytes) {
    for (int i = 0; i < kernels::kQK; ++i)
      panel[size_t(i / 4) * kQ8PanelRow + size_t(4 * t + i % 4)] = src[2 + i] ^ 0x80;
    std::memcpy(panel + 8 * kQ8PanelRow + 2 * t, src, 2);
  }
}
void q8_panel_to_row(const uint8_t* panel, int64_t t, int64_t nb, uint8_t* dst) {
  for (int64_t b = 0; b < nb; ++b, dst += sizeof(kernels::BlockQ8_0), panel += kQ8PanelBlockBytes) {
    std::memcpy(dst, panel + 8 * kQ8PanelRow + 2 * t, 2);
    for (int i = 0; i < kernels::kQK; ++i)
      dst[2 + i] = panel[size_t(i / 4) * kQ8PanelRow + size_t(4 * t + i % 4)] ^ 0x80;
  }
}

// And for q4_0 (kQ4PanelBlockBytes): element e of a ggml block is the low nibble of byte e
// (e < 16) or the high nibble of byte e - 16; in the panel, row e / 8, the key's byte e % 4,
// low nibble for e % 8 < 4.
int q4_nibble(const uint8_t* qs, int e) {
  return e < 16 ? qs[e] & 15 : qs[e - 16] >> 4;
}
void q4_row_to_panel(const uint8_t* src, int64_t nb, uint8_t* panel, int64_t t) {
  for (int64_t b = 0; b < nb; ++b, src += sizeof(kernels::BlockQ4_0), panel += kQ4PanelBlockBytes) {
    for (int g = 0; g < 4; ++g)
      for (int i = 0; i < 4; ++i)
        panel[size_t(g) * kQ8PanelRow + size_t(4 * t + i)] =
            uint8_t(q4_nibble(src + 2, 8 * g + i) | q4_nibble(src + 2, 8 * g + 4 + i) << 4);
    std::memcpy(panel + 4 * kQ8PanelRow + 2 * t, src, 2);
  }
}
void q4_panel_to_row(const uint8_t* panel, int64_t t, int64_t nb, uint8_t* dst) {
  for (int64_t b = 0; b < nb; ++b, dst += sizeof(kernels::BlockQ4_0), panel += kQ4PanelBlockBytes) {
    std::memcpy(dst, panel + 4 * kQ8PanelRow + 2 * t, 2);
    auto nib = [&](int e) {
      const uint8_t x = panel[size_t(e / 8) * kQ8PanelRow + size_t(4 * t + e % 4)];
      return e % 8 < 4 ? x & 15 : x >> 4;
    };
    for (int j = 0; j < 16; ++j) dst[2 + j] = uint8_t(nib(j) | nib(j + 16) << 4);
  }
}

// Row i of a side (rows of `row` bytes at base, the first `panels` of them in panels of layout
// l) copied row-major to dst.
void raw_row(Layout l, size_t eb, const uint8_t* base, size_t row, int64_t panels, int64_t i,
             int64_t d, uint8_t* dst) {
  if (i >= panels) {
    std::memcpy(dst, base + size_t(i) * row, row);
    return;
  }
  const int64_t pr = panel_rows(l);
  const uint8_t* panel = base + size_t(i / pr * pr) * row;
  if (l == Layout::Q8Blocks)
    q8_panel_to_row(panel, i % pr, d / kernels::kQK, dst);
  else if (l == Layout::Q4Blocks)
    q4_panel_to_row(panel, i % pr, d / kernels::kQK, dst);
  else if (eb == 2)
    panel_to_row<uint16_t>(l, panel, i % pr, d, dst);
  else
    panel_to_row<uint32_t>(l, panel, i % pr, d, dst);
}

// Row i of a side as float32.
void float_row(Layout l, KvType t, const uint8_t* base, size_t row, int64_t panels, int64_t i,
               int64_t d, float* out) {
  if (i >= panels) {
    kernels::dequantize_row(kv_dtype(t), base + size_t(i) * row, out, d);
    return;
  }
  if (l == Layout::Q8Blocks || l == Layout::Q4Blocks) {  // ggml's blocks back, then as a row
    thread_local std::vector<uint8_t> blocks;
    blocks.resize(row);
    raw_row(l, 1, base, row, panels, i, d, blocks.data());
    kernels::dequantize_row(kv_dtype(t), blocks.data(), out, d);
    return;
  }
  const int64_t pr = panel_rows(l);
  const uint8_t* panel = base + size_t(i / pr * pr) * row;
  const int64_t r = i % pr;
  const auto* h = reinterpret_cast<const uint16_t*>(panel);
  for (int64_t e = 0; e < d; ++e) {
    const int64_t at = panel_index(l, r, e, d);
    out[e] = t == KvType::F16    ? kernels::fp16_to_fp32(h[at])
             : t == KvType::BF16 ? kernels::bf16_to_fp32(h[at])
                                 : reinterpret_cast<const float*>(panel)[at];
  }
}

// Seals the full panels of a side that rows [from, len) complete (the panels before from's are
// sealed, the rows after them row-major).
void seal(Layout l, size_t eb, uint8_t* base, size_t row, int64_t from, int64_t len, int64_t d) {
  if (l == Layout::Rows) return;
  const int64_t pr = panel_rows(l);
  from = from / pr * pr;
  if (from + pr > len) return;  // most decode appends
  std::vector<uint8_t> rows(size_t(pr) * row);
  for (int64_t p = from; p + pr <= len; p += pr) {
    uint8_t* panel = base + size_t(p) * row;
    std::memcpy(rows.data(), panel, rows.size());
    for (int64_t t = 0; t < pr; ++t) {
      if (l == Layout::Q8Blocks)
        q8_row_to_panel(rows.data() + size_t(t) * row, d / kernels::kQK, panel, t);
      else if (l == Layout::Q4Blocks)
        q4_row_to_panel(rows.data() + size_t(t) * row, d / kernels::kQK, panel, t);
      else if (eb == 2)
        row_to_panel<uint16_t>(l, rows.data() + size_t(t) * row, d, panel, t);
      else
        row_to_panel<uint32_t>(l, rows.data() + size_t(t) * row, d, panel, t);
    }
  }
}

}  // namespace

void HeadStore::k_row(int64_t i, float* out) const {
  float_row(key_layout(types_.k), types_.k, k_ptr(), k_row_bytes(), panel_keys(), i, head_dim_,
            out);
}

void HeadStore::v_row(int64_t i, float* out) const {
  float_row(value_layout(types_.v), types_.v, v_ptr(), v_row_bytes(), panel_values(), i, head_dim_,
            out);
}

void HeadStore::k_raw_row(int64_t i, uint8_t* dst) const {
  raw_row(key_layout(types_.k), element_bytes(types_.k), k_ptr(), k_row_bytes(), panel_keys(), i,
          head_dim_, dst);
}

void HeadStore::raw_value(int64_t i, uint8_t* dst) const {
  raw_row(value_layout(types_.v), element_bytes(types_.v), v_ptr(), v_row_bytes(), panel_values(),
          i, head_dim_, dst);
}

void HeadStore::seal_panels(int64_t from) {
  seal(key_layout(types_.k), element_bytes(types_.k), k_ptr(), k_row_bytes(), from, len_,
       head_dim_);
  seal(value_layout(types_.v), element_bytes(types_.v), v_ptr(), v_row_bytes(), from, len_,
       head_dim_);
}

SequenceCache::SequenceCache(int n_layers, int n_kv_heads, int64_t head_dim, KvTypes types)
    : n_layers_(n_layers), n_kv_heads_(n_kv_heads), head_dim_(head_dim), types_(types) {
  stores_.assign(size_t(n_layers) * size_t(n_kv_heads), HeadStore(head_dim, types));
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
