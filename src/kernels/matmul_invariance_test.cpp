// Batching::Invariant: for every weight type the kernels read, both activation modes, token
// counts on both sides of every kernel switch (8, 16) and 1 and 2 threads, each token's row is
// bitwise the row that a 1-token call gives for that token alone, also on a strided (Wo-style)
// view; and Invariant stays as close to Fastest as the reference tests allow each of them.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "kernels/matmul.h"

namespace fairkv::kernels {
namespace {

const Activations kModes[] = {Activations::Float32, Activations::LikeGgml, Activations::GgmlOrder};
const int64_t kTokenCounts[] = {1, 2, 3, 7, 8, 15, 16, 17, 40};
constexpr int64_t kMaxTokens = 40;

std::vector<float> random_x(int64_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> dist(0.0f, 1.0f);
  std::vector<float> x(static_cast<size_t>(n));
  for (float& v : x) v = dist(rng);
  return x;
}

// rows x cols weights of type t: normal values through quantize_row, or, for the K-quants (no
// quantizer here), random blocks with sane scales.
std::vector<uint8_t> random_weights(DType t, int64_t rows, int64_t cols, uint32_t seed) {
  std::vector<uint8_t> data(row_bytes(t, cols) * size_t(rows));
  if (is_k_quant(t)) {
    fill_random_blocks(t, seed, data.data(), rows * cols);
    return data;
  }
  const std::vector<float> v = random_x(rows * cols, seed);
  for (int64_t r = 0; r < rows; ++r)
    quantize_row(t, v.data() + r * cols, data.data() + size_t(r) * row_bytes(t, cols), cols);
  return data;
}

std::string label(const WeightMatrix& w, Activations act, int64_t n, const ThreadPool& pool) {
  return std::string(dtype_name(w.type)) + " " + std::to_string(w.rows) + "x" +
         std::to_string(w.cols) + " stride " + std::to_string(w.stride()) + " " +
         activations_name(act) + " n=" + std::to_string(n) +
         " threads=" + std::to_string(pool.size());
}

// Every row of Invariant calls over the first n of kMaxTokens tokens, for each n and pool,
// against one 1-token call per token on one thread.
void expect_rows_equal_one_token_calls(const WeightMatrix& w, uint32_t seed) {
  ThreadPool pool1(1), pool2(2);
  for (Activations act : kModes) {
    const std::vector<float> x = random_x(kMaxTokens * w.cols, seed++);
    std::vector<float> alone(size_t(kMaxTokens * w.rows));
    for (int64_t t = 0; t < kMaxTokens; ++t)
      matmul(w, x.data() + t * w.cols, 1, alone.data() + t * w.rows, pool1, act);
    for (int64_t n : kTokenCounts) {
      for (ThreadPool* pool : {&pool1, &pool2}) {
        std::vector<float> y(size_t(n * w.rows), -1.0f);
        matmul(w, x.data(), n, y.data(), *pool, act, Batching::Invariant);
        for (int64_t t = 0; t < n; ++t) {
          ASSERT_EQ(std::memcmp(y.data() + t * w.rows, alone.data() + t * w.rows,
                                size_t(w.rows) * sizeof(float)),
                    0)
              << label(w, act, n, *pool) << ": token " << t << " differs from its 1-token call";
        }
      }
    }
  }
}

TEST(MatmulInvariance, EveryRowEqualsItsOneTokenCall) {
  // 150 rows: partial tiles of every size (6, 8, 12) and, at 512 columns, several of matmul's
  // ~64 KiB row chunks and the invariant path's 16 KiB blocks for the wider types.
  uint32_t seed = 1;
  for (DType t : kAllDTypes) {
    const int64_t rows = 150, cols = 512;
    const std::vector<uint8_t> data = random_weights(t, rows, cols, seed++);
    expect_rows_equal_one_token_calls(WeightMatrix{t, rows, cols, data.data(), 0}, seed);
    seed += 10;
  }
}

TEST(MatmulInvariance, StridedViewRowsEqualTheirOneTokenCalls) {
  // A unit's slice of Wo: columns [256, 512) of a 768-column matrix (whole K-quant super-blocks).
  uint32_t seed = 500;
  for (DType t : kAllDTypes) {
    const int64_t rows = 37, full_cols = 768, c0 = 256, cols = 256;
    const std::vector<uint8_t> data = random_weights(t, rows, full_cols, seed++);
    const WeightMatrix view{t, rows, cols, data.data() + row_bytes(t, c0), row_bytes(t, full_cols)};
    expect_rows_equal_one_token_calls(view, seed);
    seed += 10;
  }
}

// Tensor parallelism cuts a matrix by output rows ([r0, r1) on each rank); a rank's rows must be
// bitwise the whole product's, in both batching modes and with other thread counts, or R ranks
// could not reproduce one device's sums (runtime::RankForward's canonical reduction relies on it).
TEST(MatmulInvariance, RowBlocksEqualTheirRowsOfTheWholeProduct) {
  uint32_t seed = 900;
  ThreadPool pool1(1), pool2(2);
  for (DType t : kAllDTypes) {
    const int64_t rows = 150, cols = 512;
    const std::vector<uint8_t> data = random_weights(t, rows, cols, seed++);
    const WeightMatrix w{t, rows, cols, data.data(), 0};
    for (Activations act : kModes) {
      const std::vector<float> x = random_x(kMaxTokens * cols, seed++);
      for (Batching b : {Batching::Fastest, Batching::Invariant})
        for (int64_t n : kTokenCounts) {
          std::vector<float> whole(size_t(n * rows));
          matmul(w, x.data(), n, whole.data(), pool2, act, b);
          for (const auto& [r0, r1] :
               {std::pair<int64_t, int64_t>{0, 50}, {50, 101}, {101, 150}, {7, 8}, {13, 150}}) {
            const WeightMatrix part{t, r1 - r0, cols, w.row(r0), w.stride()};
            std::vector<float> y(size_t(n * (r1 - r0)));
            matmul(part, x.data(), n, y.data(), r0 % 2 ? pool1 : pool2, act, b);
            for (int64_t k = 0; k < n; ++k)
              ASSERT_EQ(std::memcmp(&y[size_t(k * (r1 - r0))], &whole[size_t(k * rows + r0)],
                                    size_t(r1 - r0) * sizeof(float)),
                        0)
                  << label(part, act, n, pool1) << " " << batching_name(b) << ": rows [" << r0
                  << ", " << r1 << ") of token " << k << " differ from the whole product's";
          }
        }
    }
  }
}

// The weight offset m of legacy block b of row r (Q4_1 / Q5_1), else 0.
float block_min(const WeightMatrix& w, int64_t r, int64_t b) {
  if (w.type == DType::Q4_1) return fp16_to_fp32(reinterpret_cast<const BlockQ4_1*>(w.row(r))[b].m);
  if (w.type == DType::Q5_1) return fp16_to_fp32(reinterpret_cast<const BlockQ5_1*>(w.row(r))[b].m);
  return 0.0f;
}

// The bound matmul_test.cpp and qmatmul_test.cpp put on |matmul - matmul_ref| (see their
// comments): float32 summation, the dequantized weights' and block factors' roundings, and for
// Q4_1 / Q5_1 with LikeGgml ggml's fp16 s per activation block. xr: x as the mode rounds it.
double reference_bound(const WeightMatrix& w, const std::vector<float>& row, const float* xr,
                       int64_t r, bool like_ggml) {
  double wmax = 0.0, mag = 0.0, xsum = 0.0, sterm = 0.0;
  for (int64_t c = 0; c < w.cols; ++c) {
    wmax = std::max(wmax, std::fabs(double(row[size_t(c)])));
    mag += std::fabs(double(row[size_t(c)]) * double(xr[c]));
    xsum += std::fabs(double(xr[c]));
  }
  if (like_ggml) {
    for (int64_t b = 0; b < w.cols / 32; ++b) {
      double s = 0.0;
      for (int j = 0; j < 32; ++j) s += double(xr[b * 32 + j]);
      sterm += std::fabs(double(block_min(w, r, b)) * s) * 0x1p-10;
    }
  }
  return (double(w.cols) / 8.0 + 32.0) * 0x1p-24 * mag + 0x1p-21 * wmax * xsum + sterm + 1e-30;
}

TEST(MatmulInvariance, InvariantStaysWithinTheReferenceBoundOfFastest) {
  // Both modes are within the reference tests' bound of matmul_ref, so within twice it of each
  // other; a wrong kernel or a mixed-up token would be far outside.
  ThreadPool pool(2);
  uint32_t seed = 900;
  for (DType t : kAllDTypes) {
    const int64_t rows = 45, cols = 512;
    const std::vector<uint8_t> data = random_weights(t, rows, cols, seed++);
    const WeightMatrix w{t, rows, cols, data.data(), 0};
    for (Activations act : kModes) {
      for (int64_t n : {3, 17, 40}) {
        const std::vector<float> x = random_x(n * cols, seed++);
        std::vector<float> xr = x;
        if (act != Activations::Float32) round_activations(t, x.data(), n, cols, xr.data());
        std::vector<float> fast(size_t(n * rows)), inv(size_t(n * rows));
        matmul(w, x.data(), n, fast.data(), pool, act, Batching::Fastest);
        matmul(w, x.data(), n, inv.data(), pool, act, Batching::Invariant);
        std::vector<float> row(static_cast<size_t>(cols));
        for (int64_t r = 0; r < rows; ++r) {
          dequantize_row(t, w.row(r), row.data(), cols);
          for (int64_t tok = 0; tok < n; ++tok) {
            const double bound =
                2 * reference_bound(w, row, xr.data() + tok * cols, r, act != Activations::Float32);
            const size_t i = size_t(tok * rows + r);
            ASSERT_LE(std::fabs(double(inv[i]) - double(fast[i])), bound)
                << label(w, act, n, pool) << " row " << r << " token " << tok;
          }
        }
      }
    }
  }
}

TEST(MatmulInvariance, ChecksTheMatrixAndSkipsEmptyCalls) {
  ThreadPool pool(2);
  const std::vector<uint8_t> data = random_weights(DType::Q8_0, 4, 64, 7);
  std::vector<float> x(2 * 64), y(8, 5.0f);
  matmul(WeightMatrix{DType::Q8_0, 4, 64, data.data(), 0}, x.data(), 0, y.data(), pool,
         Activations::LikeGgml, Batching::Invariant);
  EXPECT_EQ(y[0], 5.0f);
  const WeightMatrix bad_cols{DType::Q8_0, 4, 48, data.data(), 0};
  EXPECT_THROW(
      matmul(bad_cols, x.data(), 2, y.data(), pool, Activations::LikeGgml, Batching::Invariant),
      std::invalid_argument);
}

}  // namespace
}  // namespace fairkv::kernels
