// A sequence's cache copied out of a rank's KV memory into plain host memory, and back: what
// RanksBackend's swap_out and swap_in move. The copy holds each store's kept rows in the store's
// own element type, and restoring gives the same rows bit for bit (each store then holds exactly
// its rows, as after a prefill).
#pragma once

#include <cstdint>
#include <vector>

#include "kv/cache.h"

namespace fairkv::serve {

struct HostCopy {
  struct Store {
    int layer = 0, head = 0;
    int64_t rows = 0;
    std::vector<uint8_t> k, v;  // rows x head_dim elements each, row-major
  };
  std::vector<Store> stores;  // the non-empty ones
  int64_t n_past = 0;
  size_t bytes() const;
};

HostCopy copy_to_host(const kv::SequenceCache& cache);

// Fills `cache`, which must be empty and of the same shape and element type.
void restore_from_host(const HostCopy& copy, kv::SequenceCache& cache);

}  // namespace fairkv::serve
