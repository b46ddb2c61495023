// Log-probabilities from the serving engine: equal to the log-softmax (in double) of a separate
// dense forward's logits rows, the greedy choice the most likely, delivered with the text they
// belong to when stop strings hold text back, and the same on two ranks as on one device.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "model/model.h"
#include "placement/planners.h"
#include "runtime/model_placement.h"
#include "runtime/test_util.h"
#include "serve/engine.h"
#include "serve/ranks_backend.h"
#include "serve/solo_backend.h"
#include "serve/stories_test_util.h"

namespace fairkv::serve {
namespace {

class EngineLogprobs : public testing::Stories260KTest {};

// What one request heard: every event's text and logprobs, in order.
struct Heard {
  std::vector<int32_t> tokens;
  std::vector<std::string> texts;
  std::vector<std::vector<TokenLogprob>> logprobs;
  FinishReason finish = FinishReason::None;
};

EngineOptions small_engine() {
  EngineOptions eo;
  eo.parallel = 3;
  eo.prefill_chunk = 16;
  eo.step_tokens = 16 + 3 + 8;
  eo.compression.window = 8;
  return eo;
}

// Runs the requests together on `backend` and returns what each heard.
std::vector<Heard> run_all(const model::Model& m, std::unique_ptr<Backend> backend,
                           const std::vector<Request>& reqs) {
  Engine e(m, std::move(backend), small_engine());
  std::map<RequestId, Heard> got;
  std::vector<RequestId> ids;
  for (const Request& r : reqs) {
    ids.push_back(e.submit(r, [&got](const Event& ev) {
      Heard& h = got[ev.id];
      if (ev.token >= 0) h.tokens.push_back(ev.token);
      h.texts.push_back(ev.text);
      h.logprobs.push_back(ev.logprobs);
      if (ev.finish != FinishReason::None) h.finish = ev.finish;
    }));
    e.step();
  }
  e.run_until_idle();
  std::vector<Heard> out;
  for (RequestId id : ids) out.push_back(got.at(id));
  return out;
}

std::vector<TokenLogprob> flat(const Heard& h) {
  std::vector<TokenLogprob> all;
  for (const auto& v : h.logprobs) all.insert(all.end(), v.begin(), v.end());
  return all;
}

const char* kTexts[] = {
    "Once upon a time, there was a little girl named Lily. She loved to play outside",
    "The cat sat on the mat",
    "One day, a big dog came to the park and saw a ball",
};

TEST_F(EngineLogprobs, EqualTheDenseForwardsLogSoftmax) {
  kernels::ThreadPool pool(1);
  std::vector<Request> reqs;
  for (size_t i = 0; i < std::size(kTexts); ++i) {
    Request r;
    r.prompt = m().tokenizer.encode(kTexts[i], true);
    r.max_tokens = 12;
    r.sampling.temp = 0;
    r.logprobs = int(5 + 5 * i);
    reqs.push_back(r);
  }
  const std::vector<Heard> got =
      run_all(m(), std::make_unique<SoloBackend>(m(), pool, SoloOptions{}), reqs);
  const size_t V = size_t(m().config.n_vocab);
  for (size_t i = 0; i < reqs.size(); ++i) {
    SCOPED_TRACE(kTexts[i]);
    const auto ref = runtime::testing::single_device(m(), reqs[i].prompt, 12, nullptr);
    const std::vector<TokenLogprob> lps = flat(got[i]);
    ASSERT_EQ(lps.size(), got[i].tokens.size() + (got[i].finish == FinishReason::Stop));
    ASSERT_LE(lps.size(), ref.output.size());
    for (size_t t = 0; t < lps.size(); ++t) {
      // The dense reference: log-softmax of the reference's row in double.
      const float* row = ref.logits.data() + t * V;
      const double mx = *std::max_element(row, row + V);
      double sum = 0;
      for (size_t k = 0; k < V; ++k) sum += std::exp(double(row[k]) - mx);
      auto ref_lp = [&](int32_t id) { return double(row[size_t(id)]) - mx - std::log(sum); };
      std::vector<double> sorted(V);
      for (size_t k = 0; k < V; ++k) sorted[k] = ref_lp(int32_t(k));
      std::sort(sorted.begin(), sorted.end(), std::greater<>());
      const TokenLogprob& lp = lps[t];
      EXPECT_EQ(lp.token, ref.output[t]);
      EXPECT_EQ(lp.text, m().tokenizer.decode_token(lp.token));
      // Chunked prefill sums in another order than the dense forward: float-level differences.
      EXPECT_NEAR(lp.logprob, ref_lp(lp.token), 1e-4) << "token " << t;
      ASSERT_EQ(lp.top.size(), size_t(reqs[i].logprobs));
      // Greedy: the chosen token is the most likely, and the first alternative.
      EXPECT_EQ(lp.top[0].token, lp.token);
      EXPECT_EQ(lp.top[0].logprob, lp.logprob);
      EXPECT_NEAR(lp.logprob, sorted[0], 1e-4);
      for (size_t k = 0; k < lp.top.size(); ++k) {
        EXPECT_NEAR(lp.top[k].logprob, sorted[k], 1e-4) << "alternative " << k;
        EXPECT_NEAR(lp.top[k].logprob, ref_lp(lp.top[k].token), 1e-4);
        EXPECT_EQ(lp.top[k].text, m().tokenizer.decode_token(lp.top[k].token));
        if (k > 0) {
          EXPECT_LE(lp.top[k].logprob, lp.top[k - 1].logprob);
        }
      }
    }
  }
}

TEST_F(EngineLogprobs, GoOutWithTheTextTheyBelongTo) {
  kernels::ThreadPool pool(1);
  Request r;
  r.prompt = m().tokenizer.encode(kTexts[0], true);
  r.max_tokens = 40;
  r.ignore_eos = true;
  r.sampling.temp = 0;
  r.logprobs = 0;
  Request plain = r;
  const Heard free =
      run_all(m(), std::make_unique<SoloBackend>(m(), pool, SoloOptions{}), {plain})[0];
  std::string all;
  for (const std::string& t : free.texts) all += t;
  ASSERT_GT(all.size(), 20u);
  // Stop strings that hold text back often: every space and "e" could start one; the last one
  // matches in the middle of the output.
  r.stop = {" zq", "ezq", all.substr(all.size() / 2, 6)};
  const Heard held = run_all(m(), std::make_unique<SoloBackend>(m(), pool, SoloOptions{}), {r})[0];
  EXPECT_EQ(held.finish, FinishReason::Stop);
  std::string sent, covered;
  size_t events_with_fewer = 0;
  for (size_t e = 0; e + 1 < held.texts.size(); ++e) {
    sent += held.texts[e];
    for (const TokenLogprob& lp : held.logprobs[e]) covered += lp.text;
    // The tokens sent are those whose text is wholly sent; the rest is one token's beginning.
    ASSERT_TRUE(sent.starts_with(covered)) << e;
    ASSERT_LE(sent.size() - covered.size(), size_t(16)) << e;
    events_with_fewer += held.logprobs[e].empty();
  }
  EXPECT_GT(events_with_fewer, 0u);  // some tokens did wait for their text
  // Every generated token's logprob arrives by the final event, the stop string's ones too, and
  // they are those of the run without stop strings.
  const std::vector<TokenLogprob> lps = flat(held), ref = flat(free);
  ASSERT_GT(lps.size(), held.tokens.size());
  ASSERT_LE(lps.size(), ref.size());
  for (size_t t = 0; t < lps.size(); ++t) {
    EXPECT_EQ(lps[t].token, ref[t].token);
    EXPECT_EQ(lps[t].logprob, ref[t].logprob);
    EXPECT_TRUE(lps[t].top.empty());
  }
}

TEST_F(EngineLogprobs, OnTwoRanksEqualOneDevice) {
  kernels::ThreadPool pool(1);
  std::vector<Request> reqs;
  for (size_t i = 0; i < std::size(kTexts); ++i) {
    Request r;
    r.prompt = m().tokenizer.encode(kTexts[i], true);
    r.max_tokens = 10;
    r.sampling.temp = i == 1 ? 0.8f : 0;
    r.sampling.seed = 5;
    r.logprobs = 4;
    reqs.push_back(r);
  }
  const placement::CostModel cost =
      runtime::run_cost_model(m().config, m().weights.layers[0].wq.type, kv::KvType::F32, 4);
  placement::PlanOptions po;
  po.planner = placement::PlannerKind::Split;
  po.devices = 2;
  po.tp_unless_faster = false;
  const placement::Placement p =
      placement::plan(runtime::testing::heavy_unit_profile(m().config, 40, 1000), cost, po);
  RanksOptions ro;
  ro.n_slots = Engine::open_limit(small_engine().parallel);
  const std::vector<Heard> ranks = run_all(m(), std::make_unique<RanksBackend>(m(), p, ro), reqs);
  const std::vector<Heard> one =
      run_all(m(), std::make_unique<SoloBackend>(m(), pool, SoloOptions{}), reqs);
  for (size_t i = 0; i < reqs.size(); ++i) {
    const std::vector<TokenLogprob> a = flat(ranks[i]), b = flat(one[i]);
    ASSERT_EQ(ranks[i].tokens, one[i].tokens) << i;
    ASSERT_EQ(a.size(), b.size());
    for (size_t t = 0; t < a.size(); ++t) {
      EXPECT_EQ(a[t].token, b[t].token);
      EXPECT_NEAR(a[t].logprob, b[t].logprob, 1e-4);
      ASSERT_EQ(a[t].top.size(), b[t].top.size());
      for (size_t k = 0; k < a[t].top.size(); ++k)
        EXPECT_NEAR(a[t].top[k].logprob, b[t].top[k].logprob, 1e-4);
    }
  }
}

TEST_F(EngineLogprobs, OutOfRangeIsRefusedAndNoneAskedNoneSent) {
  kernels::ThreadPool pool(1);
  Engine e(m(), std::make_unique<SoloBackend>(m(), pool, SoloOptions{}), small_engine());
  Request r;
  r.prompt = m().tokenizer.encode(kTexts[1], true);
  r.max_tokens = 4;
  for (int bad : {-2, kMaxTopLogprobs + 1}) {
    r.logprobs = bad;
    try {
      e.submit(r, nullptr);
      ADD_FAILURE() << "logprobs " << bad << " was accepted";
    } catch (const Refused& x) {
      EXPECT_EQ(x.kind, Refused::Kind::Invalid);
      EXPECT_TRUE(std::string(x.what()).starts_with("logprobs:")) << x.what();
    }
  }
  r.logprobs = -1;
  size_t sent = 0;
  e.submit(r, [&](const Event& ev) { sent += ev.logprobs.size(); });
  e.run_until_idle();
  EXPECT_EQ(sent, 0u);
}

}  // namespace
}  // namespace fairkv::serve
