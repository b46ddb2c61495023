// Swapping a sequence's KV cache out of its stores and back in: what a serving engine does with
// a preempted request instead of recomputing its prefill.
//
// A swapped cache holds every store's K and V bytes as they are stored (the KV type and the key
// panels kept), each store's length and reserved limit, n_past and the cache's shape. A store's
// bytes depend on its length alone (HeadStore::resize_raw), so swap_in rebuilds the stores bit
// for bit and decode continues exactly as if the cache had never left. The bytes go to host
// memory or to a spill file; SwapSpace chooses between the two under a byte limit for each.
#pragma once

#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <unordered_map>

#include "kv/cache.h"
#include "kv/store_memory.h"

namespace fairkv::kv {

// A cache swapped out: in host memory or in a spill file, which this object owns (deleted when
// the cache is swapped back in or the object destroyed). Move-only.
class SwappedCache {
 public:
  SwappedCache() = default;
  SwappedCache(SwappedCache&& o) noexcept;
  SwappedCache& operator=(SwappedCache&& o) noexcept;
  SwappedCache(const SwappedCache&) = delete;
  SwappedCache& operator=(const SwappedCache&) = delete;
  ~SwappedCache();
  bool empty() const { return bytes_ == 0; }
  bool in_file() const { return !path_.empty(); }
  const std::filesystem::path& path() const { return path_; }  // empty for host memory
  size_t bytes() const { return bytes_; }  // swapped_bytes() of the cache it holds

 private:
  friend SwappedCache swap_out(SequenceCache& cache);
  friend SwappedCache swap_out(SequenceCache& cache, const std::filesystem::path& dir, bool sync);
  friend void swap_in(SwappedCache&& swapped, SequenceCache& cache);
  void reset() noexcept;
  StoreBytes host_;
  std::filesystem::path path_;
  size_t bytes_ = 0;
};

// The bytes a swapped copy of the cache takes, in memory or on disk: cache.bytes() and a header
// of 56 bytes plus 16 per store.
size_t swapped_bytes(const SequenceCache& cache);

// Moves the cache into host memory. The cache is left cleared (n_past 0, every store's memory
// and reservation freed), its shape kept.
SwappedCache swap_out(SequenceCache& cache);
// Moves the cache into a new file in `dir` (fsync'ed before closing when `sync`), then clears it
// as above. On an error (std::system_error naming the file and errno's text) the file is removed
// and the cache left as it was.
SwappedCache swap_out(SequenceCache& cache, const std::filesystem::path& dir, bool sync = false);
// Replaces the cache (its shape included) with the swapped one, stores reserved again where they
// were, then frees the host copy or deletes the file. On a read error the cache is left cleared
// and `swapped` keeps its data. Throws std::invalid_argument for an empty SwappedCache.
void swap_in(SwappedCache&& swapped, SequenceCache& cache);

enum class SwapPlace { Host, File, NoRoom };
const char* swap_place_name(SwapPlace p);

// Swapped caches by request id, in host memory up to host_limit bytes, then in spill files in
// spill_dir up to file_limit bytes (swapped_bytes() each).
class SwapSpace {
 public:
  // spill_dir must be a writable folder when file_limit > 0 (else std::system_error naming it).
  SwapSpace(size_t host_limit, size_t file_limit, std::filesystem::path spill_dir = {},
            bool sync = false);
  // Swaps the cache out to host memory if it fits there, else to a file if it fits there; with
  // no room the cache is left untouched (the caller then drops it and recomputes later). Throws
  // std::invalid_argument for an id already held, and a spill file's std::system_error with the
  // cache untouched. Not thread-safe: one thread (the serving loop) owns a SwapSpace.
  SwapPlace put(uint64_t id, SequenceCache& cache);
  // Restores the cache swapped out under id and forgets it; std::out_of_range for an unknown id.
  void take(uint64_t id, SequenceCache& cache);
  // Forgets a swapped cache (deleting its file); false for an unknown id.
  bool drop(uint64_t id);
  bool contains(uint64_t id) const { return held_.count(id) > 0; }
  size_t bytes_host() const { return bytes_host_; }
  size_t bytes_file() const { return bytes_file_; }

 private:
  size_t host_limit_, file_limit_;
  std::filesystem::path dir_;
  bool sync_;
  std::unordered_map<uint64_t, SwappedCache> held_;
  size_t bytes_host_ = 0, bytes_file_ = 0;
};

}  // namespace fairkv::kv
