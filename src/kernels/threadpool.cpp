// Persistent worker threads with a low-latency fork/join.
//
// Decode calls parallel_for about ten times per layer per token, each for some tens of
// microseconds of work, so waking sleeping threads through the kernel every time would cost as
// much as the work. Workers therefore spin on a generation counter for a short while after each
// job (long enough to cover the gap between two matmuls of one layer) and only then sleep on it
// with a futex (std::atomic::wait). The caller runs chunk 0 itself and spins on the done count.
//
// A worker that has not started a job by the time the caller is through with its own part is
// left out of it: on a machine shared with other processes a worker can sit descheduled for a
// whole scheduler slice (milliseconds), and waiting for it at each of a token's hundreds of
// dispatches made decode several times slower than one thread. Each worker's slot records, per
// job, whether the worker joined first or the caller closed it out first (one compare-and-swap
// each, so exactly one wins); the caller runs the chunks of the workers it closed out (static
// chunks; dynamic ones it has already stolen) and waits only for those that joined.
#include "kernels/threadpool.h"

#include <algorithm>
#include <atomic>
#include <exception>
#include <mutex>
#include <stdexcept>
#include <string>
#include <system_error>
#include <thread>
#include <vector>

#include "kernels/clock.h"

namespace fairkv::kernels {

namespace {

// About 200 us of pause instructions (a pause is ~25 ns on Zen 4, ~40 ns on recent Intel): covers
// the gaps between the kernels of a layer and between tokens, yet gives the core back soon when
// the engine is idle or the machine is oversubscribed.
constexpr int kSpinIters = 1 << 13;

}  // namespace

struct ThreadPool::Impl {
  int n_threads = 1;
  std::vector<std::thread> workers;

  // Job description, written by the caller before bumping `generation`.
  const std::function<void(int64_t, int64_t, int)>* fn = nullptr;
  int64_t n = 0;
  int64_t grain = 0;  // 0: one static chunk per thread; else chunks of grain, with stealing

  // parallel_for_dynamic: each thread's share of the chunks as [begin, end) packed in one word
  // (begin in the low half), so that the owner taking from the front and a thief taking from
  // the back agree through a single compare-and-swap.
  struct alignas(64) Share {
    std::atomic<uint64_t> range{0};
  };
  std::unique_ptr<Share[]> shares;
  static uint64_t pack(uint64_t b, uint64_t e) { return b | (e << 32); }

  // Takes chunk `front ? begin : end - 1` of share s; false when the share is empty.
  bool take(int s, bool front, int64_t& chunk) {
    std::atomic<uint64_t>& r = shares[size_t(s)].range;
    uint64_t v = r.load(std::memory_order_relaxed);
    for (;;) {
      const uint64_t b = v & 0xffffffffu, e = v >> 32;
      if (b >= e) return false;
      const uint64_t nv = front ? pack(b + 1, e) : pack(b, e - 1);
      if (r.compare_exchange_weak(v, nv, std::memory_order_relaxed)) {
        chunk = int64_t(front ? b : e - 1);
        return true;
      }
    }
  }

  // Per worker and job g: (g << 2) | kOpen, then kJoined (the worker's CAS won) or kClosed (the
  // caller's did).
  static constexpr uint64_t kOpen = 0, kJoined = 1, kClosed = 2;
  struct alignas(64) Slot {
    std::atomic<uint64_t> state{0};
  };
  std::unique_ptr<Slot[]> slots;
  bool settle(int t, uint32_t g, uint64_t to) {
    uint64_t open = (uint64_t(g) << 2) | kOpen;
    return slots[size_t(t)].state.compare_exchange_strong(open, (uint64_t(g) << 2) | to,
                                                          std::memory_order_acq_rel);
  }

  alignas(64) std::atomic<uint32_t> generation{0};
  alignas(64) std::atomic<int> finished{0};  // workers that joined the current job and are done
  alignas(64) std::atomic<bool> stop{false};

  std::mutex error_mutex;
  std::exception_ptr error;  // the first exception a worker's chunk threw, rethrown by the caller

  void run_chunk(int thread) {
    try {
      if (grain == 0) {
        const int64_t begin = n * thread / n_threads;
        const int64_t end = n * (thread + 1) / n_threads;
        if (begin < end) (*fn)(begin, end, thread);
        return;
      }
      // Own share front to back (one sequential sweep), then the others' from their backs.
      int64_t c = 0;
      while (take(thread, true, c)) (*fn)(c * grain, std::min(n, (c + 1) * grain), thread);
      for (int k = 1; k < n_threads; ++k) {
        const int victim = (thread + k) % n_threads;
        while (take(victim, false, c)) (*fn)(c * grain, std::min(n, (c + 1) * grain), thread);
      }
    } catch (...) {
      std::lock_guard<std::mutex> lock(error_mutex);
      if (!error) error = std::current_exception();
    }
  }

  void worker_loop(int thread) {
    uint32_t seen = 0;
    for (;;) {
      uint32_t g = generation.load(std::memory_order_acquire);
      for (int i = 0; g == seen && i < kSpinIters; ++i) {
        cpu_relax();
        g = generation.load(std::memory_order_acquire);
      }
      while (g == seen) {
        generation.wait(seen, std::memory_order_acquire);
        g = generation.load(std::memory_order_acquire);
      }
      seen = g;
      if (stop.load(std::memory_order_acquire)) return;
      if (!settle(thread, g, kJoined)) continue;  // too late: the caller has done our part
      run_chunk(thread);
      finished.fetch_add(1, std::memory_order_acq_rel);
      finished.notify_one();
    }
  }
};

ThreadPool::ThreadPool(int n_threads) : impl_(std::make_unique<Impl>()) {
  if (n_threads < 1 || n_threads > kMaxThreads) {
    throw std::invalid_argument("threads: expected 1 to " + std::to_string(kMaxThreads) + ", got " +
                                std::to_string(n_threads));
  }
  impl_->n_threads = n_threads;
  impl_->shares = std::make_unique<Impl::Share[]>(size_t(n_threads));
  impl_->slots = std::make_unique<Impl::Slot[]>(size_t(n_threads));
  impl_->workers.reserve(size_t(n_threads - 1));
  try {
    for (int t = 1; t < n_threads; ++t) {
      impl_->workers.emplace_back([impl = impl_.get(), t] { impl->worker_loop(t); });
    }
  } catch (const std::system_error& e) {
    // The workers already started must be joined before their std::thread objects die.
    stop_workers();
    throw std::runtime_error("threads: could not start " + std::to_string(n_threads) +
                             " threads (" + e.what() + ")");
  }
}

void ThreadPool::stop_workers() {
  impl_->stop.store(true, std::memory_order_release);
  impl_->generation.fetch_add(1, std::memory_order_acq_rel);
  impl_->generation.notify_all();
  for (auto& w : impl_->workers) w.join();
  impl_->workers.clear();
}

ThreadPool::~ThreadPool() {
  stop_workers();
}

int ThreadPool::size() const {
  return impl_->n_threads;
}

void ThreadPool::parallel_for(int64_t n, const std::function<void(int64_t, int64_t, int)>& fn) {
  run(n, 0, fn);
}

void ThreadPool::parallel_for_dynamic(int64_t n, int64_t grain,
                                      const std::function<void(int64_t, int64_t, int)>& fn) {
  if (grain < 1) {
    throw std::invalid_argument("parallel_for_dynamic: grain must be at least 1, got " +
                                std::to_string(grain));
  }
  run(n, grain, fn);
}

void ThreadPool::run(int64_t n, int64_t grain,
                     const std::function<void(int64_t, int64_t, int)>& fn) {
  Impl& p = *impl_;
  if (n <= 0) return;
  if (p.n_threads == 1 || n == 1 || (grain > 0 && grain >= n)) {
    fn(0, n, 0);
    return;
  }
  p.fn = &fn;
  p.n = n;
  p.grain = grain;
  if (grain > 0) {
    const int64_t n_chunks = (n + grain - 1) / grain;
    if (n_chunks > int64_t(0xffffffffu)) {
      throw std::invalid_argument("parallel_for_dynamic: more than 2^32 chunks");
    }
    for (int t = 0; t < p.n_threads; ++t) {
      p.shares[size_t(t)].range.store(Impl::pack(uint64_t(n_chunks * t / p.n_threads),
                                                 uint64_t(n_chunks * (t + 1) / p.n_threads)),
                                      std::memory_order_relaxed);
    }
  }
  const uint32_t g = p.generation.load(std::memory_order_relaxed) + 1;
  for (int t = 1; t < p.n_threads; ++t) {
    p.slots[size_t(t)].state.store((uint64_t(g) << 2) | Impl::kOpen, std::memory_order_relaxed);
  }
  p.finished.store(0, std::memory_order_relaxed);
  p.generation.store(g, std::memory_order_release);
  // notify_all is a futex syscall only when some worker sleeps (libstdc++ counts waiters).
  p.generation.notify_all();
  p.run_chunk(0);
  int joined = 0;
  for (int t = 1; t < p.n_threads; ++t) {
    if (!p.settle(t, g, Impl::kClosed)) {
      ++joined;
    } else if (grain == 0) {
      p.run_chunk(t);  // its static chunk, under its index: the worker will not run it
    }
  }
  int done = p.finished.load(std::memory_order_acquire);
  for (int i = 0; done != joined && i < kSpinIters; ++i) {
    cpu_relax();
    done = p.finished.load(std::memory_order_acquire);
  }
  while (done != joined) {
    p.finished.wait(done, std::memory_order_acquire);
    done = p.finished.load(std::memory_order_acquire);
  }
  if (p.error) {
    std::exception_ptr e;
    std::swap(e, p.error);
    std::rethrow_exception(e);
  }
}

}  // namespace fairkv::kernels
