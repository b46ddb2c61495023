// model::perplexity against a brute-force reference on stories260K (../shared/models): every
// chunk fed one token at a time through the decode path, each scored row's -log p computed
// from scratch in double. Batching (pieces below n_ctx, chunks side by side) must not change it.
#include "model/perplexity.h"

#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>

#include "model/generate.h"

namespace fairkv::model {
namespace {

namespace fs = std::filesystem;
const fs::path kModel = fs::path(FAIRKV_SHARED_DIR) / "models/stories260K.gguf";

const char* kText =
    "Once upon a time, there was a little girl named Lily. She loved to play outside in the "
    "park with her dog, Max. One day, Lily and Max found a big red ball under a tree. They "
    "played with the ball all day long, and when the sun went down, they went home happy. "
    "The next morning, Lily's mom made pancakes. Lily ate them all and said thank you.";

// The reference: llama-perplexity's definition written out plainly.
double brute_force_ppl(const Model& m, kernels::ThreadPool& pool,
                       const std::vector<int32_t>& tokens, int n_ctx, int n_chunks) {
  const size_t V = size_t(m.config.n_vocab);
  double nll = 0;
  int64_t count = 0;
  for (int c = 0; c < n_chunks; ++c) {
    std::vector<int32_t> chunk(tokens.begin() + c * n_ctx, tokens.begin() + (c + 1) * n_ctx);
    if (m.tokenizer.add_bos()) chunk[0] = m.tokenizer.bos();
    GenerateOptions opt;  // Float32 activations, f32 cache
    const std::vector<int32_t> forced(chunk.begin() + 1, chunk.end() - 1);
    const auto rows = teacher_force(m, pool, {chunk[0]}, forced, opt);  // rows 0..n_ctx-2
    for (int pos = n_ctx / 2; pos < n_ctx - 1; ++pos) {
      const float* row = rows.data() + size_t(pos) * V;
      double mx = row[0], sum = 0;
      for (size_t i = 0; i < V; ++i) mx = std::max(mx, double(row[i]));
      for (size_t i = 0; i < V; ++i) sum += std::exp(double(row[i]) - mx);
      nll += std::log(sum) + mx - double(row[chunk[size_t(pos) + 1]]);
      ++count;
    }
  }
  return std::exp(nll / double(count));
}

TEST(Perplexity, MatchesBruteForceForEveryBatching) {
  if (!fs::exists(kModel)) GTEST_SKIP() << "no shared model at " << kModel;
  const auto m = Model::load(kModel.string());
  kernels::ThreadPool pool(2);
  const auto tokens = m->tokenizer.encode(kText, m->tokenizer.add_bos());
  const int n_ctx = 16;
  ASSERT_GE(tokens.size(), size_t(3 * n_ctx));
  const int n_chunks = int(tokens.size()) / n_ctx;
  const double ref = brute_force_ppl(*m, pool, tokens, n_ctx, n_chunks);

  PerplexityOptions opt;
  opt.n_ctx = n_ctx;
  opt.activations = kernels::Activations::Float32;
  for (int n_batch : {2048, 5, 8, 16, 32}) {
    opt.n_batch = n_batch;
    std::vector<int> seen;
    const auto r = perplexity(*m, pool, tokens, opt, [&](int i, double) { seen.push_back(i); });
    EXPECT_EQ(r.n_chunks, n_chunks);
    EXPECT_EQ(r.count, int64_t(n_chunks) * (n_ctx - n_ctx / 2 - 1));
    ASSERT_EQ(r.running.size(), size_t(n_chunks));
    for (int i = 0; i < n_chunks; ++i) EXPECT_EQ(seen[size_t(i)], i);
    EXPECT_DOUBLE_EQ(r.running.back(), r.ppl());
    // Prefill and decode paths sum in different orders: float32 noise only.
    EXPECT_NEAR(r.ppl(), ref, 1e-4 * ref) << "n_batch " << n_batch;
    EXPECT_GT(r.error(), 0);
  }
}

TEST(Perplexity, ChunkLimitAndRunningEstimates) {
  if (!fs::exists(kModel)) GTEST_SKIP() << "no shared model at " << kModel;
  const auto m = Model::load(kModel.string());
  kernels::ThreadPool pool(2);
  const auto tokens = m->tokenizer.encode(kText, m->tokenizer.add_bos());
  PerplexityOptions opt;
  opt.n_ctx = 16;
  opt.n_chunks = 2;
  opt.activations = kernels::Activations::Float32;
  const auto r = perplexity(*m, pool, tokens, opt);
  ASSERT_EQ(r.running.size(), 2u);
  EXPECT_NEAR(r.running[0], brute_force_ppl(*m, pool, tokens, 16, 1), 1e-4 * r.running[0]);
  EXPECT_NEAR(r.running[1], brute_force_ppl(*m, pool, tokens, 16, 2), 1e-4 * r.running[1]);
}

TEST(Perplexity, RejectsShortTextsAndOddBatches) {
  if (!fs::exists(kModel)) GTEST_SKIP() << "no shared model at " << kModel;
  const auto m = Model::load(kModel.string());
  kernels::ThreadPool pool(1);
  const auto tokens = m->tokenizer.encode(kText, m->tokenizer.add_bos());
  PerplexityOptions opt;
  opt.n_ctx = int(tokens.size());  // one chunk's worth: llama-perplexity wants two
  EXPECT_THROW(perplexity(*m, pool, tokens, opt), std::invalid_argument);
  opt.n_ctx = 16;
  opt.n_batch = 20;  // above the context and not a multiple of it
  EXPECT_THROW(perplexity(*m, pool, tokens, opt), std::invalid_argument);
}

TEST(Perplexity, TokenNllIsTheLogSoftmax) {
  const float row[] = {1.0f, 2.0f, 3.0f, 0.5f};
  const double z = std::exp(1.0) + std::exp(2.0) + std::exp(3.0) + std::exp(0.5);
  EXPECT_NEAR(token_nll(row, 4, 1), std::log(z) - 2.0, 1e-6);
  EXPECT_NEAR(token_nll(row, 4, 2), std::log(z) - 3.0, 1e-6);
}

}  // namespace
}  // namespace fairkv::model
