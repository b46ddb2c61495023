#include "kv/store_memory.h"

#include <sys/mman.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <system_error>

namespace fairkv::kv {

namespace {

constexpr size_t kHugePage = size_t(2) << 20;
// Linux's MADV_COLLAPSE, which glibc before 2.37 does not name; older kernels refuse it (EINVAL).
#ifdef MADV_COLLAPSE
constexpr int kMadvCollapse = MADV_COLLAPSE;
#else
constexpr int kMadvCollapse = 25;
#endif

size_t page_size() {
  static const size_t p = size_t(sysconf(_SC_PAGESIZE));
  return p;
}

size_t round_up(size_t x, size_t m) {
  return (x + m - 1) / m * m;
}

// Maps `len` bytes (a page multiple) with `prot` and `flags`, starting on a 2 MiB boundary when
// len >= kHugeThreshold (advised MADV_HUGEPAGE); nullptr on failure. Over-maps by one huge page
// less a small one, then unmaps what lies before the first 2 MiB boundary and after the array,
// so that the range is aligned and holds no spare pages.
void* map_aligned(size_t len, int prot, int flags) {
  if (len < kHugeThreshold) {
    void* p = mmap(nullptr, len, prot, flags, -1, 0);
    return p == MAP_FAILED ? nullptr : p;
  }
  const size_t span = len + kHugePage - page_size();
  void* raw = mmap(nullptr, span, prot, flags, -1, 0);
  if (raw == MAP_FAILED) return nullptr;
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

}  // namespace

size_t store_page_size() {
  return page_size();
}

void* store_allocate(size_t n) {
  if (n < kHugeThreshold) {
    // On cache lines: malloc's 16-byte alignment (an mmap'd chunk's header) split every 64-byte
    // row load of the kernels in two (AMX tile loads of panels took twice as long in a scratch
    // program).
    void* p = std::aligned_alloc(kStoreAlign, round_up(n == 0 ? 1 : n, kStoreAlign));
    if (!p) throw std::bad_alloc();
    return p;
  }
  void* p =
      map_aligned(round_up(n, page_size()), PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS);
  if (!p) throw std::bad_alloc();
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

ReservedRange::ReservedRange(size_t n) {
  if (n == 0) throw std::bad_alloc();
  const size_t len = round_up(n, page_size());
  void* p = map_aligned(len, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE);
  if (!p) throw std::bad_alloc();
  p_ = static_cast<uint8_t*>(p);
  n_ = len;
}

ReservedRange& ReservedRange::operator=(ReservedRange&& o) noexcept {
  if (this != &o) {
    if (p_) munmap(p_, n_);
    p_ = std::exchange(o.p_, nullptr);
    n_ = std::exchange(o.n_, 0);
  }
  return *this;
}

ReservedRange::~ReservedRange() {
  if (p_) munmap(p_, n_);
}

void ReservedRange::commit(size_t begin, size_t end) {
  if (end <= begin) return;
  if (mprotect(p_ + begin, end - begin, PROT_READ | PROT_WRITE) != 0)
    throw std::system_error(errno, std::generic_category(), "ReservedRange::commit: mprotect");
  // A fault gets a huge page only where the whole 2 MiB extent is committed, so an extent
  // committed a few pages at a time (decode appends) is on small pages when it fills up: collapse
  // it then, a copy of 2 MiB once per 2 MiB of rows. Advice only (Linux 6.1+).
  const size_t extent = begin / kHugePage * kHugePage;
  if (n_ >= kHugeThreshold && extent < begin && end >= extent + kHugePage)
    madvise(p_ + extent, kHugePage, kMadvCollapse);
}

void ReservedRange::release(size_t begin, size_t end) noexcept {
  if (end <= begin) return;
  // DONTNEED frees the pages now (a later commit finds zeros); PROT_NONE makes a stray access
  // past the rows fault instead of silently committing memory again.
  madvise(p_ + begin, end - begin, MADV_DONTNEED);
  mprotect(p_ + begin, end - begin, PROT_NONE);
}

}  // namespace fairkv::kv
