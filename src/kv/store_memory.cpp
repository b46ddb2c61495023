#include "kv/store_memory.h"

#include <sys/mman.h>
#include <unistd.h>

#include <cstdlib>

namespace fairkv::kv {

namespace {

constexpr size_t kHugePage = size_t(2) << 20;

size_t page_size() {
  static const size_t p = size_t(sysconf(_SC_PAGESIZE));
  return p;
}

size_t round_up(size_t x, size_t m) {
  return (x + m - 1) / m * m;
}

}  // namespace

void* store_allocate(size_t n) {
  if (n < kHugeThreshold) {
    void* p = std::malloc(n == 0 ? 1 : n);
    if (!p) throw std::bad_alloc();
    return p;
  }
  // Over-map by one huge page less a small one, then unmap what lies before the first 2 MiB
  // boundary and after the array, so that the range is aligned and holds no spare pages.
  const size_t len = round_up(n, page_size());
  const size_t span = len + kHugePage - page_size();
  void* raw = mmap(nullptr, span, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (raw == MAP_FAILED) throw std::bad_alloc();
  const auto base = reinterpret_cast<uintptr_t>(raw);
  const uintptr_t start = round_up(base, kHugePage);
  if (start > base) munmap(raw, start - base);
  if (base + span > start + len)
    munmap(reinterpret_cast<void*>(start + len), base + span - start - len);
  void* p = reinterpret_cast<void*>(start);
#ifdef MADV_HUGEPAGE
  madvise(p, len, MADV_HUGEPAGE);  // advice only: without THP the array works on small pages
#endif
  return p;
}

void store_deallocate(void* p, size_t n) noexcept {
  if (!p) return;
  if (n < kHugeThreshold) {
    std::free(p);
    return;
  }
  munmap(p, round_up(n, page_size()));
}

}  // namespace fairkv::kv
