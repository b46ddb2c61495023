#include "runtime/calibration.h"

#include <gtest/gtest.h>

#include <vector>

#include "runtime/model_placement.h"

namespace fairkv::runtime {
namespace {

// Segments made exactly from known coefficients: the fit must return them.
std::vector<SegmentSample> exact_samples(double a, double b, double c) {
  std::vector<SegmentSample> s;
  const double kv[] = {100, 400, 50, 900, 300, 10};
  const double w[] = {20, 20, 60, 0, 40, 80};
  const double parts[] = {1, 2, 3, 1, 4, 2};
  for (int i = 0; i < 6; ++i)
    s.push_back({i / 3, i % 3, 0, kv[i], w[i], parts[i], a * kv[i] + b * w[i] + c * parts[i]});
  return s;
}

TEST(Calibration, FitRecoversKvWeightAndPartCosts) {
  const auto s = exact_samples(0.002, 0.006, 0.05);
  const SegmentFit f = fit_segments(s);
  ASSERT_TRUE(f.ok);
  EXPECT_NEAR(f.a, 0.002, 1e-12);
  EXPECT_NEAR(f.b, 0.006, 1e-12);
  EXPECT_NEAR(f.c, 0.05, 1e-10);
  EXPECT_NEAR(step_error(s, f), 0.0, 1e-9);
  // Without the parts term the fit cannot explain the samples: its step error shows it.
  const SegmentFit two = fit_segments(s, false);
  EXPECT_EQ(two.c, 0.0);
  EXPECT_GT(step_error(s, two), 1e-3);
}

TEST(Calibration, ANegativePartCostIsDroppedNotUsed) {
  // Parts that seem to make work faster are noise: c is left at 0 and a, b refitted.
  const auto s = exact_samples(0.002, 0.006, -0.05);
  const SegmentFit f = fit_segments(s);
  EXPECT_EQ(f.c, 0.0);
  EXPECT_TRUE(f.ok);
}

TEST(Calibration, StepErrorIsThatOfTheSlowestRankPerLayer) {
  // Two ranks, two layers of one placement; the fit predicts ms = kv.
  const SegmentFit f{1.0, 0.0, 0.0, true};
  std::vector<SegmentSample> s = {{0, 0, 0, 10, 0, 1, 12},
                                  {0, 0, 1, 8, 0, 1, 9},  // layer 0: predicted max 10, measured 12
                                  {0, 1, 0, 5, 0, 1, 4},
                                  {0, 1, 1, 6, 0, 1, 6}};  // layer 1: predicted max 6, measured 6
  EXPECT_NEAR(step_error(s, f), std::abs(16.0 / 18.0 - 1.0), 1e-12);
}

TEST(Calibration, RunCostModelCarriesItAndRefusesNonsense) {
  model::ModelConfig c;
  c.n_layers = 2;
  c.n_heads = 8;
  c.n_kv_heads = 2;
  c.head_dim = 16;
  c.n_embd = 128;
  c.n_ff = 256;
  Calibration cal;
  cal.kv_time_factor = 0.5;
  cal.part_load = 12;
  cal.split_layer_load = 30;
  cal.error = 0.04;
  const auto bytes = run_cost_model(c, kernels::DType::F16, kv::KvType::F16, 4);
  const auto timed = run_cost_model(c, kernels::DType::F16, kv::KvType::F16, 4, cal);
  EXPECT_DOUBLE_EQ(timed.weight_bytes, bytes.weight_bytes / 0.5);
  EXPECT_EQ(timed.part_load, 12);
  EXPECT_EQ(timed.split_layer_load, 30);
  EXPECT_EQ(timed.error, 0.04);
  EXPECT_EQ(bytes.part_load, 0);
  cal.part_load = -1;
  EXPECT_THROW(run_cost_model(c, kernels::DType::F16, kv::KvType::F16, 4, cal),
               std::invalid_argument);
  cal.part_load = 0;
  cal.kv_time_factor = 0;
  EXPECT_THROW(run_cost_model(c, kernels::DType::F16, kv::KvType::F16, 4, cal),
               std::invalid_argument);
  // KV bytes per element are the types' in force: f16 2, q8_0 34 / 32, K q8_0 with V f16 their
  // mean; a head of 16 cannot hold q8_0 blocks.
  EXPECT_EQ(bytes.kv_bytes, 2.0);
  EXPECT_THROW(run_cost_model(c, kernels::DType::F16, kv::KvType::Q8_0, 4), std::invalid_argument);
  c.head_dim = 64;
  EXPECT_DOUBLE_EQ(run_cost_model(c, kernels::DType::F16, kv::KvType::Q8_0, 4).kv_bytes,
                   34.0 / 32.0);
  EXPECT_DOUBLE_EQ(
      run_cost_model(c, kernels::DType::F16, kv::KvTypes(kv::KvType::Q8_0, kv::KvType::F16), 4)
          .kv_bytes,
      (68.0 + 128.0) / 128.0);
}

}  // namespace
}  // namespace fairkv::runtime
