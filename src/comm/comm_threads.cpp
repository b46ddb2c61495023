// In-process ranks: threads sharing memory, meeting at spin-then-sleep barriers that a failure
// breaks.
#include "comm/comm_threads.h"

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstring>
#include <mutex>
#include <stdexcept>
#include <system_error>
#include <thread>
#include <vector>

#include "kernels/clock.h"

namespace fairkv::comm {

namespace {

using kernels::cpu_relax;

// The barrier word: the generation (completed barriers, wrapping) in the low 30 bits, and two
// flags that end every wait: a rank failed, a rank left. One word, so a sleeping waiter is woken
// by either event and one futex serves both.
constexpr uint32_t kFailedBit = 1u << 31;
constexpr uint32_t kLeftBit = 1u << 30;
constexpr uint32_t kGenMask = kLeftBit - 1;
constexpr uint32_t kBrokenBits = kFailedBit | kLeftBit;

// Pauses, then yields, then sleeps on the futex. The pause spin has an adaptive length per rank,
// like an adaptive mutex: doubled (up to ~60 us; a pause is ~60 ns on Zen 3) while the barrier
// completes during the spin, halved (down to ~1 us) when it does not. On dedicated cores the
// spin covers the other ranks' arrivals (their load imbalance in the layer) and a barrier costs a
// fraction of a microsecond. When the rank everybody waits for shares this rank's core (a loaded
// machine), spinning only keeps it off that core: a fixed 15 us spin made every barrier cost
// 15 us there (measured on 2 shared cores), the adaptive one backs off to the yields, which let
// that rank run. With more ranks than cores that is always the case, so such a group never spins.
constexpr int kSpinMin = 16;
constexpr int kSpinStart = 256;
constexpr int kSpinMax = 1024;
constexpr int kYieldIters = 128;

int max_spin_for(int ranks) {
  const unsigned cores = std::thread::hardware_concurrency();
  return cores == 0 || unsigned(ranks) <= cores ? kSpinMax : 0;
}

enum class Op : uint32_t { kBarrier, kAllReduce, kAllGather, kBroadcast };

const char* op_name(Op op) {
  switch (op) {
    case Op::kBarrier:
      return "barrier";
    case Op::kAllReduce:
      return "all_reduce_sum";
    case Op::kAllGather:
      return "all_gather";
    case Op::kBroadcast:
      return "broadcast";
  }
  return "?";
}

// What one rank published for a collective. One cache line per rank: ranks write theirs at once.
struct alignas(64) Slot {
  const void* src = nullptr;
  void* dst = nullptr;
  size_t count = 0;  // floats for all_reduce_sum, bytes otherwise
  Op op = Op::kBarrier;
  int root = 0;
};

std::string describe(const Slot& s) {
  switch (s.op) {
    case Op::kBarrier:
      return "barrier()";
    case Op::kAllReduce:
      return "all_reduce_sum(n=" + std::to_string(s.count) + ")";
    case Op::kAllGather:
      return "all_gather(bytes_per_rank=" + std::to_string(s.count) + ")";
    case Op::kBroadcast:
      return "broadcast(bytes=" + std::to_string(s.count) + ", root=" + std::to_string(s.root) +
             ")";
  }
  return op_name(s.op);
}

class ThreadComm;

}  // namespace

struct ThreadGroup::State {
  explicit State(int n) : n(n), max_spin(max_spin_for(n)) {
    for (auto& s : slots) s.resize(size_t(n));
  }

  const int n;
  const int max_spin;
  // Slots by barrier generation parity: a rank that has left barrier g publishes for g + 1 into
  // the other half while slower ranks still read what was published for g.
  std::vector<Slot> slots[2];
  alignas(64) std::atomic<uint32_t> arrived{0};
  alignas(64) std::atomic<uint32_t> word{0};

  mutable std::mutex mu;  // guards the failure record below, written once
  std::string failure;
  int failed_rank = -1;
  int left_rank = -1;

  std::vector<std::unique_ptr<ThreadComm>> comms;

  uint32_t generation() const { return word.load(std::memory_order_acquire) & kGenMask; }

  bool fail(int rank, const std::string& message) {
    {
      std::lock_guard<std::mutex> lock(mu);
      if (failed_rank >= 0) return false;
      failure = message;
      failed_rank = rank;
    }
    word.fetch_or(kFailedBit, std::memory_order_release);
    word.notify_all();
    return true;
  }

  [[noreturn]] void throw_broken(uint32_t w, int rank) const {
    std::lock_guard<std::mutex> lock(mu);
    if (w & kFailedBit) throw CommError(failure, failed_rank);
    throw CommError("rank " + std::to_string(left_rank) + " returned while rank " +
                    std::to_string(rank) +
                    " waits in a collective (every rank must call the same collectives)");
  }

  // Barrier number `gen`. may_break: throw when the group breaks instead of waiting. The second
  // barrier of a collective passes false: every rank is then past the first one and will arrive,
  // and none may leave early while the others still read or write its buffers. spin: the calling
  // rank's adaptive pause count.
  void arrive_and_wait(int rank, uint32_t gen, bool may_break, int& spin) {
    if (may_break) {
      const uint32_t w = word.load(std::memory_order_acquire);
      if (w & kBrokenBits) throw_broken(w, rank);
    }
    if (arrived.fetch_add(1, std::memory_order_acq_rel) + 1 == uint32_t(n)) {
      arrived.store(0, std::memory_order_relaxed);
      uint32_t w = word.load(std::memory_order_relaxed);
      while (!word.compare_exchange_weak(w, (w & ~kGenMask) | ((w + 1) & kGenMask),
                                         std::memory_order_release, std::memory_order_relaxed)) {
      }
      word.notify_all();
      return;
    }
    for (int i = 0;; ++i) {
      const uint32_t w = word.load(std::memory_order_acquire);
      // Completion first: a rank may leave right after the last barrier it joined.
      if ((w & kGenMask) != gen) {
        spin = i < spin ? std::min(max_spin, 2 * spin)
                        : std::max(std::min(kSpinMin, max_spin), spin / 2);
        return;
      }
      if (may_break && (w & kBrokenBits)) throw_broken(w, rank);
      if (i < spin) {
        cpu_relax();
      } else if (i < spin + kYieldIters) {
        std::this_thread::yield();
      } else {
        word.wait(w, std::memory_order_acquire);
      }
    }
  }

  // The generation a rank is about to join cannot change before that rank arrives.
  uint32_t publish(int rank, const Slot& s) {
    const uint32_t gen = generation();
    slots[gen & 1][size_t(rank)] = s;
    return gen;
  }

  // Called after barrier `gen`: all ranks read the same slots, so all reach the same verdict.
  void check_same(uint32_t gen) const {
    const auto& v = slots[gen & 1];
    for (int r = 1; r < n; ++r) {
      const Slot& a = v[0];
      const Slot& b = v[size_t(r)];
      if (a.op != b.op || a.count != b.count || a.root != b.root) {
        throw CommError("ranks called different collectives: rank 0 called " + describe(a) +
                        ", rank " + std::to_string(r) + " called " + describe(b));
      }
    }
  }
};

namespace {

class ThreadComm final : public Communicator {
 public:
  ThreadComm(ThreadGroup::State& s, int rank)
      : s_(s), rank_(rank), spin_(std::min(kSpinStart, s.max_spin)) {}

  int rank() const override { return rank_; }
  int size() const override { return s_.n; }
  std::string name() const override { return "threads"; }

  void barrier() override {
    if (s_.n == 1) return;
    const uint32_t gen = s_.publish(rank_, {nullptr, nullptr, 0, Op::kBarrier, 0});
    s_.arrive_and_wait(rank_, gen, true, spin_);
    s_.check_same(gen);
  }

  void all_reduce_sum(float* data, size_t n) override {
    const int R = s_.n;
    if (R == 1) return;
    const uint32_t gen = s_.publish(rank_, {data, data, n, Op::kAllReduce, 0});
    s_.arrive_and_wait(rank_, gen, true, spin_);
    s_.check_same(gen);
    // This rank's slice, in whole cache lines so that no two ranks write one line.
    const size_t chunk = ((n + size_t(R) - 1) / size_t(R) + 15) / 16 * 16;
    const size_t begin = std::min(n, size_t(rank_) * chunk);
    const size_t end = std::min(n, begin + chunk);
    const auto& slots = s_.slots[gen & 1];
    constexpr size_t kBlock = 512;
    float acc[kBlock];
    for (size_t i0 = begin; i0 < end; i0 += kBlock) {
      const size_t m = std::min(kBlock, end - i0);
      const float* first = static_cast<const float*>(slots[0].dst) + i0;
      for (size_t j = 0; j < m; ++j) acc[j] = first[j];
      for (int r = 1; r < R; ++r) {
        const float* src = static_cast<const float*>(slots[size_t(r)].dst) + i0;
        for (size_t j = 0; j < m; ++j) acc[j] += src[j];
      }
      for (int r = 0; r < R; ++r) {
        std::memcpy(static_cast<float*>(slots[size_t(r)].dst) + i0, acc, m * sizeof(float));
      }
    }
    s_.arrive_and_wait(rank_, (gen + 1) & kGenMask, false, spin_);
  }

  void all_gather(const void* send, size_t bytes_per_rank, void* recv) override {
    const int R = s_.n;
    char* out = static_cast<char*>(recv);
    if (R == 1) {
      if (bytes_per_rank > 0 && send != recv) std::memcpy(recv, send, bytes_per_rank);
      return;
    }
    const uint32_t gen = s_.publish(rank_, {send, recv, bytes_per_rank, Op::kAllGather, 0});
    s_.arrive_and_wait(rank_, gen, true, spin_);
    s_.check_same(gen);
    // Each rank pulls into its own recv: it writes only memory it owns.
    const auto& slots = s_.slots[gen & 1];
    for (int r = 0; r < R; ++r) {
      char* dst = out + size_t(r) * bytes_per_rank;
      if (bytes_per_rank > 0 && slots[size_t(r)].src != dst) {
        std::memcpy(dst, slots[size_t(r)].src, bytes_per_rank);
      }
    }
    s_.arrive_and_wait(rank_, (gen + 1) & kGenMask, false, spin_);
  }

  void broadcast(void* data, size_t bytes, int root) override {
    const int R = s_.n;
    if (root < 0 || root >= R) {
      throw std::invalid_argument("broadcast: root " + std::to_string(root) +
                                  " is not a rank of a group of " + std::to_string(R));
    }
    if (R == 1) return;
    const uint32_t gen = s_.publish(rank_, {data, data, bytes, Op::kBroadcast, root});
    s_.arrive_and_wait(rank_, gen, true, spin_);
    s_.check_same(gen);
    const void* src = s_.slots[gen & 1][size_t(root)].src;
    if (bytes > 0 && rank_ != root && src != data) std::memcpy(data, src, bytes);
    s_.arrive_and_wait(rank_, (gen + 1) & kGenMask, false, spin_);
  }

  [[noreturn]] void abort(const std::string& why) override {
    const std::string message = "rank " + std::to_string(rank_) + " aborted: " + why;
    s_.fail(rank_, message);
    throw CommError(message, rank_);
  }

 private:
  ThreadGroup::State& s_;
  const int rank_;
  int spin_;  // pauses before yielding, adapted by every barrier this rank waits in
};

}  // namespace

ThreadGroup::ThreadGroup(int size) {
  if (size < 1) {
    throw std::invalid_argument("ThreadGroup: expected at least 1 rank, got " +
                                std::to_string(size));
  }
  state_ = std::make_unique<State>(size);
  for (int r = 0; r < size; ++r) state_->comms.push_back(std::make_unique<ThreadComm>(*state_, r));
}

ThreadGroup::~ThreadGroup() = default;

int ThreadGroup::size() const {
  return state_->n;
}

Communicator& ThreadGroup::comm(int rank) {
  if (rank < 0 || rank >= state_->n) {
    throw std::out_of_range("ThreadGroup::comm: rank " + std::to_string(rank) +
                            " is not in a group of " + std::to_string(state_->n));
  }
  return *state_->comms[size_t(rank)];
}

bool ThreadGroup::fail(int rank, const std::string& message) {
  return state_->fail(rank, message);
}

void ThreadGroup::leave(int rank) {
  State& s = *state_;
  {
    std::lock_guard<std::mutex> lock(s.mu);
    if (s.left_rank < 0) s.left_rank = rank;
  }
  s.word.fetch_or(kLeftBit, std::memory_order_release);
  s.word.notify_all();
}

int ThreadGroup::failed_rank() const {
  std::lock_guard<std::mutex> lock(state_->mu);
  return state_->failed_rank;
}

std::string ThreadGroup::failure() const {
  std::lock_guard<std::mutex> lock(state_->mu);
  return state_->failure;
}

void run_ranks(int ranks, const std::function<void(Communicator&)>& fn) {
  if (ranks < 1) {
    throw std::invalid_argument("run_ranks: expected at least 1 rank, got " +
                                std::to_string(ranks));
  }
  ThreadGroup group(ranks);
  std::vector<std::exception_ptr> errors(static_cast<size_t>(ranks));
  auto body = [&](int r) {
    try {
      fn(group.comm(r));
      group.leave(r);
    } catch (const CommError& e) {
      if (e.rank() == r) {  // this rank's own abort(): already the job's message
        errors[size_t(r)] = std::current_exception();
        group.fail(r, e.what());
      } else {
        const std::string message = "rank " + std::to_string(r) + " failed: " + e.what();
        errors[size_t(r)] =
            std::make_exception_ptr(CommError(message, r, std::current_exception()));
        group.fail(r, message);
      }
    } catch (const std::exception& e) {
      const std::string message = "rank " + std::to_string(r) + " failed: " + e.what();
      errors[size_t(r)] = std::make_exception_ptr(CommError(message, r, std::current_exception()));
      group.fail(r, message);
    } catch (...) {
      const std::string message = "rank " + std::to_string(r) + " failed: unknown exception";
      errors[size_t(r)] = std::make_exception_ptr(CommError(message, r, std::current_exception()));
      group.fail(r, message);
    }
  };
  std::vector<std::thread> threads;
  threads.reserve(size_t(ranks - 1));
  try {
    for (int r = 1; r < ranks; ++r) threads.emplace_back(body, r);
  } catch (const std::system_error& e) {
    // The started ranks would wait for the missing ones forever: break the group first.
    const int missing = int(threads.size()) + 1;
    group.fail(missing, "rank " + std::to_string(missing) +
                            " failed: could not start its thread: " + e.what());
    for (auto& t : threads) t.join();
    throw CommError("run_ranks: could not start the thread of rank " + std::to_string(missing) +
                        " of " + std::to_string(ranks) + ": " + e.what(),
                    missing);
  }
  body(0);
  for (auto& t : threads) t.join();
  const int first = group.failed_rank();
  if (first < 0) return;
  if (errors[size_t(first)]) std::rethrow_exception(errors[size_t(first)]);
  // The failing rank caught its own abort and returned: report the group's record.
  throw CommError(group.failure(), first);
}

}  // namespace fairkv::comm
