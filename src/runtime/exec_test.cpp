// A placement changes where work runs, never what is computed: greedy outputs and logits of the
// sharded runtime (threads backend) equal the single-device engine's, for every planner, device
// count and batch size, on a real model and on a synthetic GQA model.
#include <gtest/gtest.h>

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <map>
#include <random>
#include <string>

#include "model/model.h"
#include "placement/planners.h"
#include "runtime/exec.h"
#include "runtime/model_placement.h"
#include "runtime/test_util.h"

namespace fairkv::runtime {
namespace {

namespace pl = placement;
using testing::Reference;

std::string shared_path(const std::string& rel) {
  return std::string(FAIRKV_SHARED_DIR) + "/" + rel;
}

// A profile where one unit per layer is heavy, so that fair-copy and split replicate it.
pl::Profile skewed_profile(const model::ModelConfig& c) {
  pl::Profile p = testing::heavy_unit_profile(c, 40.0, 1000.0);
  for (int l = 0; l < c.n_layers; ++l) p.tokens[size_t(l)][size_t((l + 1) % c.n_kv_heads)] = 300.0;
  return p;
}

pl::Placement make_placement(const model::ModelConfig& c, const std::string& planner, int devices,
                             int batch) {
  const pl::Profile prof = skewed_profile(c);
  const pl::CostModel cost = pl::cost_model_for(prof, batch, "none", "f32");
  pl::PlanOptions o;
  o.planner = pl::planner_from_name(planner);
  o.devices = devices;
  return pl::plan(prof, cost, o);
}

std::vector<std::vector<int32_t>> prompts(const model::ModelConfig& c, int batch, bool longer) {
  std::mt19937 rng(7);
  const int lengths[] = {11, 4, 17, 7};
  const int long_lengths[] = {61, 40, 83, 52};
  std::vector<std::vector<int32_t>> out;
  for (int i = 0; i < batch; ++i) {
    std::uniform_int_distribution<int32_t> tok(3, c.n_vocab - 1);
    std::vector<int32_t> p(size_t(longer ? long_lengths[i % 4] : lengths[i % 4]));
    for (int32_t& t : p) t = tok(rng);
    out.push_back(p);
  }
  return out;
}

// max |a - b| / max |b| over a row: logits agree to float summation order.
double rel_diff(std::span<const float> a, std::span<const float> b) {
  double d = 0, scale = 1e-6;
  for (size_t i = 0; i < b.size(); ++i) {
    d = std::max(d, double(std::fabs(a[i] - b[i])));
    scale = std::max(scale, double(std::fabs(b[i])));
  }
  return d / scale;
}

struct Counts {
  std::map<pl::ShareKind, int> kinds;  // over the plans
  int moved = 0;                       // shares the decode placements changed from the plans
};

void count_kinds(const pl::Placement& p, Counts& counts) {
  for (const auto& layer : p.layers)
    for (const auto& dev : layer.devices)
      for (const pl::Share& s : dev) counts.kinds[s.kind]++;
}

// Shares (per layer and device) that differ between two placements of the same layout.
int moved_shares(const pl::Placement& a, const pl::Placement& b) {
  int moved = 0;
  for (size_t l = 0; l < a.layers.size(); ++l)
    for (size_t d = 0; d < a.layers[l].devices.size(); ++d) {
      const auto& x = a.layers[l].devices[d];
      const auto& y = b.layers[l].devices[d];
      if (x.size() != y.size()) {
        ++moved;
        continue;
      }
      for (size_t i = 0; i < x.size(); ++i)
        if (x[i].head != y[i].head || std::fabs(x[i].share - y[i].share) > 1e-9) ++moved;
    }
  return moved;
}

// The run's cost model for a batch of the model, as `fairkv run` builds it.
pl::CostModel cost_for(const model::Model& m, int batch, kv::KvTypes kv_type = kv::KvType::F32) {
  return run_cost_model(m.config, m.weights.layers[0].wq.type, kv_type, batch);
}

// The prefill's kept rows, unit by unit, on the ranks that hold them (before they are dealt out):
// as many as one device's, and the same ones: their values agree up to the ranks' rounding (tol,
// relative to the unit's largest value), where any other row would differ in the first digits.
void check_kept_rows(comm::Communicator& comm, RankForward& fwd,
                     std::span<RankSequence* const> seqs, const std::vector<Reference>& refs, int H,
                     double tol) {
  const auto lengths = fwd.unit_lengths(seqs);  // a collective: before any early return
  for (size_t i = 0; i < seqs.size(); ++i)
    for (size_t u = 0; u < refs[i].values.size(); ++u) {
      SCOPED_TRACE(fmt::format("rank {} prompt {} layer {} head {}", comm.rank(), i, u / size_t(H),
                               u % size_t(H)));
      const std::vector<float>& want = refs[i].values[u];
      const kv::HeadStore& st = seqs[i]->cache.head(int(u) / H, int(u) % H);
      EXPECT_EQ(size_t(lengths[i][u] * st.head_dim()), want.size());
      if (st.size() == 0) continue;
      const std::vector<float> got = testing::value_rows(st);
      ASSERT_EQ(got.size(), want.size());
      double d = 0, scale = 1e-6;
      for (size_t k = 0; k < want.size(); ++k) {
        d = std::max(d, double(std::fabs(got[k] - want[k])));
        scale = std::max(scale, double(std::fabs(want[k])));
      }
      EXPECT_LT(d / scale, tol);
    }
}

void check_model(const std::string& path, bool rebalance,
                 const kv::CompressionConfig* comp = nullptr,
                 kernels::Activations act = kernels::Activations::Float32,
                 kv::KvTypes kv_type = kv::KvType::F32) {
  if (!std::filesystem::exists(path)) GTEST_SKIP() << path << " is absent";
  const auto m = model::Model::load(path);
  const model::ModelConfig& c = m->config;
  const int n_predict = 6;
  Counts counts;
  for (int batch : {1, 4}) {
    const auto ps = prompts(c, batch, comp != nullptr);
    std::vector<Reference> refs;
    for (const auto& p : ps)
      refs.push_back(testing::single_device(*m, p, n_predict, comp, act, kv_type));
    if (comp) {  // the compression must have dropped tokens, else the test proves nothing
      const size_t all = ps[0].size() * kv_type.token_bytes(c.head_dim) * size_t(c.n_layers) *
                         size_t(c.n_kv_heads);
      ASSERT_LT(refs[0].kept, all / 2);
    }
    // A quantized cache rounds each row to a grid: a rank's projections (its slice of the
    // weights, a batch's gemm) differ from the single device's in the last bits, and a row near
    // a rounding boundary then lands one step over, which moves the logits by far more than float
    // rounding (the ids must still agree). The cache's own type must move them further, or the
    // tolerance could not tell a rank that ignored it.
    const bool quant = kv::kv_type_quantized(kv_type.k) || kv::kv_type_quantized(kv_type.v);
    const bool q4 = kv_type.k == kv::KvType::Q4_0 || kv_type.v == kv::KvType::Q4_0;
    const double tol = q4 ? 3e-3 : quant ? 1.5e-3 : 1e-4;
    if (quant) {
      const auto f32 = testing::single_device(*m, ps[0], n_predict, comp, act);
      const size_t n = std::min(f32.logits.size(), refs[0].logits.size());
      EXPECT_GT(rel_diff({f32.logits.data(), n}, {refs[0].logits.data(), n}), 3 * tol);
    }
    for (const std::string planner : {"tp", "balanced", "fair-copy", "split"})
      for (int R = 1; R <= 4; ++R) {
        SCOPED_TRACE(planner + " R=" + std::to_string(R) + " batch=" + std::to_string(batch));
        pl::Placement p;
        try {
          p = make_placement(c, planner, R, batch);
        } catch (const std::invalid_argument&) {
          // tp (and balanced, which is tp there) cannot replicate KV heads unevenly.
          ASSERT_TRUE(R > c.n_kv_heads && R % c.n_kv_heads != 0) << "the planner refused";
          continue;
        }
        count_kinds(p, counts);
        ExecOptions o;
        o.n_predict = n_predict;
        o.keep_logits = true;
        o.rebalance = rebalance;
        o.cost = cost_for(*m, batch, kv_type);
        o.compression = comp;
        o.activations = act;
        o.kv_type = kv_type;
        if (comp)
          o.after_prefill = [&](comm::Communicator& cm, RankForward& f,
                                std::span<RankSequence* const> seqs) {
            check_kept_rows(cm, f, seqs, refs, c.n_kv_heads, quant ? 2e-2 : 1e-3);
          };
        const ExecResult res = execute_threads(*m, p, ps, o);
        ASSERT_EQ(res.weight_bytes.size(), size_t(R));
        counts.moved += moved_shares(p, res.placement);
        for (size_t i = 0; i < ps.size(); ++i) {
          EXPECT_EQ(res.outputs[i], refs[i].output) << "prompt " << i;
          ASSERT_EQ(res.logits[i].size(), refs[i].logits.size());
          const size_t V = size_t(c.n_vocab);
          for (size_t row = 0; row * V < refs[i].logits.size(); ++row)
            EXPECT_LT(
                rel_diff({res.logits[i].data() + row * V, V}, {refs[i].logits.data() + row * V, V}),
                tol)
                << "prompt " << i << " step " << row;
        }
      }
  }
  // The test must have exercised replicas of both kinds, not only whole units.
  EXPECT_GT(counts.kinds[pl::ShareKind::Batch], 0);
  EXPECT_GT(counts.kinds[pl::ShareKind::Tokens], 0);
  // Decoding ran on the plans' shares, or (rebalancing) on shares that the kept lengths moved:
  // the plans assume other lengths than the prompts', so some share must have moved.
  if (rebalance)
    EXPECT_GT(counts.moved, 0);
  else
    EXPECT_EQ(counts.moved, 0);
  if (c.n_kv_heads < 4) {
    EXPECT_GT(counts.kinds[pl::ShareKind::Query], 0);  // tp at R > H
  }
}

TEST(Exec, Stories260KEqualsSingleDevice) {
  check_model(shared_path("models/stories260K.gguf"), false);
}

TEST(Exec, SyntheticGqaEqualsSingleDevice) {
  check_model(shared_path("models/synthetic/llama-gqa4-f32.gguf"), false);
}

// Quantized weights: Wo and down columns are copied as whole Q8_0 blocks.
TEST(Exec, SyntheticGqaQ8EqualsSingleDevice) {
  check_model(shared_path("models/synthetic/llama-gqa4-q8_0.gguf"), false);
}

// llama.cpp's activation rounding (single-device fairkv run's default) on ranks: the rounding to
// Q8_0 blocks is discontinuous, so the ranks' other summation order can flip a block and greedy
// ids may part on near-ties; the first row stays within twice llama.cpp's own distance from the
// exact rows (golden README: 1.4e-2) of the single device's.
TEST(Exec, SyntheticGqaQ8LikeGgmlStaysClose) {
  const std::string path = shared_path("models/synthetic/llama-gqa4-q8_0.gguf");
  if (!std::filesystem::exists(path)) GTEST_SKIP() << path << " is absent";
  const auto m = model::Model::load(path);
  const auto ps = prompts(m->config, 2, false);
  std::vector<Reference> refs;
  for (const auto& p : ps)
    refs.push_back(testing::single_device(*m, p, 1, nullptr, kernels::Activations::LikeGgml));
  for (const auto& [planner, R] :
       {std::pair<std::string, int>{"tp", 2}, {"split", 2}, {"split", 3}}) {
    SCOPED_TRACE(planner + " R=" + std::to_string(R));
    ExecOptions o;
    o.n_predict = 1;
    o.keep_logits = true;
    o.activations = kernels::Activations::LikeGgml;
    const ExecResult res = execute_threads(*m, make_placement(m->config, planner, R, 2), ps, o);
    for (size_t i = 0; i < ps.size(); ++i)
      EXPECT_LT(rel_diff(res.logits[i], refs[i].logits), 2.8e-2) << "prompt " << i;
  }
}

kv::CompressionConfig adakv() {
  kv::CompressionConfig c;
  c.policy = kv::Policy::AdaKV;
  c.budget = 16;
  c.window = 8;
  return c;
}

// Ada-KV's layer-wide top-k over heads held by different ranks (and by query slices under tp).
TEST(Exec, AdaKvStories260KEqualsSingleDevice) {
  const auto c = adakv();
  check_model(shared_path("models/stories260K.gguf"), false, &c);
}

TEST(Exec, AdaKvSyntheticGqaEqualsSingleDevice) {
  const auto c = adakv();
  check_model(shared_path("models/synthetic/llama-gqa4-f32.gguf"), true, &c);
}

// A q8_0 cache (keys and values), compressed: every rank quantizes its rows and its queries as
// the single device does, so the plans' shares of every kind give the device's tokens.
TEST(Exec, AdaKvQ8CacheEqualsSingleDevice) {
  const auto c = adakv();
  check_model(shared_path("models/synthetic/llama-gqa4-f32.gguf"), false, &c,
              kernels::Activations::Float32, kv::KvType::Q8_0);
}

// Keys q4_0, values bf16, uncompressed.
TEST(Exec, MixedQuantizedCacheEqualsSingleDevice) {
  check_model(shared_path("models/synthetic/llama-gqa4-f32.gguf"), false, nullptr,
              kernels::Activations::Float32, kv::KvTypes(kv::KvType::Q4_0, kv::KvType::BF16));
}

// Task-KV: every head's semantic vector comes from the rank holding its values.
TEST(Exec, TaskKvStories260KEqualsSingleDevice) {
  kv::CompressionConfig c;
  c.policy = kv::Policy::TaskKV;
  c.budget = 16;
  c.window = 8;
  check_model(shared_path("models/stories260K.gguf"), false, &c);
}

// EpiCache: a block-wise prefill, compressed after every block by the ranks owning each unit
// (heads of different lengths from the second block on).
TEST(Exec, EpiCacheSyntheticGqaEqualsSingleDevice) {
  kv::CompressionConfig c;
  c.policy = kv::Policy::EpiCache;
  c.budget = 12;
  c.window = 8;
  c.epicache_block = 16;
  check_model(shared_path("models/synthetic/llama-gqa4-f32.gguf"), false, &c);
}

kv::CompressionConfig defensivekv(bool critical) {
  kv::CompressionConfig c;
  c.policy = kv::Policy::DefensiveKV;
  c.budget = 16;
  c.window = 8;
  c.critical = critical;
  return c;
}

// DefensiveKV with CriticalKV's value-norm stage: each unit's norms come from the ranks that
// observed its query heads (their shards hold those heads' W_o columns), summed per query head
// and gathered from query slices by the first holder, then sent with the scores.
void check_defensivekv(const std::string& path, bool rebalance) {
  if (!std::filesystem::exists(path)) GTEST_SKIP() << path << " is absent";
  {
    // The norms must move one device's selection, or a rank that lost them could not be told.
    const auto m = model::Model::load(path);
    const auto p = prompts(m->config, 1, true)[0];
    const auto on = defensivekv(true), off = defensivekv(false);
    ASSERT_NE(testing::single_device(*m, p, 1, &on).values,
              testing::single_device(*m, p, 1, &off).values);
  }
  const auto c = defensivekv(true);
  check_model(path, rebalance, &c);
}

TEST(Exec, DefensiveKvStories260KEqualsSingleDevice) {
  check_defensivekv(shared_path("models/stories260K.gguf"), false);
}

// Query slices at R = 4 (two KV heads), and rebalanced shares.
TEST(Exec, DefensiveKvSyntheticGqaEqualsSingleDevice) {
  check_defensivekv(shared_path("models/synthetic/llama-gqa4-f32.gguf"), true);
}

// Quantized weights: the shards hold W_o's columns as whole Q8_0 blocks.
TEST(Exec, DefensiveKvSyntheticGqaQ8EqualsSingleDevice) {
  check_defensivekv(shared_path("models/synthetic/llama-gqa4-q8_0.gguf"), false);
}

TEST(Exec, RebalancedSharesEqualSingleDevice) {
  check_model(shared_path("models/synthetic/llama-gqa4-f32.gguf"), true);
}

}  // namespace
}  // namespace fairkv::runtime

namespace fairkv::runtime {
namespace {

TEST(Exec, ResolvesPlannerNamesAndPlacementFiles) {
  const std::string path = std::string(FAIRKV_SHARED_DIR) + "/models/stories260K.gguf";
  if (!std::filesystem::exists(path)) GTEST_SKIP() << path << " is absent";
  const auto m = model::Model::load(path);
  const model::ModelConfig& c = m->config;
  const placement::Placement tp = resolve_placement("tp", "", c, 2, cost_for(*m, 1));
  EXPECT_EQ(tp.devices, 2);
  ASSERT_EQ(int(tp.layers.size()), c.n_layers);
  EXPECT_EQ(tp.layers[0].devices[0].size(), size_t(c.n_kv_heads / 2));
  // A plan written as JSON reads back as the same placement.
  const std::string file = ::testing::TempDir() + "/exec_test_placement.json";
  placement::Placement split = make_placement(c, "split", 3, 2);
  placement::write_placement(split, file);
  const placement::Placement back = resolve_placement(file, "", c, 3, cost_for(*m, 2));
  ASSERT_EQ(back.layers.size(), split.layers.size());
  for (size_t l = 0; l < back.layers.size(); ++l)
    for (int d = 0; d < 3; ++d) {
      ASSERT_EQ(back.layers[l].devices[size_t(d)].size(),
                split.layers[l].devices[size_t(d)].size());
      for (size_t i = 0; i < back.layers[l].devices[size_t(d)].size(); ++i) {
        EXPECT_EQ(back.layers[l].devices[size_t(d)][i].head,
                  split.layers[l].devices[size_t(d)][i].head);
        EXPECT_NEAR(back.layers[l].devices[size_t(d)][i].share,
                    split.layers[l].devices[size_t(d)][i].share, 1e-12);
      }
    }
  EXPECT_THROW(resolve_placement(file, "", c, 2, cost_for(*m, 2)),
               std::invalid_argument);  // 3 devices
  EXPECT_THROW(
      resolve_placement("tp", FAIRKV_SOURCE_DIR "/data/profiles/retrieval-4L-adakv-64.json", c, 2,
                        cost_for(*m, 1)),
      std::invalid_argument);  // another model's profile
}

// A placement file whose query share is too thin for a query head of the model's (1e-9 of a
// group of 2) is valid JSON with shares summing to 1; it is refused when resolved, naming the
// file, layer, head and share, instead of failing inside the ranks.
TEST(Exec, RefusesAQueryShareWithoutAQueryHead) {
  const std::string path = std::string(FAIRKV_SHARED_DIR) + "/models/stories260K.gguf";
  if (!std::filesystem::exists(path)) GTEST_SKIP() << path << " is absent";
  const auto m = model::Model::load(path);
  const model::ModelConfig& c = m->config;
  ASSERT_EQ(c.group(), 2);
  pl::Placement p = resolve_placement("tp", "", c, 2, cost_for(*m, 1));
  const std::string file = ::testing::TempDir() + "/exec_test_thin_query.json";
  for (double thin : {1e-9, 0.2, 0.3}) {
    pl::LayerPlacement& layer = p.layers[1];
    auto& dev0 = layer.devices[0];
    auto& dev1 = layer.devices[1];
    // Head 0 of layer 1 split by query heads between the devices, `thin` of it on device 0.
    dev1.erase(
        std::remove_if(dev1.begin(), dev1.end(), [](const pl::Share& s) { return s.head == 0; }),
        dev1.end());
    dev0[0] = {0, thin, pl::ShareKind::Query, 0.0};
    dev1.push_back({0, 1 - thin, pl::ShareKind::Query, 0.0});
    pl::normalize(layer);
    pl::write_placement(p, file);
    if (thin == 0.3) {  // query heads [0, 1) and [1, 2): served
      EXPECT_NO_THROW(resolve_placement(file, "", c, 2, cost_for(*m, 1)));
      continue;
    }
    try {
      resolve_placement(file, "", c, 2, cost_for(*m, 1));
      ADD_FAILURE() << "query share " << thin << " accepted";
    } catch (const pl::FormatError& e) {
      const std::string what = e.what();
      EXPECT_EQ(what.rfind(file + ": layers[1]: device 0: head 0: query share ", 0), 0u) << what;
      EXPECT_NE(what.find(fmt::format("share {} holds none of the unit's 2 query heads", thin)),
                std::string::npos)
          << what;
    }
  }
}

}  // namespace
}  // namespace fairkv::runtime

namespace fairkv::runtime {
namespace {

// A rank that fails mid-job (here after the prefill, while the others go on to their
// collectives) ends the whole job with its message instead of leaving the others waiting.
TEST(Exec, AFailingRankEndsTheJob) {
  const std::string path = std::string(FAIRKV_SHARED_DIR) + "/models/stories260K.gguf";
  if (!std::filesystem::exists(path)) GTEST_SKIP() << path << " is absent";
  const auto m = model::Model::load(path);
  const placement::Placement p = make_placement(m->config, "split", 3, 2);
  ExecOptions o;
  o.n_predict = 4;
  o.after_prefill = [](comm::Communicator& comm, RankForward&, std::span<RankSequence* const>) {
    if (comm.rank() == 1) throw std::runtime_error("injected failure");
  };
  try {
    execute_threads(*m, p, prompts(m->config, 2, false), o);
    FAIL() << "the job did not fail";
  } catch (const comm::CommError& e) {
    EXPECT_EQ(e.rank(), 1);
    EXPECT_NE(std::string(e.what()).find("injected failure"), std::string::npos) << e.what();
  }
}

// Rebalancing after an Ada-KV prefill moves shares: the decode placement differs from the plan
// (so the equality tests above do exercise rebalanced shares).
TEST(Exec, RebalancingMovesShares) {
  const std::string path = std::string(FAIRKV_SHARED_DIR) + "/models/synthetic/llama-gqa4-f32.gguf";
  if (!std::filesystem::exists(path)) GTEST_SKIP() << path << " is absent";
  const auto m = model::Model::load(path);
  const placement::Placement p = make_placement(m->config, "split", 3, 4);
  const auto c = adakv();
  ExecOptions o;
  o.n_predict = 2;
  o.rebalance = true;
  o.cost = cost_for(*m, 4);
  o.compression = &c;
  const ExecResult r = execute_threads(*m, p, prompts(m->config, 4, true), o);
  const int moved = moved_shares(p, r.placement);
  EXPECT_GT(moved, 0);
}

}  // namespace
}  // namespace fairkv::runtime
