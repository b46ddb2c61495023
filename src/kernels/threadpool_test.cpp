// The pool must cover [0, n) exactly once in contiguous chunks, one per thread, every time, and
// survive many back-to-back dispatches (the decode pattern) and exceptions in a chunk.
#include <gtest/gtest.h>

#include <atomic>
#include <stdexcept>
#include <vector>

#include "kernels/threadpool.h"

namespace fairkv::kernels {
namespace {

TEST(ThreadPool, CoversEveryIndexExactlyOnce) {
  for (int threads : {1, 2, 3, 4, 7}) {
    ThreadPool pool(threads);
    EXPECT_EQ(pool.size(), threads);
    for (int64_t n : {0, 1, 2, 3, 5, 7, 8, 64, 100, 1001, 65536}) {
      std::vector<std::atomic<int>> hits(static_cast<size_t>(n));
      std::vector<std::atomic<int>> chunks(static_cast<size_t>(threads));
      pool.parallel_for(n, [&](int64_t b, int64_t e, int t) {
        ASSERT_GE(t, 0);
        ASSERT_LT(t, threads);
        ASSERT_LT(b, e);
        chunks[size_t(t)].fetch_add(1);
        for (int64_t i = b; i < e; ++i) hits[size_t(i)].fetch_add(1);
      });
      for (int64_t i = 0; i < n; ++i) ASSERT_EQ(hits[size_t(i)].load(), 1) << n << " " << i;
      for (int t = 0; t < threads; ++t) ASSERT_LE(chunks[size_t(t)].load(), 1);
    }
  }
}

TEST(ThreadPool, ChunksAreBalancedAndOrderedByThread) {
  ThreadPool pool(3);
  std::vector<std::pair<int64_t, int64_t>> range(3, {-1, -1});
  pool.parallel_for(10, [&](int64_t b, int64_t e, int t) { range[size_t(t)] = {b, e}; });
  // Contiguous chunks in thread order whose sizes differ by at most one.
  EXPECT_EQ(range[0].first, 0);
  EXPECT_EQ(range[0].second, range[1].first);
  EXPECT_EQ(range[1].second, range[2].first);
  EXPECT_EQ(range[2].second, 10);
  for (auto [b, e] : range) {
    EXPECT_GE(e - b, 3);
    EXPECT_LE(e - b, 4);
  }
}

TEST(ThreadPool, ManyBackToBackDispatches) {
  ThreadPool pool(2);
  std::vector<int64_t> data(1000, 0);
  for (int it = 0; it < 20000; ++it) {
    pool.parallel_for(int64_t(data.size()), [&](int64_t b, int64_t e, int) {
      for (int64_t i = b; i < e; ++i) ++data[size_t(i)];
    });
  }
  for (int64_t v : data) ASSERT_EQ(v, 20000);
}

TEST(ThreadPool, ExceptionInAChunkReachesTheCaller) {
  ThreadPool pool(3);
  EXPECT_THROW(pool.parallel_for(30,
                                 [&](int64_t b, int64_t, int) {
                                   if (b >= 10) throw std::runtime_error("chunk failed");
                                 }),
               std::runtime_error);
  // The pool still works afterwards.
  std::atomic<int64_t> sum{0};
  pool.parallel_for(30, [&](int64_t b, int64_t e, int) {
    for (int64_t i = b; i < e; ++i) sum += i;
  });
  EXPECT_EQ(sum.load(), 435);
}

TEST(ThreadPool, DynamicChunksCoverEveryIndexExactlyOnce) {
  for (int threads : {1, 2, 3, 5}) {
    ThreadPool pool(threads);
    for (int64_t n : {0, 1, 2, 7, 64, 1000, 4097}) {
      for (int64_t grain : {1, 3, 16, 5000}) {
        std::vector<std::atomic<int>> hits(static_cast<size_t>(n));
        std::atomic<int> bad_chunk{0};
        pool.parallel_for_dynamic(n, grain, [&](int64_t b, int64_t e, int t) {
          // Whole chunks of `grain` on the grid, the last one possibly short.
          if (b % grain != 0 || (e - b != grain && e != n) || t < 0 || t >= threads) ++bad_chunk;
          for (int64_t i = b; i < e; ++i) hits[size_t(i)].fetch_add(1);
        });
        EXPECT_EQ(bad_chunk.load(), 0);
        for (int64_t i = 0; i < n; ++i) {
          ASSERT_EQ(hits[size_t(i)].load(), 1) << threads << " " << n << " " << grain << " " << i;
        }
      }
    }
    EXPECT_THROW(pool.parallel_for_dynamic(10, 0, [](int64_t, int64_t, int) {}),
                 std::invalid_argument);
  }
}

TEST(ThreadPool, DynamicChunksRethrow) {
  ThreadPool pool(2);
  EXPECT_THROW(pool.parallel_for_dynamic(100, 7,
                                         [&](int64_t b, int64_t, int) {
                                           if (b == 49) throw std::runtime_error("chunk failed");
                                         }),
               std::runtime_error);
  std::atomic<int64_t> sum{0};
  pool.parallel_for_dynamic(100, 7, [&](int64_t b, int64_t e, int) {
    for (int64_t i = b; i < e; ++i) sum += i;
  });
  EXPECT_EQ(sum.load(), 4950);
}

TEST(ThreadPool, RejectsZeroThreads) {
  EXPECT_THROW(ThreadPool(0), std::invalid_argument);
}

TEST(ThreadPool, CountsOutsideTheLimitAreRefusedWithTheLimit) {
  // A count that no machine needs is refused before any thread starts, naming the range.
  for (int n : {0, -3, kMaxThreads + 1, 100000}) {
    try {
      ThreadPool pool(n);
      ADD_FAILURE() << n << " threads accepted";
    } catch (const std::invalid_argument& e) {
      EXPECT_NE(std::string(e.what()).find("1 to " + std::to_string(kMaxThreads)),
                std::string::npos)
          << e.what();
    }
  }
}

}  // namespace
}  // namespace fairkv::kernels
