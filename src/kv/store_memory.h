// Memory for head stores: large arrays on transparent huge pages.
//
// Decode attention streams every kept row of a head once per step. On 4 KiB pages that stream
// loses time to TLB misses and to hardware prefetchers that stop at each page boundary; on 2 MiB
// pages it does not (measured in bench/kv_bench: see the README). Arrays of at least
// kHugeThreshold bytes are therefore mapped at a 2 MiB boundary and advised MADV_HUGEPAGE (the
// kernel backs whole aligned 2 MiB extents; a partial tail stays on small pages, so the memory
// held is the array rounded up to 4 KiB, never to 2 MiB). Smaller arrays come from the heap, on a
// cache line (kStoreAlign).
//
// ReservedRange is the other way to hold a store (vAttention's): address space reserved up front
// and pages committed as rows arrive, so that the array grows in place and never moves.
#pragma once

#include <cstddef>
#include <cstdint>
#include <new>
#include <utility>
#include <vector>

namespace fairkv::kv {

inline constexpr size_t kHugeThreshold = size_t(2) << 20;
inline constexpr size_t kStoreAlign = 64;

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

size_t store_page_size();

// An address range reserved without memory (PROT_NONE, MAP_NORESERVE) whose pages are made
// readable and writable on request. A range of at least kHugeThreshold bytes starts on a 2 MiB
// boundary and is advised MADV_HUGEPAGE: committed ranges are mappings of their own (mprotect
// splits the reservation), so whole 2 MiB extents inside them get huge pages while a partial
// extent at a committed range's end stays on small pages (collapsed into a huge page once it
// fills), and the memory held is the committed pages, never rounded up to 2 MiB. Each committed
// range costs the process a map entry (vm.max_map_count, 65530 by default).
class ReservedRange {
 public:
  ReservedRange() = default;
  // Reserves n > 0 bytes, rounded up to pages; throws std::bad_alloc.
  explicit ReservedRange(size_t n);
  ReservedRange(ReservedRange&& o) noexcept
      : p_(std::exchange(o.p_, nullptr)), n_(std::exchange(o.n_, 0)) {}
  ReservedRange& operator=(ReservedRange&& o) noexcept;
  ~ReservedRange();
  uint8_t* data() const { return p_; }
  size_t size() const { return n_; }
  // Makes bytes [begin, end) (page multiples) readable and writable; pages already so keep their
  // contents. Throws std::system_error with mprotect's errno (ENOMEM: out of memory or of map
  // entries).
  void commit(size_t begin, size_t end);
  // Gives pages [begin, end) back to the system and makes them inaccessible again.
  void release(size_t begin, size_t end) noexcept;

 private:
  uint8_t* p_ = nullptr;
  size_t n_ = 0;
};

}  // namespace fairkv::kv
