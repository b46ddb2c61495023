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
#include <vector>

namespace fairkv::kernels::detail {

namespace {

constexpr int64_t kFewTokens = 8;
// Rows per few-token tile: eight memory streams for one token (a core needs about that many to
// reach its share of the bandwidth), four when more tokens multiply the accumulators.
template <int NT>
constexpr int gemv_rows_per_tile() {
  return NT == 1 ? 8 : 4;
}
constexpr int64_t kPrefetchBytes = 256;  // ahead of each row's loads
constexpr int kRows = 6;  // gemm tile: 6 rows x 32 tokens (12 int + 12 float accumulators)
constexpr int kNv = 2;
constexpr int kPanel = kNv * 16;
constexpr int64_t kKc = 256;
constexpr int64_t kBlocksPerKc = kKc / kQK;
constexpr int64_t kTilesPerBlock = 16;

int64_t round_up(int64_t v, int64_t m) {
  return (v + m - 1) / m * m;
}

// Few-token layout, per token: qs[cols] int8 | d[nb] float | sum[nb] int32, padded to 64 bytes.
struct TokenLayout {
  int64_t nb, qs_off, d_off, s_off, bytes;
  explicit TokenLayout(int64_t cols)
      : nb(cols / kQK),
        qs_off(0),
        d_off(round_up(cols, 64)),
        s_off(d_off + 4 * nb),
        bytes(round_up(s_off + 4 * nb, 64)) {}
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

template <DType T, int R, int NT>
void gemv_tile(const WeightMatrix& w, int64_t r0, const uint8_t* xq, int64_t xstride, float* y) {
  const TokenLayout L(w.cols);
  const size_t stride = w.stride();
  const uint8_t* base = w.row(r0);
  __m256 acc[R][NT];
  FAIRKV_UNROLL
  for (auto& a : acc) {
    FAIRKV_UNROLL
    for (auto& v : a) v = _mm256_setzero_ps();
  }
  for (int64_t b = 0; b < L.nb; ++b) {
    __m256i xv[NT];
    float dx[NT];
    FAIRKV_UNROLL
    for (int t = 0; t < NT; ++t) {
      const uint8_t* xt = xq + t * xstride;
      xv[t] = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(xt + L.qs_off + b * kQK));
      dx[t] = reinterpret_cast<const float*>(xt + L.d_off)[b];
    }
    FAIRKV_UNROLL
    for (int r = 0; r < R; ++r) {
      __m256i isum[NT];
      uint16_t dw;
      if constexpr (T == DType::Q8_0) {
        const auto* blk = reinterpret_cast<const BlockQ8_0*>(base + r * stride) + b;
        const __m256i q = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(blk->qs));
        const __m256i aq = _mm256_abs_epi8(q);
        FAIRKV_UNROLL
        for (int t = 0; t < NT; ++t) {
          isum[t] = _mm256_dpbusd_epi32(_mm256_setzero_si256(), aq, _mm256_sign_epi8(xv[t], q));
        }
        dw = blk->d;
      } else {
        const auto* blk = reinterpret_cast<const BlockQ4_0*>(base + r * stride) + b;
        const __m256i u = unpack_q4(blk->qs);
        FAIRKV_UNROLL
        for (int t = 0; t < NT; ++t) {
          // Each of the 8 lanes starts at -sum(x): together -8 * sum(x), the nibbles' offset.
          const int32_t s = reinterpret_cast<const int32_t*>(xq + t * xstride + L.s_off)[b];
          isum[t] = _mm256_dpbusd_epi32(_mm256_set1_epi32(-s), u, xv[t]);
        }
        dw = blk->d;
      }
      if (b % 2 == 0) {
        constexpr int64_t kBlockBytes = T == DType::Q8_0 ? sizeof(BlockQ8_0) : sizeof(BlockQ4_0);
        __builtin_prefetch(base + r * stride + b * kBlockBytes + kPrefetchBytes);
      }
      // d_w in all lanes straight from fp16 (broadcast + convert), times d_x.
      const __m256 dwv = _mm256_cvtph_ps(_mm_set1_epi16(short(dw)));
      FAIRKV_UNROLL
      for (int t = 0; t < NT; ++t) {
        acc[r][t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(isum[t]),
                                    _mm256_mul_ps(dwv, _mm256_set1_ps(dx[t])), acc[r][t]);
      }
    }
  }
  FAIRKV_UNROLL
  for (int r = 0; r < R; ++r) {
    FAIRKV_UNROLL
    for (int t = 0; t < NT; ++t) {
      const __m128 lo = _mm256_castps256_ps128(acc[r][t]);
      __m128 s = _mm_add_ps(lo, _mm256_extractf128_ps(acc[r][t], 1));
      s = _mm_add_ps(s, _mm_movehl_ps(s, s));
      s = _mm_add_ss(s, _mm_movehdup_ps(s));
      y[t * w.rows + r0 + r] = _mm_cvtss_f32(s);
    }
  }
}

template <DType T, int NT>
void gemv_rows(const WeightMatrix& w, const uint8_t* xq, int64_t xstride, float* y, int64_t r_begin,
               int64_t r_end) {
  constexpr int R = gemv_rows_per_tile<NT>();
  int64_t r = r_begin;
  for (; r + R <= r_end; r += R) gemv_tile<T, R, NT>(w, r, xq, xstride, y);
  for (; r < r_end; ++r) gemv_tile<T, 1, NT>(w, r, xq, xstride, y);
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
    for (int64_t i = 0; i < n_tiles; ++i) {
      const int64_t r0 = rb + i * kRows;
      const int nr = int(std::min<int64_t>(kRows, r_end - r0));
      for (int64_t p = 0; p < n_panels; ++p) {
        const float* c = cbuf + (i * n_panels + p) * kRows * kPanel;
        const int nt = int(p == n_panels - 1 ? last_panel_tokens : kPanel);
        for (int t = 0; t < nt; ++t) {
          float* yt = y + (p * kPanel + t) * w.rows + r0;
          for (int r = 0; r < nr; ++r) yt[r] = c[r * kPanel + t];
        }
      }
    }
  }
}

// Quantizes token t's row into blocks and returns them with their scales and sums.
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
        reinterpret_cast<float*>(dst + L.d_off)[b] = half(blocks[size_t(b)].d);
        reinterpret_cast<int32_t*>(dst + L.s_off)[b] = block_sum(blocks[size_t(b)]);
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
