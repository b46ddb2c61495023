// Every weight type's fast matmul against the double-precision reference, over shapes that leave
// partial tiles everywhere (rows not a multiple of any tile, 1 / 3 / 17 / 64 tokens, column
// counts with a vector tail), with 1 and 3 threads, both activation modes, and strided views.
//
// Tolerance: the fast kernels sum in float32. Summing m products with float32 accumulators has
// an error of at most about m * 2^-24 * sum|w x| in the worst case; the kernels keep kLanes
// (8 or 16) independent partial sums, so each sums at most cols/8 terms, plus a few roundings
// for the final reduction, the block scales (d_w * d_x) and the per-block conversions. So
//   |y - ref| <= (cols / 8 + 32) * 2^-24 * sum_c |w_c x_c|
// which a single wrong term (size ~ sum|w x| / cols) or a missed block would exceed by far.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <random>
#include <string>
#include <vector>

#include "kernels/matmul.h"

namespace fairkv::kernels {
namespace {

struct Problem {
  DType type;
  int64_t rows, cols;
  std::vector<uint8_t> data;
  WeightMatrix w() const { return WeightMatrix{type, rows, cols, data.data(), 0}; }
};

Problem make_problem(DType t, int64_t rows, int64_t cols, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> dist(0.0f, 1.0f);
  Problem p{t, rows, cols, std::vector<uint8_t>(row_bytes(t, cols) * size_t(rows))};
  std::vector<float> row(static_cast<size_t>(cols));
  for (int64_t r = 0; r < rows; ++r) {
    for (float& v : row) v = dist(rng);
    quantize_row(t, row.data(), p.data.data() + size_t(r) * row_bytes(t, cols), cols);
  }
  return p;
}

std::vector<float> random_x(int64_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> dist(0.0f, 1.0f);
  std::vector<float> x(static_cast<size_t>(n));
  for (float& v : x) v = dist(rng);
  return x;
}

// Checks y against the reference on x (already rounded as the mode requires).
void expect_close(const WeightMatrix& w, const std::vector<float>& x_ref, int64_t n_tokens,
                  const std::vector<float>& y, const std::string& what) {
  std::vector<float> ref(size_t(n_tokens * w.rows));
  matmul_ref(w, x_ref.data(), n_tokens, ref.data());
  std::vector<float> row(static_cast<size_t>(w.cols));
  for (int64_t r = 0; r < w.rows; ++r) {
    dequantize_row(w.type, w.row(r), row.data(), w.cols);
    for (int64_t t = 0; t < n_tokens; ++t) {
      double mag = 0.0;
      for (int64_t c = 0; c < w.cols; ++c) {
        mag += std::fabs(double(row[size_t(c)]) * double(x_ref[size_t(t * w.cols + c)]));
      }
      const double tol = (double(w.cols) / 8.0 + 32.0) * 0x1p-24 * mag + 1e-30;
      const size_t i = size_t(t * w.rows + r);
      ASSERT_LE(std::fabs(double(y[i]) - double(ref[i])), tol)
          << what << " row " << r << " token " << t << ": got " << y[i] << ", want " << ref[i];
    }
  }
}

std::vector<float> rounded(DType t, const std::vector<float>& x, int64_t n_tokens, int64_t cols,
                           Activations act) {
  if (act == Activations::Float32) return x;
  std::vector<float> r(x.size());
  round_activations(t, x.data(), n_tokens, cols, r.data());
  return r;
}

const DType kTypes[] = {DType::F32, DType::F16, DType::BF16, DType::Q8_0, DType::Q4_0};
const Activations kModes[] = {Activations::Float32, Activations::LikeGgml, Activations::GgmlOrder};

TEST(Matmul, EveryTypeMatchesReferenceOnOddShapes) {
  ThreadPool pool1(1), pool3(3);
  struct Shape {
    int64_t rows, cols;
  };
  // Rows: below and across every tile size (4, 6, 8, 12); columns: whole blocks, some spanning
  // several 256-column blocks of the gemm kernels with a partial last one.
  const Shape shapes[] = {{1, 32}, {13, 64}, {37, 96}, {100, 288}, {29, 608}};
  uint32_t seed = 1;
  for (DType t : kTypes) {
    for (const Shape& s : shapes) {
      const Problem p = make_problem(t, s.rows, s.cols, seed++);
      for (int64_t n : {1, 3, 17, 64}) {
        const std::vector<float> x = random_x(n * s.cols, seed++);
        for (Activations act : kModes) {
          for (ThreadPool* pool : {&pool1, &pool3}) {
            std::vector<float> y(size_t(n * s.rows), -1.0f);
            matmul(p.w(), x.data(), n, y.data(), *pool, act);
            const std::string what = std::string(dtype_name(t)) + " " + std::to_string(s.rows) +
                                     "x" + std::to_string(s.cols) + " n=" + std::to_string(n) +
                                     " " + activations_name(act) +
                                     " threads=" + std::to_string(pool->size());
            expect_close(p.w(), rounded(t, x, n, s.cols, act), n, y, what);
          }
        }
      }
    }
  }
}

TEST(Matmul, FloatTypesWithColumnTails) {
  // Column counts that are not a multiple of any vector width (stories260K's FFN is 172).
  ThreadPool pool(2);
  uint32_t seed = 100;
  for (DType t : {DType::F32, DType::F16, DType::BF16}) {
    for (int64_t cols : {1, 7, 17, 33, 172, 257, 301}) {
      const Problem p = make_problem(t, 19, cols, seed++);
      for (int64_t n : {1, 2, 5, 9, 40}) {
        const std::vector<float> x = random_x(n * cols, seed++);
        for (Activations act : kModes) {
          std::vector<float> y(size_t(n * 19));
          matmul(p.w(), x.data(), n, y.data(), pool, act);
          expect_close(p.w(), rounded(t, x, n, cols, act), n, y,
                       std::string(dtype_name(t)) + " cols=" + std::to_string(cols) +
                           " n=" + std::to_string(n) + " " + activations_name(act));
        }
      }
    }
  }
}

TEST(Matmul, RowStrideViewsAColumnSlice) {
  // A unit's slice of Wo: columns [c0, c0 + cols) of a wider matrix, c0 on a block boundary.
  ThreadPool pool(2);
  uint32_t seed = 200;
  for (DType t : kTypes) {
    const int64_t full_cols = 256, c0 = 64, cols = 96, rows = 23;
    const Problem full = make_problem(t, rows, full_cols, seed++);
    WeightMatrix view{t, rows, cols, full.data.data() + row_bytes(t, c0), row_bytes(t, full_cols)};
    // The same slice copied out densely must give the same reference.
    Problem dense{t, rows, cols, std::vector<uint8_t>(row_bytes(t, cols) * size_t(rows))};
    for (int64_t r = 0; r < rows; ++r) {
      std::memcpy(dense.data.data() + size_t(r) * row_bytes(t, cols), view.row(r),
                  row_bytes(t, cols));
    }
    for (int64_t n : {1, 3, 20}) {
      const std::vector<float> x = random_x(n * cols, seed++);
      for (Activations act : kModes) {
        std::vector<float> y(size_t(n * rows)), y_dense(size_t(n * rows));
        matmul(view, x.data(), n, y.data(), pool, act);
        matmul(dense.w(), x.data(), n, y_dense.data(), pool, act);
        EXPECT_EQ(y, y_dense) << dtype_name(t) << " n=" << n;
        expect_close(dense.w(), rounded(t, x, n, cols, act), n, y,
                     std::string("view ") + dtype_name(t));
      }
    }
  }
}

TEST(Matmul, LikeGgmlRoundsActivationsToTheWeightGrid) {
  // The two modes must differ by the activation rounding and nothing else: with activations
  // already on the grid, both modes agree to float32 summation order.
  ThreadPool pool(1);
  uint32_t seed = 300;
  for (DType t : {DType::F16, DType::BF16, DType::Q8_0, DType::Q4_0}) {
    const Problem p = make_problem(t, 16, 128, seed++);
    const std::vector<float> x = random_x(2 * 128, seed++);
    std::vector<float> xr(x.size());
    round_activations(t, x.data(), 2, 128, xr.data());
    int changed = 0;
    for (size_t i = 0; i < x.size(); ++i) changed += xr[i] != x[i];
    EXPECT_GT(changed, 100) << dtype_name(t) << ": rounding should move most values";
    std::vector<float> a(32), b(32);
    matmul(p.w(), x.data(), 2, a.data(), pool, Activations::LikeGgml);
    matmul(p.w(), xr.data(), 2, b.data(), pool, Activations::Float32);
    for (size_t i = 0; i < a.size(); ++i) EXPECT_NEAR(a[i], b[i], 1e-4f * (1 + std::fabs(b[i])));
  }
}

TEST(Matmul, Q8ActivationRoundingIsGgmlsX86Rule) {
  // llama.cpp's AVX quantize_row_q8_0: d = amax / 127 stored as fp16, q = round-half-even(x *
  // (127 / amax)); the value used is q * fp16(d). With amax = 127, x * id = x exactly, so the
  // ties 2.5 and -3.5 show the rounding rule (the reference quantizer would give 3 and -4).
  std::vector<float> x(64, 0.0f), out(64);
  x[0] = 127.0f;
  x[1] = 2.5f;
  x[2] = -3.5f;
  x[3] = 0.5f;
  std::mt19937 rng(11);
  std::normal_distribution<float> dist(0.0f, 2.0f);
  for (int i = 32; i < 64; ++i) x[size_t(i)] = dist(rng);
  round_activations(DType::Q8_0, x.data(), 1, 64, out.data());
  EXPECT_EQ(out[1], 2.0f);
  EXPECT_EQ(out[2], -4.0f);
  EXPECT_EQ(out[3], 0.0f);
  EXPECT_EQ(out[0], 127.0f);
  float amax = 0.0f;
  for (int i = 32; i < 64; ++i) amax = std::max(amax, std::fabs(x[size_t(i)]));
  const float d = fp16_to_fp32(fp32_to_fp16(amax / 127.0f));
  for (int i = 32; i < 64; ++i) {
    const float q = std::nearbyint(x[size_t(i)] * (127.0f / amax));
    EXPECT_EQ(out[size_t(i)], q * d) << i;
  }
  std::vector<float> o2(64);
  round_activations(DType::Q4_0, x.data(), 1, 64, o2.data());  // Q4_0 also pairs with Q8_0 blocks
  EXPECT_EQ(out, o2);
}

TEST(Matmul, DotRowMatchesReference) {
  uint32_t seed = 400;
  for (DType t : kTypes) {
    const int64_t n = t == DType::Q8_0 || t == DType::Q4_0 ? 160 : 133;
    const Problem p = make_problem(t, 1, n, seed++);
    const std::vector<float> x = random_x(n, seed++);
    std::vector<float> y{dot_row(t, p.data.data(), x.data(), n)};
    expect_close(p.w(), x, 1, y, std::string("dot_row ") + dtype_name(t));
  }
  std::vector<uint8_t> q(64);
  std::vector<float> x(40);
  EXPECT_THROW(dot_row(DType::Q8_0, q.data(), x.data(), 40), std::invalid_argument);
}

TEST(Matmul, EmptyAndMalformedInputs) {
  ThreadPool pool(2);
  const Problem p = make_problem(DType::Q8_0, 4, 64, 7);
  std::vector<float> x(64), y(4, 5.0f);
  matmul(p.w(), x.data(), 0, y.data(), pool);  // no tokens: y untouched
  EXPECT_EQ(y[0], 5.0f);
  WeightMatrix bad_cols{DType::Q8_0, 4, 48, p.data.data(), 0};
  EXPECT_THROW(matmul(bad_cols, x.data(), 1, y.data(), pool), std::invalid_argument);
  WeightMatrix bad_stride{DType::Q8_0, 4, 64, p.data.data(), 10};
  EXPECT_THROW(matmul(bad_stride, x.data(), 1, y.data(), pool), std::invalid_argument);
  WeightMatrix null_data{DType::F32, 4, 64, nullptr, 0};
  EXPECT_THROW(matmul(null_data, x.data(), 1, y.data(), pool), std::invalid_argument);
  WeightMatrix no_cols{DType::F32, 4, 0, nullptr, 0};
  matmul(no_cols, x.data(), 1, y.data(), pool);
  EXPECT_EQ(y, std::vector<float>(4, 0.0f));
}

TEST(Matmul, ReportsTheInstructionSetItWasBuiltFor) {
  const std::string isa = kernels_isa();
#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VL__) && defined(__AVX512DQ__)
  EXPECT_EQ(isa.substr(0, 6), "avx512");
#if defined(__AVX512BF16__)
  EXPECT_NE(isa.find("+bf16"), std::string::npos);
#endif
#if defined(__AVX512VNNI__)
  EXPECT_NE(isa.find("+vnni"), std::string::npos);
#endif
#elif defined(__AVX2__) && defined(__FMA__) && defined(__F16C__)
  EXPECT_EQ(isa, "avx2");
#else
  EXPECT_EQ(isa, "scalar");
#endif
}

}  // namespace
}  // namespace fairkv::kernels
