// The threads communicator against serial references: all-reduce is the rank-order sum bit for
// bit, all-gather and broadcast move the right bytes, and every way a job can go wrong (a rank
// throws, aborts, returns early, or calls a different collective) ends it with a message naming
// the rank instead of a hang. The MPI backend has the same checks in comm_mpi_check_main.cpp.
#include <gtest/gtest.h>

#include <bit>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <future>
#include <mutex>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "comm/comm.h"
#include "comm/comm_threads.h"
#include "comm/test_util.h"

namespace fairkv::comm {
namespace {

using testing::gather_byte;
using testing::mix;
using testing::serial_sum;
using testing::value;

// Runs body on a thread and fails the whole test binary if it does not finish: a hang in the
// code under test must end the test run with a message, not stall it until ctest's timeout.
template <class F>
void bounded(F body) {
  std::packaged_task<void()> task(std::move(body));
  auto done = task.get_future();
  std::thread t(std::move(task));
  if (done.wait_for(std::chrono::seconds(60)) == std::future_status::timeout) {
    std::fprintf(stderr, "comm_test: the collectives hung (no result after 60 s)\n");
    std::_Exit(3);
  }
  t.join();
  done.get();
}

const std::vector<size_t> kSizes = {0,   1,   2,   15,   16,   17,   31,    33,   100,
                                    511, 512, 513, 1000, 4097, 8192, 12345, 65537};

TEST(CommThreads, AllReduceIsTheSerialRankOrderSumBitForBit) {
  for (int R = 1; R <= 8; ++R) {
    uint64_t salt = 100 * uint64_t(R);
    for (size_t n : kSizes) {
      ++salt;
      std::vector<std::vector<float>> got(static_cast<size_t>(R));
      bounded([&] {
        run_ranks(R, [&](Communicator& c) {
          std::vector<float> v(n);
          for (size_t i = 0; i < n; ++i) v[i] = value(c.rank(), i, salt);
          c.all_reduce_sum(v.data(), n);
          got[size_t(c.rank())] = std::move(v);
        });
      });
      for (int r = 0; r < R; ++r) {
        ASSERT_EQ(got[size_t(r)].size(), n);
        for (size_t i = 0; i < n; ++i) {
          ASSERT_EQ(std::bit_cast<uint32_t>(got[size_t(r)][i]),
                    std::bit_cast<uint32_t>(serial_sum(R, i, salt)))
              << "R=" << R << " n=" << n << " rank " << r << " element " << i;
        }
      }
    }
  }
}

// The inputs above are sensitive to the order: summing in reverse rank order changes some bits,
// so a backend that summed in thread-arrival order would fail the test above.
TEST(CommThreads, TheTestInputsDistinguishSummationOrders) {
  for (int R = 3; R <= 8; ++R) {
    int differ = 0;
    for (size_t i = 0; i < 8192; ++i) {
      float reverse = value(R - 1, i, 7);
      for (int r = R - 2; r >= 0; --r) reverse += value(r, i, 7);
      differ += std::bit_cast<uint32_t>(reverse) != std::bit_cast<uint32_t>(serial_sum(R, i, 7));
    }
    EXPECT_GT(differ, 100) << "R=" << R;
  }
}

TEST(CommThreads, AllGatherConcatenatesInRankOrder) {
  for (int R = 1; R <= 6; ++R) {
    for (size_t bytes : {size_t(0), size_t(1), size_t(5), size_t(64), size_t(1000)}) {
      for (bool in_place : {false, true}) {
        std::vector<std::vector<unsigned char>> got(static_cast<size_t>(R));
        bounded([&] {
          run_ranks(R, [&](Communicator& c) {
            std::vector<unsigned char> send(bytes), recv(bytes * size_t(R), 0xEE);
            for (size_t i = 0; i < bytes; ++i) send[i] = gather_byte(c.rank(), i);
            unsigned char* mine = recv.data() + size_t(c.rank()) * bytes;
            if (in_place) std::copy(send.begin(), send.end(), mine);
            c.all_gather(in_place ? mine : send.data(), bytes, recv.data());
            got[size_t(c.rank())] = std::move(recv);
          });
        });
        for (int r = 0; r < R; ++r) {
          for (int from = 0; from < R; ++from) {
            for (size_t i = 0; i < bytes; ++i) {
              ASSERT_EQ(got[size_t(r)][size_t(from) * bytes + i], gather_byte(from, i))
                  << "R=" << R << " bytes=" << bytes << " in_place=" << in_place << " rank " << r
                  << " slot " << from << " byte " << i;
            }
          }
        }
      }
    }
  }
}

TEST(CommThreads, BroadcastCopiesTheRootsBytesToEveryRank) {
  for (int R = 1; R <= 5; ++R) {
    for (int root = 0; root < R; ++root) {
      for (size_t bytes : {size_t(0), size_t(3), size_t(4096)}) {
        std::vector<std::vector<unsigned char>> got(static_cast<size_t>(R));
        bounded([&] {
          run_ranks(R, [&](Communicator& c) {
            std::vector<unsigned char> data(bytes);
            for (size_t i = 0; i < bytes; ++i) data[i] = (unsigned char)mix(c.rank() * 31 + i);
            c.broadcast(data.data(), bytes, root);
            got[size_t(c.rank())] = std::move(data);
          });
        });
        for (int r = 0; r < R; ++r) {
          for (size_t i = 0; i < bytes; ++i) {
            ASSERT_EQ(got[size_t(r)][i], (unsigned char)mix(uint64_t(root) * 31 + i))
                << "R=" << R << " root " << root << " rank " << r << " byte " << i;
          }
        }
      }
    }
  }
}

// Back-to-back collectives of every kind and changing sizes, as decode issues them: a rank that
// ran ahead into the next collective must not disturb one still finishing the previous.
TEST(CommThreads, ManyMixedCollectivesInARowStayCorrect) {
  for (int R : {2, 3, 4}) {
    std::mutex mu;
    std::vector<std::string> errors;
    bounded([&] {
      run_ranks(R, [&](Communicator& c) {
        std::vector<float> v;
        std::vector<int> gathered(static_cast<size_t>(R));
        for (int it = 0; it < 1000; ++it) {
          const size_t n = size_t(1 + (it * 37) % 300);
          const uint64_t salt = 5000 + uint64_t(it);
          v.resize(n);
          for (size_t i = 0; i < n; ++i) v[i] = value(c.rank(), i, salt);
          c.all_reduce_sum(v.data(), n);
          for (size_t i = 0; i < n; ++i) {
            if (std::bit_cast<uint32_t>(v[i]) != std::bit_cast<uint32_t>(serial_sum(R, i, salt))) {
              std::lock_guard<std::mutex> lock(mu);
              errors.push_back("iteration " + std::to_string(it) + " element " + std::to_string(i));
              return;
            }
          }
          if (it % 3 == 0) {
            const int mine = it * 10 + c.rank();
            c.all_gather(&mine, sizeof(int), gathered.data());
            for (int r = 0; r < R; ++r) {
              if (gathered[size_t(r)] != it * 10 + r) {
                std::lock_guard<std::mutex> lock(mu);
                errors.push_back("all_gather at iteration " + std::to_string(it));
                return;
              }
            }
          }
          if (it % 5 == 0) {
            int x = c.rank() == it % R ? it : -1;
            c.broadcast(&x, sizeof x, it % R);
            if (x != it) {
              std::lock_guard<std::mutex> lock(mu);
              errors.push_back("broadcast at iteration " + std::to_string(it));
              return;
            }
          }
          if (it % 11 == 0) c.barrier();
        }
      });
    });
    EXPECT_TRUE(errors.empty()) << "R=" << R << ": " << errors.front();
  }
}

// What the ranks that did not fail saw, and what run_ranks threw.
struct Outcome {
  std::vector<std::string> others;  // CommError messages of the other ranks, in any order
  std::string thrown;
  int thrown_rank = -2;
  std::exception_ptr cause;
};

Outcome run_failing_job(int R, const std::function<void(Communicator&)>& fn) {
  Outcome out;
  std::mutex mu;
  bounded([&] {
    try {
      run_ranks(R, [&](Communicator& c) {
        try {
          fn(c);
        } catch (const CommError& e) {
          if (e.rank() != c.rank()) {
            std::lock_guard<std::mutex> lock(mu);
            out.others.push_back(e.what());
          }
          throw;
        }
      });
    } catch (const CommError& e) {
      out.thrown = e.what();
      out.thrown_rank = e.rank();
      out.cause = e.cause();
    }
  });
  return out;
}

TEST(CommThreads, ARankThatThrowsEndsTheJobOnEveryRank) {
  for (int R = 2; R <= 6; ++R) {
    for (int bad = 0; bad < R; ++bad) {
      const Outcome out = run_failing_job(R, [&](Communicator& c) {
        std::vector<float> v(1000, 1.0f);
        for (int it = 0; it < 200; ++it) {
          if (it == 50 && c.rank() == bad) throw std::runtime_error("cannot load the shard");
          c.all_reduce_sum(v.data(), v.size());
        }
      });
      const std::string want = "rank " + std::to_string(bad) + " failed: cannot load the shard";
      EXPECT_EQ(out.thrown, want) << "R=" << R;
      EXPECT_EQ(out.thrown_rank, bad);
      ASSERT_TRUE(out.cause);
      EXPECT_THROW(std::rethrow_exception(out.cause), std::runtime_error);
      ASSERT_EQ(out.others.size(), size_t(R - 1)) << "every other rank's collective must throw";
      for (const auto& m : out.others) EXPECT_EQ(m, want);
    }
  }
}

TEST(CommThreads, ARankThatFailsBeforeAnyCollectiveStopsRanksWaitingInEachKind) {
  for (int kind = 0; kind < 4; ++kind) {
    const Outcome out = run_failing_job(4, [&](Communicator& c) {
      if (c.rank() == 3) throw std::invalid_argument("bad placement");
      std::vector<float> v(64, 1.0f), all(64 * 4);
      if (kind == 0) c.all_reduce_sum(v.data(), v.size());
      if (kind == 1) c.all_gather(v.data(), 64 * sizeof(float), all.data());
      if (kind == 2) c.broadcast(v.data(), 64 * sizeof(float), 3);
      if (kind == 3) c.barrier();
    });
    EXPECT_EQ(out.thrown, "rank 3 failed: bad placement") << "kind " << kind;
    EXPECT_EQ(out.others.size(), 3u);
  }
}

TEST(CommThreads, AbortEndsTheJobWithItsMessage) {
  const Outcome out = run_failing_job(3, [&](Communicator& c) {
    if (c.rank() == 1) c.abort("tensor blk.3.attn_q.weight is missing");
    c.barrier();
  });
  EXPECT_EQ(out.thrown, "rank 1 aborted: tensor blk.3.attn_q.weight is missing");
  EXPECT_EQ(out.thrown_rank, 1);
  ASSERT_EQ(out.others.size(), 2u);
  for (const auto& m : out.others) EXPECT_EQ(m, out.thrown);
}

TEST(CommThreads, AbortIsReportedEvenWhenTheAbortingRankCatchesIt) {
  const Outcome out = run_failing_job(2, [&](Communicator& c) {
    if (c.rank() == 0) {
      try {
        c.abort("out of memory");
      } catch (const CommError&) {
      }
      return;
    }
    c.barrier();
  });
  EXPECT_EQ(out.thrown, "rank 0 aborted: out of memory");
}

TEST(CommThreads, ARankThatReturnsEarlyDoesNotLeaveTheOthersWaiting) {
  const Outcome out = run_failing_job(3, [&](Communicator& c) {
    std::vector<float> v(16, 1.0f);
    const int count = c.rank() == 1 ? 3 : 10;
    for (int it = 0; it < count; ++it) c.all_reduce_sum(v.data(), v.size());
  });
  EXPECT_NE(out.thrown.find("rank 1 returned while rank "), std::string::npos) << out.thrown;
  EXPECT_NE(out.thrown.find("waits in a collective"), std::string::npos) << out.thrown;
  EXPECT_NE(out.thrown_rank, 1);
}

TEST(CommThreads, DifferentCollectivesOnDifferentRanksAreAnError) {
  const Outcome sizes = run_failing_job(2, [&](Communicator& c) {
    std::vector<float> v(11, 1.0f);
    c.all_reduce_sum(v.data(), c.rank() == 0 ? 10 : 11);
  });
  EXPECT_NE(sizes.thrown.find("ranks called different collectives: rank 0 called "
                              "all_reduce_sum(n=10), rank 1 called all_reduce_sum(n=11)"),
            std::string::npos)
      << sizes.thrown;

  const Outcome kinds = run_failing_job(3, [&](Communicator& c) {
    int x = 0;
    if (c.rank() == 2) {
      c.broadcast(&x, sizeof x, 0);
    } else {
      c.barrier();
    }
  });
  EXPECT_NE(kinds.thrown.find("rank 0 called barrier(), rank 2 called broadcast(bytes=4, root=0)"),
            std::string::npos)
      << kinds.thrown;
}

TEST(CommThreads, BroadcastFromARankOutsideTheGroupIsRejected) {
  bounded([&] {
    try {
      run_ranks(2, [](Communicator& c) {
        int x = 0;
        c.broadcast(&x, sizeof x, 2);
      });
      FAIL() << "no error";
    } catch (const CommError& e) {
      EXPECT_NE(std::string(e.what()).find("root 2 is not a rank of a group of 2"),
                std::string::npos)
          << e.what();
      EXPECT_THROW(std::rethrow_exception(e.cause()), std::invalid_argument);
    }
  });
}

TEST(CommThreads, AGroupCanBeDrivenByThreadsOfItsOwn) {
  ThreadGroup group(3);
  EXPECT_EQ(group.size(), 3);
  EXPECT_THROW(group.comm(3), std::out_of_range);
  std::vector<float> results(3);
  bounded([&] {
    std::vector<std::thread> threads;
    for (int r = 0; r < 3; ++r) {
      threads.emplace_back([&, r] {
        float x = float(r + 1);
        group.comm(r).all_reduce_sum(&x, 1);
        results[size_t(r)] = x;
      });
    }
    for (auto& t : threads) t.join();
  });
  EXPECT_EQ(results, std::vector<float>(3, 6.0f));
  EXPECT_EQ(group.failed_rank(), -1);

  // A failure reported from outside the collectives ends the next one on every rank.
  EXPECT_TRUE(group.fail(2, "rank 2 failed: lost its device"));
  EXPECT_FALSE(group.fail(0, "second"));
  EXPECT_EQ(group.failed_rank(), 2);
  EXPECT_EQ(group.failure(), "rank 2 failed: lost its device");
  float x = 1;
  try {
    group.comm(0).all_reduce_sum(&x, 1);
    FAIL() << "no error";
  } catch (const CommError& e) {
    EXPECT_STREQ(e.what(), "rank 2 failed: lost its device");
    EXPECT_EQ(e.rank(), 2);
  }
  EXPECT_THROW(ThreadGroup(0), std::invalid_argument);
}

TEST(CommThreads, RunRanksRejectsZeroRanks) {
  EXPECT_THROW(run_ranks(0, [](Communicator&) {}), std::invalid_argument);
}

TEST(Communicator, MakeCommunicatorThreadsIsOneRank) {
  auto c = make_communicator("threads");
  EXPECT_EQ(c->name(), "threads");
  EXPECT_EQ(c->rank(), 0);
  EXPECT_EQ(c->size(), 1);
  std::vector<float> v = {1.5f, -2.0f};
  c->all_reduce_sum(v.data(), v.size());
  EXPECT_EQ(v, (std::vector<float>{1.5f, -2.0f}));
  int send = 42, recv = 0;
  c->all_gather(&send, sizeof send, &recv);
  EXPECT_EQ(recv, 42);
  c->barrier();
  EXPECT_THROW(c->broadcast(&send, sizeof send, 1), std::invalid_argument);
  try {
    c->abort("why");
  } catch (const CommError& e) {
    EXPECT_STREQ(e.what(), "rank 0 aborted: why");
  }
}

// One rank of three alone, as the emulated bench times it: its own data in every slot, no waiting.
TEST(Communicator, SoloCommStandsInForOneRankOfSeveral) {
  SoloComm c(1, 3);
  EXPECT_EQ(c.rank(), 1);
  EXPECT_EQ(c.size(), 3);
  EXPECT_EQ(c.name(), "solo");
  std::vector<float> v = {1.5f, -2.0f};
  c.all_reduce_sum(v.data(), v.size());
  EXPECT_EQ(v, (std::vector<float>{1.5f, -2.0f}));
  int send = 42;
  std::vector<int> recv(3, 0);
  c.all_gather(&send, sizeof send, recv.data());
  EXPECT_EQ(recv, (std::vector<int>{42, 42, 42}));
  recv = {0, 7, 0};
  c.all_gather(&recv[1], sizeof send, recv.data());  // in place
  EXPECT_EQ(recv, (std::vector<int>{7, 7, 7}));
  c.barrier();
  c.broadcast(&send, sizeof send, 2);
  EXPECT_THROW(c.broadcast(&send, sizeof send, 3), std::invalid_argument);
  try {
    c.abort("why");
  } catch (const CommError& e) {
    EXPECT_STREQ(e.what(), "rank 1 aborted: why");
    EXPECT_EQ(e.rank(), 1);
  }
  EXPECT_THROW(SoloComm(3, 3), std::invalid_argument);
}

TEST(Communicator, UnknownKindNamesTheKinds) {
  try {
    make_communicator("nccl");
    FAIL() << "no error";
  } catch (const std::invalid_argument& e) {
    EXPECT_STREQ(e.what(), "communicator kind 'nccl': expected 'threads' or 'mpi'");
  }
  EXPECT_THROW(run_job("nccl", 2, [](Communicator&) {}), std::invalid_argument);
}

TEST(Communicator, MpiOutsideMpirunIsAClearError) {
  for (const char* var : {"OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMI_RANK", "PMIX_RANK"}) {
    unsetenv(var);
  }
  EXPECT_FALSE(launched_by_mpirun());
  try {
    make_communicator("mpi");
    FAIL() << "no error";
  } catch (const std::runtime_error& e) {
    const std::string want = mpi_built() ? "not started by mpirun" : "no MPI backend";
    EXPECT_NE(std::string(e.what()).find(want), std::string::npos) << e.what();
  }
}

TEST(Communicator, RunJobThreadsRunsEveryRank) {
  std::vector<int> seen(3, 0);
  bounded([&] {
    run_job("threads", 3, [&](Communicator& c) {
      EXPECT_EQ(c.size(), 3);
      EXPECT_EQ(c.name(), "threads");
      seen[size_t(c.rank())] = 1;
    });
  });
  EXPECT_EQ(seen, std::vector<int>(3, 1));
  EXPECT_THROW(run_job("threads", 0, [](Communicator&) {}), std::invalid_argument);
}

}  // namespace
}  // namespace fairkv::comm
