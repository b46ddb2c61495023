#include "placement/profile.h"

#include <gtest/gtest.h>

#include <fmt/format.h>

#include <cstdio>
#include <filesystem>
#include <fstream>

#include <nlohmann/json.hpp>

#include "placement/json_check.h"
#include "placement/placement.h"
#include "placement/planners.h"

namespace fairkv::placement {
namespace {

nlohmann::json good_profile() {
  return nlohmann::json::parse(R"({"model": "m", "layers": 2, "kv_heads": 3, "query_heads": 6,
    "head_dim": 8, "tokens": [[1, 2.5, 3], [0, 4, 5]], "source": "hand"})");
}

std::string error_of(const nlohmann::json& j) {
  try {
    profile_from_json(j, "p.json");
  } catch (const FormatError& e) {
    return e.what();
  }
  return "";
}

std::string temp_path(const std::string& name) {
  return (std::filesystem::temp_directory_path() / ("fairkv_placement_" + name)).string();
}

TEST(Profile, ReadsTheFixedFields) {
  const auto p = profile_from_json(good_profile(), "p.json");
  EXPECT_EQ(p.model, "m");
  EXPECT_EQ(p.layers, 2);
  EXPECT_EQ(p.kv_heads, 3);
  EXPECT_EQ(p.group(), 2);
  EXPECT_EQ(p.embedding(), 48);  // query heads x head size when "embd" is absent
  EXPECT_DOUBLE_EQ(p.tokens[0][1], 2.5);
  EXPECT_DOUBLE_EQ(p.tokens[1][2], 5.0);
  EXPECT_EQ(p.source, "hand");
  EXPECT_TRUE(p.samples.empty());
}

TEST(Profile, ErrorsNameTheField) {
  auto j = good_profile();
  j["tokens"][1][2] = "abc";
  EXPECT_EQ(error_of(j), "p.json: tokens[1][2]: expected a non-negative number, got \"abc\"");
  j = good_profile();
  j["tokens"][0][0] = -1;
  EXPECT_EQ(error_of(j), "p.json: tokens[0][0]: expected a non-negative number, got -1");
  j = good_profile();
  j["tokens"][0][1] = 1e308;  // would overflow every integer conversion downstream
  EXPECT_EQ(error_of(j), "p.json: tokens[0][1]: expected at most 1e+09 cached tokens, got 1e+308");
  j = good_profile();
  j["samples"] = {{{1, 2, 3}, {4, 5, 2e9}}};
  EXPECT_EQ(error_of(j),
            "p.json: samples[0][1][2]: expected at most 1e+09 cached tokens, got 2e+09");
  j = good_profile();
  j["tokens"][1] = {1, 2};
  EXPECT_EQ(error_of(j), "p.json: tokens[1]: expected 3 entries, got 2");
  j = good_profile();
  j["tokens"].erase(1);
  EXPECT_EQ(error_of(j), "p.json: tokens: expected 2 entries, got 1");
  j = good_profile();
  j.erase("head_dim");
  EXPECT_EQ(error_of(j), "p.json: head_dim: missing field");
  j = good_profile();
  j["kv_heads"] = 4;
  EXPECT_EQ(error_of(j), "p.json: query_heads: 6 is not a multiple of kv_heads (4)");
  j = good_profile();
  j["layers"] = 1.5;
  EXPECT_EQ(error_of(j), "p.json: layers: expected a positive integer, got 1.5");
  j = good_profile();
  j["samples"] = {{{1, 2, 3}, {4, 5, true}}};
  EXPECT_EQ(error_of(j), "p.json: samples[0][1][2]: expected a non-negative number, got true");
  EXPECT_EQ(error_of(nlohmann::json::array()), "p.json: profile: expected a JSON object, got []");
}

TEST(Profile, FileRoundTripAndFileErrors) {
  auto p = profile_from_json(good_profile(), "p.json");
  p.embd = 64;
  p.ffn = 100;
  p.samples = {p.tokens, p.tokens};
  const auto path = temp_path("roundtrip.json");
  write_profile(p, path);
  const auto q = read_profile(path);
  EXPECT_EQ(profile_to_json(q), profile_to_json(p));
  EXPECT_EQ(q.embedding(), 64);
  std::remove(path.c_str());

  try {
    read_profile(temp_path("missing.json"));
    FAIL();
  } catch (const FormatError& e) {
    EXPECT_NE(std::string(e.what()).find("missing.json: cannot open"), std::string::npos);
  }
  const auto bad = temp_path("bad.json");
  std::ofstream(bad) << "{\"model\": ";
  try {
    read_profile(bad);
    FAIL();
  } catch (const FormatError& e) {
    EXPECT_NE(std::string(e.what()).find("bad.json: not valid JSON"), std::string::npos);
  }
  std::remove(bad.c_str());
}

TEST(Profile, FromSamplesAveragesThem) {
  Profile shape;
  shape.model = "m";
  shape.layers = 1;
  shape.kv_heads = 2;
  shape.query_heads = 2;
  shape.head_dim = 4;
  const auto p = profile_from_samples(shape, {{{10, 0}}, {{20, 3}}});
  EXPECT_DOUBLE_EQ(p.tokens[0][0], 15.0);
  EXPECT_DOUBLE_EQ(p.tokens[0][1], 1.5);
  EXPECT_EQ(p.samples.size(), 2u);
  EXPECT_THROW(profile_from_samples(shape, {{{1, 2, 3}}}), FormatError);
  EXPECT_THROW(profile_from_samples(shape, {}), FormatError);
}

TEST(Profile, SyntheticIsDeterministicAndHasTheRequestedMean) {
  SyntheticSpec s;
  s.sigma = 0.5;
  s.seed = 3;
  s.samples = 2;
  const auto a = synthetic_lognormal(s);
  const auto b = synthetic_lognormal(s);
  EXPECT_EQ(profile_to_json(a), profile_to_json(b));
  s.seed = 4;
  EXPECT_NE(profile_to_json(synthetic_lognormal(s)), profile_to_json(a));
  ASSERT_EQ(a.samples.size(), 2u);
  // 640 log-normal draws with sigma 0.5: the sample mean is within 3 standard errors (~6%) of
  // the requested mean, and the log-spread within a few percent of sigma.
  double sum = 0, sum_log = 0, sum_log2 = 0;
  int n = 0;
  for (const auto& row : a.tokens)
    for (double t : row) {
      sum += t;
      sum_log += std::log(t);
      sum_log2 += std::log(t) * std::log(t);
      ++n;
    }
  EXPECT_EQ(n, 640);
  EXPECT_NEAR(sum / n, s.mean_tokens, 0.06 * s.mean_tokens);
  const double var = sum_log2 / n - (sum_log / n) * (sum_log / n);
  EXPECT_NEAR(std::sqrt(var), 0.5, 0.05);
  s.sigma = 0;
  const auto flat = synthetic_lognormal(s);
  for (const auto& row : flat.tokens)
    for (double t : row) EXPECT_DOUBLE_EQ(t, s.mean_tokens);
}

TEST(PlacementJson, RoundTripAndErrors) {
  SyntheticSpec s;
  s.layers = 3;
  s.kv_heads = 4;
  s.query_heads = 8;
  const auto prof = synthetic_lognormal(s);
  PlanOptions o;
  o.planner = PlannerKind::Split;
  o.devices = 3;
  const auto p = plan(prof, cost_model_for(prof, 4), o);
  const auto j = placement_to_json(p);
  const auto q = placement_from_json(j, "x.json");
  EXPECT_EQ(placement_to_json(q).dump(), j.dump());

  auto err = [](const nlohmann::json& bad) {
    try {
      placement_from_json(bad, "x.json");
    } catch (const FormatError& e) {
      return std::string(e.what());
    }
    return std::string();
  };
  auto bad = j;
  bad["layers"][1][0][0]["kind"] = "rows";
  EXPECT_EQ(err(bad),
            "x.json: layers[1][0][0].kind: expected \"whole\", \"batch\", \"tokens\" or "
            "\"query\", got \"rows\"");
  bad = j;
  bad["layers"][0][0].push_back(bad["layers"][0][0][0]);
  EXPECT_NE(err(bad).find("listed twice on the device"), std::string::npos) << err(bad);
  bad = j;
  bad["layers"][2] = nlohmann::json::array(
      {nlohmann::json::array(), nlohmann::json::array(), nlohmann::json::array()});
  EXPECT_EQ(err(bad), "x.json: layers[2]: head 0 is served by no device");
  bad = j;
  bad["layers"][0][0][0]["offset"] = 0.5;
  EXPECT_NE(err(bad).find("offset 0.5 is not where the previous devices' parts end"),
            std::string::npos);
  // Shares that do not add up.
  nlohmann::json two = nlohmann::json::parse(R"({"devices": 2, "kv_heads": 1, "layers": [[
      [{"head": 0, "share": 0.5, "kind": "tokens"}], [{"head": 0, "share": 0.25, "kind": "tokens"}]
    ]]})");
  EXPECT_EQ(err(two), "x.json: layers[0]: head 0: shares sum to 0.75, not 1");
  two["layers"][0][1][0]["share"] = 0.5;
  EXPECT_EQ(err(two), "");
  const auto ok = placement_from_json(two, "x.json");
  EXPECT_DOUBLE_EQ(ok.layers[0].devices[1][0].offset, 0.5);  // laid out in device order
}

// Error messages show a bad value cut short: json::dump recursed once per level, and a value
// nested a million deep overflowed the stack while the message was written.
TEST(PlacementJson, DeeplyNestedValuesAreRefusedBriefly) {
  const std::string deep = std::string(1000000, '[') + std::string(1000000, ']');
  try {
    placement_from_json(nlohmann::json::parse("{\"devices\": " + deep + "}"), "d.json");
    FAIL() << "accepted";
  } catch (const FormatError& e) {
    EXPECT_EQ(std::string(e.what()).rfind("d.json: devices: ", 0), 0u);
    EXPECT_LT(std::string(e.what()).size(), 200u);
  }
  EXPECT_EQ(brief(nlohmann::json::parse(R"({"a":[1,2.5,"x"],"b":null})")),
            R"({"a":[1,2.5,"x"],"b":null})");
  EXPECT_EQ(brief(nlohmann::json(std::string(100, 'y')), 10), "\"yyyyyy...");
  EXPECT_EQ(brief(nlohmann::json::parse(deep), 10), "[[[[[[[...");
}

// A query share holds the query heads its offsets round to; one that rounds to none would be
// served without weights, so it is refused once the model's group is known.
TEST(PlacementJson, QuerySharesHoldAQueryHead) {
  const auto two = [](double first) {
    return placement_from_json(
        nlohmann::json::parse(fmt::format(R"({{"devices": 2, "kv_heads": 1, "layers": [[
          [{{"head": 0, "share": {}, "kind": "query"}}],
          [{{"head": 0, "share": {}, "kind": "query"}}]]]}})",
                                          first, 1 - first)),
        "q.json");
  };
  const Placement thin = two(1e-9);  // a valid file: shares sum to 1
  EXPECT_EQ(query_heads(thin.layers[0].devices[0][0], 2), std::make_pair(0, 0));
  EXPECT_EQ(query_heads(thin.layers[0].devices[1][0], 2), std::make_pair(0, 2));
  try {
    check_query_shares(thin, 2, "q.json");
    FAIL() << "a query share of 1e-9 was accepted";
  } catch (const FormatError& e) {
    EXPECT_EQ(std::string(e.what()),
              "q.json: layers[0]: device 0: head 0: query share 1e-09 holds none of the unit's 2 "
              "query heads (its part [0, 2e-09) of them rounds to no whole head): a query share "
              "must hold at least one");
  }
  EXPECT_THROW(check_query_shares(two(0.2), 2, "q.json"), FormatError);  // 0.4 of a head
  EXPECT_NO_THROW(check_query_shares(two(0.3), 2, "q.json"));            // heads [0, 1), [1, 2)
  EXPECT_NO_THROW(check_query_shares(two(0.5), 8, "q.json"));
  EXPECT_THROW(check_query_shares(two(0.5), 1, "q.json"), FormatError);  // [0.5, 1) rounds to none
}

}  // namespace
}  // namespace fairkv::placement
