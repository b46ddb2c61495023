// The KV options of the command line: the flag table's strict parsing, and the head-importance
// file that --kv-head-importance reads (its format, its errors, and `fairkv importance`'s output
// read back).
#include "app/kv_options.h"

#include <gtest/gtest.h>

#include <cstdio>
#include <fstream>
#include <functional>

#include <nlohmann/json.hpp>

#include "app/head_importance_file.h"

namespace fairkv::app {
namespace {

std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const std::exception& e) {
    return e.what();
  }
  return "";
}

TEST(KvOptions, FlagsParseStrictlyWithClearErrors) {
  kv::CompressionConfig c;
  auto set = [&](const std::string& flag, const std::string& v) {
    for (const auto& o : compression_options())
      if (flag == o.flag) return o.set(c, v);
    FAIL() << "no option " << flag;
  };
  EXPECT_EQ(error_of([&] { set("--kv-budget", "-3"); }),
            "--kv-budget: expected a positive integer, got -3");
  EXPECT_EQ(error_of([&] { set("--kv-budget", "12x"); }),
            "--kv-budget: expected a positive integer, got '12x'");
  EXPECT_EQ(error_of([&] { set("--kv-policy", "snap"); }),
            "--kv-policy: unknown policy 'snap' (expected one of full, streaming, snapkv, "
            "pyramidkv, adakv, headkv, cake, defensivekv, zipvl, compresskv, taskkv, "
            "epicache)");
  EXPECT_EQ(error_of([&] { set("--kv-epicache-block", "0"); }),
            "--kv-epicache-block: expected a positive integer, got 0");
  EXPECT_EQ(error_of([&] { set("--kv-epicache-power", "-1"); }),
            "--kv-epicache-power: expected a non-negative number, got -1");
  EXPECT_EQ(error_of([&] { set("--kv-ratio", "1.5"); }),
            "--kv-ratio: expected a number in (0, 1], got 1.5");
  EXPECT_EQ(error_of([&] { set("--kv-pool-kernel", "4"); }),
            "--kv-pool-kernel: expected an odd positive integer, got 4");
  EXPECT_EQ(error_of([&] { set("--kv-pooling", "median"); }),
            "--kv-pooling: expected avg, max or none, got 'median'");
  EXPECT_EQ(error_of([&] { set("--kv-alpha", "2"); }),
            "--kv-alpha: expected a number in [0, 1], got 2");
  set("--kv-policy", "adakv");
  set("--kv-budget", "64");
  set("--kv-gqa", "max");
  c.resolve();
  EXPECT_EQ(c.describe(), "adakv budget=64 window=32 pool=max7 gqa=max alpha=0.2");
}

TEST(HeadImportanceFile, ReadsTheDocumentedFormatAndNamesBadFields) {
  const std::string dir = ::testing::TempDir();
  auto write = [&](const std::string& name, const std::string& text) {
    const std::string p = dir + "/" + name;
    std::ofstream(p) << text;
    return p;
  };
  const auto good =
      write("imp_good.json", R"({"layers": 2, "kv_heads": 2, "importance": [[1, 0.5], [0, 2]]})");
  const kv::HeadImportance imp = read_head_importance(good);
  EXPECT_EQ(imp.layers, 2);
  EXPECT_EQ(imp.importance, (std::vector<double>{1, 0.5, 0, 2}));
  // The file is read for headkv only, whichever policy the flags name.
  KvOptions o;
  o.raw = {{"--kv-policy", "headkv"}, {"--kv-budget", "40"}, {"--kv-head-importance", good}};
  EXPECT_TRUE(o.config().head_importance.has_value());
  o.raw["--kv-head-importance"] = dir + "/missing.json";
  EXPECT_FALSE(o.config("snapkv").head_importance.has_value());
  o.raw.erase("--kv-head-importance");
  EXPECT_EQ(error_of([&] { o.config(); }),
            "--kv-head-importance: the headkv policy needs a head-importance file");

  const auto rows =
      write("imp_rows.json", R"({"layers": 2, "kv_heads": 2, "importance": [[1, 1]]})");
  EXPECT_EQ(error_of([&] { read_head_importance(rows); }),
            rows + ": field 'importance': expected 2 rows (one per layer)");
  const auto neg =
      write("imp_neg.json", R"({"layers": 1, "kv_heads": 2, "importance": [[1, -1]]})");
  EXPECT_EQ(error_of([&] { read_head_importance(neg); }),
            neg + ": field 'importance[0][1]': expected a non-negative number");
  const auto nol = write("imp_nol.json", R"({"kv_heads": 2, "importance": [[1, 1]]})");
  EXPECT_EQ(error_of([&] { read_head_importance(nol); }),
            nol + ": field 'layers': expected a positive integer");
  const auto zero =
      write("imp_zero.json", R"({"layers": 1, "kv_heads": 2, "importance": [[0, 0]]})");
  EXPECT_EQ(error_of([&] { read_head_importance(zero); }),
            zero + ": field 'importance': every value is zero");
  const auto bad = write("imp_bad.json", "{\"layers\": ");
  EXPECT_NE(error_of([&] { read_head_importance(bad); }).find(bad + ": not valid JSON"),
            std::string::npos);
  EXPECT_EQ(error_of([&] { read_head_importance(dir + "/missing.json"); }),
            dir + "/missing.json: cannot open the head-importance file");
}

TEST(HeadImportanceFile, WhatImportanceWritesReadsBack) {
  const kv::HeadImportance imp =
      kv::importance_from_scores(std::vector<double>{1.0, 3.0, 0.5, 1.5}, 1, 2, 2);
  const std::string path = testing::TempDir() + "/importance_roundtrip.json";
  std::ofstream(path) << head_importance_json(imp).dump();
  const kv::HeadImportance back = read_head_importance(path);
  EXPECT_EQ(back.layers, 1);
  EXPECT_EQ(back.kv_heads, 2);
  ASSERT_EQ(back.importance.size(), 2u);
  EXPECT_NEAR(back.importance[0], 2.0 / 3, 1e-12);
  std::remove(path.c_str());
}

TEST(LayerSensitivityFile, ReadsWhatEvalWritesAndNamesBadFields) {
  const std::string dir = ::testing::TempDir();
  auto write = [&](const std::string& name, const std::string& text) {
    const std::string p = dir + "/" + name;
    std::ofstream(p) << text;
    return p;
  };
  const std::vector<double> sim = {0.99, 0.5, 0.75};
  const auto good = write("sens_good.json", layer_sensitivity_json(sim).dump());
  EXPECT_EQ(read_layer_sensitivity(good), sim);
  // Read for epicache, which then sizes its layers by it.
  KvOptions o;
  o.raw = {{"--kv-policy", "epicache"},
           {"--kv-budget", "40"},
           {"--kv-epicache-power", "2"},
           {"--kv-layer-sensitivity", good}};
  EXPECT_EQ(o.config().layer_sensitivity, sim);
  o.raw.erase("--kv-layer-sensitivity");
  EXPECT_NE(error_of([&] { (void)o.config(); }).find("--kv-layer-sensitivity"), std::string::npos);
  const auto short_ = write("sens_short.json", R"({"layers": 3, "key_similarity": [1, 0.5]})");
  EXPECT_EQ(error_of([&] { read_layer_sensitivity(short_); }),
            short_ + ": field 'key_similarity': expected 3 numbers (one per layer)");
  const auto text = write("sens_text.json", R"({"layers": 1, "key_similarity": ["a"]})");
  EXPECT_EQ(error_of([&] { read_layer_sensitivity(text); }),
            text + ": field 'key_similarity[0]': expected a finite number");
  const auto nol = write("sens_nol.json", R"({"key_similarity": [1]})");
  EXPECT_EQ(error_of([&] { read_layer_sensitivity(nol); }),
            nol + ": field 'layers': expected a positive integer");
}

}  // namespace
}  // namespace fairkv::app
