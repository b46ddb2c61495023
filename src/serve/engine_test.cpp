// The serving engine on one device: outputs of concurrent requests equal their solo runs (greedy
// and seeded, full and compressed caches), under admission and preemption with tight memory, with
// cancellation and refusal; and chunking, stop strings and limits as documented.
#include "serve/engine.h"

#include <gtest/gtest.h>

#include <cstring>
#include <filesystem>
#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include <unistd.h>

#include "model/model.h"
#include "placement/planners.h"
#include "runtime/model_placement.h"
#include "runtime/test_util.h"
#include "serve/ranks_backend.h"
#include "serve/solo_backend.h"
#include "serve/stories_test_util.h"

namespace fairkv::serve {
namespace {

class EngineTest : public testing::Stories260KTest {
 protected:
  static std::vector<int32_t> prompt(const std::string& text) {
    return m().tokenizer.encode(text, true);
  }
};

struct Outcome {
  std::vector<int32_t> tokens;
  std::string text;
  FinishReason finish = FinishReason::None;
  RequestStats stats;
  int finals = 0;
};

struct Harness {
  kernels::ThreadPool pool{1};
  std::unique_ptr<Engine> engine;
  std::map<RequestId, Outcome> out;
  Harness(const model::Model& m, EngineOptions eo, SoloOptions so = {}) {
    engine = std::make_unique<Engine>(m, std::make_unique<SoloBackend>(m, pool, so), eo);
  }
  RequestId submit(Request r) {
    RequestId id = 0;
    id = engine->submit(std::move(r), [this](const Event& e) {
      Outcome& o = out[e.id];
      if (e.token >= 0) o.tokens.push_back(e.token);
      o.text += e.text;
      if (e.finish != FinishReason::None) {
        o.finish = e.finish;
        o.stats = *e.stats;
        ++o.finals;
      }
    });
    return id;
  }
};

EngineOptions small_engine(int parallel) {
  EngineOptions eo;
  eo.parallel = parallel;
  eo.prefill_chunk = 16;
  eo.step_tokens = 16 + parallel + 8;
  eo.compression.window = 8;
  return eo;
}

const char* kTexts[] = {
    "Once upon a time, there was a little girl named Lily. She loved to play outside",
    "The cat sat on the mat",
    "One day, a big dog came to the park and saw a ball. The dog wanted to play with the ball, "
    "so he ran to it and picked it up with his mouth",
    "Tom and Sue",
    "There was a tree in the garden. Every morning the birds sang in it, and the sun came up "
    "over the hill",
};

Request make(const std::vector<int32_t>& p, int max_tokens, float temp, uint64_t seed) {
  Request r;
  r.prompt = p;
  r.max_tokens = max_tokens;
  r.sampling.temp = temp;
  r.sampling.seed = seed;
  return r;
}

// Each request alone in its own engine.
Outcome alone(const model::Model& m, const EngineOptions& eo, Request r) {
  Harness h(m, eo);
  const RequestId id = h.submit(std::move(r));
  h.engine->run_until_idle();
  return h.out.at(id);
}

void expect_concurrent_equals_alone(const model::Model& m, EngineOptions eo, float temp,
                                    const kv::CompressionConfig* comp) {
  Harness h(m, eo);
  std::vector<Request> reqs;
  for (size_t i = 0; i < std::size(kTexts); ++i) {
    Request r = make(m.tokenizer.encode(kTexts[i], true), 12 + int(i) * 3, temp, 100 + i);
    if (comp) r.compression = *comp;
    reqs.push_back(r);
  }
  // Arrivals spread over the steps: two at once, the others while the first ones decode.
  std::vector<RequestId> ids;
  ids.push_back(h.submit(reqs[0]));
  ids.push_back(h.submit(reqs[1]));
  for (size_t i = 2; i < reqs.size(); ++i) {
    for (size_t k = 0; k < i; ++k) h.engine->step();
    ids.push_back(h.submit(reqs[i]));
  }
  h.engine->run_until_idle();
  for (size_t i = 0; i < reqs.size(); ++i) {
    const Outcome& got = h.out.at(ids[i]);
    const Outcome want = alone(m, eo, reqs[i]);
    EXPECT_EQ(got.tokens, want.tokens) << "request " << i;
    EXPECT_EQ(got.text, want.text) << "request " << i;
    EXPECT_EQ(got.finals, 1);
    EXPECT_NE(got.finish, FinishReason::None);
  }
  EXPECT_EQ(h.engine->backend().max_rank_bytes(), 0u);  // every cache freed
}

// A placement of the planner's own shares (replicas included, never replaced by tp) for units
// of 40 tokens with one heavy unit per layer.
placement::Placement test_placement(const model::Model& m, placement::PlannerKind planner, int R,
                                    const placement::CostModel& cost) {
  placement::PlanOptions po;
  po.planner = planner;
  po.devices = R;
  po.tp_unless_faster = false;
  return placement::plan(runtime::testing::heavy_unit_profile(m.config, 40, 1000), cost, po);
}

TEST_F(EngineTest, GreedyConcurrentRequestsEqualTheirSoloRuns) {
  expect_concurrent_equals_alone(m(), small_engine(3), 0, nullptr);
}

TEST_F(EngineTest, SeededConcurrentRequestsEqualTheirSoloRuns) {
  expect_concurrent_equals_alone(m(), small_engine(3), 0.9f, nullptr);
}

TEST_F(EngineTest, CompressedConcurrentRequestsEqualTheirSoloRuns) {
  kv::CompressionConfig c;
  c.policy = kv::Policy::AdaKV;
  c.budget = 12;
  c.window = 8;
  expect_concurrent_equals_alone(m(), small_engine(4), 0, &c);
  expect_concurrent_equals_alone(m(), small_engine(2), 0.7f, &c);
}

TEST_F(EngineTest, GreedyAloneEqualsThePlainEngine) {
  // Chunked prefill and batch-invariant rows change summation order only: the greedy ids of the
  // plain single-device engine come out.
  for (size_t i = 0; i < std::size(kTexts); ++i) {
    const auto p = prompt(kTexts[i]);
    const auto want = runtime::testing::single_device(m(), p, 16, nullptr);
    const Outcome got = alone(m(), small_engine(2), make(p, 16, 0, 0));
    EXPECT_EQ(got.tokens,
              std::vector<int32_t>(want.output.begin(), want.output.begin() + got.tokens.size()))
        << kTexts[i];
  }
}

// Runs h to the end and checks what tight memory must not change: the peak stays under the
// limit, requests were preempted (recomputed when there is no swap space, else swapped back in),
// every request ended once with ref's tokens, and every cache is freed.
void expect_preemption_changed_nothing(Harness& h, const std::vector<RequestId>& ids,
                                       const Harness& ref, const std::vector<RequestId>& ref_ids,
                                       size_t limit, bool recompute) {
  size_t peak = 0;
  while (h.engine->step()) peak = std::max(peak, h.engine->backend().max_rank_bytes());
  EXPECT_LE(peak, limit);
  const EngineStats s = h.engine->stats();
  EXPECT_GT(s.preemptions, 0);
  if (recompute) {
    EXPECT_GT(s.recomputations, 0);
  } else {
    EXPECT_GT(s.swap_ins, 0);
  }
  for (size_t i = 0; i < ids.size(); ++i) {
    EXPECT_EQ(h.out.at(ids[i]).tokens, ref.out.at(ref_ids[i]).tokens) << "request " << i;
    EXPECT_EQ(h.out.at(ids[i]).finals, 1);
  }
  EXPECT_EQ(h.engine->backend().max_rank_bytes(), 0u);
}

// Tight memory: requests wait for room, running ones are preempted (swapped out, or dropped and
// recomputed when the swap space is full) and come back; no output changes and none is lost.
void expect_tight_memory_changes_nothing(const model::Model& m, size_t swap_host, float temp) {
  EngineOptions roomy = small_engine(4);
  SoloOptions so;
  so.swap_host_bytes = swap_host;
  std::vector<Request> reqs;
  for (size_t i = 0; i < std::size(kTexts); ++i) {
    Request r = make(m.tokenizer.encode(kTexts[i], true), 150, temp, 7 + i);
    r.ignore_eos = true;
    reqs.push_back(r);
  }
  // The reference: room for everything. Its peak sets the tight limit: half of it, or what the
  // largest request needs alone.
  Harness ref(m, roomy, so);
  std::vector<RequestId> ids, ref_ids;
  for (const Request& r : reqs) ref_ids.push_back(ref.submit(r));
  size_t ref_peak = 0, need = 0;
  while (ref.engine->step()) ref_peak = std::max(ref_peak, ref.engine->backend().max_rank_bytes());
  for (const Request& r : reqs) {
    const int64_t rows = int64_t(r.prompt.size()) + r.max_tokens;
    need = std::max(need, ref.engine->backend().bytes_for(rows, rows));
  }
  EngineOptions tight = roomy;
  tight.kv_memory = std::max(ref_peak / 2, need);
  ASSERT_LT(tight.kv_memory, ref_peak);
  Harness h(m, tight, so);
  for (const Request& r : reqs) ids.push_back(h.submit(r));
  expect_preemption_changed_nothing(h, ids, ref, ref_ids, tight.kv_memory, swap_host == 0);
  for (RequestId id : ids) EXPECT_EQ(h.out.at(id).finish, FinishReason::Length);
  EXPECT_EQ(h.engine->backend().swap_bytes_host(), 0u);
}

TEST_F(EngineTest, PreemptionBySwapChangesNoOutput) {
  expect_tight_memory_changes_nothing(m(), size_t(1) << 30, 0);
  expect_tight_memory_changes_nothing(m(), size_t(1) << 30, 0.8f);
}

TEST_F(EngineTest, PreemptionByRecomputationChangesNoOutput) {
  expect_tight_memory_changes_nothing(m(), 0, 0);
  expect_tight_memory_changes_nothing(m(), 0, 0.8f);
}

TEST_F(EngineTest, CancellationEndsTheRequestAndFreesItsCache) {
  Harness h(m(), small_engine(2));
  Request r = make(prompt(kTexts[0]), 200, 0, 0);
  r.ignore_eos = true;
  const RequestId a = h.submit(r);
  const RequestId b = h.submit(make(prompt(kTexts[1]), 8, 0, 0));
  for (int i = 0; i < 4; ++i) h.engine->step();
  EXPECT_GT(h.engine->backend().max_rank_bytes(), 0u);
  h.engine->cancel(a);
  h.engine->cancel(12345);  // unknown: ignored
  h.engine->run_until_idle();
  EXPECT_EQ(h.out.at(a).finish, FinishReason::Cancelled);
  EXPECT_LT(h.out.at(a).tokens.size(), 200u);
  EXPECT_EQ(h.out.at(a).finals, 1);
  EXPECT_EQ(h.out.at(b).finals, 1);
  EXPECT_EQ(h.engine->backend().max_rank_bytes(), 0u);
  EXPECT_EQ(h.engine->stats().cancelled, 1);
}

TEST_F(EngineTest, RefusesBadRequestsNamingTheField) {
  EngineOptions eo = small_engine(2);
  eo.queue_limit = 2;
  eo.ctx_size = 64;
  Harness h(m(), eo);
  auto refused = [&](Request r, Refused::Kind kind, const std::string& needle) {
    try {
      h.submit(std::move(r));
      ADD_FAILURE() << "accepted; expected refusal with " << needle;
    } catch (const Refused& e) {
      EXPECT_EQ(e.kind, kind) << e.what();
      EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
    }
  };
  refused(make({}, 4, 0, 0), Refused::Kind::Invalid, "prompt");
  refused(make({1, 999999}, 4, 0, 0), Refused::Kind::Invalid, "vocabulary");
  refused(make({1, 2}, 0, 0, 0), Refused::Kind::Invalid, "max_tokens");
  refused(make(std::vector<int32_t>(64, 5), 4, 0, 0), Refused::Kind::TooLarge, "context");
  Request bad_temp = make({1, 2}, 4, -1, 0);
  refused(bad_temp, Refused::Kind::Invalid, "temp");
  Request bad_kv = make({1, 2}, 4, 0, 0);
  bad_kv.compression = kv::CompressionConfig{};
  bad_kv.compression->policy = kv::Policy::AdaKV;
  bad_kv.compression->budget = -3;
  refused(bad_kv, Refused::Kind::Invalid, "budget");
  h.submit(make({1, 2}, 4, 0, 0));
  h.submit(make({1, 3}, 4, 0, 0));
  refused(make({1, 4}, 4, 0, 0), Refused::Kind::QueueFull, "queue is full");
  h.engine->run_until_idle();
  EXPECT_EQ(h.out.size(), 2u);
  // A request larger than the KV memory can never run: refused, not queued forever.
  EngineOptions tiny = small_engine(2);
  tiny.kv_memory = 1000;
  Harness t(m(), tiny);
  try {
    t.submit(make(prompt(kTexts[2]), 8, 0, 0));
    ADD_FAILURE() << "accepted a request that cannot fit";
  } catch (const Refused& e) {
    EXPECT_EQ(e.kind, Refused::Kind::TooLarge);
    EXPECT_NE(std::string(e.what()).find("--kv-memory"), std::string::npos) << e.what();
  }
}

TEST_F(EngineTest, StopStringsEndTheOutputBeforeTheMatch) {
  const auto p = prompt(kTexts[0]);
  const Outcome full = alone(m(), small_engine(2), make(p, 24, 0, 0));
  ASSERT_GT(full.text.size(), 12u);
  const std::string stop = full.text.substr(full.text.size() / 2, 3);
  Request r = make(p, 24, 0, 0);
  r.stop = {stop};
  const Outcome got = alone(m(), small_engine(2), r);
  EXPECT_EQ(got.finish, FinishReason::Stop);
  EXPECT_EQ(got.text, full.text.substr(0, full.text.find(stop)));
  // A stop token ends it too, and is not part of the text.
  Request t = make(p, 24, 0, 0);
  t.stop_tokens = {full.tokens[3]};
  const Outcome by_token = alone(m(), small_engine(2), t);
  EXPECT_EQ(by_token.finish, FinishReason::Stop);
  EXPECT_LE(by_token.tokens.size(), 3u);
}

TEST_F(EngineTest, LengthLimitsAndStats) {
  EngineOptions eo = small_engine(2);
  eo.ctx_size = 40;
  Harness h(m(), eo);
  Request r = make(prompt(kTexts[0]), 100, 0, 0);
  r.ignore_eos = true;
  const RequestId id = h.submit(r);
  h.engine->run_until_idle();
  const Outcome& o = h.out.at(id);
  EXPECT_EQ(o.finish, FinishReason::Length);
  EXPECT_EQ(int64_t(o.tokens.size()) + o.stats.prompt_tokens, 40);
  EXPECT_GE(o.stats.ttft_ms(), 0);
  EXPECT_GE(o.stats.finished_ms, o.stats.first_token_ms);
  const EngineStats s = h.engine->stats();
  EXPECT_EQ(s.finished, 1);
  EXPECT_EQ(s.generated_tokens, int64_t(o.tokens.size()));
  EXPECT_EQ(s.running + s.waiting + s.preempted, 0);
}

// The engine on R ranks (threads) under tp and FairKV placements, with dynamic re-planning: every
// request's greedy and seeded output equals the one-device engine's (the canonical reduction
// computes one device's floats; token slices, which split plans and re-planning makes of
// replicated units, agree up to rounding: greedy only under split), and re-planning changes none.
TEST_F(EngineTest, RanksServeTheSameOutputsAsOneDevice) {
  kv::CompressionConfig c;
  c.policy = kv::Policy::AdaKV;
  c.budget = 12;
  c.window = 8;
  const placement::CostModel cost =
      runtime::run_cost_model(m().config, m().weights.layers[0].wq.type, kv::KvType::F32, 4);
  int replans = 0;
  const std::pair<int, std::string> configs[] = {
      {1, "tp"},       {2, "tp"},        {4, "tp"},    {2, "fair-copy"},
      {3, "balanced"}, {4, "fair-copy"}, {2, "split"}, {3, "split"}};
  for (const auto& [R, planner] : configs) {
    const float temp = planner == "split" ? 0.0f : 0.8f;
    EngineOptions eo = small_engine(3);
    eo.compression = c;
    eo.replan_cost = cost;
    eo.replan_gbs = 1e6;  // moving is free here: re-plan at every change that gains anything
    const placement::Placement p =
        test_placement(m(), placement::planner_from_name(planner), R, cost);
    RanksOptions ro;
    ro.n_slots = Engine::open_limit(eo.parallel);
    ro.cost = cost;
    Harness h(m(), eo);
    h.engine = std::make_unique<Engine>(m(), std::make_unique<RanksBackend>(m(), p, ro), eo);
    Harness one(m(), eo);
    std::vector<RequestId> ids, one_ids;
    for (size_t i = 0; i < std::size(kTexts); ++i) {
      const Request r = make(prompt(kTexts[i]), 10 + int(i) * 4, i % 2 ? temp : 0, 7 + i);
      ids.push_back(h.submit(r));
      one_ids.push_back(one.submit(r));
      h.engine->step();
      one.engine->step();
    }
    h.engine->run_until_idle();
    one.engine->run_until_idle();
    for (size_t i = 0; i < ids.size(); ++i)
      EXPECT_EQ(h.out.at(ids[i]).tokens, one.out.at(one_ids[i]).tokens)
          << planner << " on " << R << " ranks, request " << i;
    replans += int(h.engine->stats().replans);
    EXPECT_EQ(h.engine->backend().max_rank_bytes(), 0u);
  }
  EXPECT_GT(replans, 0);  // the FairKV placements were re-divided as requests came and went
}

// EpiCache served on R ranks: its blocks cut into chunks, the cache compressed after every block
// by the ranks owning each unit; every request's greedy output equals the one-device engine's,
// requests arriving while others prefill or decode.
TEST_F(EngineTest, EpiCacheOnRanksServesTheSameOutputsAsOneDevice) {
  kv::CompressionConfig c;
  c.policy = kv::Policy::EpiCache;
  c.budget = 12;
  c.window = 8;
  c.epicache_block = 24;
  // Some prompt spans several blocks (and its blocks several chunks).
  ASSERT_GT(prompt(kTexts[2]).size(), size_t(2 * c.epicache_block));
  const placement::CostModel cost =
      runtime::run_cost_model(m().config, m().weights.layers[0].wq.type, kv::KvType::F32, 4);
  for (int R : {2, 3}) {
    for (const std::string planner : {"tp", "split"}) {
      EngineOptions eo = small_engine(3);
      eo.compression = c;
      const placement::Placement p =
          test_placement(m(), placement::planner_from_name(planner), R, cost);
      RanksOptions ro;
      ro.n_slots = Engine::open_limit(eo.parallel);
      Harness h(m(), eo);
      h.engine = std::make_unique<Engine>(m(), std::make_unique<RanksBackend>(m(), p, ro), eo);
      Harness one(m(), eo);
      std::vector<RequestId> ids, one_ids;
      for (size_t i = 0; i < std::size(kTexts); ++i) {
        const Request r = make(prompt(kTexts[i]), 8 + int(i) * 2, 0, 0);
        ids.push_back(h.submit(r));
        one_ids.push_back(one.submit(r));
        h.engine->step();
        one.engine->step();
      }
      h.engine->run_until_idle();
      one.engine->run_until_idle();
      for (size_t i = 0; i < ids.size(); ++i) {
        EXPECT_EQ(h.out.at(ids[i]).tokens, one.out.at(one_ids[i]).tokens)
            << planner << " on " << R << " ranks, request " << i;
        EXPECT_EQ(h.out.at(ids[i]).stats.kv_rows_kept, one.out.at(one_ids[i]).stats.kv_rows_kept);
      }
    }
  }
}

// Batch invariance on ranks: a seeded request's tokens on R ranks are the same alone and among
// others (the ranks' partial sums do not depend on the batch, and their sums are in rank order).
// Batch invariance on ranks: a sequence's logits on R ranks are bitwise the same alone and beside
// others (each rank's partial sums do not depend on the batch, and their sums are in rank order).
TEST(EngineOnRanks, LogitsDoNotDependOnTheBatch) {
  // A random-weight F16 model: from 2 rows on its kernels sum in another order, so a row that
  // depended on its batch would show.
  const std::string path = std::string(FAIRKV_SHARED_DIR) + "/models/synthetic/llama-gqa4-f16.gguf";
  if (!std::filesystem::exists(path)) GTEST_SKIP() << path << " is absent";
  const auto m = model::Model::load(path);
  const placement::CostModel cost =
      runtime::run_cost_model(m->config, m->weights.layers[0].wq.type, kv::KvType::F32, 4);
  auto ids = [&](int n, int salt) {
    std::vector<int32_t> p;
    for (int t = 0; t < n; ++t) p.push_back(int32_t((t * 37 + salt * 101 + 5) % m->config.n_vocab));
    return p;
  };
  const std::vector<int32_t> a = ids(20, 1), b = ids(33, 2), c = ids(12, 3);
  const size_t V = size_t(m->config.n_vocab);
  for (int R : {2, 3}) {
    const placement::Placement p = test_placement(*m, placement::PlannerKind::Split, R, cost);
    RanksOptions ro;
    ro.n_slots = 4;
    // A's logits rows: its prompt's last, then 6 greedy decode steps; with company, B and C
    // decode beside it and C's prompt arrives in the same steps.
    auto run = [&](bool company) {
      RanksBackend be(*m, p, ro);
      std::vector<float> rows;
      be.open(1, 64);
      if (company) {
        be.open(2, 64);
        StepItem it{2, b};
        it.full_prompt_done = true;
        be.run({&it, 1});
      }
      StepItem first{1, a};
      first.full_prompt_done = true;
      auto l = be.run({&first, 1});
      rows.insert(rows.end(), l.begin(), l.begin() + V);
      int32_t tok = model::argmax(l.subspan(0, V)), tok_b = 7;
      for (int step = 0; step < 6; ++step) {
        std::vector<StepItem> items;
        if (company) items.push_back({2, {&tok_b, 1}});
        items.push_back({1, {&tok, 1}});
        if (company && step == 2) {
          be.open(3, 64);
          items.push_back({3, c});
          items.back().full_prompt_done = true;
        }
        l = be.run(items);
        const size_t row = company ? 1 : 0;
        rows.insert(rows.end(), l.begin() + row * V, l.begin() + (row + 1) * V);
        tok = model::argmax(l.subspan(row * V, V));
      }
      return rows;
    };
    const std::vector<float> alone = run(false), together = run(true);
    ASSERT_EQ(alone.size(), together.size());
    EXPECT_EQ(std::memcmp(alone.data(), together.data(), alone.size() * sizeof(float)), 0)
        << R << " ranks";
  }
}

// Tight memory on ranks: requests wait, running ones are swapped out (to host memory or spill
// files) or dropped and recomputed, and resumed on the ranks; no output changes, none is lost.
TEST_F(EngineTest, PreemptionOnRanksChangesNoOutput) {
  const placement::CostModel cost =
      runtime::run_cost_model(m().config, m().weights.layers[0].wq.type, kv::KvType::F32, 4);
  std::vector<Request> reqs;
  for (size_t i = 0; i < std::size(kTexts); ++i) {
    Request r = make(prompt(kTexts[i]), 60, i % 2 ? 0.8f : 0.0f, 7 + i);
    r.ignore_eos = true;
    reqs.push_back(r);
  }
  // Swapped to host memory; to spill files (no host room); dropped and recomputed (no room).
  // Batch slices on 2 ranks, then token slices on 3 (their rows move between ranks).
  const std::filesystem::path spill =
      std::filesystem::temp_directory_path() / ("fairkv-spill-" + std::to_string(::getpid()));
  std::filesystem::create_directories(spill);
  for (int where : {0, 1, 2, 3}) {
    const placement::Placement p =
        where < 3 ? test_placement(m(), placement::PlannerKind::FairCopy, 2, cost)
                  : test_placement(m(), placement::PlannerKind::Split, 3, cost);
    SCOPED_TRACE(p.planner + " on " + std::to_string(p.devices) + " ranks");
    EngineOptions eo = small_engine(4);
    eo.replan_cost = cost;
    RanksOptions ro;
    ro.n_slots = Engine::open_limit(eo.parallel);
    ro.host_swap_bytes = where == 0 || where == 3 ? size_t(1) << 30 : 0;
    if (where == 1) {
      ro.swap_dir = spill.string();
      ro.file_swap_bytes = size_t(1) << 30;
    }
    Harness ref(m(), eo);
    ref.engine = std::make_unique<Engine>(m(), std::make_unique<RanksBackend>(m(), p, ro), eo);
    std::vector<RequestId> ref_ids, ids;
    for (const Request& r : reqs) ref_ids.push_back(ref.submit(r));
    size_t peak = 0;
    while (ref.engine->step()) peak = std::max(peak, ref.engine->backend().max_rank_bytes());
    EngineOptions tight = eo;
    tight.kv_memory = peak * 6 / 10;
    Harness h(m(), tight);
    h.engine = std::make_unique<Engine>(m(), std::make_unique<RanksBackend>(m(), p, ro), tight);
    for (const Request& r : reqs) ids.push_back(h.submit(r));
    expect_preemption_changed_nothing(h, ids, ref, ref_ids, tight.kv_memory, where == 2);
    EXPECT_TRUE(std::filesystem::is_empty(spill)) << "spill files left behind";
  }
  std::filesystem::remove_all(spill);
}

// Dynamic FairKV at admission: a new sequence's batch-sliced units go to the least-loaded holders.
// Two equal prompts under fair-copy on 2 ranks, 4 slots: with the lowest free slots (0 and 1) both
// would sit in the same half of every batch-sliced unit; chosen by load they sit on both ranks.
TEST_F(EngineTest, NewSequencesGoToTheLeastLoadedHolders) {
  const placement::CostModel cost =
      runtime::run_cost_model(m().config, m().weights.layers[0].wq.type, kv::KvType::F32, 4);
  placement::PlanOptions po;
  po.planner = placement::PlannerKind::FairCopy;
  po.devices = 2;
  po.tp_unless_faster = false;
  placement::Profile prof = runtime::model_profile(m().config, 40);
  for (auto& layer : prof.tokens) layer[0] = 4000;  // head 0 of every layer: copied on both
  const placement::Placement p = placement::plan(prof, cost, po);
  RanksOptions ro;
  ro.n_slots = 4;
  RanksBackend b(m(), p, ro);
  const auto tokens = prompt(kTexts[2]);
  for (SeqId id : {SeqId(1), SeqId(2)}) {
    b.open(id, 200);
    StepItem it{id, tokens};
    it.full_prompt_done = true;
    b.run({&it, 1});
  }
  const std::vector<RankLoad> l = b.loads();
  ASSERT_EQ(l.size(), 2u);
  const double mx = double(std::max(l[0].kv_bytes, l[1].kv_bytes));
  const double mn = double(std::min(l[0].kv_bytes, l[1].kv_bytes));
  // Head 0's caches (3/4 of what a layer holds beside the whole units) are split one per rank.
  EXPECT_LT(mx / mn, 1.35) << l[0].kv_bytes << " vs " << l[1].kv_bytes;
}

}  // namespace
}  // namespace fairkv::serve

namespace fairkv::serve {
namespace {

// A q8_0 cache holds 34 bytes per 32 elements where f32 holds 128: the backend's bytes per row
// follow the type, and under one memory limit admission runs as many more requests as fit.
TEST(EngineMemory, QuantizedCacheIsAdmittedByItsOwnBytes) {
  const std::string path = std::string(FAIRKV_SHARED_DIR) + "/models/synthetic/llama-gqa4-f32.gguf";
  if (!std::filesystem::exists(path)) GTEST_SKIP() << path << " is absent";
  const auto m = model::Model::load(path);
  std::vector<int32_t> prompt;
  for (int32_t t = 3; t < 40; ++t) prompt.push_back(t);
  const int max_tokens = 8;
  const int64_t rows = int64_t(prompt.size()) + max_tokens;
  EngineOptions eo = small_engine(4);
  size_t f32_need = 0;
  for (kv::KvType t : {kv::KvType::F32, kv::KvType::Q8_0}) {
    SCOPED_TRACE(kv::kv_type_name(t));
    SoloOptions so;
    so.kv_type = t;
    so.reserve_address_space = false;  // bytes are the rows', no page rounding
    kernels::ThreadPool pool(1);
    {
      SoloBackend b(*m, pool, so);
      const size_t need = b.bytes_for(rows, rows);
      const model::ModelConfig& c = m->config;
      EXPECT_EQ(need, size_t(rows) * size_t(c.n_layers) * size_t(c.n_kv_heads) *
                          kv::KvTypes(t).token_bytes(c.head_dim));
      if (t == kv::KvType::F32)
        f32_need = need;
      else
        EXPECT_EQ(need * 128, f32_need * 34);
    }
    // Room for one request's f32 rows and a half: one runs on f32, three on q8_0.
    eo.kv_memory = f32_need * 3 / 2;
    Engine e(*m, std::make_unique<SoloBackend>(*m, pool, so), eo);
    for (int i = 0; i < 3; ++i) {
      Request r = make(prompt, max_tokens, 0, 1);
      r.ignore_eos = true;
      e.submit(std::move(r), [](const Event&) {});
    }
    e.step();
    EXPECT_EQ(e.stats().running, t == kv::KvType::F32 ? 1 : 3);
    e.run_until_idle();
    EXPECT_EQ(e.stats().finished, 3);
  }
}

}  // namespace
}  // namespace fairkv::serve
