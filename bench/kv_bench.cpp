// Decode attention over long ragged KV caches, reported as bytes of K and V read per second,
// beside a plain streaming read of a buffer of the same size measured in the same run.
//
// Shape: one decode step of one layer: 8 KV heads x a GQA group of 8 query heads x head_dim 128,
// 32768 cached tokens per head (also a ragged variant where heads keep 1/8x to 2x that, as Ada-KV
// leaves them, with the same total), f32 and f16 stores, 1 and 2 threads. An iteration attends
// to as many such layers in turn as make at least twice the last-level cache (and 1 GiB), as a
// decode step walks the layers, so the read comes from DRAM, not from a large L3; the streaming
// read's buffer is as large.
//
// Run: build-*/bench/kv_bench [--benchmark_filter=...]. Names: stream/thr<t>,
// decode/<f32|f16>/g<group>/<uniform|ragged>/thr<t>, and without the memory: hot/<type>/g<group>
// (a decode step from L2) and prefill/<type>/g<group>/n4096 (a causal prompt), one thread in CPU
// time against an FMA loop timed the same way (of_fma). Counters of a decode run: GB/s (K and V
// bytes read per second), stream_GB/s (the streaming read with the same threads, measured just
// before and after that run) and of_stream, their ratio (1.0 = at the bandwidth). Other
// processes sharing the machine move both; compare ratios, over --benchmark_repetitions=5.
// f16 and bf16 names ending in /amx run the AMX kernels (kv/attention_amx.h) where the CPU has
// them; without /amx the same stores run the AVX-512 / AVX2 / portable kernel.
// value_norms/n<n>: DefensiveKV's CriticalKV value norms of one layer (kv::projected_value_norms).
// overlap/fma<K>/<stream|near|phases|crossed>/thr<t>: no attention, the machine itself: a streaming
// read that spends K FMAs per line, against the plain read (bm_overlap).
#include <benchmark/benchmark.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <ctime>
#include <map>
#include <memory>
#include <random>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include <unistd.h>

#include "kernels/simd.h"
#include "kernels/threadpool.h"
#include "kv/attention.h"
#include "kv/attention_amx.h"
#include "kv/cache.h"
#include "kv/compress.h"

namespace {

using namespace fairkv;

// AMX for f16 and bf16 stores on or off (kv/attention.h).
void allow_amx(bool on) {
  kv::attend_allow_amx(on);
  kv::attend_allow_amx_bf16(on, 1);  // /amx: every call, one query row included
}

constexpr int kHeads = 8;
constexpr int64_t kHeadDim = 128, kTokens = 32768;

kernels::ThreadPool& pool(int n) {
  static std::map<int, std::unique_ptr<kernels::ThreadPool>> pools;
  auto& p = pools[n];
  if (!p) p = std::make_unique<kernels::ThreadPool>(n);
  return *p;
}

// Bytes that no cache holds: twice the last-level cache, at least 1 GiB.
size_t beyond_cache_bytes() {
  long llc = sysconf(_SC_LEVEL3_CACHE_SIZE);
  if (llc <= 0) llc = sysconf(_SC_LEVEL2_CACHE_SIZE);
  return std::max(size_t(1) << 30, 2 * size_t(std::max(llc, 0L)));
}

// The streaming read: each thread sums its part of a buffer of beyond_cache_bytes(), allocated
// as the stores are
// (on huge pages, kv/store_memory.h), with vector loads into independent accumulators, so that
// only the memory limits it.
using StreamBuffer = std::vector<float, kv::StoreAllocator<float>>;
StreamBuffer& stream_buffer() {
  static StreamBuffer buf(beyond_cache_bytes() / sizeof(float), 1.0f);
  return buf;
}

// One read of the whole buffer on `threads` threads; returns its bytes.
double stream_pass(int threads) {
  namespace simd = kernels::simd;
  const StreamBuffer& buf = stream_buffer();
  std::vector<float> partial(size_t(threads) * 16);
  pool(threads).parallel_for(int64_t(buf.size()) / 64, [&](int64_t b, int64_t e, int th) {
    simd::V s0 = simd::zero(), s1 = simd::zero(), s2 = simd::zero(), s3 = simd::zero();
    for (int64_t i = b * 64; i < e * 64; i += 4 * simd::kLanes) {
      s0 = simd::add(s0, simd::load(&buf[size_t(i)]));
      s1 = simd::add(s1, simd::load(&buf[size_t(i + simd::kLanes)]));
      s2 = simd::add(s2, simd::load(&buf[size_t(i + 2 * simd::kLanes)]));
      s3 = simd::add(s3, simd::load(&buf[size_t(i + 3 * simd::kLanes)]));
    }
    partial[size_t(th) * 16] = simd::reduce(simd::add(simd::add(s0, s1), simd::add(s2, s3)));
  });
  benchmark::DoNotOptimize(partial.data());
  return double(buf.size() * sizeof(float));
}

// Bytes/s of `passes` streaming reads, timed together.
double stream_rate(int threads, int passes) {
  double bytes = 0;
  const auto t0 = std::chrono::steady_clock::now();
  for (int i = 0; i < passes; ++i) bytes += stream_pass(threads);
  const std::chrono::duration<double> wall = std::chrono::steady_clock::now() - t0;
  return bytes / wall.count();
}

void bm_stream(benchmark::State& state, int threads) {
  stream_pass(threads);  // first touch of the buffer
  double bytes = 0;
  for (auto _ : state) bytes = stream_pass(threads);
  state.SetBytesProcessed(int64_t(state.iterations()) * int64_t(bytes));
  state.counters["GB/s"] =
      benchmark::Counter(bytes / 1e9, benchmark::Counter::kIsIterationInvariantRate);
}

// How much arithmetic a streaming read hides on this machine, apart from any attention kernel:
// each thread reads its share of the streaming read's buffer a 64-byte line at a time and spends
// K FMAs per line on the loaded floats, prefetching into L2 (the kernels' prefetches,
// attention_kernels.h). Layouts: one stream, 256 lines ahead (`stream`), and also 32 lines ahead
// into L1 (`near`, as the kernels' prefetch_near); two streams (the share's halves,
// as K and V) read in alternate blocks of 256 lines (a block of 64 f16 keys of head_dim 128), each
// prefetched a block ahead while it is read (as the attention kernels do: `phases`), or each
// while the other is read (`crossed`).
enum class Layout { kStream, kNear, kPhases, kCrossed };

template <int K>
inline void line_fmas(const float* line, kernels::simd::V* acc, kernels::simd::V c) {
  namespace simd = kernels::simd;
  simd::V x = simd::load(line);
  FAIRKV_UNROLL
  for (int v = 1; v < 16 / simd::kLanes; ++v) x = simd::add(x, simd::load(line + v * simd::kLanes));
  if constexpr (K == 0) acc[0] = simd::add(acc[0], x);
  _Pragma("GCC unroll 8") for (int k = 0; k < K / 8; ++k) {
    FAIRKV_UNROLL
    for (int j = 0; j < 8; ++j) acc[j] = simd::fma(x, c, acc[j]);
  }
}

// Returns the sum, so that nothing is optimised away.
template <int K, Layout L>
float overlap_lines(const float* p, int64_t lines) {
  namespace simd = kernels::simd;
  simd::V acc[8];  // different starts, so that the compiler cannot merge the eight chains
  FAIRKV_UNROLL
  for (int j = 0; j < 8; ++j) acc[j] = simd::set1(float(j));
  const simd::V c = simd::set1(0.999f);
  auto prefetch = [](const float* line) { __builtin_prefetch(line, 0, 2); };
  if constexpr (L == Layout::kStream || L == Layout::kNear) {
    for (int64_t i = 0; i < lines; ++i) {
      prefetch(p + (i + 256) * 16);
      if constexpr (L == Layout::kNear) __builtin_prefetch(p + (i + 32) * 16, 0, 3);
      line_fmas<K>(p + i * 16, acc, c);
    }
  } else {
    constexpr int64_t kB = 256;
    const float* k = p;
    const float* v = p + lines / 2 * 16;
    const bool crossed = L == Layout::kCrossed;
    for (int64_t b = 0; b + kB <= lines / 2; b += kB) {
      for (int64_t i = b; i < b + kB; ++i) {
        prefetch(crossed ? v + i * 16 : k + (i + kB) * 16);
        line_fmas<K>(k + i * 16, acc, c);
      }
      for (int64_t i = b; i < b + kB; ++i) {
        prefetch(crossed ? k + (i + kB) * 16 : v + (i + kB) * 16);
        line_fmas<K>(v + i * 16, acc, c);
      }
    }
  }
  simd::V s = acc[0];
  FAIRKV_UNROLL
  for (int j = 1; j < 8; ++j) s = simd::add(s, acc[j]);
  return simd::reduce(s);
}

// overlap/fma<K>/<stream|near|phases|crossed>/thr<t>: overlap_lines over the whole buffer (beside
// the streaming read measured around it, as the decode runs are) and over 32 KiB that stay in L1
// (its arithmetic alone). Counters: of_stream, its read's share of the streaming read, and of_read,
// its arithmetic's time per line as a share of the streaming read's. A decode kernel whose hot
// time per key is that share of its bytes' read time can expect about this of_stream.
template <int K, Layout L>
void bm_overlap(benchmark::State& state, int threads) {
  const StreamBuffer& buf = stream_buffer();
  const int64_t lines = int64_t(buf.size()) / 16;
  std::vector<float> sink(size_t(threads) * 16);
  auto pass = [&] {
    pool(threads).parallel_for(threads, [&](int64_t, int64_t, int th) {
      const int64_t b = lines * th / threads, e = lines * (th + 1) / threads;
      sink[size_t(th) * 16] = overlap_lines<K, L>(&buf[size_t(b * 16)], e - b);
    });
  };
  pass();  // first touch
  const double before = stream_rate(threads, 2);
  const auto t0 = std::chrono::steady_clock::now();
  for (auto _ : state) pass();
  const std::chrono::duration<double> wall = std::chrono::steady_clock::now() - t0;
  const double stream = 0.5 * (before + stream_rate(threads, 2));
  const double bytes = double(buf.size() * sizeof(float)) * double(state.iterations());
  constexpr int64_t kHotLines = 512;  // best of many passes
  double hot = 1e30;
  for (int round = 0; round < 2000; ++round) {
    const auto h0 = std::chrono::steady_clock::now();
    sink[0] += overlap_lines<K, L>(buf.data(), kHotLines);
    hot =
        std::min(hot, std::chrono::duration<double>(std::chrono::steady_clock::now() - h0).count());
  }
  benchmark::DoNotOptimize(sink.data());
  const double line_read = 64.0 * threads / stream;  // seconds per line per thread
  state.SetBytesProcessed(int64_t(bytes));
  state.counters["hot_ns/line"] = 1e9 * hot / kHotLines;
  state.counters["of_read"] = hot / kHotLines / line_read;
  state.counters["of_stream"] = bytes / wall.count() / stream;
}

// The machine's vector FMA rate on `threads` threads (multiply-adds per second, one per lane):
// twelve independent accumulator chains per thread, enough to cover the FMA latency.
double fma_rate(int threads) {
  static std::map<int, double> measured;
  if (auto it = measured.find(threads); it != measured.end()) return it->second;
  namespace simd = kernels::simd;
  constexpr int kChains = 12;
  constexpr int64_t kSteps = int64_t(1) << 22;  // per thread, ~50 ms
  std::vector<float> sink(size_t(threads) * 16);
  double best = 0;
  for (int round = 0; round < 3; ++round) {
    const auto t0 = std::chrono::steady_clock::now();
    pool(threads).parallel_for(threads, [&](int64_t, int64_t, int th) {
      const simd::V a = simd::set1(0.999f), b = simd::set1(1e-3f);
      simd::V c0 = simd::set1(0), c1 = simd::set1(1), c2 = simd::set1(2), c3 = simd::set1(3),
              c4 = simd::set1(4), c5 = simd::set1(5), c6 = simd::set1(6), c7 = simd::set1(7),
              c8 = simd::set1(8), c9 = simd::set1(9), c10 = simd::set1(10), c11 = simd::set1(11);
      for (int64_t i = 0; i < kSteps; ++i) {  // spelled out so that the chains stay in registers
        c0 = simd::fma(c0, a, b), c1 = simd::fma(c1, a, b), c2 = simd::fma(c2, a, b);
        c3 = simd::fma(c3, a, b), c4 = simd::fma(c4, a, b), c5 = simd::fma(c5, a, b);
        c6 = simd::fma(c6, a, b), c7 = simd::fma(c7, a, b), c8 = simd::fma(c8, a, b);
        c9 = simd::fma(c9, a, b), c10 = simd::fma(c10, a, b), c11 = simd::fma(c11, a, b);
      }
      const simd::V s = simd::add(simd::add(simd::add(simd::add(c0, c1), simd::add(c2, c3)),
                                            simd::add(simd::add(c4, c5), simd::add(c6, c7))),
                                  simd::add(simd::add(c8, c9), simd::add(c10, c11)));
      sink[size_t(th) * 16] = simd::reduce(s);
    });
    const std::chrono::duration<double> wall = std::chrono::steady_clock::now() - t0;
    benchmark::DoNotOptimize(sink.data());
    best = std::max(best, double(threads) * kSteps * kChains * simd::kLanes / wall.count());
  }
  return measured[threads] = best;
}

void bm_fma(benchmark::State& state, int threads) {
  for (auto _ : state) state.SetIterationTime(1.0);
  state.counters["GFMA/s"] = fma_rate(threads) / 1e9;
}

struct Layer {
  std::vector<kv::HeadStore> stores;
  size_t bytes = 0;
};

// Eight head stores of random keys and values per layer (ragged: lengths spread from 1/8x to 2x
// the mean), as many layers as beyond_cache_bytes() needs. Rows are copied from a pool of
// normal noise at random offsets, which fills gigabytes in seconds.
const std::vector<Layer>& layers(kv::KvType t, bool ragged) {
  static std::map<std::pair<int, bool>, std::vector<Layer>> cache;
  const auto key = std::make_pair(int(t), ragged);
  if (auto it = cache.find(key); it != cache.end()) return it->second;
  cache.clear();  // keep one configuration in memory at a time
  std::vector<Layer>& ls = cache[key];
  std::mt19937 rng(1);
  std::normal_distribution<float> z(0.0f, 1.0f);
  constexpr int64_t kChunk = 4096;
  std::vector<float> noise(size_t(kHeadDim) * 2 * kChunk);
  for (auto& x : noise) x = z(rng);
  std::uniform_int_distribution<int64_t> offset(0, kChunk);
  const double weights[kHeads] = {0.125, 2.0, 0.5, 1.5, 0.25, 1.0, 1.875, 0.75};  // mean 1
  const size_t layer_bytes = size_t(kHeads * kTokens) * kv::KvTypes(t).token_bytes(kHeadDim);
  const size_t n_layers = (beyond_cache_bytes() + layer_bytes - 1) / layer_bytes;
  for (size_t i = 0; i < n_layers; ++i) {
    Layer& l = ls.emplace_back();
    for (int h = 0; h < kHeads; ++h) {
      kv::HeadStore& s = l.stores.emplace_back(kHeadDim, t);
      const int64_t len = ragged ? int64_t(std::llround(weights[h] * kTokens)) : kTokens;
      s.reserve(len);
      for (int64_t done = 0; done < len; done += kChunk) {
        const int64_t n = std::min<int64_t>(kChunk, len - done);
        s.append(&noise[size_t(offset(rng) * kHeadDim)], &noise[size_t(offset(rng) * kHeadDim)], n);
      }
      l.bytes += s.bytes();
    }
  }
  return ls;
}

void bm_decode(benchmark::State& state, kv::KvType t, int group, bool ragged, int threads,
               bool amx) {
  allow_amx(amx);
  const std::vector<Layer>& ls = layers(t, ragged);
  std::mt19937 rng(2);
  std::normal_distribution<float> z(0.0f, 1.0f);
  std::vector<float> q(size_t(kHeads * group * kHeadDim)), out(q.size());
  for (auto& x : q) x = z(rng);
  std::vector<std::vector<kv::AttentionArgs>> calls(ls.size(),
                                                    std::vector<kv::AttentionArgs>(kHeads));
  size_t bytes = 0;
  for (size_t i = 0; i < ls.size(); ++i) bytes += ls[i].bytes;
  for (size_t i = 0; i < ls.size(); ++i)
    for (int h = 0; h < kHeads; ++h) {
      kv::AttentionArgs& a = calls[i][size_t(h)];
      a.store = &ls[i].stores[size_t(h)];
      a.q = &q[size_t(h * group * kHeadDim)];
      a.group = group;
      a.scale = 1.0f / std::sqrt(float(kHeadDim));
      a.visible = a.store->size() - 1;
      a.out = &out[size_t(h * group * kHeadDim)];
    }
  kernels::ThreadPool& p = pool(threads);
  // The streaming read is measured right before and after the attention (two passes each, the
  // same threads), so that the ratio compares runs under the same load from other processes.
  const double before = stream_rate(threads, 2);
  const auto t0 = std::chrono::steady_clock::now();
  for (auto _ : state) {
    for (const auto& layer_calls : calls) kv::attend_batch(layer_calls, p);
    benchmark::DoNotOptimize(out.data());
  }
  const std::chrono::duration<double> wall = std::chrono::steady_clock::now() - t0;
  const double stream = 0.5 * (before + stream_rate(threads, 2));
  state.SetBytesProcessed(int64_t(state.iterations()) * int64_t(bytes));
  state.counters["GB/s"] =
      benchmark::Counter(double(bytes) / 1e9, benchmark::Counter::kIsIterationInvariantRate);
  const double rate = double(bytes) * double(state.iterations()) / wall.count();
  state.counters["stream_GB/s"] = stream / 1e9;
  state.counters["of_stream"] = rate / stream;
  state.counters["MB"] = double(bytes) / 1e6;
  state.counters["layers"] = double(ls.size());
  // The roofline: a key costs group x head_dim FMAs for its score and as many for its value,
  // for 2 x head_dim elements read, so the arithmetic alone caps the read at fma_rate / (FMAs
  // per byte); the bound is the lower of that and the streaming read.
  // (Quantized keys score with integer dot products, not FMAs: the figure is then only a guide.)
  const double fmas_per_byte =
      double(group) * 2.0 * kHeadDim / double(kv::KvTypes(t).token_bytes(kHeadDim));
  const double compute = fma_rate(threads) / fmas_per_byte;
  state.counters["roofline_GB/s"] = std::min(stream, compute) / 1e9;
  state.counters["of_roofline"] = rate / std::min(stream, compute);
}

// fma_rate on the calling thread in its own CPU time (the runs below are timed in CPU time, which
// other processes sharing the cores do not inflate).
double fma_cpu_rate() {
  static double best = 0;
  if (best > 0) return best;
  namespace simd = kernels::simd;
  constexpr int64_t kSteps = int64_t(1) << 22;
  auto cpu = [] {
    timespec ts;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return double(ts.tv_sec) + 1e-9 * double(ts.tv_nsec);
  };
  for (int round = 0; round < 3; ++round) {
    const double t0 = cpu();
    const simd::V a = simd::set1(0.999f), b = simd::set1(1e-3f);
    simd::V c[12];
    for (int j = 0; j < 12; ++j) c[j] = simd::set1(float(j));
    for (int64_t i = 0; i < kSteps; ++i) {
      FAIRKV_UNROLL
      for (int j = 0; j < 12; ++j) c[j] = simd::fma(c[j], a, b);
    }
    simd::V sum = c[0];
    for (int j = 1; j < 12; ++j) sum = simd::add(sum, c[j]);
    benchmark::DoNotOptimize(sum);
    best = std::max(best, double(kSteps) * 12 * simd::kLanes / (cpu() - t0));
  }
  return best;
}

// The arithmetic alone: one decode step, one thread, over one store of kHotKeys keys that stays
// in L2 (1 MiB of f16 K and V), repeated. ns per key and the share of the FMA rate it reaches
// (2 x group x head_dim multiply-adds per key) show how far the kernel is from its arithmetic
// bound, which under other processes' memory traffic the bandwidth runs cannot.
void bm_hot(benchmark::State& state, kv::KvType t, int group, bool amx) {
  allow_amx(amx);
  constexpr int64_t kHotKeys = 2048;
  std::mt19937 rng(3);
  std::normal_distribution<float> z(0.0f, 1.0f);
  std::vector<float> k(size_t(kHotKeys * kHeadDim)), v(k.size());
  for (auto& x : k) x = z(rng);
  for (auto& x : v) x = z(rng);
  kv::HeadStore s(kHeadDim, t);
  s.append(k.data(), v.data(), kHotKeys);
  std::vector<float> q(size_t(group * kHeadDim)), out(q.size());
  for (auto& x : q) x = z(rng);
  kv::AttentionArgs a;
  a.store = &s;
  a.q = q.data();
  a.group = group;
  a.scale = 1.0f / std::sqrt(float(kHeadDim));
  a.visible = kHotKeys - 1;
  a.out = out.data();
  for (auto _ : state) {
    kv::attend(a);
    benchmark::DoNotOptimize(out.data());
  }
  state.SetItemsProcessed(int64_t(state.iterations()) * kHotKeys);
  const double fmas = double(state.iterations()) * kHotKeys * 2.0 * group * kHeadDim;
  state.counters["ns/key"] =
      benchmark::Counter(double(kHotKeys) * 1e-9, benchmark::Counter::kIsIterationInvariantRate |
                                                      benchmark::Counter::kInvert);
  state.counters["of_fma"] = benchmark::Counter(fmas / fma_cpu_rate(), benchmark::Counter::kIsRate);
}

// A causal prefill of n tokens into an empty store, one KV head and its GQA group, one thread:
// ms, the multiply-adds' rate, and the attend scratch's bytes afterwards (the prompt's n x n
// scores are never held).
void bm_prefill(benchmark::State& state, kv::KvType t, int group, int64_t n, bool amx) {
  allow_amx(amx);
  std::mt19937 rng(4);
  std::normal_distribution<float> z(0.0f, 1.0f);
  std::vector<float> k(size_t(n * kHeadDim)), v(k.size());
  for (auto& x : k) x = z(rng);
  for (auto& x : v) x = z(rng);
  kv::HeadStore s(kHeadDim, t);
  s.append(k.data(), v.data(), n);
  std::vector<float> q(size_t(n * group * kHeadDim)), out(q.size());
  for (auto& x : q) x = z(rng);
  kv::AttentionArgs a;
  a.store = &s;
  a.q = q.data();
  a.n_tokens = n;
  a.group = group;
  a.scale = 1.0f / std::sqrt(float(kHeadDim));
  a.visible = 0;
  a.out = out.data();
  for (auto _ : state) {
    kv::attend(a);
    benchmark::DoNotOptimize(out.data());
  }
  // n (n + 1) / 2 visible keys, each 2 x group x head_dim multiply-adds.
  const double fmas = double(n) * double(n + 1) * group * kHeadDim;
  state.counters["GMAC/s"] =
      benchmark::Counter(fmas * 1e-9, benchmark::Counter::kIsIterationInvariantRate);
  state.counters["of_fma"] =
      benchmark::Counter(fmas / fma_cpu_rate(), benchmark::Counter::kIsIterationInvariantRate);
  state.counters["scratch_KiB"] = double(kv::attend_scratch_bytes()) / 1024.0;
}

// DefensiveKV's CriticalKV value norms of one layer (kv::projected_value_norms), one thread, in
// SmolLM2-135M's shape: 3 KV heads x a group of 3 x head_dim 64, W_o of 576 rows (f32), n cached
// tokens per head: ms and the multiply-adds' rate against the FMA loop (of_fma).
void bm_value_norms(benchmark::State& state, int64_t n) {
  constexpr int kHeads = 3, kGroup = 3;
  constexpr int64_t kDim = 64, kEmbd = 576, kCols = kHeads * kGroup * kDim;
  std::mt19937 rng(5);
  std::normal_distribution<float> z(0.0f, 1.0f);
  kv::SequenceCache cache(1, kHeads, kDim, kv::KvType::F32);
  std::vector<float> k(size_t(n * kDim)), v(k.size()), wo(size_t(kEmbd * kCols));
  for (int h = 0; h < kHeads; ++h) {
    for (auto& x : k) x = z(rng);
    for (auto& x : v) x = z(rng);
    cache.head(0, h).append(k.data(), v.data(), n);
  }
  for (auto& x : wo) x = z(rng);
  for (auto _ : state) {
    auto norms = kv::projected_value_norms(cache, 0, kGroup, kEmbd, [&](int64_t r, float* out) {
      std::copy_n(wo.data() + r * kCols, kCols, out);
    });
    benchmark::DoNotOptimize(norms.data());
  }
  const double fmas = double(kEmbd) * kCols * double(n);
  state.counters["of_fma"] =
      benchmark::Counter(fmas / fma_cpu_rate(), benchmark::Counter::kIsIterationInvariantRate);
}

}  // namespace

int main(int argc, char** argv) {
  benchmark::Initialize(&argc, argv);
  // The plain streaming read on its own (each attention run also measures it beside itself).
  for (int th : {1, 2})
    benchmark::RegisterBenchmark(("stream/thr" + std::to_string(th)).c_str(), bm_stream, th)
        ->UseRealTime()
        ->Unit(benchmark::kMillisecond);
  // The machine's overlap of arithmetic with a streaming read (bm_overlap).
  auto overlap = [](auto k, auto layout) {
    constexpr Layout kL = decltype(layout)::value;
    const char* name = kL == Layout::kStream   ? "stream"
                       : kL == Layout::kNear   ? "near"
                       : kL == Layout::kPhases ? "phases"
                                               : "crossed";
    for (int th : {1, 2})
      benchmark::RegisterBenchmark(
          ("overlap/fma" + std::to_string(k()) + "/" + name + "/thr" + std::to_string(th)).c_str(),
          bm_overlap<k(), kL>, th)
          ->UseRealTime()
          ->Unit(benchmark::kMillisecond);
  };
  using std::integral_constant;
  using Stream = integral_constant<Layout, Layout::kStream>;
  using Near = integral_constant<Layout, Layout::kNear>;
  using Phases = integral_constant<Layout, Layout::kPhases>;
  using Crossed = integral_constant<Layout, Layout::kCrossed>;
  auto each = [&](auto layout, auto ks) {
    [&]<int... K>(std::integer_sequence<int, K...>) {
      (overlap(integral_constant<int, K>{}, layout), ...);
    }
    (ks);
  };
  each(Stream{}, std::integer_sequence<int, 0, 8, 16, 24, 32, 48>{});
  each(Near{}, std::integer_sequence<int, 16, 24, 32>{});
  each(Phases{}, std::integer_sequence<int, 16, 24>{});
  each(Crossed{}, std::integer_sequence<int, 16, 24>{});
  for (int th : {1, 2})
    benchmark::RegisterBenchmark(("fma/thr" + std::to_string(th)).c_str(), bm_fma, th)
        ->UseManualTime()
        ->Iterations(1);
  // f16 and bf16 also on AMX where the CPU and the OS allow it (names ending in /amx;
  // kv/attention.h), registered beside the AVX-512 runs so that one invocation alternates the two.
  const std::vector<bool> kernels =
      kv::amx::available() ? std::vector<bool>{false, true} : std::vector<bool>{false};
  auto suffix = [](bool amx) { return std::string(amx ? "/amx" : ""); };
  const kv::KvType types[] = {kv::KvType::F32, kv::KvType::F16, kv::KvType::BF16, kv::KvType::Q8_0,
                              kv::KvType::Q4_0};
  for (kv::KvType t : types)
    for (bool ragged : {false, true})
      for (int group : {8, 4, 1})
        for (int th : {1, 2})
          for (bool amx : kernels) {
            if ((ragged && group != 8) || (amx && t != kv::KvType::F16 && t != kv::KvType::BF16))
              continue;
            const std::string name = std::string("decode/") + kv::kv_type_name(t) + "/g" +
                                     std::to_string(group) + (ragged ? "/ragged" : "/uniform") +
                                     "/thr" + std::to_string(th) + suffix(amx);
            benchmark::RegisterBenchmark(name.c_str(), bm_decode, t, group, ragged, th, amx)
                ->UseRealTime()
                ->Unit(benchmark::kMillisecond);
          }
  for (kv::KvType t : types)
    for (int group : {8, 4, 1})
      for (bool amx : kernels) {
        if (amx && t != kv::KvType::F16 && t != kv::KvType::BF16) continue;
        const std::string tg = std::string(kv::kv_type_name(t)) + "/g" + std::to_string(group);
        benchmark::RegisterBenchmark(("hot/" + tg + suffix(amx)).c_str(), bm_hot, t, group, amx)
            ->Unit(benchmark::kMicrosecond);
        benchmark::RegisterBenchmark(("prefill/" + tg + "/n4096" + suffix(amx)).c_str(), bm_prefill,
                                     t, group, int64_t(4096), amx)
            ->Unit(benchmark::kMillisecond);
      }
  for (int64_t n : {512, 4096})
    benchmark::RegisterBenchmark(("value_norms/n" + std::to_string(n)).c_str(), bm_value_norms, n)
        ->Unit(benchmark::kMillisecond);
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
