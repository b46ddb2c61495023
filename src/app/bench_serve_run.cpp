#include "app/bench_serve_run.h"

#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <deque>
#include <mutex>
#include <thread>

namespace fairkv::app::bench {

RunOutcome run_requests(const Target& target, const std::vector<BenchRequest>& requests,
                        const RunPlan& plan) {
  RunOutcome out;
  const size_t n = requests.size();
  out.results.resize(n);
  if (n == 0) return out;
  const std::vector<double> at =
      arrival_times(n, plan.rate, plan.arrival, plan.burstiness, plan.seed);
  // One client thread per slot: a worker takes the next arrived request when it is free, so the
  // number of workers is the concurrency cap.
  const size_t workers =
      std::min({n, plan.max_concurrency ? plan.max_concurrency : n, kMaxClients});
  std::mutex mu;
  std::condition_variable cv;
  std::deque<size_t> arrived;
  bool closed = false;
  size_t in_flight = 0, done = 0, next_report = std::max<size_t>(1, n / 10);

  using Clock = std::chrono::steady_clock;
  const auto start = Clock::now();
  Clock::time_point last_end = start;
  std::vector<std::thread> pool;
  pool.reserve(workers);
  for (size_t w = 0; w < workers; ++w)
    pool.emplace_back([&] {
      for (;;) {
        size_t i;
        {
          std::unique_lock lock(mu);
          cv.wait(lock, [&] { return closed || !arrived.empty(); });
          if (arrived.empty()) return;
          i = arrived.front();
          arrived.pop_front();
          out.peak_concurrency = std::max(out.peak_concurrency, ++in_flight);
        }
        RequestResult r = send_request(target, requests[i]);
        std::lock_guard lock(mu);
        out.results[i] = std::move(r);
        --in_flight;
        last_end = std::max(last_end, Clock::now());
        if (plan.progress && ++done >= next_report) {
          std::fprintf(stderr, "\r  %zu/%zu requests done", done, n);
          next_report = done + std::max<size_t>(1, n / 10);
        }
      }
    });
  for (size_t i = 0; i < n; ++i) {
    std::this_thread::sleep_until(
        start + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(at[i])));
    std::lock_guard lock(mu);
    arrived.push_back(i);
    cv.notify_one();
  }
  {
    std::lock_guard lock(mu);
    closed = true;
    cv.notify_all();
  }
  for (std::thread& t : pool) t.join();
  if (plan.progress) std::fprintf(stderr, "\r%40s\r", "");
  out.duration = std::chrono::duration<double>(last_end - start).count();
  return out;
}

}  // namespace fairkv::app::bench
