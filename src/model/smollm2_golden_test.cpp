// SmolLM2-135M-Instruct (Q4_1) against llama.cpp: for each prompt of
// data/golden/smollm2/greedy (written by scripts/make-goldens), fairkv's greedy continuation
// equals llama.cpp's 64 ids, and teacher-forced on those ids its top-10 logits stay within a
// bound of llama.cpp's at every step. Both run as llama.cpp did: f32 KV cache, activations
// rounded to Q8_1 as ggml's CPU matmuls round them (Activations::LikeGgml), 2 threads.
// Skips when the model is not in models/ (scripts/get-model fetches it).
#include <gtest/gtest.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <memory>
#include <nlohmann/json.hpp>

#include "kernels/threadpool.h"
#include "model/generate.h"
#include "model/llama_golden.h"
#include "model/model.h"
#include "model/perplexity.h"

namespace fairkv::model {
namespace {

namespace fs = std::filesystem;
const fs::path kSource = FAIRKV_SOURCE_DIR;
const fs::path kModel = kSource / "models/SmolLM2-135M-Instruct.Q4_1.gguf";
const fs::path kGreedy = kSource / "data/golden/smollm2/greedy";

// The error is rounding noise, not one wrong operation: fairkv's LikeGgml mode reproduces
// ggml's roundings (bit for bit on the one-layer models of quant_golden_test), but its kernels
// sum the blocks of a row in another order, and over 30 layers a last-bit difference moves an
// activation across a Q8_1 rounding boundary now and then; each such flip feeds the next layer.
// For scale: fairkv's own LikeGgml and Float32 modes differ by up to 1.3 on these logits.
// Measured max |fairkv - llama.cpp| over the top-10 logits of the 64 steps (logits up to 40):
// chatml 1.17, english 0.61, code 0.72, list 0.70, paragraph 0.62; the mean 0.12 to 0.21.
constexpr double kMaxBound = 2.5;
constexpr double kMeanBound = 0.5;
// The same noise decides close calls: teacher-forced, fairkv's argmax differed from llama.cpp's
// at 12 of the 320 steps, all where llama.cpp's own top-2 gap was at most 0.131 (english step
// 57); 40 steps have a gap below kCloseCall. A different argmax is accepted only there.
constexpr double kCloseCall = 0.3;

const Model& smollm2() {
  static const std::unique_ptr<Model> m = Model::load(kModel.string(), gguf::Load::Read);
  return *m;
}

GenerateOptions like_llama_cpp() {
  GenerateOptions opt;
  opt.kv_type = kv::KvType::F32;
  opt.activations = kernels::Activations::LikeGgml;
  opt.sampler.temp = 0;
  return opt;
}

class SmolLM2Golden : public ::testing::TestWithParam<const char*> {
 protected:
  void SetUp() override {
    if (!fs::exists(kModel))
      GTEST_SKIP() << "no SmolLM2 model at " << kModel << " (scripts/get-model fetches it)";
    g_ = golden::read_golden(kGreedy / (std::string(GetParam()) + ".json"));
  }
  golden::Golden g_;
};

// Teacher forcing on llama.cpp's ids: every step's top-10 logits within kMaxBound (on average
// within kMeanBound), and the same argmax wherever llama.cpp's own top-2 gap is kCloseCall or
// more (a closer call is decided by rounding noise, either engine may pick either token there;
// such steps are counted).
TEST_P(SmolLM2Golden, TeacherForcedLogitsMatchLlamaCpp) {
  const Model& m = smollm2();
  kernels::ThreadPool pool(2);
  const std::vector<int32_t> forced(g_.ids.begin(), g_.ids.end() - 1);
  const auto rows = teacher_force(m, pool, g_.prompt_ids, forced, like_llama_cpp());
  const size_t V = size_t(m.config.n_vocab);
  ASSERT_EQ(rows.size(), g_.steps.size() * V);
  const golden::Comparison c = golden::compare(g_, rows, V);
  int close_calls = 0;
  for (const auto& s : g_.steps) close_calls += s.gap() < kCloseCall;
  std::printf(
      "%s: max |diff| %.4g (step %d), mean %.3g, argmax %d/%zu, close calls (top-2 gap "
      "below %.3g): %d\n",
      GetParam(), c.max_err, c.worst_step, c.mean_err(), c.same_argmax, g_.steps.size(), kCloseCall,
      close_calls);
  EXPECT_LT(c.max_err, kMaxBound) << "at step " << c.worst_step;
  EXPECT_LT(c.mean_err(), kMeanBound);
  for (int i : c.other)
    EXPECT_LT(g_.steps[size_t(i)].gap(), kCloseCall)
        << "step " << i << ": another argmax than llama.cpp's " << g_.ids[size_t(i)]
        << " where its top-2 gap is " << g_.steps[size_t(i)].gap();
}

// Free-running greedy decoding reproduces llama.cpp's ids up to the first close call. Up to the
// first difference both engines saw the same tokens, so a difference can only come at a step
// where the teacher-forced argmax differs: allowed only at a close call, as above, after which
// the texts are unrelated. Measured: ids equal up to step 0 (chatml, gap 0.057), 2 (english,
// 0.074), 6 (code, 0.005), 52 (list, 0.093) and 28 (paragraph, 0.063).
TEST_P(SmolLM2Golden, GreedyIdsMatchLlamaCpp) {
  const Model& m = smollm2();
  kernels::ThreadPool pool(2);
  GenerateOptions opt = like_llama_cpp();
  opt.n_predict = int(g_.ids.size());
  const GenerateResult r = generate(m, pool, g_.prompt_ids, opt);
  size_t i = 0;
  while (i < r.output.size() && i < g_.ids.size() && r.output[i] == g_.ids[i]) ++i;
  if (i == g_.ids.size()) return;
  ASSERT_LT(i, r.output.size()) << "generation stopped after " << i << " ids";
  EXPECT_LT(g_.steps[i].gap(), kCloseCall) << "first different id at step " << i << ": "
                                           << r.output[i] << " for llama.cpp's " << g_.ids[i];
  std::printf("%s: ids equal up to step %zu, a close call (llama.cpp's top-2 gap %.4g)\n",
              GetParam(), i, double(g_.steps[i].gap()));
}

INSTANTIATE_TEST_SUITE_P(Prompts, SmolLM2Golden,
                         ::testing::Values("chatml", "english", "code", "list", "paragraph"));

// Perplexity on the GPL-3 text every Debian ships, against llama-perplexity's running estimate
// (data/golden/smollm2/perplexity.json: the same file, n_ctx 512, f32 cache). 4 of the golden's
// 8 chunks keep the run near 15 s on 2 cores. Measured: fairkv 18.2012 after 4 chunks for
// llama.cpp's 18.2268 (-0.14%), 18.3681 after 8 for 18.4091 (-0.22%); each single chunk moves
// by up to 0.6% (the logits' rounding noise above), the average over 1020 tokens by less.
TEST(SmolLM2Golden, PerplexityMatchesLlamaCpp) {
  const fs::path text = "/usr/share/common-licenses/GPL-3";
  if (!fs::exists(kModel))
    GTEST_SKIP() << "no SmolLM2 model at " << kModel << " (scripts/get-model fetches it)";
  if (!fs::exists(text)) GTEST_SKIP() << "no " << text << " (Debian's base-files ships it)";
  std::ifstream jf(kSource / "data/golden/smollm2/perplexity.json");
  const nlohmann::json golden = nlohmann::json::parse(jf);
  const int chunks = 4;
  const double ref = golden.at("running").at(chunks - 1).get<double>();

  const Model& m = smollm2();
  std::ifstream tf(text, std::ios::binary);
  const std::string s((std::istreambuf_iterator<char>(tf)), {});
  const auto tokens = m.tokenizer.encode(s, m.tokenizer.add_bos());
  kernels::ThreadPool pool(2);
  PerplexityOptions opt;
  opt.n_ctx = golden.at("ctx").get<int>();
  opt.n_batch = golden.at("batch").get<int>();
  opt.n_chunks = chunks;
  const PerplexityResult r = perplexity(m, pool, tokens, opt);
  std::printf("perplexity after %d chunks of %d: fairkv %.4f, llama.cpp %.4f (%+.2f%%)\n", chunks,
              opt.n_ctx, r.ppl(), ref, 100 * (r.ppl() / ref - 1));
  EXPECT_NEAR(r.ppl(), ref, 0.005 * ref);
}

}  // namespace
}  // namespace fairkv::model
