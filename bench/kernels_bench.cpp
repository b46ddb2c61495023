// Kernel throughput: matmul for TinyLlama-1.1B's shapes (and ggml's other quantized types on
// its 2048 x 2048 projection) (decode: 1 token, memory-bound, reported
// as weight bytes/s; prefill: 128 tokens, compute-bound, reported as FLOP/s) for every weight
// type, both activation modes where they differ, 1 and 2 threads; a streaming-read reference for
// the machine's bandwidth; the thread pool's fork/join latency.
//
// Decode runs rotate over enough copies of the matrix to exceed the last-level cache, as a whole
// model does (2.2 GB of weights per token), so bytes/s is DRAM bandwidth and not L3's.
//
// Run: build-*/bench/kernels_bench --benchmark_filter=... (names: stream/thr<t>/pages<2M|4K>,
// pool/thr<t>, tinyllama/<type>/<decode|prefill128>/pages<2M|4K>/thr<t>/<activations> (all 155
// projections of the model, tok/s), matmul/<type>/<rows>x<cols>/tok<n>/thr<t>/<activations>,
// smollm2/<type>/<rows>x<cols>/tok<n>/thr2/like-ggml/<fastest|invariant> (kernels::Batching)).
#include <benchmark/benchmark.h>
#include <sys/mman.h>

#include <cstdlib>
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
    if (is_ggml_quant(t)) {  // no K-quant quantizer: random blocks with sane scales
      fill_random_blocks(t, 42, data.data(), rows * cols);
    } else {
      for (int64_t r = 0; r < rows; ++r) {
        for (float& v : row) v = dist(rng);
        quantize_row(t, row.data(), data.data() + size_t(r) * row_bytes(t, cols), cols);
      }
    }
    w.copies.push_back(std::move(data));
  }
  while (w.copies.size() < n_copies) w.copies.push_back(w.copies.front());
  return w;
}

// from_memory: rotate over copies of the weights whatever the token count (a model's decode step
// reads each matrix from memory), else only for decode (n_tokens < 8).
void bm_matmul(benchmark::State& state, DType t, int64_t rows, int64_t cols, int64_t n_tokens,
               int threads, Activations act, Batching batching, bool from_memory) {
  const bool decode = n_tokens < 8;
  const Weights& w = weights(t, rows, cols, decode || from_memory);
  std::vector<float> x(size_t(n_tokens * cols)), y(size_t(n_tokens * rows));
  std::mt19937 rng(7);
  std::normal_distribution<float> dist(0.0f, 1.0f);
  for (float& v : x) v = dist(rng);
  ThreadPool& p = pool(threads);
  size_t i = 0;
  for (auto _ : state) {
    const WeightMatrix m{t, rows, cols, w.copies[i].data(), 0};
    matmul(m, x.data(), n_tokens, y.data(), p, act, batching);
    benchmark::DoNotOptimize(y.data());
    benchmark::ClobberMemory();
    i = (i + 1) % w.copies.size();
  }
  state.SetBytesProcessed(int64_t(state.iterations()) * int64_t(w.bytes));
  state.counters["FLOP/s"] = benchmark::Counter(double(2 * rows * cols * n_tokens),
                                                benchmark::Counter::kIsIterationInvariantRate);
}

// The machine's streaming-read bandwidth: each thread sums its part of a 1 GiB array, backed by
// 2 MiB pages or by 4 KiB pages (what an mmap of the model file gets: the hardware prefetchers
// stop at every 4 KiB page boundary, which costs some bandwidth).
struct Buffer {
  float* data = nullptr;
  size_t n = 0;
  Buffer(size_t count, bool huge) : n(count) {
    const size_t bytes = n * sizeof(float);
    data = static_cast<float*>(std::aligned_alloc(size_t(2) << 20, bytes));
    if (!data) throw std::bad_alloc();
    madvise(data, bytes, huge ? MADV_HUGEPAGE : MADV_NOHUGEPAGE);
    for (size_t i = 0; i < n; ++i) data[i] = 1.0f;
  }
  ~Buffer() { std::free(data); }
  Buffer(const Buffer&) = delete;
  Buffer& operator=(const Buffer&) = delete;
};

void bm_stream(benchmark::State& state, int threads, bool huge) {
  Buffer a(size_t(1) << 28, huge);
  ThreadPool& p = pool(threads);
  std::vector<double> partial(static_cast<size_t>(threads));
  for (auto _ : state) {
    // Blocks of 64 floats, four independent 16-float sums (GCC/Clang vector extension), so that
    // neither the adds nor their latency are the limit.
    p.parallel_for(int64_t(a.n / 64), [&](int64_t b, int64_t e, int th) {
      using v16 = float __attribute__((vector_size(64)));
      v16 s0 = {}, s1 = {}, s2 = {}, s3 = {};
      for (int64_t i = b; i < e; ++i) {
        const auto* q = reinterpret_cast<const v16*>(a.data + i * 64);
        s0 += q[0];
        s1 += q[1];
        s2 += q[2];
        s3 += q[3];
      }
      const v16 s = (s0 + s1) + (s2 + s3);
      double sum = 0;
      for (int j = 0; j < 16; ++j) sum += s[j];
      partial[size_t(th)] = sum;
    });
    benchmark::DoNotOptimize(partial.data());
  }
  state.SetBytesProcessed(int64_t(state.iterations()) * int64_t(a.n * sizeof(float)));
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

// Every projection of TinyLlama-1.1B (22 layers of q, k, v, o, gate, up, down, then the output
// matrix) laid out back to back in one buffer, as in a GGUF file: 2.2 GB at F16. Random contents
// (one matrix per shape, copied), since speed does not depend on the values. Backed by 2 MiB
// pages (a loader that reads the file into anonymous memory) or 4 KiB pages (as an mmap of the
// file gets), which changes the bandwidth a core reaches.
struct Model {
  DType type{};
  bool huge = false;
  Buffer* buf = nullptr;
  std::vector<size_t> offsets;
  std::vector<Shape> shapes;
  size_t bytes = 0;
};

const Model& tinyllama(DType t, bool huge) {
  static Model m;
  if (m.buf && m.type == t && m.huge == huge) return m;
  delete m.buf;
  m = Model{};
  m.type = t;
  m.huge = huge;
  const Shape layer[] = {{2048, 2048}, {256, 2048},  {256, 2048}, {2048, 2048},
                         {5632, 2048}, {5632, 2048}, {2048, 5632}};
  for (int l = 0; l < 22; ++l) m.shapes.insert(m.shapes.end(), std::begin(layer), std::end(layer));
  m.shapes.push_back({32000, 2048});
  for (const Shape& s : m.shapes) {
    m.offsets.push_back(m.bytes);
    m.bytes += row_bytes(t, s.cols) * size_t(s.rows);
  }
  m.buf = new Buffer((m.bytes + 3) / 4, huge);
  auto* base = reinterpret_cast<uint8_t*>(m.buf->data);
  for (size_t i = 0; i < m.shapes.size(); ++i) {
    const Weights& w = weights(t, m.shapes[i].rows, m.shapes[i].cols, false);
    std::memcpy(base + m.offsets[i], w.copies.front().data(), w.bytes);
  }
  return m;
}

// One token (decode) or a batch of prompt tokens (prefill) through every projection: the matmul
// part of a forward pass, as tokens/s.
void bm_model(benchmark::State& state, DType t, bool huge, int64_t n_tokens, int threads,
              Activations act) {
  const Model& m = tinyllama(t, huge);
  const auto* base = reinterpret_cast<const uint8_t*>(m.buf->data);
  std::vector<float> x(size_t(n_tokens * 32000)), y(size_t(n_tokens * 32000));
  std::mt19937 rng(7);
  std::normal_distribution<float> dist(0.0f, 1.0f);
  for (float& v : x) v = dist(rng);
  ThreadPool& p = pool(threads);
  for (auto _ : state) {
    for (size_t i = 0; i < m.shapes.size(); ++i) {
      const WeightMatrix w{t, m.shapes[i].rows, m.shapes[i].cols, base + m.offsets[i], 0};
      matmul(w, x.data(), n_tokens, y.data(), p, act);
    }
    benchmark::DoNotOptimize(y.data());
    benchmark::ClobberMemory();
  }
  state.SetBytesProcessed(int64_t(state.iterations()) * int64_t(m.bytes));
  state.counters["tok/s"] =
      benchmark::Counter(double(n_tokens), benchmark::Counter::kIsIterationInvariantRate);
}

void register_all() {
  // TinyLlama-1.1B: q/o 2048x2048, k/v 256x2048, gate/up 5632x2048, down 2048x5632, output
  // 32000x2048.
  const Shape shapes[] = {{2048, 2048}, {256, 2048}, {5632, 2048}, {2048, 5632}, {32000, 2048}};
  const DType types[] = {DType::F32, DType::F16, DType::BF16, DType::Q8_0, DType::Q4_0};
  for (int th : {1, 2}) {
    for (bool huge : {true, false}) {
      const std::string name = "stream/thr" + std::to_string(th) + (huge ? "/pages2M" : "/pages4K");
      benchmark::RegisterBenchmark(name.c_str(), bm_stream, th, huge)
          ->UseRealTime()
          ->Unit(benchmark::kMillisecond);
    }
    benchmark::RegisterBenchmark(("pool/thr" + std::to_string(th)).c_str(), bm_pool, th)
        ->UseRealTime();
  }
  for (DType t : {DType::F16, DType::BF16, DType::Q8_0, DType::Q4_0}) {
    for (bool huge : {false, true}) {
      for (int64_t n : {int64_t(1), int64_t(128)}) {
        if (n > 1 && !huge) continue;  // prefill is compute-bound: pages do not matter
        for (int th : {1, 2}) {
          for (Activations act : {Activations::Float32, Activations::LikeGgml}) {
            const std::string name = std::string("tinyllama/") + dtype_name(t) +
                                     (n == 1 ? "/decode" : "/prefill128") +
                                     (huge ? "/pages2M" : "/pages4K") + "/thr" +
                                     std::to_string(th) + "/" + activations_name(act);
            benchmark::RegisterBenchmark(name.c_str(), bm_model, t, huge, n, th, act)
                ->UseRealTime()
                ->Unit(benchmark::kMillisecond);
          }
        }
      }
    }
  }
  // ggml's other quantized types on the q/o projection's 2048 x 2048: decode and prefill.
  for (DType t : kAllDTypes) {
    if (!is_ggml_quant(t)) continue;
    for (int64_t n : {int64_t(1), int64_t(128)}) {
      for (int th : {1, 2}) {
        for (Activations act : {Activations::Float32, Activations::LikeGgml}) {
          const std::string name = std::string("matmul/") + dtype_name(t) + "/2048x2048/tok" +
                                   std::to_string(n) + "/thr" + std::to_string(th) + "/" +
                                   activations_name(act);
          benchmark::RegisterBenchmark(name.c_str(), bm_matmul, t, 2048, 2048, n, th, act,
                                       Batching::Fastest, false)
              ->UseRealTime()
              ->Unit(n == 1 ? benchmark::kMicrosecond : benchmark::kMillisecond);
        }
      }
    }
  }
  // Batch invariance's cost: SmolLM2-135M's projections (q/o 576x576, gate/up 1536x576, down
  // 576x1536, output 49152x576) for a decode step of 1..32 sequences, weights from memory.
  const Shape smollm2[] = {{576, 576}, {1536, 576}, {576, 1536}, {49152, 576}};
  for (DType t : {DType::Q4_1, DType::Q8_0}) {
    for (const Shape& s : smollm2) {
      for (int64_t n : {1, 4, 8, 16, 32}) {
        for (Batching b : {Batching::Fastest, Batching::Invariant}) {
          const std::string name = std::string("smollm2/") + dtype_name(t) + "/" +
                                   std::to_string(s.rows) + "x" + std::to_string(s.cols) + "/tok" +
                                   std::to_string(n) + "/thr2/like-ggml/" + batching_name(b);
          benchmark::RegisterBenchmark(name.c_str(), bm_matmul, t, s.rows, s.cols, n, 2,
                                       Activations::LikeGgml, b, true)
              ->UseRealTime()
              ->Unit(benchmark::kMicrosecond);
        }
      }
    }
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
            benchmark::RegisterBenchmark(name.c_str(), bm_matmul, t, s.rows, s.cols, n, th, act,
                                         Batching::Fastest, false)
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
