// The in-process backend: R ranks as threads sharing memory.
//
// A collective is: every rank publishes its buffer pointers, a barrier, every rank does its part
// straight from the other ranks' buffers, a barrier. all_reduce_sum gives each rank a slice of the
// elements and sums that slice over the ranks in order 0..R-1, so the result does not depend on
// thread timing. Barriers spin briefly, then sleep on a futex (std::atomic::wait): decode calls
// all-reduce twice per layer per token, and a kernel wake-up per barrier would cost about as much
// as the sum itself.
//
// A failure breaks the group: every collective that waits, or starts later, throws CommError with
// the first failure's message. Most code wants run_ranks (comm.h), which does the bookkeeping.
#pragma once

#include <memory>
#include <string>

#include "comm/comm.h"

namespace fairkv::comm {

class ThreadGroup {
 public:
  explicit ThreadGroup(int size);  // size >= 1, else std::invalid_argument
  ~ThreadGroup();
  ThreadGroup(const ThreadGroup&) = delete;
  ThreadGroup& operator=(const ThreadGroup&) = delete;

  int size() const;

  // The communicator of `rank`; use it only from that rank's thread.
  Communicator& comm(int rank);

  // Breaks the group: waiting and later collectives throw CommError(message). The first call
  // wins; returns whether this was it. Call it from a thread that is not inside a collective.
  bool fail(int rank, const std::string& message);

  // `rank` has finished its work normally: a collective that would need it can never complete,
  // so it throws instead of waiting ("rank <r> returned while rank <s> waits in a collective").
  void leave(int rank);

  // The rank whose fail() (or abort()) came first, or -1, and its message ("" if none).
  int failed_rank() const;
  std::string failure() const;

  struct State;

 private:
  std::unique_ptr<State> state_;
};

}  // namespace fairkv::comm
