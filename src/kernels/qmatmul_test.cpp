// matmul for ggml's Q4_1 / Q5_0 / Q5_1 / K-quant weights: both activation modes against the
// double-precision reference on odd shapes (rows across every tile and chunk size, 1..20 tokens
// and a prefill batch), 1 and 3 threads, and a column-slice view.
//
// LikeGgml is compared with matmul_ref on round_activations(x): the kernels compute ggml's
// per-block integer products exactly, so the only differences are float32 roundings: the
// summation ((cols / 8 + 32) * 2^-24 * sum |w x|, as matmul_test.cpp argues), the rounding of
// the dequantized weights (scale * level - min, one rounding of up to |scale * level| + |min|)
// and of the block factors, bounded by 2^-21 * max|w| * sum |x| and, for Q4_1 / Q5_1, ggml's
// s = fp16(d * sum(q)) of each activation block, computed with the unrounded d where the rounded
// values use fp16(d): two fp16 roundings, |m_w| * |s| * 2^-10 per block. One wrong level
// in a block moves a result by ~|w x|, far above these.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <random>
#include <string>
#include <vector>

#include "kernels/matmul.h"
#include "kernels/matmul_kernels.h"  // FAIRKV_HAVE_VNNI_KERNELS

namespace fairkv::kernels {
namespace {

const DType kNewTypes[] = {DType::Q4_1, DType::Q5_0, DType::Q5_1, DType::Q2_K,
                           DType::Q3_K, DType::Q4_K, DType::Q5_K, DType::Q6_K};

std::vector<float> random_x(int64_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> dist(0.0f, 1.0f);
  std::vector<float> x(static_cast<size_t>(n));
  for (float& v : x) v = dist(rng);
  return x;
}

// The offset m of legacy block b of a row (Q4_1 / Q5_1), else 0.
float block_min(const WeightMatrix& w, int64_t r, int64_t b) {
  if (w.type == DType::Q4_1) return fp16_to_fp32(reinterpret_cast<const BlockQ4_1*>(w.row(r))[b].m);
  if (w.type == DType::Q5_1) return fp16_to_fp32(reinterpret_cast<const BlockQ5_1*>(w.row(r))[b].m);
  return 0.0f;
}

void expect_close(const WeightMatrix& w, const std::vector<float>& xr, int64_t n_tokens,
                  const std::vector<float>& y, bool like_ggml, const std::string& what) {
  std::vector<float> ref(size_t(n_tokens * w.rows));
  matmul_ref(w, xr.data(), n_tokens, ref.data());
  std::vector<float> row(static_cast<size_t>(w.cols));
  for (int64_t r = 0; r < w.rows; ++r) {
    dequantize_row(w.type, w.row(r), row.data(), w.cols);
    double wmax = 0.0;
    for (float v : row) wmax = std::max(wmax, std::fabs(double(v)));
    for (int64_t t = 0; t < n_tokens; ++t) {
      const float* xt = xr.data() + t * w.cols;
      double mag = 0.0, xsum = 0.0, sterm = 0.0;
      for (int64_t c = 0; c < w.cols; ++c) {
        mag += std::fabs(double(row[size_t(c)]) * double(xt[c]));
        xsum += std::fabs(double(xt[c]));
      }
      if (like_ggml) {
        for (int64_t b = 0; b < w.cols / 32; ++b) {
          double s = 0.0;
          for (int j = 0; j < 32; ++j) s += double(xt[b * 32 + j]);
          sterm += std::fabs(double(block_min(w, r, b)) * s) * 0x1p-10;
        }
      }
      const double tol =
          (double(w.cols) / 8.0 + 32.0) * 0x1p-24 * mag + 0x1p-21 * wmax * xsum + sterm + 1e-30;
      const size_t i = size_t(t * w.rows + r);
      ASSERT_LE(std::fabs(double(y[i]) - double(ref[i])), tol)
          << what << " row " << r << " token " << t << ": got " << y[i] << ", want " << ref[i];
    }
  }
}

struct Problem {
  DType type;
  int64_t rows, cols;
  std::vector<uint8_t> data;
  WeightMatrix w() const { return WeightMatrix{type, rows, cols, data.data(), 0}; }
};

Problem make_problem(DType t, int64_t rows, int64_t cols, uint32_t seed) {
  Problem p{t, rows, cols, std::vector<uint8_t>(row_bytes(t, cols) * size_t(rows))};
  fill_random_blocks(t, seed, p.data.data(), rows * cols);
  return p;
}

void check(const Problem& p, int64_t n, ThreadPool& pool, Activations act, uint32_t seed) {
  const std::vector<float> x = random_x(n * p.cols, seed);
  std::vector<float> y(size_t(n * p.rows), -1.0f), xr = x;
  if (act == Activations::LikeGgml) round_activations(p.type, x.data(), n, p.cols, xr.data());
  matmul(p.w(), x.data(), n, y.data(), pool, act);
  expect_close(p.w(), xr, n, y, act == Activations::LikeGgml,
               std::string(dtype_name(p.type)) + " " + std::to_string(p.rows) + "x" +
                   std::to_string(p.cols) + " n=" + std::to_string(n) + " " +
                   activations_name(act) + " threads=" + std::to_string(pool.size()));
}

TEST(QMatmul, EveryNewTypeMatchesReferenceOnOddShapes) {
  ThreadPool pool1(1), pool3(3);
  uint32_t seed = 1;
  for (DType t : kNewTypes) {
    const int64_t bs = block_size(t);
    struct Shape {
      int64_t rows, cols;
    };
    const Shape shapes[] = {{1, bs}, {13, 2 * bs}, {37, 3 * bs}, {70, 1024}};
    for (const Shape& s : shapes) {
      const Problem p = make_problem(t, s.rows, s.cols, seed++);
      for (int64_t n : {1, 2, 3, 5, 8, 9, 17, 20}) {
        for (Activations act : {Activations::Float32, Activations::LikeGgml}) {
          check(p, n, n % 2 ? pool3 : pool1, act, seed++);
        }
      }
    }
  }
}

TEST(QMatmul, PrefillBatchesAcrossRowBlocks) {
  // Enough rows that a thread's chunk spans several row blocks of the blocked prefill loop.
  ThreadPool pool(2);
  uint32_t seed = 500;
  for (DType t : kNewTypes) {
    const Problem p = make_problem(t, 300, 512, seed++);
    check(p, 64, pool, Activations::LikeGgml, seed++);
    check(p, 33, pool, Activations::Float32, seed++);
  }
}

TEST(QMatmul, ColumnSliceViewEqualsDenseCopy) {
  ThreadPool pool(2);
  uint32_t seed = 700;
  for (DType t : kNewTypes) {
    const int64_t full = 1024, c0 = 256, cols = 512, rows = 21;
    const Problem p = make_problem(t, rows, full, seed++);
    const WeightMatrix view{t, rows, cols, p.data.data() + row_bytes(t, c0), row_bytes(t, full)};
    Problem dense{t, rows, cols, std::vector<uint8_t>(row_bytes(t, cols) * size_t(rows))};
    for (int64_t r = 0; r < rows; ++r) {
      std::memcpy(dense.data.data() + size_t(r) * row_bytes(t, cols), view.row(r),
                  row_bytes(t, cols));
    }
    for (int64_t n : {1, 4, 20}) {
      const std::vector<float> x = random_x(n * cols, seed++);
      std::vector<float> a(size_t(n * rows)), b(size_t(n * rows));
      matmul(view, x.data(), n, a.data(), pool, Activations::LikeGgml);
      matmul(dense.w(), x.data(), n, b.data(), pool, Activations::LikeGgml);
      EXPECT_EQ(a, b) << dtype_name(t) << " n=" << n;
    }
  }
}

TEST(QMatmul, DecodeAndPrefillAgreeForOneToken) {
  // A token's result must not depend on how many tokens share the call (the kernels group
  // tokens by 8; each token's products are summed in the same order in every group size).
  // With AVX512-VNNI every type here takes packed panel kernels for prefill (q8_vnni.cpp,
  // qk_vnni.cpp; tokens along the lanes), which sum the blocks in another order than decode, as
  // for Q8_0 / Q4_0: the property holds there only under Batching::Invariant
  // (matmul_invariance_test.cpp).
  ThreadPool pool(1);
  uint32_t seed = 900;
  for (DType t : kNewTypes) {
#if defined(FAIRKV_HAVE_VNNI_KERNELS)
    if (detail::q8_handles(t) || detail::qk_handles(t)) continue;
#endif
    const Problem p = make_problem(t, 19, 512, seed++);
    const std::vector<float> x = random_x(20 * 512, seed++);
    std::vector<float> all(20 * 19), one(19);
    matmul(p.w(), x.data(), 20, all.data(), pool, Activations::LikeGgml);
    for (int64_t tok : {0, 7, 8, 19}) {
      matmul(p.w(), x.data() + tok * 512, 1, one.data(), pool, Activations::LikeGgml);
      for (int r = 0; r < 19; ++r) {
        EXPECT_EQ(one[size_t(r)], all[size_t(tok * 19 + r)]) << dtype_name(t) << " tok " << tok;
      }
    }
  }
}

}  // namespace
}  // namespace fairkv::kernels
