#include "kv/cache_swap.h"

#include <fcntl.h>
#include <limits.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstring>
#include <stdexcept>
#include <string>
#include <system_error>
#include <utility>
#include <vector>

namespace fairkv::kv {

namespace fs = std::filesystem;

namespace {

// The header: magic, n_layers, n_kv_heads, head_dim, types (K's KvType * 8 + V's), n_past,
// stores; then per store its
// rows and its reserved limit (0: ordinary memory); then per store its K bytes and its V bytes.
// A spill file lives as long as its process needs it, so the header is in native byte order.
constexpr int64_t kMagic = 0x3150415753564b46;  // "FKVSWAP1" in little-endian bytes
constexpr size_t kHead = 7;

std::system_error os_error(int err, const std::string& what, const fs::path& path) {
  return std::system_error(err, std::generic_category(),
                           "cache swap: " + what + " " + path.string());
}

constexpr int64_t kTypes = int64_t(KvType::Q4_0) + 1;
int64_t encode(KvTypes t) {
  return int64_t(t.k) * 8 + int64_t(t.v);
}
KvTypes decode(int64_t x) {
  return {KvType(x / 8), KvType(x % 8)};
}

std::vector<int64_t> describe(const SequenceCache& c) {
  const int n = c.n_layers() * c.n_kv_heads();
  std::vector<int64_t> meta = {
      kMagic, c.n_layers(), c.n_kv_heads(), c.head_dim(), encode(c.types()), c.n_past, n};
  for (int i = 0; i < n; ++i) {
    const HeadStore& s = c.head(i / c.n_kv_heads(), i % c.n_kv_heads());
    meta.push_back(s.size());
    meta.push_back(s.reserved_rows());
  }
  return meta;
}

// Every store's K bytes then V bytes, in the order of the header; empty stores give none.
std::vector<iovec> pieces_of(const SequenceCache& c) {
  std::vector<iovec> p;
  for (int l = 0; l < c.n_layers(); ++l)
    for (int h = 0; h < c.n_kv_heads(); ++h) {
      const HeadStore& s = c.head(l, h);
      if (s.size() == 0) continue;
      p.push_back({const_cast<void*>(s.k_data()), size_t(s.size()) * s.k_row_bytes()});
      p.push_back({const_cast<void*>(s.v_data()), size_t(s.size()) * s.v_row_bytes()});
    }
  return p;
}

// Checks a header (kHead values) and returns the size of its store table in values.
size_t check_head(const int64_t* h, const std::string& where) {
  const bool ok = h[0] == kMagic && h[1] >= 0 && h[1] <= INT_MAX && h[2] >= 0 && h[2] <= INT_MAX &&
                  h[3] > 0 && h[3] <= (int64_t(1) << 20) && h[4] >= 0 && h[4] / 8 < kTypes &&
                  h[4] % 8 < kTypes && h[5] >= 0 && h[6] == h[1] * h[2];
  const KvTypes t = decode(h[4]);
  const bool rows_ok = ok && (!kv_type_quantized(t.k) || h[3] % 32 == 0) &&
                       (!kv_type_quantized(t.v) || h[3] % 32 == 0);
  if (!rows_ok) throw std::runtime_error("cache swap: " + where + " is not a swapped KV cache");
  return 2 * size_t(h[6]);
}

// The bytes of the whole swapped cache that a checked header and table describe.
size_t total_bytes(const int64_t* meta, const std::string& where) {
  const size_t stores = size_t(meta[6]);
  const KvTypes t = decode(meta[4]);
  const size_t row = kv_row_bytes(t.k, meta[3]) + kv_row_bytes(t.v, meta[3]);
  size_t total = (kHead + 2 * stores) * sizeof(int64_t);
  for (size_t i = 0; i < stores; ++i) {
    const int64_t rows = meta[kHead + 2 * i], limit = meta[kHead + 2 * i + 1];
    if (rows < 0 || rows > (int64_t(1) << 40) || limit < 0 || (limit > 0 && limit < rows))
      throw std::runtime_error("cache swap: " + where + ": store " + std::to_string(i) +
                               " has a bad length");
    total += size_t(rows) * row;
  }
  return total;
}

// Replaces the cache with the one a checked header and table describe, stores sized (and
// reserved) but their bytes unwritten, and returns where those bytes go.
std::vector<iovec> rebuild(const int64_t* meta, SequenceCache& cache) {
  cache = SequenceCache(int(meta[1]), int(meta[2]), meta[3], decode(meta[4]));
  cache.n_past = meta[5];
  for (int64_t i = 0; i < meta[6]; ++i) {
    HeadStore& s = cache.head(int(i / meta[2]), int(i % meta[2]));
    if (meta[kHead + 2 * i + 1] > 0) s.reserve_virtual(meta[kHead + 2 * i + 1]);
    s.resize_raw(meta[kHead + 2 * i]);
  }
  return pieces_of(cache);
}

// Writes or reads all the pieces, many per system call, finishing short transfers.
void transfer(int fd, std::vector<iovec> pieces, bool write, const fs::path& path) {
  static const size_t max_per_call = size_t(std::max(1L, sysconf(_SC_IOV_MAX)));
  size_t i = 0;
  while (i < pieces.size()) {
    if (pieces[i].iov_len == 0) {
      ++i;
      continue;
    }
    const int n = int(std::min(max_per_call, pieces.size() - i));
    const ssize_t r = write ? ::writev(fd, &pieces[i], n) : ::readv(fd, &pieces[i], n);
    if (r < 0 && errno == EINTR) continue;
    if (r < 0) throw os_error(errno, write ? "write" : "read", path);
    if (r == 0) throw os_error(write ? EIO : ENODATA, write ? "write" : "read", path);
    for (size_t left = size_t(r); left > 0;) {
      const size_t step = std::min(left, pieces[i].iov_len);
      pieces[i].iov_base = static_cast<uint8_t*>(pieces[i].iov_base) + step;
      pieces[i].iov_len -= step;
      left -= step;
      if (pieces[i].iov_len == 0) ++i;
    }
  }
}

}  // namespace

SwappedCache::SwappedCache(SwappedCache&& o) noexcept
    : host_(std::move(o.host_)), path_(std::move(o.path_)), bytes_(std::exchange(o.bytes_, 0)) {
  o.path_.clear();
}

SwappedCache& SwappedCache::operator=(SwappedCache&& o) noexcept {
  if (this != &o) {
    reset();
    host_ = std::move(o.host_);
    path_ = std::move(o.path_);
    bytes_ = std::exchange(o.bytes_, 0);
    o.path_.clear();
  }
  return *this;
}

SwappedCache::~SwappedCache() {
  reset();
}

void SwappedCache::reset() noexcept {
  if (!path_.empty()) ::unlink(path_.c_str());
  path_.clear();
  StoreBytes().swap(host_);
  bytes_ = 0;
}

size_t swapped_bytes(const SequenceCache& cache) {
  return (kHead + 2 * size_t(cache.n_layers()) * size_t(cache.n_kv_heads())) * sizeof(int64_t) +
         cache.bytes();
}

SwappedCache swap_out(SequenceCache& cache) {
  const std::vector<int64_t> meta = describe(cache);
  SwappedCache s;
  s.host_ = StoreBytes(swapped_bytes(cache));
  uint8_t* at = s.host_.data();
  std::memcpy(at, meta.data(), meta.size() * sizeof(int64_t));
  at += meta.size() * sizeof(int64_t);
  for (const iovec& p : pieces_of(cache)) {
    std::memcpy(at, p.iov_base, p.iov_len);
    at += p.iov_len;
  }
  s.bytes_ = s.host_.size();
  cache.clear();
  return s;
}

SwappedCache swap_out(SequenceCache& cache, const fs::path& dir, bool sync) {
  std::vector<int64_t> meta = describe(cache);
  std::vector<iovec> pieces = pieces_of(cache);
  pieces.insert(pieces.begin(), iovec{meta.data(), meta.size() * sizeof(int64_t)});
  // A name no other swap of this process or of an earlier one with the same pid holds.
  static std::atomic<uint64_t> serial{0};
  fs::path path;
  int fd = -1;
  do {
    path = dir /
           ("fairkv-swap-" + std::to_string(::getpid()) + "-" + std::to_string(serial++) + ".kv");
    fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
  } while (fd < 0 && errno == EEXIST);
  if (fd < 0) throw os_error(errno, "create", path);
  try {
    transfer(fd, std::move(pieces), true, path);
    if (sync && ::fsync(fd) != 0) throw os_error(errno, "fsync", path);
  } catch (...) {
    ::close(fd);
    ::unlink(path.c_str());
    throw;
  }
  if (::close(fd) != 0) {
    const int err = errno;
    ::unlink(path.c_str());
    throw os_error(err, "close", path);
  }
  SwappedCache s;
  s.path_ = std::move(path);
  s.bytes_ = swapped_bytes(cache);
  cache.clear();
  return s;
}

void swap_in(SwappedCache&& swapped, SequenceCache& cache) {
  if (swapped.empty()) throw std::invalid_argument("swap_in: the swapped cache is empty");
  if (!swapped.in_file()) {
    const auto* meta = reinterpret_cast<const int64_t*>(swapped.host_.data());
    const std::string where = "host copy";
    check_head(meta, where);
    if (total_bytes(meta, where) != swapped.bytes_)
      throw std::runtime_error("cache swap: host copy has the wrong size");
    const uint8_t* at = swapped.host_.data() + (kHead + 2 * size_t(meta[6])) * sizeof(int64_t);
    for (const iovec& p : rebuild(meta, cache)) {
      std::memcpy(p.iov_base, at, p.iov_len);
      at += p.iov_len;
    }
    swapped.reset();
    return;
  }
  const fs::path& path = swapped.path_;
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) throw os_error(errno, "open", path);
  try {
    std::vector<int64_t> meta(kHead);
    transfer(fd, {{meta.data(), kHead * sizeof(int64_t)}}, false, path);
    meta.resize(kHead + check_head(meta.data(), path.string()));
    transfer(fd, {{meta.data() + kHead, (meta.size() - kHead) * sizeof(int64_t)}}, false, path);
    struct stat st;
    if (::fstat(fd, &st) != 0) throw os_error(errno, "stat", path);
    if (total_bytes(meta.data(), path.string()) != size_t(st.st_size) ||
        size_t(st.st_size) != swapped.bytes_)
      throw std::runtime_error("cache swap: " + path.string() + " has the wrong size");
    try {
      transfer(fd, rebuild(meta.data(), cache), false, path);
    } catch (...) {
      cache.clear();
      throw;
    }
  } catch (...) {
    ::close(fd);
    throw;
  }
  ::close(fd);
  swapped.reset();  // deletes the file
}

const char* swap_place_name(SwapPlace p) {
  switch (p) {
    case SwapPlace::Host:
      return "host";
    case SwapPlace::File:
      return "file";
    case SwapPlace::NoRoom:
      break;
  }
  return "no room";
}

SwapSpace::SwapSpace(size_t host_limit, size_t file_limit, fs::path spill_dir, bool sync)
    : host_limit_(host_limit), file_limit_(file_limit), dir_(std::move(spill_dir)), sync_(sync) {
  if (file_limit_ == 0) return;
  if (dir_.empty()) throw std::invalid_argument("SwapSpace: a file limit needs a spill folder");
  struct stat st;
  if (::stat(dir_.c_str(), &st) != 0) throw os_error(errno, "spill folder", dir_);
  if (!S_ISDIR(st.st_mode)) throw os_error(ENOTDIR, "spill folder", dir_);
  if (::access(dir_.c_str(), W_OK | X_OK) != 0) throw os_error(errno, "spill folder", dir_);
}

SwapPlace SwapSpace::put(uint64_t id, SequenceCache& cache) {
  if (held_.count(id))
    throw std::invalid_argument("SwapSpace::put: request " + std::to_string(id) +
                                " is already swapped out");
  const size_t need = swapped_bytes(cache);
  if (need <= host_limit_ - bytes_host_) {
    held_.emplace(id, swap_out(cache));
    bytes_host_ += need;
    return SwapPlace::Host;
  }
  if (need <= file_limit_ - bytes_file_) {
    held_.emplace(id, swap_out(cache, dir_, sync_));
    bytes_file_ += need;
    return SwapPlace::File;
  }
  return SwapPlace::NoRoom;
}

void SwapSpace::take(uint64_t id, SequenceCache& cache) {
  const auto it = held_.find(id);
  if (it == held_.end())
    throw std::out_of_range("SwapSpace::take: request " + std::to_string(id) +
                            " is not swapped out");
  const bool file = it->second.in_file();
  const size_t n = it->second.bytes();
  swap_in(std::move(it->second), cache);
  (file ? bytes_file_ : bytes_host_) -= n;
  held_.erase(it);
}

bool SwapSpace::drop(uint64_t id) {
  const auto it = held_.find(id);
  if (it == held_.end()) return false;
  (it->second.in_file() ? bytes_file_ : bytes_host_) -= it->second.bytes();
  held_.erase(it);
  return true;
}

}  // namespace fairkv::kv
