// matmul's LikeGgml path for Q4_1, Q5_0, Q5_1 and the K-quants: activations quantized per token
// as llama.cpp's x86 CPU backend quantizes them for the weight type, then the per-type row
// kernels of qdot_legacy.cpp / qdot_k.cpp over groups of up to kQTokens tokens.
//
// Prefill (where qk_vnni.cpp / q8_vnni.cpp do not take it: builds without AVX512-VNNI) reuses
// the decode kernels in a blocked loop: a chunk of rows (matmul.cpp hands out
// ~64 KiB of weights at a time) is swept once per group of 8 tokens, so its weights are read
// from memory once and from L2 afterwards, and each weight block is unpacked once per 8 tokens.
#include <algorithm>
#include <stdexcept>
#include <string>
#include <vector>

#include "kernels/matmul_kernels.h"
#include "kernels/qdot.h"

namespace fairkv::kernels::detail {

namespace {

QRowsFn rows_fn(DType t, int nt) {
  return is_k_quant(t) ? qdot_k_rows(t, nt) : qdot_legacy_rows(t, nt);
}

// Rows per sweep over a token group: about 32 KiB of weights, so that the rows are still in L1
// / L2 when the next group of tokens comes over them.
int64_t row_block(const WeightMatrix& w) {
  return std::max<int64_t>(1, (int64_t(32) << 10) / int64_t(w.stride()));
}

}  // namespace

size_t qmatmul_token_bytes(DType t, int64_t cols) {
  if (is_k_quant(t)) return size_t(cols / kQK_K) * sizeof(BlockQ8_K);
  return size_t(cols / kQK) * sizeof(ActBlock32);
}

void qmatmul_pack(DType t, const float* x, int64_t cols, uint8_t* out, int64_t t_begin,
                  int64_t t_end) {
  const size_t stride = qmatmul_token_bytes(t, cols);
  const int64_t nb = cols / kQK;
  thread_local std::vector<BlockQ8_1> q81;
  thread_local std::vector<BlockQ8_0> q80;
  for (int64_t tok = t_begin; tok < t_end; ++tok) {
    const float* xt = x + tok * cols;
    uint8_t* dst = out + size_t(tok) * stride;
    if (is_k_quant(t)) {
      quantize_act_q8_k(xt, reinterpret_cast<BlockQ8_K*>(dst), cols);
      continue;
    }
    auto* ab = reinterpret_cast<ActBlock32*>(dst);
    if (t == DType::Q5_0) {
      q80.resize(size_t(nb));
      quantize_act_q8_0(xt, q80.data(), cols);
      for (int64_t b = 0; b < nb; ++b) {
        std::memcpy(ab[b].qs, q80[size_t(b)].qs, kQK);
        ab[b].d = fp16_to_fp32(q80[size_t(b)].d);
        ab[b].s = 0.0f;
      }
    } else {
      q81.resize(size_t(nb));
      quantize_act_q8_1(xt, q81.data(), cols);
      for (int64_t b = 0; b < nb; ++b) {
        std::memcpy(ab[b].qs, q81[size_t(b)].qs, kQK);
        ab[b].d = fp16_to_fp32(q81[size_t(b)].d);
        ab[b].s = fp16_to_fp32(q81[size_t(b)].s);
      }
    }
  }
}

void qmatmul(const WeightMatrix& w, const uint8_t* xpacked, int64_t n_tokens, float* y,
             int64_t r_begin, int64_t r_end) {
  if (!is_ggml_quant(w.type)) {
    throw std::logic_error(std::string("qmatmul: not a ggml quant type: ") + dtype_name(w.type));
  }
  const size_t xstride = qmatmul_token_bytes(w.type, w.cols);
  QRowsFn fns[kQTokens];
  for (int n = 1; n <= kQTokens; ++n) fns[n - 1] = rows_fn(w.type, n);
  const int64_t rblock = n_tokens <= kQTokens ? r_end - r_begin : row_block(w);
  for (int64_t r0 = r_begin; r0 < r_end; r0 += rblock) {
    const int64_t r1 = std::min(r_end, r0 + rblock);
    for (int64_t t0 = 0; t0 < n_tokens; t0 += kQTokens) {
      const int64_t nt = std::min<int64_t>(kQTokens, n_tokens - t0);
      fns[nt - 1](w, r0, r1, xpacked + size_t(t0) * xstride, xstride, y + t0 * w.rows);
    }
  }
}

}  // namespace fairkv::kernels::detail
