// The bytes RanksBackend's rank 0 sends the other ranks: its commands, and what they need to set
// themselves up under MPI (the placement, the KV options).
//
// Every rank decodes the same bytes, rank 0 included, so every rank executes the same command
// with the same values (MPI ranks are separate processes: nothing may travel as a pointer).
// Numbers travel as their bytes: the ranks run one build on one kind of machine.
#pragma once

#include <cstdint>
#include <cstring>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <vector>

#include "kv/compress.h"
#include "placement/cost.h"
#include "placement/placement.h"

namespace fairkv::serve::wire {

class Writer {
 public:
  template <class T>
  void put(const T& v) {
    static_assert(std::is_trivially_copyable_v<T>);
    put_bytes(&v, sizeof(T));
  }
  void put_bytes(const void* p, size_t n) {
    const auto* b = static_cast<const uint8_t*>(p);
    bytes_.insert(bytes_.end(), b, b + n);
  }
  void put_string(const std::string& s) {
    put(uint64_t(s.size()));
    put_bytes(s.data(), s.size());
  }
  template <class T>
  void put_vector(const std::vector<T>& v) {
    static_assert(std::is_trivially_copyable_v<T>);
    put(uint64_t(v.size()));
    put_bytes(v.data(), v.size() * sizeof(T));
  }
  std::vector<uint8_t>& bytes() { return bytes_; }

 private:
  std::vector<uint8_t> bytes_;
};

// Reads what a Writer wrote, in the same order; throws std::runtime_error past the end (a
// message cut short: a bug, never a user's error).
class Reader {
 public:
  explicit Reader(const std::vector<uint8_t>& bytes) : bytes_(bytes) {}
  template <class T>
  T get() {
    static_assert(std::is_trivially_copyable_v<T>);
    T v;
    get_bytes(&v, sizeof(T));
    return v;
  }
  void get_bytes(void* p, size_t n) {
    if (n > bytes_.size() - at_) throw std::runtime_error("ranks wire: message cut short");
    std::memcpy(p, bytes_.data() + at_, n);
    at_ += n;
  }
  std::string get_string() {
    std::string s(size_t(get<uint64_t>()), '\0');
    get_bytes(s.data(), s.size());
    return s;
  }
  template <class T>
  std::vector<T> get_vector() {
    const uint64_t n = get<uint64_t>();
    if (n > (bytes_.size() - at_) / sizeof(T)) throw std::runtime_error("ranks wire: bad length");
    std::vector<T> v(static_cast<size_t>(n));
    get_bytes(v.data(), v.size() * sizeof(T));
    return v;
  }
  bool done() const { return at_ == bytes_.size(); }

 private:
  const std::vector<uint8_t>& bytes_;
  size_t at_ = 0;
};

// Every field, so that a decoded config equals the encoded one.
void put_config(Writer& w, const kv::CompressionConfig& c);
kv::CompressionConfig get_config(Reader& r);

void put_cost(Writer& w, const placement::CostModel& c);
placement::CostModel get_cost(Reader& r);

// Shares bit for bit (the ranks derive who serves what from offsets and shares) and the summary.
void put_placement(Writer& w, const placement::Placement& p);
placement::Placement get_placement(Reader& r);

}  // namespace fairkv::serve::wire
