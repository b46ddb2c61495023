// The small random-weight models of every quantized type fairkv reads
// (data/models/quant/quant-256.<type>.gguf) against llama.cpp's goldens (data/golden/quant,
// written by scripts/make-goldens): teacher-forced on llama.cpp's 32 greedy ids, the top-10
// logits of every step and the full row after the prompt stay within a per-type bound; greedy
// ids are equal up to the first step where llama.cpp's own top-2 gap is below that bound.
// Random weights give flat logits (|logit| < 1.3, gaps down to 4e-5), so the logits are the
// real comparison and free-running ids only a weak one (data/golden/README.md).
#include <gtest/gtest.h>

#include <cstdio>
#include <filesystem>
#include <fstream>

#include "kernels/threadpool.h"
#include "model/generate.h"
#include "model/llama_golden.h"
#include "model/model.h"

namespace fairkv::model {
namespace {

namespace fs = std::filesystem;
const fs::path kSource = FAIRKV_SOURCE_DIR;

struct QuantCase {
  const char* type;
  double bound;  // on max |fairkv - llama.cpp| over the compared logits
};

class QuantGolden : public ::testing::TestWithParam<QuantCase> {};

TEST_P(QuantGolden, TeacherForcedLogitsAndGreedyIdsMatchLlamaCpp) {
  const QuantCase& p = GetParam();
  const fs::path model =
      kSource / "data/models/quant" / (std::string("quant-256.") + p.type + ".gguf");
  const fs::path golden_file = kSource / "data/golden/quant" / (std::string(p.type) + ".json");
  ASSERT_TRUE(fs::exists(model) && fs::exists(golden_file)) << model << " ships with the repo";
  const auto m = Model::load(model.string(), gguf::Load::Read);
  const golden::Golden g = golden::read_golden(golden_file);
  std::ifstream jf(golden_file);
  const std::string prompt = nlohmann::json::parse(jf).at("prompt").get<std::string>();
  EXPECT_EQ(m->tokenizer.encode(prompt, m->tokenizer.add_bos()), g.prompt_ids);

  kernels::ThreadPool pool(2);
  GenerateOptions opt;
  opt.kv_type = kv::KvType::F32;
  opt.activations = kernels::Activations::LikeGgml;
  opt.sampler.temp = 0;
  const std::vector<int32_t> forced(g.ids.begin(), g.ids.end() - 1);
  const auto rows = teacher_force(*m, pool, g.prompt_ids, forced, opt);
  const size_t V = size_t(m->config.n_vocab);
  ASSERT_EQ(rows.size(), g.steps.size() * V);
  ASSERT_EQ(g.steps[0].logits.size(), V) << "the golden's full row after the prompt";
  const golden::Comparison c = golden::compare(g, rows, V);

  opt.n_predict = int(g.ids.size());
  const GenerateResult r = generate(*m, pool, g.prompt_ids, opt);
  size_t same = 0;
  while (same < r.output.size() && same < g.ids.size() && r.output[same] == g.ids[same]) ++same;
  std::printf("%s: max |diff| %.3g (step %d), argmax %d/%zu, greedy ids equal for %zu/%zu\n",
              p.type, c.max_err, c.worst_step, c.same_argmax, g.steps.size(), same, g.ids.size());

  EXPECT_LT(c.max_err, p.bound) << "at step " << c.worst_step;
  // A different argmax only where llama.cpp's own choice was closer than the error allows.
  for (int i : c.other)
    EXPECT_LT(g.steps[size_t(i)].gap(), p.bound)
        << "step " << i << ": another argmax than llama.cpp's " << g.ids[size_t(i)]
        << " where its top-2 gap is " << g.steps[size_t(i)].gap();
  // Greedy ids: up to the first difference both saw the same tokens, so it comes at a step
  // whose teacher-forced argmax differs, checked above.
  if (same < g.ids.size() && same < r.output.size()) {
    EXPECT_LT(g.steps[same].gap(), p.bound) << "first different greedy id at step " << same;
  }
}

// Measured max |diff| (logits below 1.3): Q4_1, Q5_0, Q5_1 0 (bit for bit); Q8_0 1.8e-7,
// Q3_K 2.4e-7, Q2_K and Q6_K 3.6e-7, Q4_K and Q5_K 4.8e-7 (the last bits of float sums);
// Q4_K_M 3.7e-3. Every type: argmax and greedy ids 32/32. Bounds about 4x the largest of each.
// Q4_K_M's error is no kernel's: the pure Q4_K and Q6_K files match to 5e-7, and a pure Q4_K
// file with only attn_v (or only attn_k) in Q6_K shows it too (1.8e-3, 2.7e-3), as does Q4_1
// with attn_v in Q8_0 (4.7e-3), while Q6_K with attn_v in Q4_K or Q4_1 with attn_k in Q8_0
// match to 5e-7: some rounding of llama.cpp's depends on the mix of types in the attention (not
// found yet; fairkv treats each matrix alone, and its kernels match each type on its own).
// Q4_1 through the VNNI kernels of Q8_0 / Q4_0 sums a block's products in another order than
// ggml: a few Q8_1 activation roundings land the other way, 2.4e-3 at most over the 32 steps,
// argmax and greedy ids still 32/32; its bound is Q4_K_M's.
INSTANTIATE_TEST_SUITE_P(Types, QuantGolden,
                         ::testing::Values(QuantCase{"Q2_K", 2e-6}, QuantCase{"Q3_K", 2e-6},
                                           QuantCase{"Q4_1", 1.5e-2}, QuantCase{"Q4_K", 2e-6},
                                           QuantCase{"Q4_K_M", 1.5e-2}, QuantCase{"Q5_0", 2e-6},
                                           QuantCase{"Q5_1", 2e-6}, QuantCase{"Q5_K", 2e-6},
                                           QuantCase{"Q6_K", 2e-6}, QuantCase{"Q8_0", 2e-6}),
                         [](const auto& info) { return std::string(info.param.type); });

}  // namespace
}  // namespace fairkv::model
