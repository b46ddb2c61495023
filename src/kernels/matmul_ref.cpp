// The reference product: every row dequantized to float32, sums in double. Slow and obviously
// right; the fast kernels are tested against it.
#include <vector>

#include "kernels/matmul.h"

namespace fairkv::kernels {

void matmul_ref(const WeightMatrix& w, const float* x, int64_t n_tokens, float* y) {
  std::vector<float> row(size_t(w.cols));
  for (int64_t r = 0; r < w.rows; ++r) {
    dequantize_row(w.type, w.row(r), row.data(), w.cols);
    for (int64_t t = 0; t < n_tokens; ++t) {
      const float* xt = x + t * w.cols;
      double s = 0.0;
      for (int64_t c = 0; c < w.cols; ++c) s += double(row[size_t(c)]) * double(xt[c]);
      y[t * w.rows + r] = float(s);
    }
  }
}

}  // namespace fairkv::kernels
