// Q8_0 / Q4_0 weights times Q8_0-quantized activations with AVX512-VNNI's vpdpbusd (four u8 x s8
// products summed into an int32 lane): matmul's Activations::LikeGgml path for those types, the
// arithmetic of llama.cpp's vec_dot_q8_0_q8_0 / q4_0_q8_0. Per 32-element block the integer dot
// product is exact; it is scaled by d_w * d_x (both from fp16) and summed in float32.
//
// vpdpbusd wants one unsigned operand. Two ways around it:
//  - few tokens (dot products): the sign trick, |w| . (x * sign(w)), for Q8_0; Q4_0's nibbles
//    are already unsigned (0..15), and the -8 offset is the correction -8 * sum(x) of the block;
//  - many tokens (tokens along the lanes): the weights are made unsigned by an offset, u = w + 128
//    for Q8_0 and u = nibble for Q4_0, and the accumulator of each block starts at
//    -offset * sum(x_block) instead of zero, which cancels the offset exactly.
#include "kernels/matmul_kernels.h"
#include "kernels/simd.h"

#if defined(FAIRKV_HAVE_VNNI_KERNELS)

#include <algorithm>
#include <type_traits>
#include <vector>

namespace fairkv::kernels::detail {

namespace {

constexpr int64_t kFewTokens = 8;
constexpr int kPrefetchBytes = 4096;
constexpr int kRows = 6;  // gemm tile: 6 rows x 32 tokens (12 int + 12 float accumulators)
constexpr int kNv = 2;
constexpr int kPanel = kNv * 16;
constexpr int64_t kKc = 256;
constexpr int64_t kBlocksPerKc = kKc / kQK;
constexpr int64_t kTilesPerBlock = 16;

int64_t round_up(int64_t v, int64_t m) {
  return (v + m - 1) / m * m;
}

// Few-token layout, per token: qs[cols] int8 | dx[nb][8] float | nsum[nb][8] int32, padded to
// 64 bytes. dx and nsum (= -sum of the block's q) are repeated over the 8 int32 lanes that a
// block's products land in, so one 512-bit load serves two blocks.
struct TokenLayout {
  int64_t nb, qs_off, d_off, s_off, bytes;
  explicit TokenLayout(int64_t cols)
      : nb(cols / kQK),
        qs_off(0),
        d_off(round_up(cols, 64)),
        s_off(d_off + 32 * nb),
        bytes(round_up(s_off + 32 * nb, 64)) {}
};

// Panel layout, per panel of kPanel tokens: qs[cols/4][kPanel][4] int8 | d[nb][kPanel] float |
// sum[nb][kPanel] int32.
struct PanelLayout {
  int64_t nb, qs_off, d_off, s_off, bytes;
  explicit PanelLayout(int64_t cols)
      : nb(cols / kQK),
        qs_off(0),
        d_off(cols * kPanel),
        s_off(d_off + 4 * nb * kPanel),
        bytes(s_off + 4 * nb * kPanel) {}
};

float half(uint16_t h) {
  return _cvtsh_ss(h);
}

// The 32 weights of a Q4_0 block as bytes 0..15 in element order (low nibbles, then high): the
// 16 bytes in both halves, the upper half shifted down a nibble, both masked.
__m256i unpack_q4(const uint8_t* qs) {
  const __m256i b =
      _mm256_broadcastsi128_si256(_mm_loadu_si128(reinterpret_cast<const __m128i*>(qs)));
  return _mm256_and_si256(_mm256_srlv_epi64(b, _mm256_set_epi64x(4, 4, 0, 0)),
                          _mm256_set1_epi8(0x0f));
}

// --- few tokens

// The 32 weights of blocks b and b+1 of a row as unsigned bytes, low block in the low half:
// Q8_0 offset by +128 (w ^ 0x80), Q4_0 nibbles (0..15) in element order.
template <DType T>
__m512i load_pair(const uint8_t* row, int64_t b) {
  if constexpr (T == DType::Q8_0) {
    const auto* blk = reinterpret_cast<const BlockQ8_0*>(row) + b;
    const __m256i lo = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(blk[0].qs));
    const __m256i hi = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(blk[1].qs));
    return _mm512_xor_si512(_mm512_inserti64x4(_mm512_castsi256_si512(lo), hi, 1),
                            _mm512_set1_epi8(char(0x80)));
  } else {
    const auto* blk = reinterpret_cast<const BlockQ4_0*>(row) + b;
    const __m256i lo =
        _mm256_broadcastsi128_si256(_mm_loadu_si128(reinterpret_cast<const __m128i*>(blk[0].qs)));
    const __m256i hi =
        _mm256_broadcastsi128_si256(_mm_loadu_si128(reinterpret_cast<const __m128i*>(blk[1].qs)));
    const __m512i both = _mm512_inserti64x4(_mm512_castsi256_si512(lo), hi, 1);
    return _mm512_and_si512(_mm512_srlv_epi64(both, _mm512_set_epi64(4, 4, 0, 0, 4, 4, 0, 0)),
                            _mm512_set1_epi8(0x0f));
  }
}

// The fp16 scales of blocks b and b+1, each over 8 lanes, as float32.
template <class Block>
__m512 load_scale_pair(const Block* blk) {
  const uint32_t both = uint32_t(blk[0].d) | (uint32_t(blk[1].d) << 16);
  const __m256i idx = _mm256_set_epi16(1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0);
  return _mm512_cvtph_ps(_mm256_permutexvar_epi16(idx, _mm256_set1_epi32(int(both))));
}

// Dot products of one row with NT tokens, two blocks per step: each int32 lane holds four
// products of one block, the accumulator starts at -offset * sum(x) / 8 per lane (offset 128 for
// Q8_0's +128, 8 for Q4_0's nibbles), then one FMA applies d_w * d_x. An odd last block goes
// through the same code with the upper half masked to zero.
template <DType T, int NT>
void gemv_row(const uint8_t* row, int64_t cols, const uint8_t* xq, int64_t xstride, float* y,
              int64_t y_stride) {
  using Block = std::conditional_t<T == DType::Q8_0, BlockQ8_0, BlockQ4_0>;
  constexpr int kShift = T == DType::Q8_0 ? 4 : 0;  // nsum * 16 = -128 * sum / 8 lanes
  const TokenLayout L(cols);
  const auto* blocks = reinterpret_cast<const Block*>(row);
  __m512 acc[NT];
  FAIRKV_UNROLL
  for (auto& a : acc) a = _mm512_setzero_ps();
  auto step = [&](int64_t b, __m512i u, __m512 dw, __mmask16 m) {
    FAIRKV_UNROLL
    for (int t = 0; t < NT; ++t) {
      const uint8_t* xt = xq + t * xstride;
      const __m512i xv = _mm512_maskz_loadu_epi32(m, xt + L.qs_off + b * kQK);
      const __m512i init =
          _mm512_slli_epi32(_mm512_maskz_loadu_epi32(m, xt + L.s_off + b * 32), kShift);
      const __m512 dx = _mm512_maskz_loadu_ps(m, xt + L.d_off + b * 32);
      const __m512i isum = _mm512_dpbusd_epi32(init, u, xv);
      acc[t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(isum), _mm512_mul_ps(dw, dx), acc[t]);
    }
  };
  int64_t b = 0;
  for (; b + 2 <= L.nb; b += 2) {
    // The prefetchers stop at 4 KiB page boundaries (mapped files have no huge pages): ask for
    // the bytes ~1 KiB ahead, which may lie in the next row or page.
    _mm_prefetch(reinterpret_cast<const char*>(blocks + b) + kPrefetchBytes, _MM_HINT_T0);
    step(b, load_pair<T>(row, b), load_scale_pair(blocks + b), __mmask16(0xffff));
  }
  if (b < L.nb) {  // the last block alone: never read past the row
    __m512i u;
    if constexpr (T == DType::Q8_0) {
      u = _mm512_castsi256_si512(
          _mm256_xor_si256(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(blocks[b].qs)),
                           _mm256_set1_epi8(char(0x80))));
    } else {
      u = _mm512_castsi256_si512(unpack_q4(blocks[b].qs));
    }
    const __m512 dw = _mm512_castps256_ps512(_mm256_cvtph_ps(_mm_set1_epi16(short(blocks[b].d))));
    step(b, u, dw, __mmask16(0x00ff));
  }
  FAIRKV_UNROLL
  for (int t = 0; t < NT; ++t) y[t * y_stride] = _mm512_reduce_add_ps(acc[t]);
}

template <DType T, int NT>
void gemv_rows(const WeightMatrix& w, const uint8_t* xq, int64_t xstride, float* y, int64_t r_begin,
               int64_t r_end) {
  // One row at a time, so that a thread's rows are one sequential stream (see gemv.cpp).
  const size_t stride = w.stride();
  const uint8_t* row = w.row(r_begin);
  for (int64_t r = r_begin; r < r_end; ++r, row += stride) {
    gemv_row<T, NT>(row, w.cols, xq, xstride, y + r, w.rows);
  }
}

template <DType T>
void gemv(const WeightMatrix& w, const uint8_t* xq, int64_t n_tokens, float* y, int64_t r_begin,
          int64_t r_end) {
  const int64_t xstride = TokenLayout(w.cols).bytes;
  for (int64_t t = 0; t < n_tokens; t += 4) {
    const uint8_t* xt = xq + t * xstride;
    float* yt = y + t * w.rows;
    switch (std::min<int64_t>(4, n_tokens - t)) {
      case 1:
        gemv_rows<T, 1>(w, xt, xstride, yt, r_begin, r_end);
        break;
      case 2:
        gemv_rows<T, 2>(w, xt, xstride, yt, r_begin, r_end);
        break;
      case 3:
        gemv_rows<T, 3>(w, xt, xstride, yt, r_begin, r_end);
        break;
      default:
        gemv_rows<T, 4>(w, xt, xstride, yt, r_begin, r_end);
        break;
    }
  }
}

// --- many tokens

// One tile of R unsigned weight rows (kKc bytes each) and their block scales.
struct WeightTile {
  alignas(64) uint8_t u[kRows][kKc];
  float d[kRows][kBlocksPerKc];
};

// facc[r][j] (+)= sum over nblk blocks of dw[r][b] * dx[b][tok] * (u[r] . x[tok] - off * sum x).
template <int R, int NV>
void micro(const WeightTile& wt, int64_t nblk, const uint8_t* xqs, const float* xd,
           const int32_t* xs, int off, float* c, bool first) {
  __m512 facc[R][NV];
  FAIRKV_UNROLL
  for (int r = 0; r < R; ++r) {
    FAIRKV_UNROLL
    for (int j = 0; j < NV; ++j) {
      facc[r][j] = first ? _mm512_setzero_ps() : _mm512_loadu_ps(c + r * kPanel + j * 16);
    }
  }
  const __m512i neg_off = _mm512_set1_epi32(-off);
  for (int64_t b = 0; b < nblk; ++b) {
    __m512i iacc[R][NV];
    FAIRKV_UNROLL
    for (int j = 0; j < NV; ++j) {
      const __m512i corr =
          _mm512_mullo_epi32(_mm512_loadu_si512(xs + b * kPanel + j * 16), neg_off);
      FAIRKV_UNROLL
      for (int r = 0; r < R; ++r) iacc[r][j] = corr;
    }
    const uint8_t* xb = xqs + b * (kQK / 4) * kPanel * 4;
    FAIRKV_UNROLL
    for (int q = 0; q < kQK / 4; ++q) {
      __m512i xv[NV];
      FAIRKV_UNROLL
      for (int j = 0; j < NV; ++j) xv[j] = _mm512_loadu_si512(xb + (q * kPanel + j * 16) * 4);
      FAIRKV_UNROLL
      for (int r = 0; r < R; ++r) {
        int32_t u4;
        std::memcpy(&u4, &wt.u[r][b * kQK + q * 4], 4);
        const __m512i wv = _mm512_set1_epi32(u4);
        FAIRKV_UNROLL
        for (int j = 0; j < NV; ++j) iacc[r][j] = _mm512_dpbusd_epi32(iacc[r][j], wv, xv[j]);
      }
    }
    __m512 dx[NV];
    FAIRKV_UNROLL
    for (int j = 0; j < NV; ++j) dx[j] = _mm512_loadu_ps(xd + b * kPanel + j * 16);
    FAIRKV_UNROLL
    for (int r = 0; r < R; ++r) {
      const __m512 dw = _mm512_set1_ps(wt.d[r][b]);
      FAIRKV_UNROLL
      for (int j = 0; j < NV; ++j) {
        facc[r][j] =
            _mm512_fmadd_ps(_mm512_cvtepi32_ps(iacc[r][j]), _mm512_mul_ps(dw, dx[j]), facc[r][j]);
      }
    }
  }
  FAIRKV_UNROLL
  for (int r = 0; r < R; ++r) {
    FAIRKV_UNROLL
    for (int j = 0; j < NV; ++j) _mm512_storeu_ps(c + r * kPanel + j * 16, facc[r][j]);
  }
}

template <DType T>
void load_tile(const WeightMatrix& w, int64_t r0, int64_t r_end, int64_t b0, int64_t nblk,
               WeightTile& wt) {
  const size_t stride = w.stride();
  const auto* base = static_cast<const uint8_t*>(w.data);
  for (int r = 0; r < kRows; ++r) {
    if (r0 + r >= r_end) {
      std::memset(wt.u[r], 0, sizeof(wt.u[r]));
      for (auto& d : wt.d[r]) d = 0.0f;
      continue;
    }
    for (int64_t b = 0; b < nblk; ++b) {
      __m256i u;
      if constexpr (T == DType::Q8_0) {
        const auto* blk = reinterpret_cast<const BlockQ8_0*>(base + (r0 + r) * stride) + b0 + b;
        u = _mm256_xor_si256(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(blk->qs)),
                             _mm256_set1_epi8(char(0x80)));  // w + 128 as u8
        wt.d[r][b] = half(blk->d);
      } else {
        const auto* blk = reinterpret_cast<const BlockQ4_0*>(base + (r0 + r) * stride) + b0 + b;
        u = unpack_q4(blk->qs);
        wt.d[r][b] = half(blk->d);
      }
      _mm256_store_si256(reinterpret_cast<__m256i*>(&wt.u[r][b * kQK]), u);
    }
  }
}

template <DType T>
void gemm(const WeightMatrix& w, const uint8_t* xp, int64_t n_tokens, float* y, int64_t r_begin,
          int64_t r_end) {
  constexpr int off = T == DType::Q8_0 ? 128 : 8;
  const PanelLayout L(w.cols);
  const int64_t n_panels = (n_tokens + kPanel - 1) / kPanel;
  const int64_t last_panel_tokens = n_tokens - (n_panels - 1) * kPanel;
  thread_local std::vector<float> cbuf_v;
  thread_local std::vector<WeightTile> wt_v(1);
  const size_t cbuf_size = size_t(kTilesPerBlock * n_panels * kRows * kPanel);
  if (cbuf_v.size() < cbuf_size) cbuf_v.resize(cbuf_size);
  float* cbuf = cbuf_v.data();
  WeightTile& wt = wt_v[0];

  for (int64_t rb = r_begin; rb < r_end; rb += kTilesPerBlock * kRows) {
    const int64_t n_tiles = std::min(kTilesPerBlock, (r_end - rb + kRows - 1) / kRows);
    for (int64_t b0 = 0; b0 < L.nb; b0 += kBlocksPerKc) {
      const int64_t nblk = std::min(kBlocksPerKc, L.nb - b0);
      for (int64_t i = 0; i < n_tiles; ++i) {
        const int64_t r0 = rb + i * kRows;
        load_tile<T>(w, r0, r_end, b0, nblk, wt);
        for (int64_t p = 0; p < n_panels; ++p) {
          const uint8_t* panel = xp + p * L.bytes;
          const uint8_t* xqs = panel + L.qs_off + b0 * kQK * kPanel;
          const auto* xd = reinterpret_cast<const float*>(panel + L.d_off) + b0 * kPanel;
          const auto* xs = reinterpret_cast<const int32_t*>(panel + L.s_off) + b0 * kPanel;
          float* c = cbuf + (i * n_panels + p) * kRows * kPanel;
          if (p == n_panels - 1 && last_panel_tokens <= 16) {
            micro<kRows, 1>(wt, nblk, xqs, xd, xs, off, c, b0 == 0);
          } else {
            micro<kRows, kNv>(wt, nblk, xqs, xd, xs, off, c, b0 == 0);
          }
        }
      }
    }
    store_tiles<kRows, kPanel>(cbuf, n_tiles, n_panels, last_panel_tokens, rb, r_end, y, w.rows);
  }
}

// One token's row as Q8_0 blocks, rounded as llama.cpp rounds activations.
void quantize_token(const float* x, int64_t cols, std::vector<BlockQ8_0>& blocks) {
  blocks.resize(size_t(cols / kQK));
  quantize_act_q8_0(x, blocks.data(), cols);
}

int32_t block_sum(const BlockQ8_0& b) {
  int32_t s = 0;
  for (int8_t q : b.qs) s += q;
  return s;
}

}  // namespace

int64_t q8_panels(int64_t n_tokens) {
  return n_tokens < kFewTokens ? n_tokens : (n_tokens + kPanel - 1) / kPanel;
}

int64_t q8_row_tile() {
  return kRows;
}

size_t q8_packed_bytes(int64_t n_tokens, int64_t cols) {
  if (n_tokens < kFewTokens) return size_t(n_tokens * TokenLayout(cols).bytes);
  return size_t(q8_panels(n_tokens) * PanelLayout(cols).bytes);
}

void q8_pack(const float* x, int64_t n_tokens, int64_t cols, uint8_t* out, int64_t p_begin,
             int64_t p_end) {
  std::vector<BlockQ8_0> blocks;
  if (n_tokens < kFewTokens) {
    const TokenLayout L(cols);
    for (int64_t t = p_begin; t < p_end; ++t) {
      uint8_t* dst = out + t * L.bytes;
      quantize_token(x + t * cols, cols, blocks);
      for (int64_t b = 0; b < L.nb; ++b) {
        std::memcpy(dst + L.qs_off + b * kQK, blocks[size_t(b)].qs, kQK);
        const float d = half(blocks[size_t(b)].d);
        const int32_t nsum = -block_sum(blocks[size_t(b)]);
        for (int l = 0; l < 8; ++l) {
          reinterpret_cast<float*>(dst + L.d_off)[b * 8 + l] = d;
          reinterpret_cast<int32_t*>(dst + L.s_off)[b * 8 + l] = nsum;
        }
      }
    }
    return;
  }
  const PanelLayout L(cols);
  for (int64_t p = p_begin; p < p_end; ++p) {
    uint8_t* dst = out + p * L.bytes;
    auto* qs = reinterpret_cast<uint32_t*>(dst + L.qs_off);
    auto* d = reinterpret_cast<float*>(dst + L.d_off);
    auto* s = reinterpret_cast<int32_t*>(dst + L.s_off);
    for (int64_t tt = 0; tt < kPanel; ++tt) {
      const int64_t t = p * kPanel + tt;
      if (t < n_tokens) {
        quantize_token(x + t * cols, cols, blocks);
      } else {
        blocks.assign(size_t(L.nb), BlockQ8_0{});  // a missing token: all zero, scale zero
      }
      for (int64_t b = 0; b < L.nb; ++b) {
        const BlockQ8_0& blk = blocks[size_t(b)];
        for (int g = 0; g < kQK / 4; ++g) {
          uint32_t v;
          std::memcpy(&v, blk.qs + 4 * g, 4);
          qs[(b * (kQK / 4) + g) * kPanel + tt] = v;
        }
        d[b * kPanel + tt] = half(blk.d);
        s[b * kPanel + tt] = block_sum(blk);
      }
    }
  }
}

void q8_matmul(const WeightMatrix& w, const uint8_t* xpacked, int64_t n_tokens, float* y,
               int64_t r_begin, int64_t r_end) {
  const bool few = n_tokens < kFewTokens;
  if (w.type == DType::Q8_0) {
    few ? gemv<DType::Q8_0>(w, xpacked, n_tokens, y, r_begin, r_end)
        : gemm<DType::Q8_0>(w, xpacked, n_tokens, y, r_begin, r_end);
  } else {
    few ? gemv<DType::Q4_0>(w, xpacked, n_tokens, y, r_begin, r_end)
        : gemm<DType::Q4_0>(w, xpacked, n_tokens, y, r_begin, r_end);
  }
}

}  // namespace fairkv::kernels::detail

#endif  // FAIRKV_HAVE_VNNI_KERNELS
