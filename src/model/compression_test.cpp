// Compression wired into generation, against references: `full` changes nothing, and the
// pass-key accuracy of streaming / SnapKV / Ada-KV equals the numpy reference table of
// ../shared/golden/README.md on its first 12 cases.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>

#include <nlohmann/json.hpp>

#include "model/generate.h"
#include "model/prefill_compression.h"

namespace fairkv::model {
namespace {

namespace fs = std::filesystem;
const fs::path kShared = FAIRKV_SHARED_DIR;

TEST(Compression, FullEqualsTheUncompressedEngineExactly) {
  const fs::path model = kShared / "models/stories260K.gguf";
  const fs::path prompt = kShared / "golden/stories260K/long-context/prompt.txt";
  if (!fs::exists(model)) GTEST_SKIP() << "no shared data at " << kShared;
  const auto m = Model::load(model.string());
  kernels::ThreadPool pool(2);
  std::ifstream in(prompt, std::ios::binary);
  const auto ids = m->tokenizer.encode(std::string((std::istreambuf_iterator<char>(in)), {}), true);
  GenerateOptions plain;
  plain.n_predict = 40;
  plain.sampler.temp = 0;
  plain.keep_logits = true;
  const auto a = generate(*m, pool, ids, plain);
  kv::CompressionConfig full;
  full.policy = kv::Policy::Full;
  auto comp = make_prefill_compression(full, *m);
  GenerateOptions opt = plain;
  comp->attach(opt);
  const auto b = generate(*m, pool, ids, opt);
  EXPECT_EQ(a.output, b.output);
  ASSERT_EQ(a.logits.size(), b.logits.size());
  EXPECT_EQ(std::memcmp(a.logits.data(), b.logits.data(), a.logits.size() * 4), 0);
}

struct PasskeyRow {
  kv::Policy policy;
  int64_t budget;
  int solved;  // of the first 12 cases, from the golden README's table
};

TEST(Compression, PasskeyAccuracyMatchesTheReferenceTable) {
  const fs::path model = kShared / "models/retrieval-4L.gguf";
  const fs::path cases = kShared / "golden/passkey/cases.jsonl";
  if (!fs::exists(model) || !fs::exists(cases)) GTEST_SKIP() << "no shared data at " << kShared;
  const auto m = Model::load(model.string());
  kernels::ThreadPool pool(2);
  std::vector<std::pair<std::vector<int32_t>, std::string>> items;
  std::ifstream in(cases);
  for (std::string line; items.size() < 12 && std::getline(in, line);) {
    const auto j = nlohmann::json::parse(line);
    items.push_back({m->tokenizer.encode(j["prompt"].get<std::string>(), true),
                     j["answer"].get<std::string>()});
  }
  ASSERT_EQ(items.size(), 12u);
  // The reference: window 32, max-pool 7, GQA mean, Ada-KV alpha 0.2, streaming 4 sinks.
  const PasskeyRow table[] = {
      {kv::Policy::Streaming, 48, 1}, {kv::Policy::Streaming, 64, 1},
      {kv::Policy::Streaming, 96, 2}, {kv::Policy::SnapKV, 48, 8},
      {kv::Policy::SnapKV, 64, 11},   {kv::Policy::SnapKV, 96, 12},
      {kv::Policy::AdaKV, 48, 9},     {kv::Policy::AdaKV, 64, 11},
      {kv::Policy::AdaKV, 96, 12},
  };
  for (const auto& row : table) {
    kv::CompressionConfig c;
    c.policy = row.policy;
    c.budget = row.budget;
    c.pooling = kv::Pooling::Max;
    c.pool_kernel = 7;
    auto comp = make_prefill_compression(c, *m);
    int solved = 0;
    for (const auto& [ids, answer] : items) {
      GenerateOptions opt;
      opt.n_predict = 6;  // a space and five digits
      opt.sampler.temp = 0;
      comp->attach(opt);
      const auto r = generate(*m, pool, ids, opt);
      std::string text = m->tokenizer.decode(r.output);
      if (!text.empty() && text[0] == ' ') text.erase(0, 1);
      solved += text.rfind(answer, 0) == 0;
    }
    EXPECT_EQ(solved, row.solved) << kv::policy_name(row.policy) << " at budget " << row.budget;
  }
}

}  // namespace
}  // namespace fairkv::model
