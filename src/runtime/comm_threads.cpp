// In-process ranks: threads sharing memory, meeting at a barrier that a failure can break.
#include <condition_variable>
#include <cstring>
#include <exception>
#include <mutex>
#include <thread>
#include <vector>

#include "runtime/comm.h"

namespace fairkv::runtime {

namespace {

struct Group {
  explicit Group(int n) : n(n), ptrs(static_cast<size_t>(n), nullptr) {}
  const int n;
  std::mutex mu;
  std::condition_variable cv;
  int arrived = 0;
  uint64_t generation = 0;
  bool broken = false;
  std::string why;
  std::vector<const void*> ptrs;  // what each rank published for the current collective

  void wait() {
    std::unique_lock lock(mu);
    if (broken) throw RankFailed(why);
    const uint64_t gen = generation;
    if (++arrived == n) {
      arrived = 0;
      ++generation;
      cv.notify_all();
      return;
    }
    cv.wait(lock, [&] { return generation != gen || broken; });
    if (generation == gen) throw RankFailed(why);
  }
  void fail(const std::string& message) {
    std::lock_guard lock(mu);
    if (!broken) why = message;
    broken = true;
    cv.notify_all();
  }
};

class ThreadComm : public Communicator {
 public:
  ThreadComm(Group& g, int rank) : g_(g), rank_(rank) {}
  int rank() const override { return rank_; }
  int size() const override { return g_.n; }
  std::string name() const override { return "threads"; }
  void barrier() override { g_.wait(); }

  void all_reduce_sum(float* data, size_t n) override {
    g_.ptrs[size_t(rank_)] = data;
    g_.wait();
    // Every rank sums all buffers in rank order: the same bits everywhere.
    sum_.assign(n, 0.0f);
    for (int r = 0; r < g_.n; ++r) {
      const float* src = static_cast<const float*>(g_.ptrs[size_t(r)]);
      for (size_t i = 0; i < n; ++i) sum_[i] += src[i];
    }
    g_.wait();  // nobody overwrites a buffer another rank is still reading
    std::memcpy(data, sum_.data(), n * sizeof(float));
  }

  void all_gather(const void* send, size_t bytes, void* recv) override {
    g_.ptrs[size_t(rank_)] = send;
    g_.wait();
    for (int r = 0; r < g_.n; ++r)
      std::memcpy(static_cast<char*>(recv) + size_t(r) * bytes, g_.ptrs[size_t(r)], bytes);
    g_.wait();
  }

 private:
  Group& g_;
  int rank_;
  std::vector<float> sum_;
};

}  // namespace

void run_ranks(int n_ranks, const std::function<void(Communicator&)>& fn) {
  if (n_ranks < 1) throw std::invalid_argument("--devices: expected at least 1 rank");
  Group g(n_ranks);
  std::vector<std::exception_ptr> errors(static_cast<size_t>(n_ranks));
  std::vector<std::string> messages(static_cast<size_t>(n_ranks));
  auto body = [&](int r) {
    ThreadComm comm(g, r);
    try {
      fn(comm);
    } catch (const RankFailed&) {
      // Another rank's failure reached this one: that rank's error is the one to report.
    } catch (const std::exception& e) {
      errors[size_t(r)] = std::current_exception();
      messages[size_t(r)] = e.what();
      g.fail("rank " + std::to_string(r) + " failed: " + e.what());
    } catch (...) {
      errors[size_t(r)] = std::current_exception();
      messages[size_t(r)] = "unknown error";
      g.fail("rank " + std::to_string(r) + " failed");
    }
  };
  std::vector<std::thread> threads;
  for (int r = 1; r < n_ranks; ++r) threads.emplace_back(body, r);
  body(0);
  for (auto& t : threads) t.join();
  for (int r = 0; r < n_ranks; ++r)
    if (errors[size_t(r)])
      throw std::runtime_error("rank " + std::to_string(r) + " failed: " + messages[size_t(r)]);
}

}  // namespace fairkv::runtime
