// Inputs the collectives' checks share (comm_test for threads, comm_mpi_check for MPI): every rank
// can compute every rank's input, so each rank checks a collective's result on its own.
#pragma once

#include <cmath>
#include <cstddef>
#include <cstdint>

namespace fairkv::comm::testing {

// splitmix64's finaliser: well-mixed bits from a counter.
inline uint64_t mix(uint64_t x) {
  x += 0x9e3779b97f4a7c15ull;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}

// Rank r's element i of test `salt`: signs and exponents vary, so a different summation order
// changes bits.
inline float value(int r, size_t i, uint64_t salt) {
  const uint64_t h = mix(mix(salt * 1000003 + uint64_t(r)) ^ i);
  const float unit = float(h >> 40) / float(1 << 24) - 0.5f;
  return std::ldexp(unit, int((h >> 8) % 17) - 8);
}

// Element i summed over ranks 0..R-1 in order: what the threads backend's all-reduce returns.
inline float serial_sum(int R, size_t i, uint64_t salt) {
  float s = value(0, i, salt);
  for (int r = 1; r < R; ++r) s += value(r, i, salt);
  return s;
}

// Byte i of rank r's all-gather input.
inline unsigned char gather_byte(int r, size_t i) {
  return static_cast<unsigned char>(mix(uint64_t(r) * 7919 + i));
}

}  // namespace fairkv::comm::testing
