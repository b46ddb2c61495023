// A placement changes where work runs, never what is computed: greedy outputs of R in-process
// ranks executing every planner's placement equal the single-device engine's.
#include "runtime/placed_forward.h"

#include <gtest/gtest.h>

#include <filesystem>
#include <mutex>
#include <set>

#include "model/generate.h"
#include "model/model.h"
#include "placement/planners.h"
#include "placement/profile.h"

namespace fairkv::runtime {
namespace {

namespace fs = std::filesystem;
const fs::path kShared = FAIRKV_SHARED_DIR;

// A profile of the model's shape whose unit loads differ a lot, so that fair-copy and split
// replicate and cut units.
placement::Profile skewed_profile(const model::ModelConfig& c) {
  placement::Profile p;
  p.model = c.name;
  p.layers = c.n_layers;
  p.kv_heads = c.n_kv_heads;
  p.query_heads = c.n_heads;
  p.head_dim = c.head_dim;
  p.embd = c.n_embd;
  p.ffn = c.n_ff;
  for (int l = 0; l < c.n_layers; ++l) {
    std::vector<double> row;
    for (int h = 0; h < c.n_kv_heads; ++h)
      row.push_back(h == l % c.n_kv_heads ? 4000 : 50 + 30 * h);
    p.tokens.push_back(row);
  }
  return p;
}

std::vector<std::vector<int32_t>> reference(const model::Model& m,
                                            const std::vector<std::vector<int32_t>>& prompts,
                                            int n) {
  kernels::ThreadPool pool(1);
  std::vector<std::vector<int32_t>> out;
  for (const auto& p : prompts) {
    model::GenerateOptions opt;
    opt.n_predict = n;
    opt.sampler.temp = 0;
    auto r = model::generate(m, pool, p, opt);
    while (int(r.output.size()) < n) r.output.push_back(-1);  // stopped at EOS
    out.push_back(r.output);
  }
  return out;
}

// Greedy decoding of a batch on R ranks; every rank checks it picked the same tokens.
std::vector<std::vector<int32_t>> sharded(const model::Model& m, const placement::Placement& p,
                                          const std::vector<std::vector<int32_t>>& prompts, int n) {
  std::vector<std::vector<int32_t>> result;
  std::mutex mu;
  run_ranks(p.devices, [&](Communicator& comm) {
    kernels::ThreadPool pool(1);
    PlacedForward fwd(m.config, m.weights, p, comm, pool);
    std::vector<PlacedSequence> seqs;
    for (size_t i = 0; i < prompts.size(); ++i) seqs.emplace_back(m.config, kv::KvType::F32);
    std::vector<std::vector<int32_t>> out(prompts.size());
    std::vector<PlacedItem> items;
    for (size_t i = 0; i < prompts.size(); ++i) items.push_back({&seqs[i], prompts[i]});
    const size_t V = size_t(m.config.n_vocab);
    for (int step = 0; step < n; ++step) {
      const auto& logits = fwd.run(items);
      for (size_t i = 0; i < prompts.size(); ++i) {
        const auto b = logits.begin() + long(i * V);
        out[i].push_back(int32_t(std::max_element(b, b + long(V)) - b));
        items[i].tokens = {&out[i].back(), 1};
      }
    }
    // Sequences that hit EOS keep going here (the batch stays whole); compare up to EOS.
    for (auto& o : out)
      for (size_t t = 0; t < o.size(); ++t)
        if (m.tokenizer.is_eog(o[t])) {
          for (size_t u = t + 1; u < o.size(); ++u) o[u] = -1;
          break;
        }
    std::lock_guard lock(mu);
    if (comm.rank() == 0)
      result = out;
    else
      EXPECT_EQ(out, result.empty() ? out : result) << "rank " << comm.rank();
  });
  return result;
}

void check_model(const fs::path& path, const std::vector<std::string>& texts) {
  if (!fs::exists(path)) GTEST_SKIP() << "no shared data at " << kShared;
  const auto m = model::Model::load(path.string());
  std::vector<std::vector<int32_t>> prompts;
  for (const auto& t : texts) prompts.push_back(m->tokenizer.encode(t, true));
  const int n = 10;
  const auto ref = reference(*m, prompts, n);
  const auto profile = skewed_profile(m->config);
  std::set<placement::ShareKind> kinds;  // every share kind must have been executed
  for (int batch : {1, 4}) {
    std::vector<std::vector<int32_t>> ps(prompts.begin(), prompts.begin() + batch);
    std::vector<std::vector<int32_t>> want(ref.begin(), ref.begin() + batch);
    for (int R = 1; R <= 4; ++R)
      for (auto kind : {placement::PlannerKind::Tp, placement::PlannerKind::Balanced,
                        placement::PlannerKind::FairCopy, placement::PlannerKind::Split}) {
        placement::PlanOptions o;
        o.planner = kind;
        o.devices = R;
        const auto cost = placement::cost_model_for(profile, batch);
        placement::Placement p;
        try {
          p = placement::plan(profile, cost, o);
        } catch (const std::invalid_argument& e) {
          // tp cannot place 2 KV heads on 3 devices (vLLM's rule); neither can the planners
          // that start from it. Every other (R, planner) must run.
          EXPECT_EQ(R % m->config.n_kv_heads != 0 && m->config.n_kv_heads % R != 0, true)
              << e.what();
          continue;
        }
        for (const auto& layer : p.layers)
          for (const auto& dev : layer.devices)
            for (const auto& sh : dev) kinds.insert(sh.kind);
        EXPECT_EQ(sharded(*m, p, ps, n), want)
            << placement::planner_name(kind) << " R=" << R << " batch=" << batch;
      }
  }
  EXPECT_TRUE(kinds.count(placement::ShareKind::Whole));
  EXPECT_TRUE(kinds.count(placement::ShareKind::Batch));
  EXPECT_TRUE(kinds.count(placement::ShareKind::Tokens));
}

const std::vector<std::string> kPrompts = {
    "Once upon a time", "Tom and his dog went to the park to play with a big red ball", "Lily",
    "The sun was hot and the children wanted to swim in the lake near the old house"};

TEST(PlacedForward, Stories260KEveryPlannerEqualsSingleDevice) {
  check_model(kShared / "models/stories260K.gguf", kPrompts);
}

TEST(PlacedForward, SyntheticGqaEveryPlannerEqualsSingleDevice) {
  check_model(kShared / "models/synthetic/llama-gqa4-f32.gguf", kPrompts);
}

TEST(PlacedForward, PlacementOfAnotherShapeIsRejected) {
  const fs::path path = kShared / "models/stories260K.gguf";
  if (!fs::exists(path)) GTEST_SKIP() << "no shared data at " << kShared;
  const auto m = model::Model::load(path.string());
  auto profile = skewed_profile(m->config);
  profile.layers = 2;
  profile.tokens.resize(2);
  placement::PlanOptions o;
  o.devices = 2;
  const auto p = placement::plan(profile, placement::cost_model_for(profile, 1), o);
  EXPECT_THROW(run_ranks(2,
                         [&](Communicator& comm) {
                           kernels::ThreadPool pool(1);
                           PlacedForward fwd(m->config, m->weights, p, comm, pool);
                         }),
               std::runtime_error);
}

}  // namespace
}  // namespace fairkv::runtime
