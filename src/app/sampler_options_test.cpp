// The sampling options of `fairkv run`: llama.cpp's spellings parse into the SamplerConfig, and
// bad values fail naming the flag.
#include "app/sampler_options.h"

#include <gtest/gtest.h>

#include <cmath>
#include <functional>
#include <string>
#include <vector>

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

model::SamplerConfig parse(std::vector<std::string> args) {
  CLI::App app;
  SamplerOptions o;
  add_sampler_options(app, o);
  args.insert(args.begin(), "fairkv");
  std::vector<const char*> argv;
  for (const std::string& a : args) argv.push_back(a.c_str());
  app.parse(int(argv.size()), argv.data());
  return o.resolve();
}

TEST(SamplerOptions, LlamaCppSpellingsFillTheConfig) {
  const model::SamplerConfig d = parse({});
  EXPECT_EQ(d.repeat_penalty, 1.0f);
  EXPECT_EQ(d.repeat_last_n, 64);
  EXPECT_EQ(d.presence_penalty, 0.0f);
  EXPECT_EQ(d.frequency_penalty, 0.0f);
  EXPECT_TRUE(d.logit_bias.empty());

  const model::SamplerConfig c =
      parse({"--repeat-penalty", "1.1", "--repeat-last-n", "-1", "--presence-penalty", "-0.5",
             "--frequency-penalty", "0.25", "--logit-bias", "15043+1", "-l", "2-inf", "-l", "7-0.5",
             "--temp", "0", "-s", "9"});
  EXPECT_EQ(c.repeat_penalty, 1.1f);
  EXPECT_EQ(c.repeat_last_n, -1);
  EXPECT_EQ(c.presence_penalty, -0.5f);
  EXPECT_EQ(c.frequency_penalty, 0.25f);
  ASSERT_EQ(c.logit_bias.size(), 3u);
  EXPECT_EQ(c.logit_bias[0].token, 15043);
  EXPECT_EQ(c.logit_bias[0].bias, 1.0f);
  EXPECT_EQ(c.logit_bias[1].token, 2);
  EXPECT_EQ(c.logit_bias[1].bias, -INFINITY);
  EXPECT_EQ(c.logit_bias[2].bias, -0.5f);
  EXPECT_EQ(c.temp, 0.0f);
  EXPECT_EQ(c.seed, 9u);
}

TEST(SamplerOptions, BadValuesNameTheFlag) {
  const std::string usage =
      "--logit-bias: expected TOKEN+BIAS or TOKEN-BIAS (e.g. 15043+1, 15043-inf), got ";
  for (const char* bad : {"15043", "+1", "15043+", "x+1", "15043+x", "15043--1", "15043+1x", " 1+1",
                          "0x10+1", "99999999999+1"})
    EXPECT_EQ(error_of([&] { parse_logit_bias(bad); }), usage + "'" + bad + "'");
  EXPECT_EQ(error_of([] {
              parse({"--logit-bias", "5+inf"});
            }),
            "--logit-bias: expected a bias in [-100, 100] or -inf, got inf for token 5");
  EXPECT_EQ(error_of([] {
              parse({"-l", "5+101"});
            }),
            "--logit-bias: expected a bias in [-100, 100] or -inf, got 101 for token 5");
  EXPECT_EQ(error_of([] {
              parse({"--presence-penalty", "3"});
            }),
            "--presence-penalty: expected a number in [-2, 2] (0: off), got 3");
  EXPECT_EQ(error_of([] {
              parse({"--repeat-last-n", "-2"});
            }),
            "--repeat-last-n: expected a count >= -1 (0: off, -1: the whole context), got -2");
  EXPECT_NE(error_of([] {
              parse({"--repeat-penalty", "0"});
            }).find("--repeat-penalty"),
            std::string::npos);
  EXPECT_NE(error_of([] {
              parse({"--frequency-penalty", "nan"});
            }).find("--frequency-penalty"),
            std::string::npos);
}

}  // namespace
}  // namespace fairkv::app
