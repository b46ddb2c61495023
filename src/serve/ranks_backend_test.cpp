// RanksBackend changes where and when work runs, never what is computed: driven as the engine
// drives it (chunked prompts mixed with other sequences' decode steps, a close and an open
// midway, replans, swaps), every sequence's greedy tokens equal model::generate's on its prompt
// alone, and its logits agree to float summation order, for R = 1..4 ranks under tp and the
// FairKV planners, with and without Ada-KV (and DefensiveKV) compression.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstring>
#include <filesystem>
#include <map>
#include <memory>
#include <random>
#include <string>

#include "kv/attention_merge.h"
#include "runtime/model_placement.h"
#include "runtime/unit_parts.h"
#include "serve/ranks_backend.h"
#include "serve/ranks_test_util.h"
#include "serve/ranks_wire.h"

namespace fairkv::serve {
namespace {

using testing::Outcome;
using testing::Reference;
using testing::Schedule;

const model::Model* stories() {
  static const std::unique_ptr<model::Model> m = [] {
    const std::string path = std::string(FAIRKV_SHARED_DIR) + "/models/stories260K.gguf";
    return std::filesystem::exists(path) ? model::Model::load(path) : nullptr;
  }();
  return m.get();
}

#define NEED_MODEL()                                                \
  const model::Model* mp = stories();                               \
  if (!mp) GTEST_SKIP() << "the shared stories260K.gguf is absent"; \
  const model::Model& m = *mp

placement::CostModel cost_for(const model::Model& m) {
  return runtime::run_cost_model(m.config, m.weights.layers[0].wq.type, kv::KvType::F32, 4);
}

RanksOptions options(const model::Model& m) {
  RanksOptions o;
  o.n_slots = 4;
  o.cost = cost_for(m);
  return o;
}

// Tokens equal, logits within float summation order, rows kept equal (the same selection).
void expect_matches(const Outcome& out, const std::vector<Reference>& refs, const Schedule& s,
                    size_t V) {
  for (size_t i = 0; i < refs.size(); ++i) {
    SCOPED_TRACE("sequence " + std::string(1, char('A' + i)));
    std::vector<int32_t> want = refs[i].output;
    if (i == 1) want.resize(size_t(s.close_b_after));  // B is closed midway
    EXPECT_EQ(out.outputs[i], want);
    ASSERT_EQ(out.logits[i].size(), want.size() * V);
    for (size_t row = 0; row < want.size(); ++row)
      EXPECT_LT(testing::rel_diff({out.logits[i].data() + row * V, V},
                                  {refs[i].logits.data() + row * V, V}),
                1e-4)
          << "token " << row;
    EXPECT_EQ(out.rows[i], refs[i].rows);
  }
}

enum class Extra { None, Replan, Swap, ReplanWhileSwapped };

void check_schedules(const kv::CompressionConfig* comp, Extra extra) {
  NEED_MODEL();
  const auto ps = testing::prompts(m.config);
  Schedule s;
  s.comp = comp;
  std::vector<Reference> refs;
  for (const auto& p : ps) refs.push_back(testing::reference(m, p, s.n_predict, comp));
  // The compression must have dropped tokens (a budget of 24 of about 40), else the test
  // proves nothing.
  for (size_t i = 0; comp && i < ps.size(); ++i)
    ASSERT_LT(refs[i].rows * 3,
              int64_t(ps[i].size()) * m.config.n_layers * m.config.n_kv_heads * 2);
  if (extra == Extra::Replan || extra == Extra::ReplanWhileSwapped) {
    s.replan_at = {5, 8};
    s.replan_cost = cost_for(m);
  }
  if (extra == Extra::Swap || extra == Extra::ReplanWhileSwapped) {
    s.swap_out_at = 4;
    s.swap_in_at = 7;
  }
  int replans = 0;
  std::map<placement::ShareKind, int> kinds;
  for (const std::string planner : {"tp", "fair-copy", "split"})
    for (int R = 1; R <= 4; ++R) {
      SCOPED_TRACE(planner + " R=" + std::to_string(R));
      const placement::Placement p = testing::make_placement(m.config, planner, R);
      for (const auto& layer : p.layers)
        for (const auto& dev : layer.devices)
          for (const placement::Share& share : dev) kinds[share.kind]++;
      RanksBackend b(m, p, options(m));
      const Outcome out = testing::drive(b, ps, m, s);
      EXPECT_GT(out.mixed_steps, 2);
      expect_matches(out, refs, s, size_t(m.config.n_vocab));
      replans += out.replans;
      if (s.swap_out_at >= 0) {
        EXPECT_EQ(out.swaps, std::vector<SwapPlace>(2, SwapPlace::Host));
      }
    }
  // Replicas of both kinds were exercised, not only whole units.
  EXPECT_GT(kinds[placement::ShareKind::Batch], 0);
  EXPECT_GT(kinds[placement::ShareKind::Tokens], 0);
  // The kept lengths differ from the plans' profile: some replan must have moved shares.
  if (!s.replan_at.empty()) {
    EXPECT_GT(replans, 0);
  }
}

TEST(RanksBackend, FullEqualsGenerate) {
  check_schedules(nullptr, Extra::None);
}

TEST(RanksBackend, AdaKvEqualsGenerate) {
  const auto c = testing::adakv();
  check_schedules(&c, Extra::None);
}

// CriticalKV's value norms come from the ranks that hold each unit's query heads (and rows): the
// prompt's last chunk on a token-sliced unit's tail, the query slices' sums gathered.
TEST(RanksBackend, DefensiveKvEqualsGenerate) {
  const auto c = testing::defensivekv();
  check_schedules(&c, Extra::None);
}

TEST(RanksBackend, ReplanChangesNoOutputs) {
  const auto c = testing::adakv(), d = testing::defensivekv();
  check_schedules(nullptr, Extra::Replan);
  check_schedules(&c, Extra::Replan);
  check_schedules(&d, Extra::Replan);
}

TEST(RanksBackend, SwapChangesNoOutputs) {
  const auto c = testing::adakv();
  check_schedules(nullptr, Extra::Swap);
  check_schedules(&c, Extra::Swap);
}

// A sequence swapped out (one decoding, one half-way through its prompt) while the shares change
// comes back laid out by the new shares.
TEST(RanksBackend, ReplanWhileSwappedChangesNoOutputs) {
  const auto c = testing::adakv();
  check_schedules(&c, Extra::ReplanWhileSwapped);
}

// Prompts that end in the same step are compressed each by its own config (other windows and
// budgets), never pooled over the batch.
TEST(RanksBackend, PromptsEndingTogetherUseTheirOwnConfigs) {
  NEED_MODEL();
  const auto ps = testing::prompts(m.config);
  kv::CompressionConfig snap;
  snap.policy = kv::Policy::SnapKV;
  snap.budget = 16;
  snap.window = 4;
  const kv::CompressionConfig ada = testing::adakv();
  const kv::CompressionConfig* comps[] = {&ada, &snap, nullptr};
  const int n_predict = 5;
  std::vector<Reference> refs;
  for (size_t i = 0; i < 3; ++i) refs.push_back(testing::reference(m, ps[i], n_predict, comps[i]));
  for (const auto& [planner, R] :
       {std::pair<std::string, int>{"split", 3}, {"fair-copy", 2}, {"tp", 4}, {"split", 4}}) {
    SCOPED_TRACE(planner + " R=" + std::to_string(R));
    RanksOptions o = options(m);
    o.threads = 2;  // the observer is called from every pool thread
    RanksBackend b(m, testing::make_placement(m.config, planner, R), o);
    std::vector<std::vector<int32_t>> out(3);
    std::vector<StepItem> items(3);
    for (size_t i = 0; i < 3; ++i) {
      b.open(SeqId(i), 0);
      items[i] = {SeqId(i), ps[i], comps[i], true};
    }
    for (int step = 0; step < n_predict; ++step) {
      const auto logits = b.run(items);
      for (size_t i = 0; i < 3; ++i) {
        out[i].push_back(
            model::argmax(logits.subspan(i * size_t(m.config.n_vocab), size_t(m.config.n_vocab))));
        items[i] = {SeqId(i), {&out[i].back(), 1}, nullptr, false};
      }
      if (step == 0) {
        for (size_t i = 0; i < 3; ++i) EXPECT_EQ(b.rows(SeqId(i)), refs[i].rows) << i;
      }
    }
    for (size_t i = 0; i < 3; ++i) EXPECT_EQ(out[i], refs[i].output) << i;
  }
}

// ZipVL (sized by its tau), CompressKV (retrieval heads choose for their layer) and Task-KV
// (heads told apart by their outputs over values held on different ranks) on ranks keep exactly
// the rows one device keeps, and give its outputs.
TEST(RanksBackend, ZipVLCompressKVAndTaskKVEqualOneDevice) {
  NEED_MODEL();
  const auto ps = testing::prompts(m.config);
  kv::CompressionConfig zip;
  zip.policy = kv::Policy::ZipVL;
  zip.zipvl_tau = 0.6;
  zip.window = 4;
  kv::CompressionConfig ckv;
  ckv.policy = kv::Policy::CompressKV;
  ckv.budget = 16;
  ckv.window = 4;
  kv::HeadImportance imp{m.config.n_layers, m.config.n_kv_heads, {}};
  for (int i = 0; i < imp.layers * imp.kv_heads; ++i) imp.importance.push_back(double(i % 3 + 1));
  ckv.head_importance = imp;
  kv::CompressionConfig task;
  task.policy = kv::Policy::TaskKV;
  task.budget = 16;
  task.window = 4;
  zip.resolve();
  ckv.resolve();
  task.resolve();
  const kv::CompressionConfig* comps[] = {&zip, &ckv, &task};
  const size_t N = std::size(comps);
  ASSERT_GE(ps.size(), N);
  const int n_predict = 5;
  std::vector<Reference> refs;
  for (size_t i = 0; i < N; ++i) refs.push_back(testing::reference(m, ps[i], n_predict, comps[i]));
  for (const auto& [planner, R] : {std::pair<std::string, int>{"split", 3}, {"tp", 4}}) {
    SCOPED_TRACE(planner + " R=" + std::to_string(R));
    RanksBackend b(m, testing::make_placement(m.config, planner, R), options(m));
    std::vector<std::vector<int32_t>> out(N);
    std::vector<StepItem> items(N);
    for (size_t i = 0; i < N; ++i) {
      b.open(SeqId(i), 0);
      items[i] = {SeqId(i), ps[i], comps[i], true};
    }
    for (int step = 0; step < n_predict; ++step) {
      const auto logits = b.run(items);
      for (size_t i = 0; i < N; ++i) {
        out[i].push_back(
            model::argmax(logits.subspan(i * size_t(m.config.n_vocab), size_t(m.config.n_vocab))));
        items[i] = {SeqId(i), {&out[i].back(), 1}, nullptr, false};
      }
      if (step == 0) {
        for (size_t i = 0; i < N; ++i) EXPECT_EQ(b.rows(SeqId(i)), refs[i].rows) << i;
      }
    }
    for (size_t i = 0; i < N; ++i) EXPECT_EQ(out[i], refs[i].output) << i;
  }
}

// Past the host limit a swap drops the caches; the engine recomputes the sequence from its
// tokens and it goes on as if nothing happened (full caches: the recomputation is exact).
TEST(RanksBackend, SwapBeyondTheHostLimitDropsTheCache) {
  NEED_MODEL();
  const auto ps = testing::prompts(m.config);
  const Reference ref = testing::reference(m, ps[0], 8, nullptr);
  RanksOptions o = options(m);
  o.host_swap_bytes = 1;
  RanksBackend b(m, testing::make_placement(m.config, "split", 3), o);
  b.open(7, 0);
  std::vector<int32_t> out;
  auto next = [&](std::span<const float> logits) { out.push_back(model::argmax(logits)); };
  next(b.run(std::vector<StepItem>{{7, ps[0], nullptr, true}}));
  for (int i = 0; i < 2; ++i) next(b.run(std::vector<StepItem>{{7, {&out.back(), 1}}}));
  EXPECT_EQ(b.swap_out(7), SwapPlace::None);
  EXPECT_EQ(b.rows(7), 0);
  EXPECT_EQ(b.swap_bytes_host(), 0u);
  EXPECT_EQ(b.max_rank_bytes(), 0u);
  EXPECT_THROW(b.swap_in(7), std::invalid_argument);
  // Recompute: the prompt and all but the last output as a prompt of two chunks.
  std::vector<int32_t> all = ps[0];
  all.insert(all.end(), out.begin(), out.end() - 1);
  b.run(std::vector<StepItem>{{7, {all.data(), 20}}});
  const auto logits =
      b.run(std::vector<StepItem>{{7, {all.data() + 20, all.size() - 20}, nullptr, true}});
  EXPECT_EQ(model::argmax(logits), out.back());
  while (out.size() < ref.output.size()) next(b.run(std::vector<StepItem>{{7, {&out.back(), 1}}}));
  EXPECT_EQ(out, ref.output);
}

TEST(RanksBackend, LoadsRowsAndDescribe) {
  NEED_MODEL();
  const model::ModelConfig& c = m.config;
  const auto ps = testing::prompts(c);
  const auto ada = testing::adakv();
  RanksBackend b(m, testing::make_placement(c, "split", 3), options(m));
  EXPECT_EQ(b.ranks(), 3);
  EXPECT_EQ(b.n_vocab(), c.n_vocab);
  const size_t per_row = 2 * size_t(c.head_dim) * 4;  // one head's K and V, f32
  EXPECT_EQ(b.row_bytes(), per_row * size_t(c.n_layers) * size_t(c.n_kv_heads));
  b.open(1, 0);
  b.open(2, 0);
  b.run(std::vector<StepItem>{{1, ps[0], &ada, true}, {2, ps[1], nullptr, true}});
  const int64_t rows1 = b.rows(1), rows2 = b.rows(2);
  EXPECT_EQ(rows2, int64_t(ps[1].size()) * c.n_layers * c.n_kv_heads);
  size_t total = 0;
  for (const RankLoad& l : b.loads()) {
    total += l.kv_bytes;
    EXPECT_GT(l.step_ms, 0);
    EXPECT_GT(l.predicted_ms, 0);
  }
  // Token slices tile each unit's rows: every row is held once.
  EXPECT_EQ(total, size_t(rows1 + rows2) * per_row);
  EXPECT_EQ(b.swap_out(1), SwapPlace::Host);
  // The rows, and each rank's swapped copy's header (kv::swapped_bytes: 56 bytes, 16 per store).
  const size_t stores = size_t(c.n_layers) * size_t(c.n_kv_heads);
  EXPECT_EQ(b.swap_bytes_host(), size_t(rows1) * per_row + size_t(b.ranks()) * (56 + 16 * stores));
  EXPECT_EQ(b.rows(1), rows1);
  total = 0;
  for (const RankLoad& l : b.loads()) total += l.kv_bytes;
  EXPECT_EQ(total, size_t(rows2) * per_row);
  b.swap_in(1);
  EXPECT_EQ(b.swap_bytes_host(), 0u);
  const std::string d = b.describe();
  EXPECT_NE(d.find("split"), std::string::npos) << d;
  EXPECT_NE(d.find("3 ranks"), std::string::npos) << d;
  b.close(1);
  b.close(2);
  EXPECT_EQ(b.max_rank_bytes(), 0u);
}

// A prompt's rows stay whole on each token-sliced unit's tail while its chunks arrive (its last
// chunk observes them all there), and are dealt out by the shares when it ends.
TEST(RanksBackend, PromptRowsAreDealtOutWhenThePromptEnds) {
  NEED_MODEL();
  const model::ModelConfig& c = m.config;
  const auto ps = testing::prompts(c, {41, 812});  // slices of several canonical blocks
  const placement::Placement p = testing::make_placement(c, "split", 3);
  const auto parts = runtime::unit_parts(p);
  const RanksOptions o = options(m);
  ASSERT_EQ(o.reduction, runtime::Reduction::Canonical);
  const int64_t granule = kv::kCanonicalRows;
  // Rank r's committed bytes for a sequence in slot 0 of `total` rows per unit: each store of
  // its rows on a range reserved for max_rows rows commits the pages those rows touch.
  const int64_t max_rows = int64_t(ps[1].size()) + 8;
  auto expected = [&](int r, int64_t total, bool dealt) {
    size_t bytes = 0;
    bool split = false;
    for (int l = 0; l < c.n_layers; ++l)
      for (int h = 0; h < c.n_kv_heads; ++h) {
        const auto& u = parts[size_t(l)][size_t(h)];
        const bool tokens = u.size() > 1 && u.front().share.kind == placement::ShareKind::Tokens;
        split = split || tokens;
        int64_t rows = 0;
        if (tokens && !dealt) {
          rows = runtime::is_tail(u, r) ? total : 0;
        } else {  // the canonical reduction's slices start at multiples of its blocks
          const auto [b0, b1] = runtime::rows_held(p, l, h, r, 0, o.n_slots, total, granule);
          rows = b1 - b0;
        }
        bytes += kv::HeadStore::reserved_bytes(rows, max_rows, c.head_dim, kv::KvType::F32);
      }
    EXPECT_TRUE(split) << "the placement has no token slices";
    return bytes;
  };
  RanksBackend b(m, p, o);
  b.open(1, max_rows);
  b.run(std::vector<StepItem>{{1, {ps[1].data(), 20}}});
  for (int r = 0; r < 3; ++r) EXPECT_EQ(b.loads()[size_t(r)].kv_bytes, expected(r, 20, false));
  b.run(std::vector<StepItem>{{1, {ps[1].data() + 20, ps[1].size() - 20}, nullptr, true}});
  const int64_t n = int64_t(ps[1].size());
  for (int r = 0; r < 3; ++r) EXPECT_EQ(b.loads()[size_t(r)].kv_bytes, expected(r, n, true));
}

// The step that ends a prompt deals its rows out to each token-sliced unit's other parts, which
// commit their slices after the step: the step's memory check counts them (growth_by_rank with
// prompt_done: no rank grows by more), where the appends alone left them out.
TEST(RanksBackend, GrowthCountsThePromptRowsDealtOut) {
  NEED_MODEL();
  const model::ModelConfig& c = m.config;
  // Long enough that every part holds canonical blocks (kv::kCanonicalRows), not a multiple of
  // them; the first chunk leaves the prompt's end to the second.
  const int64_t n = 5 * kv::kCanonicalRows - 80, first = kv::kCanonicalRows, max_rows = n + 8,
                R = 3;
  const auto ps = testing::prompts(c, {int(n)});
  for (const runtime::Reduction red :
       {runtime::Reduction::Canonical, runtime::Reduction::Partial}) {
    SCOPED_TRACE(runtime::reduction_name(red));
    RanksOptions o = options(m);
    o.reduction = red;
    RanksBackend b(m, testing::make_placement(c, "split", int(R)), o);
    b.open(1, max_rows);
    b.run(std::vector<StepItem>{{1, {ps[0].data(), size_t(first)}}});
    std::vector<size_t> before;
    for (const RankLoad& l : b.loads()) before.push_back(l.kv_bytes);
    const std::vector<size_t> with = b.growth_by_rank(1, n - first, true);
    const std::vector<size_t> without = b.growth_by_rank(1, n - first, false);
    EXPECT_EQ(b.growth_bytes(1, n - first, true), *std::max_element(with.begin(), with.end()));
    b.run(std::vector<StepItem>{{1, {ps[0].data() + first, size_t(n - first)}, nullptr, true}});
    int missed = 0;
    for (int64_t r = 0; r < R; ++r) {
      const size_t after = b.loads()[size_t(r)].kv_bytes;
      const size_t grew = after > before[size_t(r)] ? after - before[size_t(r)] : 0;
      EXPECT_LE(grew, with[size_t(r)]) << "rank " << r;
      missed += grew > without[size_t(r)];
    }
    EXPECT_GT(missed, 0);
  }
}

// Each rank's stores of a sequence sit on ranges reserved for its max rows: what a rank reports
// is the pages its rows touch, never less than its kept rows' bytes nor more than a page per
// region (K, V) of each store beyond them; growth_bytes says exactly what a step's rows add on
// the rank they add the most to; bytes_for bounds a new sequence's commitment; closing frees it.
TEST(RanksBackend, ReservedStoresCommitThePagesOfTheirRows) {
  NEED_MODEL();
  const model::ModelConfig& c = m.config;
  const auto ps = testing::prompts(c);
  const size_t per_row = 2 * size_t(c.head_dim) * 4, page = 4096;
  const size_t stores = size_t(c.n_layers) * size_t(c.n_kv_heads);
  for (const char* planner : {"fair-copy", "split", "tp"}) {
    SCOPED_TRACE(planner);
    const int R = std::string(planner) == "split" ? 3 : 2;
    RanksBackend b(m, testing::make_placement(c, planner, R), options(m));
    const int64_t n = int64_t(ps[0].size()), max_rows = n + 300;
    b.open(1, max_rows);
    EXPECT_EQ(b.max_rank_bytes(), 0u);  // reserved, nothing committed yet
    // The first chunk: its rows go where growth_bytes said, within what bytes_for allows.
    const size_t grow = b.growth_bytes(1, 16, false);
    b.run(std::vector<StepItem>{{1, {ps[0].data(), 16}}});
    EXPECT_EQ(b.max_rank_bytes(), grow);
    EXPECT_LE(b.max_rank_bytes(), b.bytes_for(16, max_rows));
    b.run(std::vector<StepItem>{{1, {ps[0].data() + 16, size_t(n - 16)}, nullptr, true}});
    EXPECT_LE(b.max_rank_bytes(), b.bytes_for(n, max_rows));
    std::vector<int32_t> out = {ps[0][0]};
    int crossings = 0;
    for (int t = 0; t < 300 - 1; ++t) {
      std::vector<size_t> before;
      for (const RankLoad& l : b.loads()) before.push_back(l.kv_bytes);
      const size_t want = b.growth_bytes(1, 1, false);
      b.run(std::vector<StepItem>{{1, {&out[0], 1}}});
      size_t most = 0;
      for (int r = 0; r < R; ++r)
        most = std::max(most, b.loads()[size_t(r)].kv_bytes - before[size_t(r)]);
      EXPECT_EQ(most, want) << "decode step " << t;
      crossings += want > 0;
      const size_t kept = size_t(b.rows(1)) * per_row;
      size_t total = 0;
      for (const RankLoad& l : b.loads()) total += l.kv_bytes;
      EXPECT_GE(total, kept);
      EXPECT_LE(total, kept + size_t(R) * stores * 2 * page);
    }
    EXPECT_GT(crossings, 0);  // decode rows did commit new pages
    EXPECT_LE(b.max_rank_bytes(), b.bytes_for(max_rows, max_rows));
    b.close(1);
    EXPECT_EQ(b.max_rank_bytes(), 0u);
  }
}

// The engine's mistakes are refused before any rank starts, and the backend goes on.
TEST(RanksBackend, RefusesBadCallsAndGoesOn) {
  NEED_MODEL();
  const auto ps = testing::prompts(m.config);
  RanksOptions o = options(m);
  o.n_slots = 2;
  RanksBackend b(m, testing::make_placement(m.config, "split", 2), o);
  b.open(1, 0);
  EXPECT_THROW(b.open(1, 0), std::invalid_argument);
  b.open(2, 0);
  EXPECT_THROW(b.open(3, 0), std::invalid_argument);  // no slot left
  EXPECT_THROW(b.close(3), std::invalid_argument);
  EXPECT_THROW(b.run(std::vector<StepItem>{{3, ps[0]}}), std::invalid_argument);
  EXPECT_THROW(b.run(std::vector<StepItem>{{1, ps[0]}, {1, ps[1]}}), std::invalid_argument);
  EXPECT_THROW(b.run(std::vector<StepItem>{{1, {}}}), std::invalid_argument);
  const int32_t bad = int32_t(m.config.n_vocab);
  EXPECT_THROW(b.run(std::vector<StepItem>{{1, {&bad, 1}}}), std::invalid_argument);
  const auto ada = testing::adakv();
  // The last chunk must hold the window.
  b.run(std::vector<StepItem>{{2, {ps[1].data(), 25}}});
  EXPECT_THROW(b.run(std::vector<StepItem>{{2, {ps[1].data() + 25, 4}, &ada, true}}),
               std::invalid_argument);
  b.run(std::vector<StepItem>{{2, {ps[1].data() + 25, ps[1].size() - 25}, &ada, true}});
  EXPECT_THROW(b.swap_in(1), std::invalid_argument);
  EXPECT_TRUE(b.run({}).empty());
  const auto logits = b.run(std::vector<StepItem>{{1, ps[0], &ada, true}});
  EXPECT_EQ(logits.size(), size_t(m.config.n_vocab));
  EXPECT_THROW(b.run(std::vector<StepItem>{{1, {ps[0].data(), 8}, &ada, true}}),
               std::invalid_argument);  // compressed once already
  RanksOptions pigeon = o;
  pigeon.comm = "carrier-pigeon";
  EXPECT_THROW({ RanksBackend x(m, testing::make_placement(m.config, "tp", 2), pigeon); },
               std::invalid_argument);
}

TEST(RanksWire, ConfigsAndPlacementsTravelExactly) {
  kv::CompressionConfig c;
  c.policy = kv::Policy::HeadKV;
  c.budget = 77;
  c.ratio = 0.25;
  c.window = 9;
  c.pool_kernel = 5;
  c.pooling = kv::Pooling::Max;
  c.alpha = 0.3;
  c.gqa = kv::GqaCombine::Max;
  c.head_importance = kv::HeadImportance{1, 2, {0.5, 1.5}};
  c.critical = false;
  c.critical_share.reset();
  c.zipvl_tau = 0.8;
  c.compresskv_heads = 2;
  c.taskkv_share = 0.25;
  c.taskkv_middle = 3;
  c.epicache_block = 48;
  c.epicache_power = 1.5;
  c.layer_sensitivity = std::vector<double>{0.9, 0.7};
  wire::Writer w;
  wire::put_config(w, c);
  placement::Placement p;
  p.planner = "split";
  p.devices = 2;
  p.kv_heads = 1;
  p.layers.resize(1);
  p.layers[0].devices = {{{0, 1.0 / 3, placement::ShareKind::Tokens, 0}},
                         {{0, 2.0 / 3, placement::ShareKind::Tokens, 1.0 / 3}}};
  p.proven = {true};
  wire::put_placement(w, p);
  wire::Reader r(w.bytes());
  const kv::CompressionConfig c2 = wire::get_config(r);
  const placement::Placement p2 = wire::get_placement(r);
  EXPECT_TRUE(r.done());
  EXPECT_EQ(c2.describe(), c.describe());
  EXPECT_EQ(c2.head_importance->importance, c.head_importance->importance);
  EXPECT_FALSE(c2.critical_share.has_value());
  EXPECT_EQ(c2.alpha, c.alpha);
  EXPECT_EQ(c2.zipvl_tau, c.zipvl_tau);
  EXPECT_EQ(c2.compresskv_heads, c.compresskv_heads);
  EXPECT_EQ(c2.taskkv_share, c.taskkv_share);
  EXPECT_EQ(c2.taskkv_middle, c.taskkv_middle);
  EXPECT_EQ(c2.epicache_block, c.epicache_block);
  EXPECT_EQ(c2.epicache_power, c.epicache_power);
  EXPECT_EQ(c2.layer_sensitivity, c.layer_sensitivity);
  ASSERT_EQ(p2.layers.size(), 1u);
  EXPECT_EQ(p2.layers[0].devices[1][0].offset, 1.0 / 3);  // bit for bit
  EXPECT_EQ(p2.layers[0].devices[1][0].share, 2.0 / 3);
  EXPECT_EQ(p2.proven, p.proven);
  wire::Reader cut(std::vector<uint8_t>(w.bytes().begin(), w.bytes().begin() + 5));
  EXPECT_THROW(wire::get_config(cut), std::runtime_error);
}

}  // namespace
}  // namespace fairkv::serve
