// Latency of the collectives decode issues: all-reduce of one hidden-state row (embd floats: 8192
// for a 70B Llama, 4096 for 8B), twice per layer per token, and a bare barrier (the floor). The
// runtime adds the measured all-reduce cost to its emulated step time.
//
//   comm_bench                                    threads backend, R = 2 and 4 ranks
//   mpirun -np 2 [--oversubscribe] comm_bench     MPI backend (rank 0 reports; fixed iteration
//                                                 counts, so that every rank runs the same loop)
//
// Time is wall time per collective on rank 0, from its call to its return. Under Open MPI, add
// `--mca btl_vader_single_copy_mechanism none` for the faster small-message path (comm_mpi.h).
#include <benchmark/benchmark.h>

#include <cstdio>
#include <memory>
#include <vector>

#include "comm/comm.h"

namespace {

namespace fc = fairkv::comm;

// Args: R, n (floats; 0: barrier instead of all-reduce).
void BM_ThreadsAllReduce(benchmark::State& state) {
  const int R = int(state.range(0));
  const size_t n = size_t(state.range(1));
  fc::run_ranks(R, [&](fc::Communicator& c) {
    std::vector<float> v(n, 0.0f);
    auto step = [&] {
      if (n == 0) {
        c.barrier();
      } else {
        c.all_reduce_sum(v.data(), n);
      }
    };
    // Rank 0 is the benchmark's thread; the others run exactly as many collectives.
    if (c.rank() == 0) {
      for (auto _ : state) step();
    } else {
      for (benchmark::IterationCount i = 0; i < state.max_iterations; ++i) step();
    }
  });
  state.SetBytesProcessed(int64_t(state.iterations()) * int64_t(n * sizeof(float)));
  state.SetLabel(n == 0 ? "barrier" : "all_reduce_sum");
}
BENCHMARK(BM_ThreadsAllReduce)
    ->ArgsProduct({{2, 4}, {0, 4096, 8192}})
    ->ArgNames({"R", "n"})
    ->UseRealTime()
    ->Unit(benchmark::kMicrosecond);

fc::Communicator* g_mpi = nullptr;

void BM_MpiAllReduce(benchmark::State& state) {
  fc::Communicator& c = *g_mpi;
  const size_t n = size_t(state.range(0));
  std::vector<float> v(n, 0.0f);
  c.barrier();
  for (auto _ : state) {
    if (n == 0) {
      c.barrier();
    } else {
      c.all_reduce_sum(v.data(), n);
    }
  }
  state.SetBytesProcessed(int64_t(state.iterations()) * int64_t(n * sizeof(float)));
  state.SetLabel((n == 0 ? "barrier, R=" : "all_reduce_sum, R=") + std::to_string(c.size()));
}

// Ranks other than 0 run the benchmarks but print nothing.
class SilentReporter : public benchmark::BenchmarkReporter {
 public:
  bool ReportContext(const Context&) override { return true; }
  void ReportRuns(const std::vector<Run>&) override {}
};

}  // namespace

int main(int argc, char** argv) {
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  if (!fc::launched_by_mpirun()) {
    benchmark::RunSpecifiedBenchmarks();
    benchmark::Shutdown();
    return 0;
  }
  benchmark::ClearRegisteredBenchmarks();  // under mpirun every rank is one process: MPI only
  std::unique_ptr<fc::Communicator> comm;
  try {
    comm = fc::make_communicator("mpi");
  } catch (const std::exception& e) {
    std::fprintf(stderr, "comm_bench: %s\n", e.what());
    return 1;
  }
  g_mpi = comm.get();
  // Fixed counts: Google Benchmark's own choice of iterations depends on each rank's timing, and
  // ranks that ran different counts would wait for each other forever.
  benchmark::RegisterBenchmark("BM_MpiAllReduce", BM_MpiAllReduce)
      ->Arg(0)
      ->Arg(4096)
      ->Arg(8192)
      ->ArgName("n")
      ->Iterations(20000)
      ->UseRealTime()
      ->Unit(benchmark::kMicrosecond);
  if (comm->rank() == 0) {
    benchmark::RunSpecifiedBenchmarks();
  } else {
    SilentReporter silent;
    benchmark::RunSpecifiedBenchmarks(&silent);
  }
  benchmark::Shutdown();
  return 0;
}
