// attend() with AttentionArgs::ggml_order: llama.cpp's attention without flash attention over an
// f32 cache, operation for operation (kernels/ggml_ops.h):
//   kq[t][j] = ggml_vec_dot_f32(k_j, q_t)          (mul_mat with q permuted: never tinyBLAS)
//   kq * scale, masked to -inf beyond what t sees, soft_max as ggml_vec_soft_max_f32
//   out[t][c] = sum_j v_j[c] * p[t][j]              (mul_mat with V transposed in the cache:
//               tinyBLAS for 2 or more tokens, ggml_vec_dot_f32 for one)
// ggml's rows are the cache's padded length (a multiple of 256); the padding is masked, and
// its zeros change none of the sums as long as the groups of 16 / 64 stay where ggml has them
// (they start at row 0), so the rows are padded here to the next multiple of 64 only.
#include <algorithm>
#include <limits>
#include <stdexcept>
#include <vector>

#include "kernels/ggml_ops.h"
#include "kv/attention.h"

namespace fairkv::kv {

void attend_ggml(const AttentionArgs& a) {
  if (!a.store || !a.q || !a.out || a.group < 1 || a.n_tokens < 0 || a.begin < 0)
    throw std::invalid_argument("attend: store, q and out are required, group >= 1, begin >= 0");
  if (a.store->types().k != KvType::F32 || a.store->types().v != KvType::F32 || a.lse || a.probs)
    throw std::invalid_argument("attend: ggml_order needs an f32 store, no lse and no probs");
  const HeadStore& st = *a.store;
  const int64_t d = st.head_dim();
  const int64_t end = std::min<int64_t>(a.end, st.size());
  const int64_t n_rows = end - a.begin;
  const int64_t padded = (n_rows + 63) / 64 * 64;
  thread_local std::vector<float> keys, vt, kq, vrow;
  keys.assign(size_t(n_rows * d), 0.0f);
  vt.assign(size_t(d * padded), 0.0f);  // V transposed, as llama.cpp's cache holds it
  vrow.resize(size_t(d));
  for (int64_t j = 0; j < n_rows; ++j) {
    st.k_row(a.begin + j, &keys[size_t(j * d)]);
    st.v_row(a.begin + j, vrow.data());
    for (int64_t c = 0; c < d; ++c) vt[size_t(c * padded + j)] = vrow[size_t(c)];
  }
  kq.resize(size_t(padded));
  const bool tinyblas = a.n_tokens >= 2;
  for (int64_t t = 0; t < a.n_tokens; ++t) {
    const int64_t seen = std::min(end, a.visible + t + 1) - a.begin;
    for (int h = 0; h < a.group; ++h) {
      const float* q = a.q + (t * a.group + h) * d;
      for (int64_t j = 0; j < padded; ++j) {
        kq[size_t(j)] = j < seen ? kernels::dot_f32_ggml(&keys[size_t(j * d)], q, d) * a.scale
                                 : -std::numeric_limits<float>::infinity();
      }
      kernels::softmax_ggml(kq.data(), padded);
      float* out = a.out + (t * a.group + h) * d;
      for (int64_t c = 0; c < d; ++c) {
        const float* vc = &vt[size_t(c * padded)];
        out[c] = tinyblas ? kernels::dot_f32_tinyblas(vc, kq.data(), padded)
                          : kernels::dot_f32_ggml(vc, kq.data(), padded);
      }
    }
  }
}

}  // namespace fairkv::kv
