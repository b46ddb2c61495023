#include "kv/cache.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <random>
#include <stdexcept>
#include <string>
#include <vector>

#include "kernels/types.h"
#include "kv/store_memory.h"

namespace fairkv::kv {
namespace {

size_t sz(int64_t x) {
  return static_cast<size_t>(x);
}

std::vector<float> random_rows(int64_t n, int64_t d, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> dist(0.0f, 1.0f);
  std::vector<float> x(static_cast<size_t>(n * d));
  for (float& v : x) v = dist(rng);
  return x;
}

float as_stored(KvType t, float x) {
  return t == KvType::F16 ? kernels::fp16_to_fp32(kernels::fp32_to_fp16(x)) : x;
}

// Row x as a store of type t gives it back: converted (the kernels' converters, ggml's reference
// quantizers bit for bit) and converted back.
std::vector<float> stored(KvType t, const float* x, int64_t d) {
  std::vector<uint8_t> b(kv_row_bytes(t, d));
  kernels::quantize_row(kv_dtype(t), x, b.data(), d);
  std::vector<float> y(sz(d));
  kernels::dequantize_row(kv_dtype(t), b.data(), y.data(), d);
  return y;
}

// A head size the types can hold: quantized rows are whole blocks of 32.
int64_t dim_for(KvTypes t, int64_t d) {
  return kv_type_quantized(t.k) || kv_type_quantized(t.v) ? 64 : d;
}

class HeadStoreTest : public ::testing::TestWithParam<KvTypes> {};

TEST_P(HeadStoreTest, AppendThenKeepHoldsExactlyTheChosenRows) {
  const KvTypes t = GetParam();
  const int64_t d = dim_for(t, 24);
  HeadStore s(d, t);
  // A prefill of 37 rows, then 11 decode appends of one row.
  const auto k = random_rows(48, d, 1), v = random_rows(48, d, 2);
  s.append(k.data(), v.data(), 37);
  EXPECT_EQ(s.capacity_bytes(), s.bytes());  // a prefill allocates exactly
  for (int64_t i = 37; i < 48; ++i) s.append(k.data() + i * d, v.data() + i * d, 1);
  ASSERT_EQ(s.size(), 48);
  const size_t token = kv_row_bytes(t.k, d) + kv_row_bytes(t.v, d);
  EXPECT_EQ(s.bytes(), 48 * token);
  EXPECT_EQ(token, t.token_bytes(d));
  // Decode growth is geometric: bounded overhead, never a copy per token.
  EXPECT_LE(s.capacity_bytes(), s.bytes() * 5 / 4 + 16 * token);

  std::vector<float> row(static_cast<size_t>(d));
  for (int64_t i = 0; i < 48; ++i) {
    s.k_row(i, row.data());
    ASSERT_EQ(row, stored(t.k, &k[sz(i * d)], d)) << i;
    s.v_row(i, row.data());
    ASSERT_EQ(row, stored(t.v, &v[sz(i * d)], d)) << i;
  }

  const std::vector<int64_t> keep = {0, 3, 4, 17, 36, 40, 47};
  s.keep(keep);
  ASSERT_EQ(s.size(), int64_t(keep.size()));
  // Memory is exact after compression: no slack, no padding.
  EXPECT_EQ(s.bytes(), keep.size() * token);
  EXPECT_EQ(s.capacity_bytes(), s.bytes());
  for (size_t r = 0; r < keep.size(); ++r) {
    s.k_row(int64_t(r), row.data());
    ASSERT_EQ(row, stored(t.k, &k[sz(keep[r] * d)], d)) << r;
    s.v_row(int64_t(r), row.data());
    ASSERT_EQ(row, stored(t.v, &v[sz(keep[r] * d)], d)) << r;
  }
  // Fewer keys than a panel stay row-major at the documented stride, and so do the values.
  std::vector<float> raw(static_cast<size_t>(d));
  kernels::dequantize_row(
      kv_dtype(t.k), static_cast<const uint8_t*>(s.k_data()) + 3 * s.k_row_bytes(), raw.data(), d);
  s.k_row(3, row.data());
  EXPECT_EQ(raw, row);
  kernels::dequantize_row(
      kv_dtype(t.v), static_cast<const uint8_t*>(s.v_data()) + 5 * s.v_row_bytes(), raw.data(), d);
  s.v_row(5, row.data());
  EXPECT_EQ(raw, row);

  // Appending after a keep continues after the kept rows.
  s.append(k.data(), v.data(), 1);
  ASSERT_EQ(s.size(), int64_t(keep.size()) + 1);
  s.k_row(s.size() - 1, row.data());
  EXPECT_EQ(row, stored(t.k, k.data(), d));

  s.clear();
  EXPECT_EQ(s.size(), 0);
  EXPECT_EQ(s.capacity_bytes(), 0u);
}

// Keys: full panels of kKeyPanel keys dimension-major, the rest row-major after them, sealed as
// keys arrive one at a time or many at once, and rebuilt by keep(); q8_0 panels are blocks of
// 8 rows of 16 keys x 4 bytes (sign bit flipped) and 16 scales, q4_0 ones 4 rows of 16 keys x 8
// nibbles and 16 scales (cache_quant_panel_test.cpp checks them byte by byte).
TEST_P(HeadStoreTest, KeysAreInPanelsThenRows) {
  const KvTypes types = GetParam();
  const KvType t = types.k;
  const int64_t d = dim_for(types, 24), n = 2 * kKeyPanel + 5;
  const auto k = random_rows(n, d, 4), v = random_rows(n, d, 5);
  const auto dt = kv_dtype(t);
  // The element (key j, dimension e) of the raw K array under the documented layout.
  auto raw = [&](const HeadStore& s, int64_t j, int64_t e) {
    const auto* base = static_cast<const uint8_t*>(s.k_data());
    if (t == KvType::Q8_0 && j < s.panel_keys()) {
      const uint8_t* blk = base + sz(j / kKeyPanel * kKeyPanel) * kv_row_bytes(t, d) +
                           sz(e / 32) * kQ8PanelBlockBytes;
      uint16_t h;
      std::memcpy(&h, blk + 8 * kQ8PanelRow + 2 * (j % kKeyPanel), 2);
      const auto q =
          int8_t(blk[sz(e % 32 / 4) * kQ8PanelRow + sz(4 * (j % kKeyPanel) + e % 4)] ^ 0x80);
      return kernels::fp16_to_fp32(h) * float(q);
    }
    if (t == KvType::Q4_0 && j < s.panel_keys()) {
      const uint8_t* blk = base + sz(j / kKeyPanel * kKeyPanel) * kv_row_bytes(t, d) +
                           sz(e / 32) * kQ4PanelBlockBytes;
      uint16_t h;
      std::memcpy(&h, blk + 4 * kQ8PanelRow + 2 * (j % kKeyPanel), 2);
      const uint8_t x = blk[sz(e % 32 / 8) * kQ8PanelRow + sz(4 * (j % kKeyPanel) + e % 4)];
      return kernels::fp16_to_fp32(h) * float(int(e % 8 < 4 ? x & 15 : x >> 4) - 8);
    }
    if (kv_type_quantized(t)) {  // whole blocks: the row is decoded as one
      std::vector<float> row(sz(d));
      kernels::dequantize_row(dt, base + sz(j) * kv_row_bytes(t, d), row.data(), d);
      return row[sz(e)];
    }
    const size_t eb = kv_row_bytes(t, 1);
    const int64_t in_panel =
        t == KvType::BF16 ? bf16_key_index(j % kKeyPanel, e, d) : e * kKeyPanel + j % kKeyPanel;
    const size_t at =
        j < s.panel_keys() ? sz(j / kKeyPanel * kKeyPanel * d + in_panel) : sz(j * d + e);
    float x;
    kernels::dequantize_row(dt, base + at * eb, &x, 1);
    return x;
  };
  HeadStore bulk(d, types), one(d, types);
  bulk.append(k.data(), v.data(), n);
  for (int64_t j = 0; j < n; ++j) one.append(k.data() + j * d, v.data() + j * d, 1);
  for (const HeadStore* s : {&bulk, &one}) {
    ASSERT_EQ(s->panel_keys(), 2 * kKeyPanel);
    for (int64_t j = 0; j < n; ++j)
      for (int64_t e = 0; e < d; ++e) ASSERT_EQ(raw(*s, j, e), stored(t, &k[sz(j * d)], d)[sz(e)]);
  }
  // Keep 20 of them: one panel of the kept keys, four rows.
  std::vector<int64_t> keep;
  for (int64_t j = 0; j < n; ++j)
    if (j % 3 != 1) keep.push_back(j);
  keep.resize(kKeyPanel + 4);
  bulk.keep(keep);
  ASSERT_EQ(bulk.panel_keys(), kKeyPanel);
  EXPECT_EQ(bulk.capacity_bytes(), bulk.bytes());
  for (size_t j = 0; j < keep.size(); ++j)
    for (int64_t e = 0; e < d; ++e)
      ASSERT_EQ(raw(bulk, int64_t(j), e), stored(t, &k[sz(keep[j] * d)], d)[sz(e)]);
}

TEST_P(HeadStoreTest, KeepRejectsUnsortedOrOutOfRangeIndices) {
  const int64_t d = dim_for(GetParam(), 8);
  HeadStore s(d, GetParam());
  const auto k = random_rows(5, d, 3);
  s.append(k.data(), k.data(), 5);
  const std::vector<int64_t> unsorted = {2, 1}, dup = {1, 1}, out = {0, 5};
  EXPECT_THROW(s.keep(unsorted), std::invalid_argument);
  EXPECT_THROW(s.keep(dup), std::invalid_argument);
  EXPECT_THROW(s.keep(out), std::invalid_argument);
  EXPECT_EQ(s.size(), 5);  // a rejected keep changes nothing
  s.keep({});
  EXPECT_EQ(s.size(), 0);
  EXPECT_EQ(s.bytes(), 0u);
}

// Appends up to a reserved size neither move the rows nor leave slack.
TEST(HeadStore, ReservedAppendsStayInPlaceAndExact) {
  const int64_t d = 16;
  HeadStore s(d, KvType::F16);
  s.reserve(100);
  const auto k = random_rows(100, d, 7), v = random_rows(100, d, 8);
  s.append(k.data(), v.data(), 1);
  const void* where = s.k_data();
  for (int64_t i = 1; i < 100; i += 33) s.append(k.data() + i * d, v.data() + i * d, 33);
  EXPECT_EQ(s.size(), 100);
  EXPECT_EQ(s.k_data(), where);
  EXPECT_EQ(s.capacity_bytes(), s.bytes());
  std::vector<float> row(sz(d));
  s.v_row(99, row.data());
  for (int64_t j = 0; j < d; ++j) ASSERT_EQ(row[sz(j)], as_stored(KvType::F16, v[sz(99 * d + j)]));
  EXPECT_THROW(s.reserve(-1), std::invalid_argument);
}

// A store past kHugeThreshold lives on a 2 MiB boundary (so that transparent huge pages can back
// it), grows, compresses and frees like a small one, and still holds exactly its rows.
TEST(HeadStore, LargeStoreIsHugePageAlignedAndExact) {
  const int64_t d = 128, n = 5000;  // 2.4 MiB of f32 keys
  HeadStore s(d, KvType::F32);
  const auto k = random_rows(n, d, 5), v = random_rows(n, d, 6);
  s.append(k.data(), v.data(), n);
  ASSERT_GE(s.bytes() / 2, kHugeThreshold);
  // K and V share one array: V's rows follow K's.
  EXPECT_EQ(reinterpret_cast<uintptr_t>(s.k_data()) % (uintptr_t(2) << 20), 0u);
  EXPECT_EQ(static_cast<const uint8_t*>(s.v_data()),
            static_cast<const uint8_t*>(s.k_data()) + s.bytes() / 2);
  EXPECT_EQ(s.capacity_bytes(), s.bytes());
  s.append(k.data(), v.data(), 1);  // grows by a quarter: a copy into a new mapping
  std::vector<float> row(sz(d));
  s.k_row(n, row.data());
  for (int64_t j = 0; j < d; ++j) ASSERT_EQ(row[sz(j)], k[sz(j)]);
  s.v_row(n - 1, row.data());
  for (int64_t j = 0; j < d; ++j) ASSERT_EQ(row[sz(j)], v[sz((n - 1) * d + j)]);
  std::vector<int64_t> keep;  // every third row, back below the threshold
  for (int64_t i = 0; i <= n; i += 3) keep.push_back(i);
  s.keep(keep);
  EXPECT_EQ(s.capacity_bytes(), s.bytes());
  s.k_row(int64_t(keep.size()) - 1, row.data());
  for (int64_t j = 0; j < d; ++j) ASSERT_EQ(row[sz(j)], k[sz(keep.back() * d + j)]);
  s.clear();
  EXPECT_EQ(s.capacity_bytes(), 0u);
}

// A store under kHugeThreshold (from the heap) starts on a cache line too, through regrowth and
// compaction: the kernels load 64-byte panel rows and AMX tiles, which a 16-byte-aligned array
// (malloc's for an mmap'd chunk) split across two lines each.
TEST(HeadStore, SmallStoreIsOnACacheLine) {
  const int64_t d = 128;
  for (KvType t : {KvType::F32, KvType::F16, KvType::BF16}) {
    HeadStore s(d, t);
    const auto k = random_rows(600, d, 7), v = random_rows(600, d, 8);
    auto aligned = [&](const char* when) {
      EXPECT_EQ(reinterpret_cast<uintptr_t>(s.k_data()) % kStoreAlign, 0u)
          << kv_type_name(t) << " " << when;
      EXPECT_EQ(reinterpret_cast<uintptr_t>(s.v_data()) % kStoreAlign, 0u)
          << kv_type_name(t) << " " << when;
    };
    for (int64_t n : {1, 17, 500}) {
      s.append(k.data(), v.data(), n);
      ASSERT_LT(s.capacity_bytes(), kHugeThreshold);
      aligned("after appends");
    }
    s.keep(std::vector<int64_t>{0, 5, 300});
    aligned("after keep");
  }
}

INSTANTIATE_TEST_SUITE_P(
    Types, HeadStoreTest,
    ::testing::Values(KvTypes(KvType::F32), KvTypes(KvType::F16), KvTypes(KvType::BF16),
                      KvTypes(KvType::Q8_0), KvTypes(KvType::Q4_0),
                      KvTypes(KvType::Q8_0, KvType::F16), KvTypes(KvType::BF16, KvType::Q4_0)),
    [](const auto& info) {
      return std::string(kv_type_name(info.param.k)) + "_" + kv_type_name(info.param.v);
    });

// The q8_0 / q4_0 rows of a store are llama.cpp's blocks, checked against the block definitions
// written out here: q8_0 d = amax / 127, q = round(x * (1 / d)); q4_0 d = max / -8 (max: the
// element of largest magnitude, signed), q = min(15, (int)(x * (1 / d) + 8.5)), element i in the
// low nibble of byte i and element i + 16 in its high nibble.
TEST(HeadStore, QuantizedRowsAreGgmlBlocks) {
  const int64_t d = 64;
  const auto k = random_rows(3, d, 21), v = random_rows(3, d, 22);
  HeadStore s(d, KvTypes(KvType::Q8_0, KvType::Q4_0));
  s.append(k.data(), v.data(), 3);
  ASSERT_EQ(s.k_row_bytes(), 2 * sizeof(kernels::BlockQ8_0));
  ASSERT_EQ(s.v_row_bytes(), 2 * sizeof(kernels::BlockQ4_0));
  for (int64_t r = 0; r < 3; ++r)
    for (int64_t b = 0; b < d / 32; ++b) {
      const float* x = &k[sz(r * d + b * 32)];
      float amax = 0;
      for (int i = 0; i < 32; ++i) amax = std::max(amax, std::fabs(x[i]));
      const float dk = amax / 127;
      const auto& kb = static_cast<const kernels::BlockQ8_0*>(s.k_data())[r * d / 32 + b];
      EXPECT_EQ(kb.d, kernels::fp32_to_fp16(dk));
      const float ik = dk != 0 ? 1 / dk : 0;
      for (int i = 0; i < 32; ++i) ASSERT_EQ(kb.qs[i], int8_t(std::round(x[i] * ik))) << i;

      const float* y = &v[sz(r * d + b * 32)];
      float mx = 0;
      for (int i = 0; i < 32; ++i)
        if (std::fabs(y[i]) > std::fabs(mx)) mx = y[i];
      const float dv = mx / -8;
      const auto& vb = static_cast<const kernels::BlockQ4_0*>(s.v_data())[r * d / 32 + b];
      EXPECT_EQ(vb.d, kernels::fp32_to_fp16(dv));
      const float iv = dv != 0 ? 1 / dv : 0;
      for (int i = 0; i < 16; ++i) {
        const int lo = std::min(15, int(y[i] * iv + 8.5f));
        const int hi = std::min(15, int(y[i + 16] * iv + 8.5f));
        ASSERT_EQ(vb.qs[i], uint8_t(lo | hi << 4)) << i;
      }
    }
}

// Quantized types refuse head sizes that are not whole blocks, naming the option and the size.
TEST(HeadStore, QuantizedTypesNeedWholeBlocks) {
  try {
    HeadStore s(40, KvTypes(KvType::F16, KvType::Q8_0));
    FAIL() << "accepted head_dim 40 for q8_0 values";
  } catch (const std::invalid_argument& e) {
    EXPECT_NE(std::string(e.what()).find("--cache-type-v"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("40"), std::string::npos) << e.what();
  }
  EXPECT_NO_THROW(HeadStore(40, KvTypes(KvType::BF16, KvType::F16)));
  EXPECT_EQ(parse_kv_type("q4_0", "-ctk"), KvType::Q4_0);
  EXPECT_THROW(parse_kv_type("q5_1", "-ctk"), std::invalid_argument);
}

TEST(SequenceCache, BytesAreTheSumOfRaggedHeads) {
  SequenceCache c(3, 2, 16, KvType::F16);
  const auto k = random_rows(100, 16, 4);
  size_t expect = 0;
  for (int l = 0; l < 3; ++l)
    for (int h = 0; h < 2; ++h) {
      const int64_t n = 7 + 13 * l + 29 * h;  // every head its own length
      c.head(l, h).append(k.data(), k.data(), n);
      expect += sz(n) * 2 * 16 * 2;
    }
  EXPECT_EQ(c.bytes(), expect);
  EXPECT_EQ(c.head(2, 1).size(), 7 + 26 + 29);
  c.clear();
  EXPECT_EQ(c.bytes(), 0u);
  EXPECT_EQ(c.n_past, 0);
}

}  // namespace
}  // namespace fairkv::kv
