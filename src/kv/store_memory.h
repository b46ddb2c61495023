// Memory for head stores: large arrays on transparent huge pages.
//
// Decode attention streams every kept row of a head once per step. On 4 KiB pages that stream
// loses time to TLB misses and to hardware prefetchers that stop at each page boundary; on 2 MiB
// pages it does not (measured in bench/kv_bench: see the README). Arrays of at least
// kHugeThreshold bytes are therefore mapped at a 2 MiB boundary and advised MADV_HUGEPAGE (the
// kernel backs whole aligned 2 MiB extents; a partial tail stays on small pages, so the memory
// held is the array rounded up to 4 KiB, never to 2 MiB). Smaller arrays use malloc.
#pragma once

#include <cstddef>
#include <cstdint>
#include <new>
#include <utility>
#include <vector>

namespace fairkv::kv {

inline constexpr size_t kHugeThreshold = size_t(2) << 20;

// Raw allocation and release of n bytes as described above; allocate throws std::bad_alloc.
void* store_allocate(size_t n);
void store_deallocate(void* p, size_t n) noexcept;

// std::vector's allocator over store_allocate.
template <class T>
struct StoreAllocator {
  using value_type = T;
  StoreAllocator() = default;
  template <class U>
  StoreAllocator(const StoreAllocator<U>&) noexcept {}
  T* allocate(size_t n) { return static_cast<T*>(store_allocate(n * sizeof(T))); }
  // resize() default-initialises: appended rows are written right after, and zeroing them first
  // would touch every new page twice.
  template <class U>
  void construct(U* p) noexcept {
    ::new (static_cast<void*>(p)) U;
  }
  template <class U, class... Args>
  void construct(U* p, Args&&... args) {
    ::new (static_cast<void*>(p)) U(std::forward<Args>(args)...);
  }
  void deallocate(T* p, size_t n) noexcept { store_deallocate(p, n * sizeof(T)); }
  friend bool operator==(const StoreAllocator&, const StoreAllocator&) { return true; }
};

using StoreBytes = std::vector<uint8_t, StoreAllocator<uint8_t>>;

}  // namespace fairkv::kv
