#include "model/sampler.h"

#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <string>

namespace fairkv::model {
namespace {

std::string error_of(const SamplerConfig& c) {
  try {
    Sampler s(c);
  } catch (const std::invalid_argument& e) {
    return e.what();
  }
  return "";
}

TEST(Sampler, ValuesOutsideTheirRangesNameTheOption) {
  const float nan = std::numeric_limits<float>::quiet_NaN();
  SamplerConfig ok;
  EXPECT_EQ(error_of(ok), "");
  auto with = [&](auto field, auto value) {
    SamplerConfig c = ok;
    c.*field = value;
    return error_of(c);
  };
  EXPECT_NE(with(&SamplerConfig::temp, -1.0f).find("--temp"), std::string::npos);
  EXPECT_NE(with(&SamplerConfig::temp, nan).find("--temp"), std::string::npos);
  EXPECT_NE(with(&SamplerConfig::temp, INFINITY).find("--temp"), std::string::npos);
  EXPECT_NE(with(&SamplerConfig::top_k, -5).find("--top-k"), std::string::npos);
  EXPECT_NE(with(&SamplerConfig::top_p, 2.0f).find("--top-p"), std::string::npos);
  EXPECT_NE(with(&SamplerConfig::top_p, 0.0f).find("--top-p"), std::string::npos);
  EXPECT_NE(with(&SamplerConfig::min_p, nan).find("--min-p"), std::string::npos);
  EXPECT_NE(with(&SamplerConfig::min_p, 1.5f).find("--min-p"), std::string::npos);
  // The edges of each range are accepted: greedy, top-k off, top-p off, min-p off.
  EXPECT_EQ(with(&SamplerConfig::temp, 0.0f), "");
  EXPECT_EQ(with(&SamplerConfig::top_k, 0), "");
  EXPECT_EQ(with(&SamplerConfig::top_p, 1.0f), "");
  EXPECT_EQ(with(&SamplerConfig::min_p, 0.0f), "");
}

TEST(Sampler, GreedyIsTheFirstMaximum) {
  const float logits[] = {1, 3, 3, 2};
  SamplerConfig c;
  c.temp = 0;
  Sampler s(c);
  EXPECT_EQ(s.sample(logits), 1);
}

}  // namespace
}  // namespace fairkv::model
