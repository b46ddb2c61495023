// matmul(): checks the matrix, rounds the activations if asked to, picks a kernel family by token
// count and type, and splits the output rows over the thread pool in whole tiles.
#include "kernels/matmul.h"

#include <algorithm>
#include <stdexcept>
#include <string>
#include <vector>

#include "kernels/matmul_kernels.h"
#include "kernels/simd.h"

namespace fairkv::kernels {

namespace {

// Below this many tokens the dot-product kernels win: packing activations and converting weight
// tiles only pays off once a weight tile is reused by a full panel of tokens.
constexpr int64_t kGemmMinTokens = 16;

void check_matrix(const WeightMatrix& w, int64_t n_tokens) {
  const std::string what = std::string("matmul: ") + dtype_name(w.type) + " matrix " +
                           std::to_string(w.rows) + " x " + std::to_string(w.cols);
  if (w.rows < 0 || w.cols < 0 || n_tokens < 0) {
    throw std::invalid_argument(what + ": negative size or token count");
  }
  if (w.cols % block_size(w.type) != 0) {
    throw std::invalid_argument(what + ": cols must be a multiple of the block size " +
                                std::to_string(block_size(w.type)));
  }
  if (w.row_stride != 0 && w.row_stride < row_bytes(w.type, w.cols)) {
    throw std::invalid_argument(what + ": row_stride " + std::to_string(w.row_stride) +
                                " is shorter than a row (" +
                                std::to_string(row_bytes(w.type, w.cols)) + " bytes)");
  }
  if (w.rows > 0 && w.cols > 0 && w.data == nullptr) {
    throw std::invalid_argument(what + ": data is null");
  }
}

// Scratch that lives as long as the calling thread, so that per-token calls do not page-fault
// fresh allocations.
template <class T>
T* scratch(std::vector<T>& v, size_t n) {
  if (v.size() < n) v.resize(n);
  return v.data();
}

// Runs fn(r_begin, r_end) over the rows in chunks of whole tiles, each thread sweeping its own
// contiguous share (one sequential read of the weights, what the prefetchers follow best) and
// stealing chunks from the others' when it is done early (ThreadPool::parallel_for_dynamic):
// a thread slowed by another process on its core then does not hold the others up. Chunks of
// about kChunkBytes of weights keep the stealing fine-grained.
constexpr int64_t kChunkBytes = int64_t(64) << 10;

template <class Fn>
void for_row_chunks(ThreadPool& pool, const WeightMatrix& w, int64_t tile, const Fn& fn) {
  const int64_t rows = w.rows;
  const int64_t n_tiles = (rows + tile - 1) / tile;
  const int64_t grain = std::max<int64_t>(1, kChunkBytes / (tile * int64_t(w.stride())));
  pool.parallel_for_dynamic(
      n_tiles, grain, [&](int64_t b, int64_t e, int) { fn(b * tile, std::min(e * tile, rows)); });
}

void matmul_f32_activations(const WeightMatrix& w, const float* x, int64_t n_tokens, float* y,
                            ThreadPool& pool) {
  if (n_tokens < kGemmMinTokens) {
    for_row_chunks(pool, w, detail::kGemvRows,
                   [&](int64_t rb, int64_t re) { detail::gemv(w, x, n_tokens, y, rb, re); });
    return;
  }
  thread_local std::vector<float> packed;
  float* xp = scratch(packed, detail::gemm_packed_floats(n_tokens, w.cols));
  pool.parallel_for(detail::gemm_panels(n_tokens), [&](int64_t b, int64_t e, int) {
    detail::gemm_pack(x, n_tokens, w.cols, xp, b, e);
  });
  for_row_chunks(pool, w, detail::gemm_row_tile(),
                 [&](int64_t rb, int64_t re) { detail::gemm(w, xp, n_tokens, y, rb, re); });
}

}  // namespace

const char* activations_name(Activations a) {
  return a == Activations::Float32 ? "float32" : "like-ggml";
}

const char* kernels_isa() {
#if defined(FAIRKV_HAVE_BF16_KERNELS) && defined(FAIRKV_HAVE_VNNI_KERNELS)
  return "avx512+bf16+vnni";
#elif defined(FAIRKV_HAVE_BF16_KERNELS)
  return "avx512+bf16";
#elif defined(FAIRKV_HAVE_VNNI_KERNELS)
  return "avx512+vnni";
#else
  return simd::kIsa;
#endif
}

void matmul(const WeightMatrix& w, const float* x, int64_t n_tokens, float* y, ThreadPool& pool,
            Activations act) {
  check_matrix(w, n_tokens);
  if (n_tokens == 0 || w.rows == 0) return;
  if (w.cols == 0) {
    std::fill(y, y + n_tokens * w.rows, 0.0f);
    return;
  }
  if (act == Activations::LikeGgml && w.type != DType::F32) {
#if defined(FAIRKV_HAVE_VNNI_KERNELS)
    if (detail::q8_handles(w.type)) {
      thread_local std::vector<uint8_t> packed;
      uint8_t* xp = scratch(packed, detail::q8_packed_bytes(w.type, n_tokens, w.cols));
      // Decode rows quantize in microseconds: on this thread, without a dispatch.
      if (n_tokens < kGemmMinTokens)
        detail::q8_pack(w.type, x, n_tokens, w.cols, xp, 0, detail::q8_panels(n_tokens));
      else
        pool.parallel_for(detail::q8_panels(n_tokens), [&](int64_t b, int64_t e, int) {
          detail::q8_pack(w.type, x, n_tokens, w.cols, xp, b, e);
        });
      for_row_chunks(pool, w, detail::q8_row_tile(), [&](int64_t rb, int64_t re) {
        detail::q8_matmul(w, xp, n_tokens, y, rb, re);
      });
      return;
    }
    if (detail::qk_handles(w.type) && n_tokens >= kGemmMinTokens) {
      thread_local std::vector<uint8_t> packed;
      uint8_t* xp = scratch(packed, detail::qk_packed_bytes(n_tokens, w.cols));
      pool.parallel_for(detail::qk_panels(n_tokens), [&](int64_t b, int64_t e, int) {
        detail::qk_pack(x, n_tokens, w.cols, xp, b, e);
      });
      for_row_chunks(pool, w, detail::qk_row_tile(), [&](int64_t rb, int64_t re) {
        detail::qk_matmul(w, xp, n_tokens, y, rb, re);
      });
      return;
    }
#endif
    if (is_ggml_quant(w.type)) {
      const size_t token_bytes = detail::qmatmul_token_bytes(w.type, w.cols);
      thread_local std::vector<uint8_t> packed;
      uint8_t* xq = scratch(packed, token_bytes * size_t(n_tokens));
      if (n_tokens < kGemmMinTokens)
        detail::qmatmul_pack(w.type, x, w.cols, xq, 0, n_tokens);
      else
        pool.parallel_for(n_tokens, [&](int64_t b, int64_t e, int) {
          detail::qmatmul_pack(w.type, x, w.cols, xq, b, e);
        });
      for_row_chunks(pool, w, detail::kGemvRows,
                     [&](int64_t rb, int64_t re) { detail::qmatmul(w, xq, n_tokens, y, rb, re); });
      return;
    }
#if defined(FAIRKV_HAVE_BF16_KERNELS)
    if (w.type == DType::BF16) {
      thread_local std::vector<uint8_t> packed;
      uint8_t* xp = scratch(packed, detail::bf16_packed_bytes(n_tokens, w.cols));
      pool.parallel_for(detail::bf16_panels(n_tokens), [&](int64_t b, int64_t e, int) {
        detail::bf16_pack(x, n_tokens, w.cols, xp, b, e);
      });
      for_row_chunks(pool, w, detail::bf16_row_tile(), [&](int64_t rb, int64_t re) {
        detail::bf16_matmul(w, xp, n_tokens, y, rb, re);
      });
      return;
    }
#endif
    if (w.type == DType::F16 && n_tokens < kGemmMinTokens) {
      // Decode keeps x as fp16: half the activation loads per weight byte.
      thread_local std::vector<uint16_t> xh_v;
      uint16_t* xh = scratch(xh_v, size_t(n_tokens * w.cols));
      quantize_row(DType::F16, x, xh, n_tokens * w.cols);
      for_row_chunks(pool, w, detail::kGemvRows, [&](int64_t rb, int64_t re) {
        detail::gemv_f16_x16(w, xh, n_tokens, y, rb, re);
      });
      return;
    }
    // No dedicated instructions for this type: round x to the type's grid, then float32 kernels
    // (the same numbers up to summation order).
    thread_local std::vector<float> rounded;
    float* xr = scratch(rounded, size_t(n_tokens * w.cols));
    round_activations(w.type, x, n_tokens, w.cols, xr);
    matmul_f32_activations(w, xr, n_tokens, y, pool);
    return;
  }
  matmul_f32_activations(w, x, n_tokens, y, pool);
}

}  // namespace fairkv::kernels
