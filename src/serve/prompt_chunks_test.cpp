// The cutting of prompts into chunks: the window in the last chunk, and a block-wise policy's
// compression after every block.
#include <gtest/gtest.h>

#include "serve/engine.h"

namespace fairkv::serve {
namespace {

TEST(PromptChunks, CutsEveryChunkAndKeepsTheWindowInTheLast) {
  EXPECT_EQ(prompt_chunk_ends(10, 16, 8), (std::vector<int64_t>{10}));
  EXPECT_EQ(prompt_chunk_ends(32, 16, 8), (std::vector<int64_t>{16, 32}));
  EXPECT_EQ(prompt_chunk_ends(35, 16, 8), (std::vector<int64_t>{16, 27, 35}));
  EXPECT_EQ(prompt_chunk_ends(20, 16, 8), (std::vector<int64_t>{12, 20}));
  EXPECT_EQ(prompt_chunk_ends(17, 16, 0), (std::vector<int64_t>{16, 17}));
  EXPECT_EQ(prompt_chunk_ends(9, 8, 8), (std::vector<int64_t>{1, 9}));
  for (int64_t n = 1; n < 80; ++n)
    for (int64_t c : {4, 8, 16})
      for (int64_t w : {0, 4}) {
        const auto e = prompt_chunk_ends(n, c, w);
        ASSERT_EQ(e.back(), n);
        int64_t b = 0;
        for (int64_t x : e) {
          EXPECT_GT(x, b) << n << " " << c << " " << w;
          EXPECT_LE(x - b, c);
          b = x;
        }
        const int64_t last = e.back() - (e.size() > 1 ? e[e.size() - 2] : 0);
        EXPECT_GE(last, std::min(w, n));
      }
}

TEST(PromptChunks, BlockwiseCompressesAfterEveryBlock) {
  // EpiCache, block 24, window 8, chunks of 16: blocks end at 24, 48, 60 (prefill_block_ends);
  // each block is cut into chunks whose last holds the window: 16 + 8, 16 + 8, 12.
  kv::CompressionConfig c;
  c.policy = kv::Policy::EpiCache;
  c.budget = 12;
  c.window = 8;
  c.epicache_block = 24;
  EXPECT_EQ(
      prompt_chunks(60, 16, c),
      (std::vector<PromptChunk>{{16, false}, {24, true}, {40, false}, {48, true}, {60, true}}));
  // A one-shot policy compresses after the last chunk only.
  c.policy = kv::Policy::SnapKV;
  EXPECT_EQ(prompt_chunks(35, 16, c),
            (std::vector<PromptChunk>{{16, false}, {27, false}, {35, true}}));
}

}  // namespace
}  // namespace fairkv::serve
