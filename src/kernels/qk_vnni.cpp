// Prefill for the K-quants (Q2_K .. Q6_K) with AVX512-VNNI: a packed, register-blocked panel
// kernel (tokens along the lanes, as q8_vnni.cpp's) in the arithmetic of ggml's
// ggml_vec_dot_q*_K_q8_K. Per 256-element super-block, per row and token:
//   isum = sum over sub-blocks j of sc_j * (u_j . x_j)                  (exact, int32)
//   Q2_K / Q4_K / Q5_K: y += (d_x * d_w) * isum - (d_x * dmin_w) * sum_j m_j * bsums_j
//   Q3_K / Q6_K:        y += (d_x * d_w) * (isum - off * sum_j sc_j * bsums_j)
// where u are the levels as unsigned bytes: Q3_K's (-4..3) and Q6_K's (-32..31) offset by
// off = 4 and 32, taken back exactly through the bsums. The same integers and float factors as
// qdot_k.cpp (the decode kernels), summed in another order. Sub-block products go through
// vpdpbusd into their own int32 accumulators, which are then scaled by the sub-block's scale
// (vpmulld) into isum: the scales times the levels do not fit the u8 operand. The bsums terms
// take vpdpwssd over pairs of 16-element sums.
#include "kernels/matmul_kernels.h"
#include "kernels/simd.h"

#if defined(FAIRKV_HAVE_VNNI_KERNELS)

#include <algorithm>
#include <vector>

namespace fairkv::kernels::detail {

namespace {

constexpr int kRows = 6;  // tile: 6 rows x 32 tokens (12 isum + 12 sub-block accumulators)
constexpr int kNv = 2;
constexpr int kPanel = kNv * 16;
constexpr int64_t kTilesPerBlock = 16;

// Elements per sub-block with its own scale.
template <DType T>
constexpr int kSub = T == DType::Q4_K || T == DType::Q5_K ? 32 : 16;
// Whether the bsums term is an offset folded into isum (scaled by d) rather than mins (dmin).
constexpr bool folds(DType t) {
  return t == DType::Q3_K || t == DType::Q6_K;
}

// Panel layout, per panel of kPanel tokens and per super-block s: qs[cols/4][kPanel][4] int8 |
// d[ns][kPanel] float | bs[ns][8][kPanel] int32, each the int16 pair (bsums[2i], bsums[2i+1]).
struct PanelLayout {
  int64_t ns, qs_off, d_off, bs_off, bytes;
  explicit PanelLayout(int64_t cols)
      : ns(cols / kQK_K),
        qs_off(0),
        d_off(cols * kPanel),
        bs_off(d_off + 4 * ns * kPanel),
        bytes(bs_off + 4 * ns * 8 * kPanel) {}
};

// One super-block of kRows rows, unpacked: levels as unsigned bytes in element order, the
// sub-block scales, the bsums factors as int16 pairs (mins, or -32 * scale) and d / dmin.
struct Tile {
  alignas(64) uint8_t u[kRows][kQK_K];
  int32_t sc[kRows][16];
  int32_t coef[kRows][8];
  float d[kRows], dmin[kRows];
};

__m256i ld32(const uint8_t* p) {
  return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
}
// Bits [n, n + width) of every byte of v, as the byte's value.
__m256i bits(__m256i v, int n, int mask) {
  return _mm256_and_si256(_mm256_srl_epi16(v, _mm_cvtsi32_si128(n)), _mm256_set1_epi8(char(mask)));
}

int32_t pair16(int a, int b) {
  return int32_t(uint32_t(uint16_t(int16_t(a))) | (uint32_t(uint16_t(int16_t(b))) << 16));
}

template <DType T>
void unpack_row(const typename BlockOf<T>::type& b, Tile& t, int r) {
  uint8_t* u = t.u[r];
  t.d[r] = simd::half_to_float(b.d);
  if constexpr (T == DType::Q2_K || T == DType::Q3_K) {
    // Group c: 2 bits at shift 2 * (c % 4) of bytes 32 * (c / 4) ..; Q3_K's third bit is bit c
    // of hmask (level + 4, so u = level + 4 in 0..7).
    for (int c = 0; c < 8; ++c) {
      __m256i v = bits(ld32(b.qs + 32 * (c / 4)), 2 * (c % 4), 3);
      if constexpr (T == DType::Q3_K)
        v = _mm256_or_si256(v, _mm256_slli_epi16(bits(ld32(b.hmask), c, 1), 2));
      _mm256_store_si256(reinterpret_cast<__m256i*>(u + 32 * c), v);
    }
    if constexpr (T == DType::Q2_K) {
      t.dmin[r] = simd::half_to_float(b.dmin);
      for (int j = 0; j < 16; ++j) t.sc[r][j] = b.scales[j] & 0x0f;
      for (int i = 0; i < 8; ++i)
        t.coef[r][i] = pair16(b.scales[2 * i] >> 4, b.scales[2 * i + 1] >> 4);
    } else {
      t.dmin[r] = 0.0f;
      int8_t s[16];
      q3k_scales(b.scales, s);
      for (int j = 0; j < 16; ++j) t.sc[r][j] = s[j];
      for (int i = 0; i < 8; ++i) t.coef[r][i] = pair16(-4 * s[2 * i], -4 * s[2 * i + 1]);
    }
  } else if constexpr (T == DType::Q6_K) {
    t.dmin[r] = 0.0f;
    for (int c = 0; c < 8; ++c) {  // 32 elements: group g of half c / 4
      const int g = c % 4;
      const __m256i lo = bits(ld32(b.ql + 64 * (c / 4) + 32 * (g % 2)), 4 * (g / 2), 0x0f);
      const __m256i hi = bits(ld32(b.qh + 32 * (c / 4)), 2 * g, 3);
      _mm256_store_si256(reinterpret_cast<__m256i*>(u + 32 * c),
                         _mm256_or_si256(lo, _mm256_slli_epi16(hi, 4)));
    }
    for (int j = 0; j < 16; ++j) t.sc[r][j] = b.scales[j];
    for (int i = 0; i < 8; ++i) {
      t.coef[r][i] = pair16(-32 * b.scales[2 * i], -32 * b.scales[2 * i + 1]);
    }
  } else {
    t.dmin[r] = simd::half_to_float(b.dmin);
    for (int c = 0; c < 8; ++c) {  // sub-block c: nibble c % 2 of bytes 32 * (c / 2) ..
      __m256i v = bits(ld32(b.qs + 32 * (c / 2)), 4 * (c % 2), 0x0f);
      if constexpr (T == DType::Q5_K)
        v = _mm256_or_si256(v, _mm256_slli_epi16(bits(ld32(b.qh), c, 1), 4));
      _mm256_store_si256(reinterpret_cast<__m256i*>(u + 32 * c), v);
    }
    for (int j = 0; j < 8; ++j) {
      int sc, m;
      scale_min_k4(j, b.scales, sc, m);
      t.sc[r][j] = sc;
      t.coef[r][j] = pair16(m, m);  // bsums 2j and 2j + 1 both belong to sub-block j
    }
  }
}

template <DType T>
void load_tile(const WeightMatrix& w, int64_t r0, int64_t r_end, int64_t s, Tile& t) {
  using Block = typename BlockOf<T>::type;
  for (int r = 0; r < kRows; ++r) {
    if (r0 + r >= r_end) {
      std::memset(t.u[r], 0, sizeof(t.u[r]));
      std::fill(std::begin(t.sc[r]), std::end(t.sc[r]), 0);
      std::fill(std::begin(t.coef[r]), std::end(t.coef[r]), 0);
      t.d[r] = t.dmin[r] = 0.0f;
      continue;
    }
    unpack_row<T>(reinterpret_cast<const Block*>(w.row(r0 + r))[s], t, r);
  }
}

// c[r][tok] (+)= one super-block's contribution for R rows and NV * 16 tokens.
template <DType T, int R, int NV>
void micro(const Tile& t, const uint8_t* xqs, const float* xd, const int32_t* xbs, float* c,
           bool first) {
  constexpr int kGroups = kSub<T> / 4;  // 4-byte groups per sub-block
  __m512i isum[R][NV];
  FAIRKV_UNROLL
  for (int r = 0; r < R; ++r) {
    FAIRKV_UNROLL
    for (int v = 0; v < NV; ++v) isum[r][v] = _mm512_setzero_si512();
  }
  for (int j = 0; j < kQK_K / kSub<T>; ++j) {
    __m512i sub[R][NV];
    FAIRKV_UNROLL
    for (int r = 0; r < R; ++r) {
      FAIRKV_UNROLL
      for (int v = 0; v < NV; ++v) sub[r][v] = _mm512_setzero_si512();
    }
    FAIRKV_UNROLL
    for (int q = 0; q < kGroups; ++q) {
      const int k = j * kGroups + q;
      __m512i xv[NV];
      FAIRKV_UNROLL
      for (int v = 0; v < NV; ++v) xv[v] = _mm512_loadu_si512(xqs + (k * kPanel + v * 16) * 4);
      FAIRKV_UNROLL
      for (int r = 0; r < R; ++r) {
        int32_t u4;
        std::memcpy(&u4, &t.u[r][4 * k], 4);
        const __m512i wv = _mm512_set1_epi32(u4);
        FAIRKV_UNROLL
        for (int v = 0; v < NV; ++v) sub[r][v] = _mm512_dpbusd_epi32(sub[r][v], wv, xv[v]);
      }
    }
    FAIRKV_UNROLL
    for (int r = 0; r < R; ++r) {
      const __m512i sc = _mm512_set1_epi32(t.sc[r][j]);
      FAIRKV_UNROLL
      for (int v = 0; v < NV; ++v) {
        isum[r][v] = _mm512_add_epi32(isum[r][v], _mm512_mullo_epi32(sub[r][v], sc));
      }
    }
  }
  // sum_i coef_i . (bsums 2i, 2i + 1): the mins' term, or Q3_K's / Q6_K's offset (into isum).
  __m512i cs[R][NV];
  FAIRKV_UNROLL
  for (int r = 0; r < R; ++r) {
    FAIRKV_UNROLL
    for (int v = 0; v < NV; ++v) cs[r][v] = _mm512_setzero_si512();
  }
  FAIRKV_UNROLL
  for (int i = 0; i < 8; ++i) {
    __m512i bv[NV];
    FAIRKV_UNROLL
    for (int v = 0; v < NV; ++v) bv[v] = _mm512_loadu_si512(xbs + i * kPanel + v * 16);
    FAIRKV_UNROLL
    for (int r = 0; r < R; ++r) {
      const __m512i cf = _mm512_set1_epi32(t.coef[r][i]);
      FAIRKV_UNROLL
      for (int v = 0; v < NV; ++v) cs[r][v] = _mm512_dpwssd_epi32(cs[r][v], cf, bv[v]);
    }
  }
  FAIRKV_UNROLL
  for (int v = 0; v < NV; ++v) {
    const __m512 dx = _mm512_loadu_ps(xd + v * 16);
    FAIRKV_UNROLL
    for (int r = 0; r < R; ++r) {
      float* cp = c + r * kPanel + v * 16;
      __m512 acc = first ? _mm512_setzero_ps() : _mm512_loadu_ps(cp);
      if constexpr (folds(T)) {
        const __m512i all = _mm512_add_epi32(isum[r][v], cs[r][v]);
        acc = _mm512_fmadd_ps(_mm512_cvtepi32_ps(all), _mm512_mul_ps(dx, _mm512_set1_ps(t.d[r])),
                              acc);
      } else {
        acc = _mm512_fmadd_ps(_mm512_cvtepi32_ps(isum[r][v]),
                              _mm512_mul_ps(dx, _mm512_set1_ps(t.d[r])), acc);
        acc = _mm512_fnmadd_ps(_mm512_cvtepi32_ps(cs[r][v]),
                               _mm512_mul_ps(dx, _mm512_set1_ps(t.dmin[r])), acc);
      }
      _mm512_storeu_ps(cp, acc);
    }
  }
}

template <DType T>
void gemm(const WeightMatrix& w, const uint8_t* xp, int64_t n_tokens, float* y, int64_t r_begin,
          int64_t r_end) {
  const PanelLayout L(w.cols);
  const int64_t n_panels = (n_tokens + kPanel - 1) / kPanel;
  const int64_t last_panel_tokens = n_tokens - (n_panels - 1) * kPanel;
  thread_local std::vector<float> cbuf_v;
  thread_local std::vector<Tile> tile_v(1);
  const size_t cbuf_size = size_t(kTilesPerBlock * n_panels * kRows * kPanel);
  if (cbuf_v.size() < cbuf_size) cbuf_v.resize(cbuf_size);
  float* cbuf = cbuf_v.data();
  Tile& tile = tile_v[0];

  for (int64_t rb = r_begin; rb < r_end; rb += kTilesPerBlock * kRows) {
    const int64_t n_tiles = std::min(kTilesPerBlock, (r_end - rb + kRows - 1) / kRows);
    for (int64_t s = 0; s < L.ns; ++s) {
      for (int64_t i = 0; i < n_tiles; ++i) {
        load_tile<T>(w, rb + i * kRows, r_end, s, tile);
        for (int64_t p = 0; p < n_panels; ++p) {
          const uint8_t* panel = xp + p * L.bytes;
          const uint8_t* xqs = panel + L.qs_off + s * kQK_K * kPanel;
          const auto* xd = reinterpret_cast<const float*>(panel + L.d_off) + s * kPanel;
          const auto* xbs = reinterpret_cast<const int32_t*>(panel + L.bs_off) + s * 8 * kPanel;
          float* c = cbuf + (i * n_panels + p) * kRows * kPanel;
          if (p == n_panels - 1 && last_panel_tokens <= 16) {
            micro<T, kRows, 1>(tile, xqs, xd, xbs, c, s == 0);
          } else {
            micro<T, kRows, kNv>(tile, xqs, xd, xbs, c, s == 0);
          }
        }
      }
    }
    store_tiles<kRows, kPanel>(cbuf, n_tiles, n_panels, last_panel_tokens, rb, r_end, y, w.rows);
  }
}

}  // namespace

bool qk_handles(DType t) {
  return is_k_quant(t);
}

int64_t qk_panels(int64_t n_tokens) {
  return (n_tokens + kPanel - 1) / kPanel;
}

int64_t qk_row_tile() {
  return kRows;
}

size_t qk_packed_bytes(int64_t n_tokens, int64_t cols) {
  return size_t(qk_panels(n_tokens) * PanelLayout(cols).bytes);
}

void qk_pack(const float* x, int64_t n_tokens, int64_t cols, uint8_t* out, int64_t p_begin,
             int64_t p_end) {
  const PanelLayout L(cols);
  std::vector<BlockQ8_K> blocks(size_t(L.ns));
  for (int64_t p = p_begin; p < p_end; ++p) {
    uint8_t* dst = out + p * L.bytes;
    auto* qs = reinterpret_cast<uint32_t*>(dst + L.qs_off);
    auto* d = reinterpret_cast<float*>(dst + L.d_off);
    auto* bs = reinterpret_cast<int32_t*>(dst + L.bs_off);
    for (int64_t tt = 0; tt < kPanel; ++tt) {
      const int64_t t = p * kPanel + tt;
      if (t < n_tokens) {
        quantize_act_q8_k(x + t * cols, blocks.data(), cols);
      } else {
        blocks.assign(size_t(L.ns), BlockQ8_K{});  // a missing token: all zero, scale zero
      }
      for (int64_t s = 0; s < L.ns; ++s) {
        const BlockQ8_K& blk = blocks[size_t(s)];
        for (int g = 0; g < kQK_K / 4; ++g) {
          uint32_t v;
          std::memcpy(&v, blk.qs + 4 * g, 4);
          qs[(s * (kQK_K / 4) + g) * kPanel + tt] = v;
        }
        d[s * kPanel + tt] = blk.d;
        for (int i = 0; i < 8; ++i) {
          bs[(s * 8 + i) * kPanel + tt] = pair16(blk.bsums[2 * i], blk.bsums[2 * i + 1]);
        }
      }
    }
  }
}

void qk_matmul(const WeightMatrix& w, const uint8_t* xpacked, int64_t n_tokens, float* y,
               int64_t r_begin, int64_t r_end) {
  switch (w.type) {
    case DType::Q2_K:
      return gemm<DType::Q2_K>(w, xpacked, n_tokens, y, r_begin, r_end);
    case DType::Q3_K:
      return gemm<DType::Q3_K>(w, xpacked, n_tokens, y, r_begin, r_end);
    case DType::Q4_K:
      return gemm<DType::Q4_K>(w, xpacked, n_tokens, y, r_begin, r_end);
    case DType::Q5_K:
      return gemm<DType::Q5_K>(w, xpacked, n_tokens, y, r_begin, r_end);
    default:
      return gemm<DType::Q6_K>(w, xpacked, n_tokens, y, r_begin, r_end);
  }
}

}  // namespace fairkv::kernels::detail

#endif  // FAIRKV_HAVE_VNNI_KERNELS
