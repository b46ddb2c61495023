#include "kv/cache.h"

#include <cstring>
#include <stdexcept>

#include "kernels/types.h"

namespace fairkv::kv {

const char* kv_type_name(KvType t) {
  return t == KvType::F16 ? "f16" : "f32";
}
size_t kv_type_bytes(KvType t) {
  return t == KvType::F16 ? 2 : 4;
}

namespace {
void encode_rows(KvType t, const float* src, int64_t n, uint8_t* dst) {
  if (t == KvType::F32) {
    std::memcpy(dst, src, size_t(n) * 4);
    return;
  }
  auto* h = reinterpret_cast<uint16_t*>(dst);
  for (int64_t i = 0; i < n; ++i) h[i] = kernels::fp32_to_fp16(src[i]);
}
void decode_row(KvType t, const uint8_t* src, int64_t n, float* dst) {
  if (t == KvType::F32) {
    std::memcpy(dst, src, size_t(n) * 4);
    return;
  }
  const auto* h = reinterpret_cast<const uint16_t*>(src);
  for (int64_t i = 0; i < n; ++i) dst[i] = kernels::fp16_to_fp32(h[i]);
}
}  // namespace

void HeadStore::append(const float* k, const float* v, int64_t n) {
  const size_t row = size_t(head_dim_) * kv_type_bytes(type_);
  const size_t old = size_t(len_) * row;
  // std::vector grows geometrically: appends are amortised O(n), never a copy per token.
  k_.resize(old + size_t(n) * row);
  v_.resize(old + size_t(n) * row);
  encode_rows(type_, k, n * head_dim_, k_.data() + old);
  encode_rows(type_, v, n * head_dim_, v_.data() + old);
  len_ += n;
}

void HeadStore::keep(std::span<const int64_t> indices) {
  const size_t row = size_t(head_dim_) * kv_type_bytes(type_);
  int64_t prev = -1;
  for (size_t j = 0; j < indices.size(); ++j) {
    const int64_t i = indices[j];
    if (i <= prev || i >= len_)
      throw std::invalid_argument("HeadStore::keep: indices must be increasing and < size()");
    prev = i;
    // j <= i, so moving rows down in order never overwrites a row still to be read.
    if (size_t(i) != j) {
      std::memmove(k_.data() + j * row, k_.data() + size_t(i) * row, row);
      std::memmove(v_.data() + j * row, v_.data() + size_t(i) * row, row);
    }
  }
  len_ = int64_t(indices.size());
  k_.resize(size_t(len_) * row);
  v_.resize(size_t(len_) * row);
  // Release what was dropped: the memory held must equal the tokens kept.
  k_.shrink_to_fit();
  v_.shrink_to_fit();
}

void HeadStore::clear() {
  len_ = 0;
  k_.clear();
  v_.clear();
  k_.shrink_to_fit();
  v_.shrink_to_fit();
}

void HeadStore::k_row(int64_t i, float* out) const {
  const size_t row = size_t(head_dim_) * kv_type_bytes(type_);
  decode_row(type_, k_.data() + size_t(i) * row, head_dim_, out);
}

void HeadStore::v_row(int64_t i, float* out) const {
  const size_t row = size_t(head_dim_) * kv_type_bytes(type_);
  decode_row(type_, v_.data() + size_t(i) * row, head_dim_, out);
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
