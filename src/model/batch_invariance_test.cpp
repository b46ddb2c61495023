// Forward's Batching::Invariant: a sequence greedy-decoded alone and decoded in the same steps as
// 1..5 other sequences (at a different place among the decode items each step, beside prefill
// chunks of other prompts in the same run() call, its own prefill beside another's) gets
// bitwise the same logits at every step. Models of every kernel path: stories260K (F32), the
// quant-256 models (Q4_1 and Q8_0 through the VNNI kernels, Q4_K through qmatmul and, with
// Float32 activations, the dequantizing dot products) and the synthetic BF16 / F16 models.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstring>
#include <filesystem>
#include <memory>
#include <ostream>
#include <random>
#include <string>
#include <vector>

#include "kernels/threadpool.h"
#include "model/forward.h"
#include "model/model.h"

namespace fairkv::model {
namespace {

namespace fs = std::filesystem;
const fs::path kShared = FAIRKV_SHARED_DIR;
const fs::path kSource = FAIRKV_SOURCE_DIR;

struct Case {
  const char* name;
  fs::path path;
  kernels::Activations act;
};

void PrintTo(const Case& c, std::ostream* os) {
  *os << c.name;
}

int32_t argmax(const float* row, int64_t n) {
  return int32_t(std::max_element(row, row + n) - row);
}

std::vector<int32_t> random_prompt(size_t n, int32_t vocab, std::mt19937& rng) {
  std::uniform_int_distribution<int32_t> id(3, vocab - 1);
  std::vector<int32_t> p(n);
  for (int32_t& t : p) t = id(rng);
  return p;
}

// A sequence of the batch: its prompt goes in chunks of kChunk tokens, then it decodes greedily.
constexpr size_t kChunk = 4;
struct Seq {
  std::vector<int32_t> prompt;
  std::unique_ptr<kv::SequenceCache> cache;
  size_t fed = 0;      // prompt tokens consumed
  int32_t next = -1;   // the token to decode, once the prompt is in
  int start_step = 0;  // the step its prefill begins
};

std::unique_ptr<kv::SequenceCache> new_cache(const ModelConfig& c) {
  return std::make_unique<kv::SequenceCache>(c.n_layers, c.n_kv_heads, c.head_dim, kv::KvType::F32);
}

class BatchInvariance : public ::testing::TestWithParam<Case> {};

TEST_P(BatchInvariance, DecodeLogitsDoNotDependOnTheBatch) {
  const Case& p = GetParam();
  if (!fs::exists(p.path)) GTEST_SKIP() << "no model at " << p.path;
  const auto m = Model::load(p.path.string(), gguf::Load::Read);
  const ModelConfig& c = m->config;
  const int64_t V = c.n_vocab;
  constexpr int kSteps = 10;
  std::mt19937 rng(7);
  const std::vector<int32_t> prompt_a = random_prompt(9, int32_t(V), rng);

  // A alone, on one thread: its prefill, then kSteps greedy decode steps.
  std::vector<std::vector<float>> alone;
  {
    kernels::ThreadPool pool(1);
    Forward fwd(c, m->weights, pool, p.act, kernels::Batching::Invariant);
    const auto cache = new_cache(c);
    int32_t next = -1;
    BatchItem item{cache.get(), prompt_a, false};
    for (int s = 0; s <= kSteps; ++s) {
      const auto& out = fwd.run({&item, 1});
      alone.emplace_back(out.begin(), out.begin() + V);
      next = argmax(alone.back().data(), V);
      item.tokens = {&next, 1};
    }
  }

  // A with others, on two threads.
  kernels::ThreadPool pool(2);
  for (int others = 1; others <= 5; ++others) {
    Forward fwd(c, m->weights, pool, p.act, kernels::Batching::Invariant);
    const auto cache_a = new_cache(c);
    int32_t next_a = -1;
    std::vector<Seq> seqs(static_cast<size_t>(others));
    for (int j = 0; j < others; ++j) {
      seqs[size_t(j)].prompt = random_prompt(size_t(3 + 3 * j), int32_t(V), rng);
      seqs[size_t(j)].cache = new_cache(c);
      seqs[size_t(j)].start_step = j / 2;  // some join while the others decode
    }
    for (int s = 0; s <= kSteps; ++s) {
      // Decode items first, A among them at a place that moves; then the prefill chunks, A's own
      // prefill (step 0) among them.
      std::vector<BatchItem> batch;
      std::vector<Seq*> owner;  // null for A
      auto put = [&](size_t at, Seq* q, BatchItem item) {
        batch.insert(batch.begin() + ptrdiff_t(at), item);
        owner.insert(owner.begin() + ptrdiff_t(at), q);
      };
      for (Seq& q : seqs)
        if (q.fed == q.prompt.size()) put(batch.size(), &q, {q.cache.get(), {&q.next, 1}, false});
      if (s > 0)
        put(size_t(s * 3 + others) % (batch.size() + 1), nullptr, {cache_a.get(), {&next_a, 1}});
      const size_t first_chunk = batch.size();
      for (Seq& q : seqs) {
        if (s < q.start_step || q.fed == q.prompt.size()) continue;
        const size_t n = std::min(kChunk, q.prompt.size() - q.fed);
        put(batch.size(), &q, {q.cache.get(), {q.prompt.data() + q.fed, n}, false});
      }
      if (s == 0)
        put(first_chunk + std::min(size_t(others % 2), batch.size() - first_chunk), nullptr,
            {cache_a.get(), prompt_a, false});
      const size_t at_a = size_t(std::find(owner.begin(), owner.end(), nullptr) - owner.begin());

      const std::vector<float>& out = fwd.run(batch);
      ASSERT_EQ(out.size(), batch.size() * size_t(V));
      ASSERT_EQ(std::memcmp(&out[at_a * size_t(V)], alone[size_t(s)].data(), size_t(V) * 4), 0)
          << p.name << ": " << others << " other sequences, step " << s << ", A at item " << at_a
          << " of " << batch.size();
      next_a = argmax(&out[at_a * size_t(V)], V);
      for (size_t i = 0; i < batch.size(); ++i) {
        Seq* q = owner[i];
        if (!q) continue;
        if (q->fed < q->prompt.size()) q->fed += batch[i].tokens.size();
        if (q->fed == q->prompt.size()) q->next = argmax(&out[i * size_t(V)], V);
      }
    }
  }
}

INSTANTIATE_TEST_SUITE_P(
    Models, BatchInvariance,
    ::testing::Values(Case{"stories260K_float32", kShared / "models/stories260K.gguf",
                           kernels::Activations::Float32},
                      Case{"q4_1_like_ggml", kSource / "data/models/quant/quant-256.Q4_1.gguf",
                           kernels::Activations::LikeGgml},
                      Case{"q8_0_like_ggml", kSource / "data/models/quant/quant-256.Q8_0.gguf",
                           kernels::Activations::LikeGgml},
                      Case{"q4_k_like_ggml", kSource / "data/models/quant/quant-256.Q4_K.gguf",
                           kernels::Activations::LikeGgml},
                      Case{"q4_k_float32", kSource / "data/models/quant/quant-256.Q4_K.gguf",
                           kernels::Activations::Float32},
                      Case{"bf16_like_ggml", kShared / "models/synthetic/llama-gqa4-bf16.gguf",
                           kernels::Activations::LikeGgml},
                      Case{"f16_like_ggml", kShared / "models/synthetic/llama-gqa4-f16.gguf",
                           kernels::Activations::LikeGgml}),
    [](const ::testing::TestParamInfo<Case>& i) { return std::string(i.param.name); });

}  // namespace
}  // namespace fairkv::model
