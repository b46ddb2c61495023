// Kernel throughput: matmul for TinyLlama-1.1B's shapes (decode: 1 token, memory-bound, reported
// as weight bytes/s; prefill: 128 tokens, compute-bound, reported as FLOP/s) for every weight
// type, both activation modes where they differ, 1 and 2 threads; a streaming-read reference for
// the machine's bandwidth; the thread pool's fork/join latency.
//
// Decode runs rotate over enough copies of the matrix to exceed the last-level cache, as a whole
// model does (2.2 GB of weights per token), so bytes/s is DRAM bandwidth and not L3's.
//
// Run: build-*/bench/kernels_bench --benchmark_filter=... (names: matmul/<type>/<rows>x<cols>/
// tok<n>/thr<t>/<activations>, stream/thr<t>, pool/thr<t>).
#include <benchmark/benchmark.h>

#include <cstring>
#include <map>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "kernels/matmul.h"
#include "kernels/threadpool.h"
#include "kernels/types.h"

namespace {

using namespace fairkv::kernels;

constexpr size_t kRotateBytes = size_t(512) << 20;  // > 16x the 32 MiB L3

ThreadPool& pool(int n) {
  static std::map<int, std::unique_ptr<ThreadPool>> pools;
  auto& p = pools[n];
  if (!p) p = std::make_unique<ThreadPool>(n);
  return *p;
}

// Weights of one (type, shape), replicated `copies` times; only the latest set is kept.
struct Weights {
  DType type{};
  int64_t rows = 0, cols = 0;
  size_t bytes = 0;  // of one copy
  std::vector<std::vector<uint8_t>> copies;
};

const Weights& weights(DType t, int64_t rows, int64_t cols, bool rotate) {
  static Weights w;
  const size_t bytes = row_bytes(t, cols) * size_t(rows);
  const size_t n_copies = rotate ? std::max<size_t>(1, (kRotateBytes + bytes - 1) / bytes) : 1;
  if (w.type == t && w.rows == rows && w.cols == cols && w.copies.size() >= n_copies) return w;
  if (!(w.type == t && w.rows == rows && w.cols == cols)) w.copies.clear();
  w.type = t;
  w.rows = rows;
  w.cols = cols;
  w.bytes = bytes;
  if (w.copies.empty()) {
    std::mt19937 rng(42);
    std::normal_distribution<float> dist(0.0f, 0.02f);
    std::vector<float> row(static_cast<size_t>(cols));
    std::vector<uint8_t> data(bytes);
    for (int64_t r = 0; r < rows; ++r) {
      for (float& v : row) v = dist(rng);
      quantize_row(t, row.data(), data.data() + size_t(r) * row_bytes(t, cols), cols);
    }
    w.copies.push_back(std::move(data));
  }
  while (w.copies.size() < n_copies) w.copies.push_back(w.copies.front());
  return w;
}

void bm_matmul(benchmark::State& state, DType t, int64_t rows, int64_t cols, int64_t n_tokens,
               int threads, Activations act) {
  const bool decode = n_tokens < 8;
  const Weights& w = weights(t, rows, cols, decode);
  std::vector<float> x(size_t(n_tokens * cols)), y(size_t(n_tokens * rows));
  std::mt19937 rng(7);
  std::normal_distribution<float> dist(0.0f, 1.0f);
  for (float& v : x) v = dist(rng);
  ThreadPool& p = pool(threads);
  size_t i = 0;
  for (auto _ : state) {
    const WeightMatrix m{t, rows, cols, w.copies[i].data(), 0};
    matmul(m, x.data(), n_tokens, y.data(), p, act);
    benchmark::DoNotOptimize(y.data());
    benchmark::ClobberMemory();
    i = (i + 1) % w.copies.size();
  }
  state.SetBytesProcessed(int64_t(state.iterations()) * int64_t(w.bytes));
  state.counters["FLOP/s"] = benchmark::Counter(double(2 * rows * cols * n_tokens),
                                                benchmark::Counter::kIsIterationInvariantRate);
}

// The machine's streaming-read bandwidth: each thread sums its part of a 1 GiB array.
void bm_stream(benchmark::State& state, int threads) {
  static std::vector<float> a(size_t(1) << 28, 1.0f);
  ThreadPool& p = pool(threads);
  std::vector<double> partial(static_cast<size_t>(threads));
  for (auto _ : state) {
    p.parallel_for(int64_t(a.size()), [&](int64_t b, int64_t e, int th) {
      // Eight independent sums so that the adds are not the limit.
      float s[8] = {};
      int64_t i = b;
      for (; i + 8 <= e; i += 8) {
        for (int j = 0; j < 8; ++j) s[j] += a[size_t(i + j)];
      }
      for (; i < e; ++i) s[0] += a[size_t(i)];
      double sum = 0;
      for (float v : s) sum += v;
      partial[size_t(th)] = sum;
    });
    benchmark::DoNotOptimize(partial.data());
  }
  state.SetBytesProcessed(int64_t(state.iterations()) * int64_t(a.size() * sizeof(float)));
}

// Fork/join latency of an empty parallel_for: the fixed cost per matmul in decode.
void bm_pool(benchmark::State& state, int threads) {
  ThreadPool& p = pool(threads);
  std::vector<int64_t> sink(64);
  for (auto _ : state) {
    p.parallel_for(threads, [&](int64_t b, int64_t, int th) { sink[size_t(th) * 8] = b; });
    benchmark::DoNotOptimize(sink.data());
  }
}

struct Shape {
  int64_t rows, cols;
};

void register_all() {
  // TinyLlama-1.1B: q/o 2048x2048, k/v 256x2048, gate/up 5632x2048, down 2048x5632, output
  // 32000x2048.
  const Shape shapes[] = {{2048, 2048}, {256, 2048}, {5632, 2048}, {2048, 5632}, {32000, 2048}};
  const DType types[] = {DType::F32, DType::F16, DType::BF16, DType::Q8_0, DType::Q4_0};
  for (int th : {1, 2}) {
    benchmark::RegisterBenchmark(("stream/thr" + std::to_string(th)).c_str(), bm_stream, th)
        ->UseRealTime()
        ->Unit(benchmark::kMillisecond);
    benchmark::RegisterBenchmark(("pool/thr" + std::to_string(th)).c_str(), bm_pool, th)
        ->UseRealTime();
  }
  for (DType t : types) {
    for (const Shape& s : shapes) {
      for (int64_t n : {int64_t(1), int64_t(128)}) {
        for (int th : {1, 2}) {
          for (Activations act : {Activations::Float32, Activations::LikeGgml}) {
            if (act == Activations::LikeGgml && t == DType::F32) continue;
            const std::string name = std::string("matmul/") + dtype_name(t) + "/" +
                                     std::to_string(s.rows) + "x" + std::to_string(s.cols) +
                                     "/tok" + std::to_string(n) + "/thr" + std::to_string(th) +
                                     "/" + activations_name(act);
            benchmark::RegisterBenchmark(name.c_str(), bm_matmul, t, s.rows, s.cols, n, th, act)
                ->UseRealTime()
                ->Unit(n == 1 ? benchmark::kMicrosecond : benchmark::kMillisecond);
          }
        }
      }
    }
  }
}

}  // namespace

int main(int argc, char** argv) {
  register_all();
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
