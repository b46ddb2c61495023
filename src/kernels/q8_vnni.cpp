// The 32-element ggml types (Q8_0, Q4_0, Q5_0, Q4_1, Q5_1) times Q8_0- / Q8_1-quantized
// activations with AVX512-VNNI's vpdpbusd (four u8 x s8 products summed into an int32 lane):
// matmul's Activations::LikeGgml path for those types, the arithmetic of llama.cpp's
// vec_dot_q8_0_q8_0 / q4_0_q8_0 / q5_0_q8_0 / q4_1_q8_1 / q5_1_q8_1. Per 32-element block the
// integer dot product is exact; it is scaled by d_w * d_x (both from fp16) and summed in float32;
// Q4_1 / Q5_1 add m_w * s_x, s_x being the activations' fp16 d * sum(q) (Q8_1).
//
// vpdpbusd wants one unsigned operand: the weights are made unsigned by an offset, u = w + 128
// for Q8_0, u = nibble for Q4_0 (offset 8), u = 5-bit level for Q5_0 (offset 16), and the
// accumulator of each block starts at -offset * sum(x_block) instead of zero, which cancels the
// offset exactly. Q4_1's and Q5_1's levels are unsigned already (offset 0). Few tokens go
// through dot products (two blocks per 512-bit vector), many through a packed, register-blocked
// panel kernel (tokens along the lanes).
#include "kernels/matmul_kernels.h"
#include "kernels/simd.h"

#if defined(FAIRKV_HAVE_VNNI_KERNELS)

#include <algorithm>
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

// Weights x = d * q + m: the activations carry s = d_x * sum(q_x) (Q8_1) for the m term.
constexpr bool has_min(DType t) {
  return t == DType::Q4_1 || t == DType::Q5_1;
}
// What is added to the signed levels to make them unsigned.
constexpr int offset_of(DType t) {
  return t == DType::Q8_0 ? 128 : t == DType::Q4_0 ? 8 : t == DType::Q5_0 ? 16 : 0;
}

int64_t round_up(int64_t v, int64_t m) {
  return (v + m - 1) / m * m;
}

// Few-token layout, per token: qs[cols] int8 | dx[nb][8] float | nsum[nb][8] int32
// [| s[nb][8] float], padded to 64 bytes. dx and nsum (= -sum of the block's q) are repeated over
// the 8 int32 lanes that a block's products land in, so one 512-bit load serves two blocks; s
// (types with a min) sits in the first of the 8 lanes, zeros in the others, so that the lanes'
// sum adds m_w * s once per block.
struct TokenLayout {
  int64_t nb, qs_off, d_off, s_off, m_off, bytes;
  TokenLayout(int64_t cols, bool with_min)
      : nb(cols / kQK),
        qs_off(0),
        d_off(round_up(cols, 64)),
        s_off(d_off + 32 * nb),
        m_off(s_off + 32 * nb),
        bytes(round_up(m_off + (with_min ? 32 * nb : 0), 64)) {}
};

// Panel layout, per panel of kPanel tokens: qs[cols/4][kPanel][4] int8 | d[nb][kPanel] float |
// sum[nb][kPanel] int32 [| s[nb][kPanel] float].
struct PanelLayout {
  int64_t nb, qs_off, d_off, s_off, m_off, bytes;
  PanelLayout(int64_t cols, bool with_min)
      : nb(cols / kQK),
        qs_off(0),
        d_off(cols * kPanel),
        s_off(d_off + 4 * nb * kPanel),
        m_off(s_off + 4 * nb * kPanel),
        bytes(m_off + (with_min ? 4 * nb * kPanel : 0)) {}
};

float half(uint16_t h) {
  return _cvtsh_ss(h);
}

// The 32 nibbles of 16 bytes as bytes 0..15 in element order (low nibbles, then high): the 16
// bytes in both halves, the upper half shifted down a nibble, both masked.
__m256i unpack_q4(const uint8_t* qs) {
  const __m256i b =
      _mm256_broadcastsi128_si256(_mm_loadu_si128(reinterpret_cast<const __m128i*>(qs)));
  return _mm256_and_si256(_mm256_srlv_epi64(b, _mm256_set_epi64x(4, 4, 0, 0)),
                          _mm256_set1_epi8(0x0f));
}

// A block's 32 levels as unsigned bytes in element order (offset_of(T) added to signed ones).
template <DType T>
__m256i levels(const typename BlockOf<T>::type& b) {
  if constexpr (T == DType::Q8_0) {
    return _mm256_xor_si256(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(b.qs)),
                            _mm256_set1_epi8(char(0x80)));  // w + 128 as u8
  } else if constexpr (T == DType::Q4_0 || T == DType::Q4_1) {
    return unpack_q4(b.qs);
  } else {
    // The fifth bit j of the little-endian qh as 0x10 in byte j.
    uint32_t qh;
    std::memcpy(&qh, b.qh, 4);
    return _mm256_or_si256(unpack_q4(b.qs), _mm256_maskz_set1_epi8(__mmask32(qh), 0x10));
  }
}

// Two fp16 values, each over 8 lanes, as float32.
__m512 half_pair(uint16_t a, uint16_t b) {
  const uint32_t both = uint32_t(a) | (uint32_t(b) << 16);
  const __m256i idx = _mm256_set_epi16(1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0);
  return _mm512_cvtph_ps(_mm256_permutexvar_epi16(idx, _mm256_set1_epi32(int(both))));
}

// --- few tokens

// Dot products of one row with NT tokens, two blocks per step: each int32 lane holds four
// products of one block, the accumulator starts at -offset * sum(x) / 8 per lane, then one FMA
// applies d_w * d_x (and one more m_w * s_x). An odd last block goes through the same code with
// the upper half masked to zero.
template <DType T, int NT>
void gemv_row(const uint8_t* row, int64_t cols, const uint8_t* xq, int64_t xstride, float* y,
              int64_t y_stride) {
  using Block = typename BlockOf<T>::type;
  // nsum << kShift = -offset * sum / 8 lanes.
  constexpr int kShift = T == DType::Q8_0 ? 4 : T == DType::Q5_0 ? 1 : 0;
  const TokenLayout L(cols, has_min(T));
  const auto* blocks = reinterpret_cast<const Block*>(row);
  __m512 acc[NT];
  FAIRKV_UNROLL
  for (auto& a : acc) a = _mm512_setzero_ps();
  auto step = [&](int64_t b, __m512i u, __m512 dw, __m512 mw, __mmask16 m) {
    FAIRKV_UNROLL
    for (int t = 0; t < NT; ++t) {
      const uint8_t* xt = xq + t * xstride;
      const __m512i xv = _mm512_maskz_loadu_epi32(m, xt + L.qs_off + b * kQK);
      __m512i init = _mm512_setzero_si512();
      if constexpr (offset_of(T) != 0) {
        init = _mm512_slli_epi32(_mm512_maskz_loadu_epi32(m, xt + L.s_off + b * 32), kShift);
      }
      const __m512 dx = _mm512_maskz_loadu_ps(m, xt + L.d_off + b * 32);
      const __m512i isum = _mm512_dpbusd_epi32(init, u, xv);
      acc[t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(isum), _mm512_mul_ps(dw, dx), acc[t]);
      if constexpr (has_min(T)) {
        acc[t] = _mm512_fmadd_ps(mw, _mm512_maskz_loadu_ps(m, xt + L.m_off + b * 32), acc[t]);
      }
    }
  };
  auto min_pair = [&](int64_t b) {
    if constexpr (has_min(T)) return half_pair(blocks[b].m, blocks[b + 1].m);
    return _mm512_setzero_ps();
  };
  int64_t b = 0;
  for (; b + 2 <= L.nb; b += 2) {
    // The prefetchers stop at 4 KiB page boundaries (mapped files have no huge pages): ask for
    // the bytes ~1 KiB ahead, which may lie in the next row or page.
    _mm_prefetch(reinterpret_cast<const char*>(blocks + b) + kPrefetchBytes, _MM_HINT_T0);
    const __m512i u = _mm512_inserti64x4(_mm512_castsi256_si512(levels<T>(blocks[b])),
                                         levels<T>(blocks[b + 1]), 1);
    step(b, u, half_pair(blocks[b].d, blocks[b + 1].d), min_pair(b), __mmask16(0xffff));
  }
  if (b < L.nb) {  // the last block alone: never read past the row
    const __m512i u = _mm512_castsi256_si512(levels<T>(blocks[b]));
    __m512 mw = _mm512_setzero_ps();
    if constexpr (has_min(T)) mw = half_pair(blocks[b].m, 0);
    step(b, u, half_pair(blocks[b].d, 0), mw, __mmask16(0x00ff));
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
  const int64_t xstride = TokenLayout(w.cols, has_min(T)).bytes;
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

// One tile of R unsigned weight rows (kKc bytes each) and their block scales (and mins).
struct WeightTile {
  alignas(64) uint8_t u[kRows][kKc];
  float d[kRows][kBlocksPerKc];
  float m[kRows][kBlocksPerKc];
};

// facc[r][j] (+)= sum over nblk blocks of dw[r][b] * dx[b][tok] * (u[r] . x[tok] - off * sum x)
// [+ m[r][b] * s[b][tok]].
template <int R, int NV, int Off, bool Min>
void micro(const WeightTile& wt, int64_t nblk, const uint8_t* xqs, const float* xd,
           const int32_t* xs, const float* xm, float* c, bool first) {
  __m512 facc[R][NV];
  FAIRKV_UNROLL
  for (int r = 0; r < R; ++r) {
    FAIRKV_UNROLL
    for (int j = 0; j < NV; ++j) {
      facc[r][j] = first ? _mm512_setzero_ps() : _mm512_loadu_ps(c + r * kPanel + j * 16);
    }
  }
  for (int64_t b = 0; b < nblk; ++b) {
    __m512i iacc[R][NV];
    FAIRKV_UNROLL
    for (int j = 0; j < NV; ++j) {
      __m512i corr = _mm512_setzero_si512();
      if constexpr (Off != 0) {
        corr = _mm512_mullo_epi32(_mm512_loadu_si512(xs + b * kPanel + j * 16),
                                  _mm512_set1_epi32(-Off));
      }
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
    if constexpr (Min) {
      // After the integer accumulators are dead: the registers they free hold s.
      FAIRKV_UNROLL
      for (int j = 0; j < NV; ++j) {
        const __m512 sx = _mm512_loadu_ps(xm + b * kPanel + j * 16);
        FAIRKV_UNROLL
        for (int r = 0; r < R; ++r) {
          facc[r][j] = _mm512_fmadd_ps(_mm512_set1_ps(wt.m[r][b]), sx, facc[r][j]);
        }
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
  using Block = typename BlockOf<T>::type;
  const size_t stride = w.stride();
  const auto* base = static_cast<const uint8_t*>(w.data);
  for (int r = 0; r < kRows; ++r) {
    if (r0 + r >= r_end) {
      std::memset(wt.u[r], 0, sizeof(wt.u[r]));
      for (auto& d : wt.d[r]) d = 0.0f;
      for (auto& m : wt.m[r]) m = 0.0f;
      continue;
    }
    const auto* blk = reinterpret_cast<const Block*>(base + (r0 + r) * stride) + b0;
    for (int64_t b = 0; b < nblk; ++b) {
      _mm256_store_si256(reinterpret_cast<__m256i*>(&wt.u[r][b * kQK]), levels<T>(blk[b]));
      wt.d[r][b] = half(blk[b].d);
      if constexpr (has_min(T)) wt.m[r][b] = half(blk[b].m);
    }
  }
}

template <DType T>
void gemm(const WeightMatrix& w, const uint8_t* xp, int64_t n_tokens, float* y, int64_t r_begin,
          int64_t r_end) {
  constexpr int kOff = offset_of(T);
  constexpr bool kMin = has_min(T);
  const PanelLayout L(w.cols, kMin);
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
          const auto* xm = reinterpret_cast<const float*>(panel + L.m_off) + b0 * kPanel;
          float* c = cbuf + (i * n_panels + p) * kRows * kPanel;
          if (p == n_panels - 1 && last_panel_tokens <= 16) {
            micro<kRows, 1, kOff, kMin>(wt, nblk, xqs, xd, xs, xm, c, b0 == 0);
          } else {
            micro<kRows, kNv, kOff, kMin>(wt, nblk, xqs, xd, xs, xm, c, b0 == 0);
          }
        }
      }
    }
    store_tiles<kRows, kPanel>(cbuf, n_tiles, n_panels, last_panel_tokens, rb, r_end, y, w.rows);
  }
}

// One token's row as Q8_1 blocks (fp16 d, q, fp16 s), rounded as llama.cpp rounds activations
// for weights of type t: Q8_1 for the types with a min, else Q8_0 (the same d and q; s unused).
void quantize_token(DType t, const float* x, int64_t cols, std::vector<BlockQ8_1>& blocks) {
  const size_t nb = size_t(cols / kQK);
  blocks.resize(nb);
  if (has_min(t)) {
    quantize_act_q8_1(x, blocks.data(), cols);
    return;
  }
  thread_local std::vector<BlockQ8_0> q80;
  q80.resize(nb);
  quantize_act_q8_0(x, q80.data(), cols);
  for (size_t b = 0; b < nb; ++b) {
    blocks[b].d = q80[b].d;
    blocks[b].s = 0;
    std::memcpy(blocks[b].qs, q80[b].qs, kQK);
  }
}

int32_t block_sum(const BlockQ8_1& b) {
  int32_t s = 0;
  for (int8_t q : b.qs) s += q;
  return s;
}

template <DType T>
void matmul_type(const WeightMatrix& w, const uint8_t* xpacked, int64_t n_tokens, float* y,
                 int64_t r_begin, int64_t r_end) {
  if (n_tokens < kFewTokens) {
    gemv<T>(w, xpacked, n_tokens, y, r_begin, r_end);
  } else {
    gemm<T>(w, xpacked, n_tokens, y, r_begin, r_end);
  }
}

}  // namespace

bool q8_handles(DType t) {
  return t == DType::Q8_0 || t == DType::Q4_0 || t == DType::Q5_0 || t == DType::Q4_1 ||
         t == DType::Q5_1;
}

int64_t q8_panels(int64_t n_tokens) {
  return n_tokens < kFewTokens ? n_tokens : (n_tokens + kPanel - 1) / kPanel;
}

int64_t q8_row_tile() {
  return kRows;
}

size_t q8_packed_bytes(DType t, int64_t n_tokens, int64_t cols) {
  if (n_tokens < kFewTokens) return size_t(n_tokens * TokenLayout(cols, has_min(t)).bytes);
  return size_t(q8_panels(n_tokens) * PanelLayout(cols, has_min(t)).bytes);
}

void q8_pack(DType type, const float* x, int64_t n_tokens, int64_t cols, uint8_t* out,
             int64_t p_begin, int64_t p_end) {
  std::vector<BlockQ8_1> blocks;
  const bool with_min = has_min(type);
  if (n_tokens < kFewTokens) {
    const TokenLayout L(cols, with_min);
    for (int64_t t = p_begin; t < p_end; ++t) {
      uint8_t* dst = out + t * L.bytes;
      quantize_token(type, x + t * cols, cols, blocks);
      for (int64_t b = 0; b < L.nb; ++b) {
        const BlockQ8_1& blk = blocks[size_t(b)];
        std::memcpy(dst + L.qs_off + b * kQK, blk.qs, kQK);
        const float d = half(blk.d);
        const int32_t nsum = -block_sum(blk);
        for (int l = 0; l < 8; ++l) {
          reinterpret_cast<float*>(dst + L.d_off)[b * 8 + l] = d;
          reinterpret_cast<int32_t*>(dst + L.s_off)[b * 8 + l] = nsum;
          if (with_min) reinterpret_cast<float*>(dst + L.m_off)[b * 8 + l] = l ? 0.0f : half(blk.s);
        }
      }
    }
    return;
  }
  const PanelLayout L(cols, with_min);
  for (int64_t p = p_begin; p < p_end; ++p) {
    uint8_t* dst = out + p * L.bytes;
    auto* qs = reinterpret_cast<uint32_t*>(dst + L.qs_off);
    auto* d = reinterpret_cast<float*>(dst + L.d_off);
    auto* s = reinterpret_cast<int32_t*>(dst + L.s_off);
    auto* m = reinterpret_cast<float*>(dst + L.m_off);
    for (int64_t tt = 0; tt < kPanel; ++tt) {
      const int64_t t = p * kPanel + tt;
      if (t < n_tokens) {
        quantize_token(type, x + t * cols, cols, blocks);
      } else {
        blocks.assign(size_t(L.nb), BlockQ8_1{});  // a missing token: all zero, scale zero
      }
      for (int64_t b = 0; b < L.nb; ++b) {
        const BlockQ8_1& blk = blocks[size_t(b)];
        for (int g = 0; g < kQK / 4; ++g) {
          uint32_t v;
          std::memcpy(&v, blk.qs + 4 * g, 4);
          qs[(b * (kQK / 4) + g) * kPanel + tt] = v;
        }
        d[b * kPanel + tt] = half(blk.d);
        s[b * kPanel + tt] = block_sum(blk);
        if (with_min) m[b * kPanel + tt] = half(blk.s);
      }
    }
  }
}

void q8_matmul(const WeightMatrix& w, const uint8_t* xpacked, int64_t n_tokens, float* y,
               int64_t r_begin, int64_t r_end) {
  switch (w.type) {
    case DType::Q8_0:
      return matmul_type<DType::Q8_0>(w, xpacked, n_tokens, y, r_begin, r_end);
    case DType::Q4_0:
      return matmul_type<DType::Q4_0>(w, xpacked, n_tokens, y, r_begin, r_end);
    case DType::Q5_0:
      return matmul_type<DType::Q5_0>(w, xpacked, n_tokens, y, r_begin, r_end);
    case DType::Q4_1:
      return matmul_type<DType::Q4_1>(w, xpacked, n_tokens, y, r_begin, r_end);
    default:
      return matmul_type<DType::Q5_1>(w, xpacked, n_tokens, y, r_begin, r_end);
  }
}

}  // namespace fairkv::kernels::detail

#endif  // FAIRKV_HAVE_VNNI_KERNELS
