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

// The kernel family matmul() runs, by token count, type and mode; pick_path(w, 1, act) is also
// what Batching::Invariant runs for every token.
enum class Path { GgmlOrder, Q8Vnni, QkVnni, QMatmul, Bf16, F16Decode, RoundedF32, F32 };

Path pick_path(const WeightMatrix& w, int64_t n_tokens, Activations act) {
  if (act == Activations::Float32 || w.type == DType::F32) return Path::F32;
#if defined(FAIRKV_HAVE_VNNI_KERNELS)
  if (act == Activations::GgmlOrder && detail::ggml_order_handles(w.type)) return Path::GgmlOrder;
  if (detail::q8_handles(w.type)) return Path::Q8Vnni;
  if (detail::qk_handles(w.type) && n_tokens >= kGemmMinTokens) return Path::QkVnni;
#endif
  if (is_ggml_quant(w.type)) return Path::QMatmul;
#if defined(FAIRKV_HAVE_BF16_KERNELS)
  if (w.type == DType::BF16) return Path::Bf16;
#endif
  // Decode keeps x as fp16: half the activation loads per weight byte.
  if (w.type == DType::F16 && n_tokens < kGemmMinTokens) return Path::F16Decode;
  // No dedicated instructions for this type: round x to the type's grid, then float32 kernels
  // (the same numbers up to summation order).
  return Path::RoundedF32;
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

// --- Batching::Invariant: every token as the 1-token path computes it.

// Each token packed alone, pack(x_t, out_t) as the 1-token call packs it, `bytes` apart: the
// few-token layouts of the packed kernels (q8, bf16, qmatmul), which lay tokens out one after
// the other. On the pool when there are many.
template <class Pack>
uint8_t* pack_apart(ThreadPool& pool, const float* x, int64_t n_tokens, int64_t cols, size_t bytes,
                    const Pack& pack) {
  thread_local std::vector<uint8_t> packed;
  uint8_t* xp = scratch(packed, bytes * size_t(n_tokens));
  auto range = [&](int64_t b, int64_t e, int) {
    for (int64_t t = b; t < e; ++t) pack(x + t * cols, xp + size_t(t) * bytes);
  };
  if (n_tokens < kGemmMinTokens)
    range(0, n_tokens, 0);
  else
    pool.parallel_for(n_tokens, range);
  return xp;
}

// Weights per block of rows that the token groups go over one after the other: a third of a
// 48 KiB L1, the rest for a group's activations.
constexpr int64_t kApartBytes = int64_t(16) << 10;
// Tokens per pass over a block: the few-token kernels' group (q8's and bf16's take 4).
constexpr int64_t kApartTokens = 4;

// kernel(t0, nt, r0, r1) computes tokens [t0, t0 + nt), nt <= kApartTokens, over rows [r0, r1),
// each token as its 1-token call does: the few-token kernels never mix tokens, and those that
// pick their accumulators by token count have an apart form that keeps the 1-token ones. The
// rows go in the 1-token call's chunks, each in blocks of whole tiles that stay in L1 while the
// token groups pass; these kernels sum each row on its own, so neither changes a row's result.
template <class Kernel>
void sweep_apart(ThreadPool& pool, const WeightMatrix& w, int64_t tile, int64_t n_tokens,
                 const Kernel& kernel) {
  const int64_t block = tile * std::max<int64_t>(1, kApartBytes / (tile * int64_t(w.stride())));
  for_row_chunks(pool, w, tile, [&](int64_t rb, int64_t re) {
    for (int64_t r0 = rb; r0 < re; r0 += block) {
      const int64_t r1 = std::min(re, r0 + block);
      for (int64_t t = 0; t < n_tokens; t += kApartTokens)
        kernel(t, std::min(kApartTokens, n_tokens - t), r0, r1);
    }
  });
}

// The branch of matmul() for one token, for every token.
void matmul_apart(const WeightMatrix& w, const float* x, int64_t n_tokens, float* y,
                  ThreadPool& pool, Activations act) {
  const DType type = w.type;
  const int64_t cols = w.cols;
  auto y_at = [&](int64_t t) { return y + t * w.rows; };
  const Path path = pick_path(w, 1, act);
  switch (path) {
#if defined(FAIRKV_HAVE_VNNI_KERNELS)
    case Path::GgmlOrder: {  // every row and token on its own: invariant as it is
      const size_t bytes = detail::ggml_order_token_bytes(type, cols);
      const uint8_t* xp = pack_apart(
          pool, x, n_tokens, cols, bytes,
          [&](const float* xt, uint8_t* o) { detail::ggml_order_pack(type, xt, cols, o, 0, 1); });
      for_row_chunks(pool, w, detail::kGemvRows, [&](int64_t rb, int64_t re) {
        detail::ggml_order_matmul(w, xp, n_tokens, y, rb, re);
      });
      return;
    }
    case Path::Q8Vnni: {
      const size_t bytes = detail::q8_packed_bytes(type, 1, cols);
      const uint8_t* xp =
          pack_apart(pool, x, n_tokens, cols, bytes, [&](const float* xt, uint8_t* o) {
            detail::q8_pack(type, xt, 1, cols, o, 0, detail::q8_panels(1));
          });
      sweep_apart(pool, w, detail::q8_row_tile(), n_tokens,
                  [&](int64_t t, int64_t nt, int64_t r0, int64_t r1) {
                    detail::q8_matmul(w, xp + size_t(t) * bytes, nt, y_at(t), r0, r1);
                  });
      return;
    }
#endif
    case Path::QMatmul: {
      const size_t bytes = detail::qmatmul_token_bytes(type, cols);
      const uint8_t* xp = pack_apart(
          pool, x, n_tokens, cols, bytes,
          [&](const float* xt, uint8_t* o) { detail::qmatmul_pack(type, xt, cols, o, 0, 1); });
      sweep_apart(pool, w, detail::kGemvRows, n_tokens,
                  [&](int64_t t, int64_t nt, int64_t r0, int64_t r1) {
                    detail::qmatmul(w, xp + size_t(t) * bytes, nt, y_at(t), r0, r1);
                  });
      return;
    }
#if defined(FAIRKV_HAVE_BF16_KERNELS)
    case Path::Bf16: {
      const size_t bytes = detail::bf16_packed_bytes(1, cols);
      const uint8_t* xp =
          pack_apart(pool, x, n_tokens, cols, bytes, [&](const float* xt, uint8_t* o) {
            detail::bf16_pack(xt, 1, cols, o, 0, detail::bf16_panels(1));
          });
      sweep_apart(pool, w, detail::bf16_row_tile(), n_tokens,
                  [&](int64_t t, int64_t nt, int64_t r0, int64_t r1) {
                    detail::bf16_matmul_apart(w, xp + size_t(t) * bytes, nt, y_at(t), r0, r1);
                  });
      return;
    }
#endif
    case Path::F16Decode: {
      const size_t bytes = size_t(cols) * sizeof(uint16_t);
      const auto* xh = reinterpret_cast<const uint16_t*>(
          pack_apart(pool, x, n_tokens, cols, bytes,
                     [&](const float* xt, uint8_t* o) { quantize_row(DType::F16, xt, o, cols); }));
      sweep_apart(pool, w, detail::kGemvRows, n_tokens,
                  [&](int64_t t, int64_t nt, int64_t r0, int64_t r1) {
                    detail::gemv_f16_x16_apart(w, xh + t * cols, nt, y_at(t), r0, r1);
                  });
      return;
    }
    case Path::RoundedF32:
    case Path::F32: {
      const float* xr = x;
      if (path == Path::RoundedF32) {
        xr = reinterpret_cast<const float*>(
            pack_apart(pool, x, n_tokens, cols, size_t(cols) * sizeof(float),
                       [&](const float* xt, uint8_t* o) {
                         round_activations(type, xt, 1, cols, reinterpret_cast<float*>(o));
                       }));
      }
      sweep_apart(pool, w, detail::kGemvRows, n_tokens,
                  [&](int64_t t, int64_t nt, int64_t r0, int64_t r1) {
                    detail::gemv_apart(w, xr + t * cols, nt, y_at(t), r0, r1);
                  });
      return;
    }
    default:  // QkVnni: never for one token
      throw std::logic_error("matmul: no 1-token path for " + std::string(dtype_name(type)));
  }
}

}  // namespace

const char* batching_name(Batching b) {
  return b == Batching::Fastest ? "fastest" : "invariant";
}

const char* activations_name(Activations a) {
  return a == Activations::Float32    ? "float32"
         : a == Activations::LikeGgml ? "like-ggml"
                                      : "ggml-order";
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
            Activations act, Batching batching) {
  check_matrix(w, n_tokens);
  if (n_tokens == 0 || w.rows == 0) return;
  if (w.cols == 0) {
    std::fill(y, y + n_tokens * w.rows, 0.0f);
    return;
  }
  if (batching == Batching::Invariant && n_tokens > 1) {
    matmul_apart(w, x, n_tokens, y, pool, act);
    return;
  }
  const Path path = pick_path(w, n_tokens, act);
#if defined(FAIRKV_HAVE_VNNI_KERNELS)
  if (path == Path::GgmlOrder) {
    matmul_apart(w, x, n_tokens, y, pool, act);
    return;
  }
  if (path == Path::Q8Vnni) {
    thread_local std::vector<uint8_t> packed;
    uint8_t* xp = scratch(packed, detail::q8_packed_bytes(w.type, n_tokens, w.cols));
    // Decode rows quantize in microseconds: on this thread, without a dispatch.
    if (n_tokens < kGemmMinTokens)
      detail::q8_pack(w.type, x, n_tokens, w.cols, xp, 0, detail::q8_panels(n_tokens));
    else
      pool.parallel_for(detail::q8_panels(n_tokens), [&](int64_t b, int64_t e, int) {
        detail::q8_pack(w.type, x, n_tokens, w.cols, xp, b, e);
      });
    for_row_chunks(pool, w, detail::q8_row_tile(),
                   [&](int64_t rb, int64_t re) { detail::q8_matmul(w, xp, n_tokens, y, rb, re); });
    return;
  }
  if (path == Path::QkVnni) {
    thread_local std::vector<uint8_t> packed;
    uint8_t* xp = scratch(packed, detail::qk_packed_bytes(n_tokens, w.cols));
    pool.parallel_for(detail::qk_panels(n_tokens), [&](int64_t b, int64_t e, int) {
      detail::qk_pack(x, n_tokens, w.cols, xp, b, e);
    });
    for_row_chunks(pool, w, detail::qk_row_tile(),
                   [&](int64_t rb, int64_t re) { detail::qk_matmul(w, xp, n_tokens, y, rb, re); });
    return;
  }
#endif
  if (path == Path::QMatmul) {
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
  if (path == Path::Bf16) {
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
  if (path == Path::F16Decode) {
    thread_local std::vector<uint16_t> xh_v;
    uint16_t* xh = scratch(xh_v, size_t(n_tokens * w.cols));
    quantize_row(DType::F16, x, xh, n_tokens * w.cols);
    for_row_chunks(pool, w, detail::kGemvRows, [&](int64_t rb, int64_t re) {
      detail::gemv_f16_x16(w, xh, n_tokens, y, rb, re);
    });
    return;
  }
  if (path == Path::RoundedF32) {
    thread_local std::vector<float> rounded;
    float* xr = scratch(rounded, size_t(n_tokens * w.cols));
    round_activations(w.type, x, n_tokens, w.cols, xr);
    matmul_f32_activations(w, xr, n_tokens, y, pool);
    return;
  }
  matmul_f32_activations(w, x, n_tokens, y, pool);
}

}  // namespace fairkv::kernels
