// Flat hash tables for the tokenizers. A vocabulary of 150k strings or 280k merges is loaded
// with a handful of allocations instead of one node per entry, and looked up without building
// a std::string.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace fairkv::tokenizer {

// Strings stored back to back, numbered in insertion order, with an open-addressing index.
class StringTable {
 public:
  void reserve(size_t n_strings, size_t n_chars);
  // Adds s unless it is present; returns its number and whether it was added.
  std::pair<int32_t, bool> insert(std::string_view s);
  int32_t find(std::string_view s) const;  // -1 when absent
  std::string_view operator[](int32_t i) const {
    const size_t b = offsets_[size_t(i)], e = offsets_[size_t(i) + 1];
    return {chars_.data() + b, e - b};
  }
  int32_t size() const { return int32_t(offsets_.size() - 1); }

 private:
  // A string's number and the high half of its hash, so that most mismatches are rejected
  // without reading the string.
  struct Slot {
    int32_t id = -1;  // -1 when empty
    uint32_t tag = 0;
  };
  void rehash(size_t n_slots);
  std::string chars_;
  std::vector<size_t> offsets_ = {0};
  std::vector<Slot> slots_;  // the size is a power of two
};

// Map from a pair of 31-bit keys to (rank, result), keeping the first value given for a key.
class PairTable {
 public:
  struct Value {
    int32_t rank;
    int32_t result;
  };
  void reserve(size_t n);
  bool insert(int32_t a, int32_t b, Value v);  // false when the pair is already present
  const Value* find(int32_t a, int32_t b) const;
  size_t size() const { return n_; }

 private:
  static uint64_t pack(int32_t a, int32_t b) { return (uint64_t(uint32_t(a)) << 32) | uint32_t(b); }
  size_t slot_of(uint64_t key) const;
  void rehash(size_t n_slots);
  static constexpr uint64_t kEmpty = ~uint64_t(0);
  struct Slot {
    uint64_t key = kEmpty;
    Value value{0, 0};
  };
  std::vector<Slot> slots_;  // key and value together: one cache miss per probe
  size_t n_ = 0;
  int shift_ = 64;
};

}  // namespace fairkv::tokenizer
