#include "tokenizer/tables.h"

#include <algorithm>
#include <bit>
#include <functional>

namespace fairkv::tokenizer {

namespace {

uint64_t hash_of(std::string_view s) {
  return std::hash<std::string_view>{}(s);
}

uint32_t tag_of(uint64_t h) {
  return uint32_t(h >> 32);
}

// Slots for n strings at a load factor of at most one half.
size_t slots_for(size_t n) {
  return std::bit_ceil(std::max<size_t>(16, 2 * n));
}

// Slots for n pairs at a load factor of at most three quarters: fewer cache lines for the
// 280k merges of a large vocabulary, each probe a single 16-byte slot.
size_t pair_slots_for(size_t n) {
  return std::bit_ceil(std::max<size_t>(16, n + n / 3 + 1));
}

}  // namespace

void StringTable::reserve(size_t n_strings, size_t n_chars) {
  chars_.reserve(n_chars);
  offsets_.reserve(n_strings + 1);
  if (slots_for(n_strings) > slots_.size()) rehash(slots_for(n_strings));
}

void StringTable::rehash(size_t n_slots) {
  slots_.assign(n_slots, Slot{});
  const size_t mask = n_slots - 1;
  for (int32_t i = 0; i < size(); ++i) {
    const uint64_t h = hash_of((*this)[i]);
    size_t k = h & mask;
    while (slots_[k].id >= 0) k = (k + 1) & mask;
    slots_[k] = {i, tag_of(h)};
  }
}

std::pair<int32_t, bool> StringTable::insert(std::string_view s) {
  if (slots_for(size_t(size()) + 1) > slots_.size()) rehash(slots_for(size_t(size()) + 1));
  const size_t mask = slots_.size() - 1;
  const uint64_t h = hash_of(s);
  size_t k = h & mask;
  for (; slots_[k].id >= 0; k = (k + 1) & mask)
    if (slots_[k].tag == tag_of(h) && (*this)[slots_[k].id] == s) return {slots_[k].id, false};
  const int32_t id = size();
  chars_.append(s);
  offsets_.push_back(chars_.size());
  slots_[k] = {id, tag_of(h)};
  return {id, true};
}

int32_t StringTable::find(std::string_view s) const {
  if (slots_.empty()) return -1;
  const size_t mask = slots_.size() - 1;
  const uint64_t h = hash_of(s);
  for (size_t k = h & mask; slots_[k].id >= 0; k = (k + 1) & mask)
    if (slots_[k].tag == tag_of(h) && (*this)[slots_[k].id] == s) return slots_[k].id;
  return -1;
}

size_t PairTable::slot_of(uint64_t key) const {
  // Fibonacci hashing: the multiply spreads both halves of the key over the top bits.
  return size_t((key * 0x9E3779B97F4A7C15ull) >> shift_);
}

void PairTable::rehash(size_t n_slots) {
  std::vector<Slot> old = std::move(slots_);
  slots_.assign(n_slots, Slot{});
  shift_ = 64 - std::countr_zero(n_slots);
  const size_t mask = n_slots - 1;
  for (const Slot& o : old) {
    if (o.key == kEmpty) continue;
    size_t k = slot_of(o.key);
    while (slots_[k].key != kEmpty) k = (k + 1) & mask;
    slots_[k] = o;
  }
}

void PairTable::reserve(size_t n) {
  if (pair_slots_for(n) > slots_.size()) rehash(pair_slots_for(n));
}

bool PairTable::insert(int32_t a, int32_t b, Value v) {
  if (pair_slots_for(n_ + 1) > slots_.size()) rehash(pair_slots_for(n_ + 1));
  const uint64_t key = pack(a, b);
  const size_t mask = slots_.size() - 1;
  size_t k = slot_of(key);
  for (; slots_[k].key != kEmpty; k = (k + 1) & mask)
    if (slots_[k].key == key) return false;
  slots_[k] = {key, v};
  ++n_;
  return true;
}

const PairTable::Value* PairTable::find(int32_t a, int32_t b) const {
  if (slots_.empty()) return nullptr;
  const uint64_t key = pack(a, b);
  const size_t mask = slots_.size() - 1;
  for (size_t k = slot_of(key); slots_[k].key != kEmpty; k = (k + 1) & mask)
    if (slots_[k].key == key) return &slots_[k].value;
  return nullptr;
}

}  // namespace fairkv::tokenizer
