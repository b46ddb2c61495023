// Swapping a sequence's KV cache out and back in (kv/cache_swap.h), and decode appends into an
// ordinary store against one on a reserved address range (HeadStore::reserve_virtual).
//
// Swap: one sequence of a model with 16 layers x 8 KV heads x head_dim 128, f16, `tokens` rows
// per head (256: 16.8 MB; 2048: 134 MB). An iteration swaps it out and back in. Counters: MB/s,
// the cache's bytes over the time of both; out_MB/s and in_MB/s, each alone. host: into host
// memory; file: a spill file in $FAIRKV_SWAP_DIR (default: the temporary folder), written and
// read back (through the page cache, which then still holds it); file_sync: fsync'ed as well.
//
// Append: one store (head_dim 128, f16) grown from empty to 8192 rows by single-row decode
// appends. Counters: rows/s; held_per_byte, the memory held over the rows' bytes at the end.
//
// Run: build/bench/kv_swap_bench [--benchmark_filter=...]. Names: swap/<host|file|file_sync>/
// <tokens>, append/<ordinary|reserved>.
#include <benchmark/benchmark.h>

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "kv/cache.h"
#include "kv/cache_swap.h"

namespace {

using namespace fairkv;

constexpr int kLayers = 16, kHeads = 8;
constexpr int64_t kHeadDim = 128;

// Rows copied from a pool of normal noise at random offsets.
struct Noise {
  static constexpr int64_t kRows = 4096;
  std::vector<float> x;
  std::mt19937 rng{1};
  Noise() : x(size_t(kRows * 2 * kHeadDim)) {
    std::normal_distribution<float> z(0.0f, 1.0f);
    for (float& v : x) v = z(rng);
  }
  const float* rows() {  // kRows rows from here on
    return &x[size_t(std::uniform_int_distribution<int64_t>(0, kRows)(rng) * kHeadDim)];
  }
};

kv::SequenceCache make_cache(int64_t tokens) {
  kv::SequenceCache c(kLayers, kHeads, kHeadDim, kv::KvType::F16);
  Noise noise;
  for (int l = 0; l < kLayers; ++l)
    for (int h = 0; h < kHeads; ++h)
      for (int64_t done = 0; done < tokens; done += Noise::kRows) {
        const int64_t n = std::min(Noise::kRows, tokens - done);
        c.head(l, h).append(noise.rows(), noise.rows(), n);
      }
  c.n_past = tokens;
  return c;
}

std::filesystem::path swap_dir() {
  const char* d = std::getenv("FAIRKV_SWAP_DIR");
  return d ? std::filesystem::path(d) : std::filesystem::temp_directory_path();
}

enum class Where { Host, File, FileSync };

void bm_swap(benchmark::State& state, Where where) {
  kv::SequenceCache cache = make_cache(state.range(0));
  const double mb = double(cache.bytes()) / 1e6;
  const std::filesystem::path dir = swap_dir();
  double out_s = 0, in_s = 0;
  for (auto _ : state) {
    const auto t0 = std::chrono::steady_clock::now();
    kv::SwappedCache s = where == Where::Host ? kv::swap_out(cache)
                                              : kv::swap_out(cache, dir, where == Where::FileSync);
    const auto t1 = std::chrono::steady_clock::now();
    kv::swap_in(std::move(s), cache);
    const auto t2 = std::chrono::steady_clock::now();
    out_s += std::chrono::duration<double>(t1 - t0).count();
    in_s += std::chrono::duration<double>(t2 - t1).count();
  }
  const double n = double(state.iterations());
  state.counters["MB"] = mb;
  state.counters["MB/s"] = mb * n / (out_s + in_s);
  state.counters["out_MB/s"] = mb * n / out_s;
  state.counters["in_MB/s"] = mb * n / in_s;
}

void bm_append(benchmark::State& state, bool reserved) {
  constexpr int64_t kRows = 8192;
  Noise noise;
  const float* k = noise.rows();
  const float* v = noise.rows();
  double held = 0;
  for (auto _ : state) {
    kv::HeadStore s(kHeadDim, kv::KvType::F16);
    if (reserved) s.reserve_virtual(kRows);
    for (int64_t i = 0; i < kRows; ++i) s.append(k + (i % 1024) * kHeadDim, v, 1);
    held = double(s.committed_bytes()) / double(s.bytes());
  }
  state.SetItemsProcessed(int64_t(state.iterations()) * kRows);
  state.counters["held_per_byte"] = held;
}

}  // namespace

int main(int argc, char** argv) {
  benchmark::Initialize(&argc, argv);
  for (auto [name, where] : {std::pair{"host", Where::Host}, std::pair{"file", Where::File},
                             std::pair{"file_sync", Where::FileSync}})
    benchmark::RegisterBenchmark((std::string("swap/") + name).c_str(), bm_swap, where)
        ->Arg(256)
        ->Arg(2048)
        ->UseRealTime()
        ->Unit(benchmark::kMillisecond);
  for (bool reserved : {false, true})
    benchmark::RegisterBenchmark(reserved ? "append/reserved" : "append/ordinary", bm_append,
                                 reserved)
        ->UseRealTime()
        ->Unit(benchmark::kMicrosecond);
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
