// A fixed pool of worker threads for data-parallel loops (-t N).
#pragma once

#include <cstdint>
#include <functional>
#include <memory>

namespace fairkv::kernels {

// More threads than this cannot help any machine fairkv runs on, and each one costs a stack.
inline constexpr int kMaxThreads = 1024;

class ThreadPool {
 public:
  // n_threads in [1, kMaxThreads] (else std::invalid_argument); the caller's thread is one of
  // them. Throws std::runtime_error, with every started worker joined, when the system refuses
  // a thread.
  explicit ThreadPool(int n_threads);
  ~ThreadPool();
  ThreadPool(const ThreadPool&) = delete;
  ThreadPool& operator=(const ThreadPool&) = delete;

  int size() const;
  // Runs fn(begin, end, thread) over [0, n) split into contiguous chunks, one per thread (chunk
  // sizes differ by at most one; thread 0 is the caller), and returns when all are done. The
  // first exception a chunk throws is rethrown here once every chunk has finished. Not
  // reentrant: fn must not call parallel_for on the same pool. A worker that has not started by
  // the time the caller is done with chunk 0 (descheduled by another process) is left out, and
  // the caller runs its chunk, under the worker's index: one chunk per index, one at a time.
  // Workers spin ~0.2 ms after a job before sleeping, so back-to-back calls (decode) start in well
  // under a microsecond.
  void parallel_for(int64_t n, const std::function<void(int64_t, int64_t, int)>& fn);
  // The same over chunks of `grain` indices with work stealing: thread t owns the t-th
  // contiguous share of the chunks and runs it front to back (the same sweep as parallel_for);
  // a thread that finishes early takes chunks from the back of the others' shares. A thread
  // slowed down (another process on its core) then no longer holds everyone up.
  void parallel_for_dynamic(int64_t n, int64_t grain,
                            const std::function<void(int64_t, int64_t, int)>& fn);

 private:
  void run(int64_t n, int64_t grain, const std::function<void(int64_t, int64_t, int)>& fn);
  void stop_workers();
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace fairkv::kernels
