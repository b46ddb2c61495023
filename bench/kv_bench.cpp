// Decode attention over long ragged KV caches, reported as bytes of K and V read per second,
// beside a plain streaming read of a buffer of the same size measured in the same run.
//
// Shape: one decode step of one layer: 8 KV heads x a GQA group of 8 query heads x head_dim 128,
// 32768 cached tokens per head (also a ragged variant where heads keep 1/8x to 2x that, as Ada-KV
// leaves them, with the same total), f32 and f16 stores, 1 and 2 threads. Every store is larger
// than the last-level cache together, so the read comes from DRAM.
//
// Run: build-*/bench/kv_bench [--benchmark_filter=...]. Names: stream/thr<t>,
// decode/<f32|f16>/g<group>/<uniform|ragged>/thr<t>. The counter of_stream is the attention's
// bytes/s over the streaming read's with the same thread count (1.0 = at the bandwidth).
#include <benchmark/benchmark.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <map>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "kernels/simd.h"
#include "kernels/threadpool.h"
#include "kv/attention.h"
#include "kv/cache.h"

namespace {

using namespace fairkv;

constexpr int kHeads = 8;
constexpr int64_t kHeadDim = 128, kTokens = 32768;

kernels::ThreadPool& pool(int n) {
  static std::map<int, std::unique_ptr<kernels::ThreadPool>> pools;
  auto& p = pools[n];
  if (!p) p = std::make_unique<kernels::ThreadPool>(n);
  return *p;
}

std::map<int, double>& stream_rate() {  // bytes/s of the streaming read, by thread count
  static std::map<int, double> r;
  return r;
}

// Each thread sums its part of a 512 MiB buffer (allocated as the stores are) with vector loads
// into independent accumulators, so that only the memory limits it.
void bm_stream(benchmark::State& state, int threads) {
  namespace simd = kernels::simd;
  std::vector<float> buf(size_t(128) << 20, 1.0f);
  kernels::ThreadPool& p = pool(threads);
  std::vector<float> partial(size_t(threads) * 16);
  const auto t0 = std::chrono::steady_clock::now();
  for (auto _ : state) {
    p.parallel_for(int64_t(buf.size()) / 64, [&](int64_t b, int64_t e, int th) {
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
  }
  const double bytes = double(buf.size() * sizeof(float));
  state.SetBytesProcessed(int64_t(state.iterations()) * int64_t(bytes));
  state.counters["GB/s"] =
      benchmark::Counter(bytes / 1e9, benchmark::Counter::kIsIterationInvariantRate);
  const std::chrono::duration<double> wall = std::chrono::steady_clock::now() - t0;
  stream_rate()[threads] = bytes * double(state.iterations()) / wall.count();
}

struct Layer {
  std::vector<kv::HeadStore> stores;
  size_t bytes = 0;
};

// Eight head stores of random keys and values; ragged: lengths spread from 1/8x to 2x the mean.
const Layer& layer(kv::KvType t, bool ragged) {
  static std::map<std::pair<int, bool>, Layer> cache;
  const auto key = std::make_pair(int(t), ragged);
  if (auto it = cache.find(key); it != cache.end()) return it->second;
  cache.clear();  // keep one layer in memory at a time
  Layer& l = cache[key];
  std::mt19937 rng(1);
  std::normal_distribution<float> z(0.0f, 1.0f);
  const double weights[kHeads] = {0.125, 2.0, 0.5, 1.5, 0.25, 1.0, 1.875, 0.75};  // mean 1
  std::vector<float> k(size_t(kHeadDim) * 4096), v(k.size());
  for (int h = 0; h < kHeads; ++h) {
    l.stores.emplace_back(kHeadDim, t);
    const int64_t len = ragged ? int64_t(std::llround(weights[h] * kTokens)) : kTokens;
    for (int64_t done = 0; done < len; done += 4096) {
      const int64_t n = std::min<int64_t>(4096, len - done);
      for (auto& x : k) x = z(rng);
      for (auto& x : v) x = z(rng);
      l.stores.back().append(k.data(), v.data(), n);
    }
    l.bytes += l.stores.back().bytes();
  }
  return l;
}

void bm_decode(benchmark::State& state, kv::KvType t, int group, bool ragged, int threads) {
  const Layer& l = layer(t, ragged);
  std::mt19937 rng(2);
  std::normal_distribution<float> z(0.0f, 1.0f);
  std::vector<float> q(size_t(kHeads * group * kHeadDim)), out(q.size());
  for (auto& x : q) x = z(rng);
  std::vector<kv::AttentionArgs> calls(kHeads);
  for (int h = 0; h < kHeads; ++h) {
    kv::AttentionArgs& a = calls[size_t(h)];
    a.store = &l.stores[size_t(h)];
    a.q = &q[size_t(h * group * kHeadDim)];
    a.group = group;
    a.scale = 1.0f / std::sqrt(float(kHeadDim));
    a.visible = a.store->size() - 1;
    a.out = &out[size_t(h * group * kHeadDim)];
  }
  kernels::ThreadPool& p = pool(threads);
  const auto t0 = std::chrono::steady_clock::now();
  for (auto _ : state) {
    kv::attend_batch(calls, p);
    benchmark::DoNotOptimize(out.data());
  }
  state.SetBytesProcessed(int64_t(state.iterations()) * int64_t(l.bytes));
  state.counters["GB/s"] =
      benchmark::Counter(double(l.bytes) / 1e9, benchmark::Counter::kIsIterationInvariantRate);
  const std::chrono::duration<double> wall = std::chrono::steady_clock::now() - t0;
  const double rate = double(l.bytes) * double(state.iterations()) / wall.count();
  if (auto it = stream_rate().find(threads); it != stream_rate().end())
    state.counters["of_stream"] = rate / it->second;
  state.counters["MB"] = double(l.bytes) / 1e6;
}

}  // namespace

int main(int argc, char** argv) {
  benchmark::Initialize(&argc, argv);
  // Registered first so that the attention runs can compare against it.
  for (int th : {1, 2})
    benchmark::RegisterBenchmark(("stream/thr" + std::to_string(th)).c_str(), bm_stream, th)
        ->UseRealTime()
        ->Unit(benchmark::kMillisecond);
  for (kv::KvType t : {kv::KvType::F32, kv::KvType::F16})
    for (bool ragged : {false, true})
      for (int group : {8, 4, 1})
        for (int th : {1, 2}) {
          if (ragged && group != 8) continue;
          const std::string name = std::string("decode/") + kv::kv_type_name(t) + "/g" +
                                   std::to_string(group) + (ragged ? "/ragged" : "/uniform") +
                                   "/thr" + std::to_string(th);
          benchmark::RegisterBenchmark(name.c_str(), bm_decode, t, group, ragged, th)
              ->UseRealTime()
              ->Unit(benchmark::kMillisecond);
        }
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
