#include "kv/cache.h"

#include <gtest/gtest.h>

#include <random>
#include <vector>

#include "kernels/types.h"

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

class HeadStoreTest : public ::testing::TestWithParam<KvType> {};

TEST_P(HeadStoreTest, AppendThenKeepHoldsExactlyTheChosenRows) {
  const KvType t = GetParam();
  const int64_t d = 24;
  HeadStore s(d, t);
  // A prefill of 37 rows, then 11 decode appends of one row.
  const auto k = random_rows(48, d, 1), v = random_rows(48, d, 2);
  s.append(k.data(), v.data(), 37);
  EXPECT_EQ(s.capacity_bytes(), s.bytes());  // a prefill allocates exactly
  for (int64_t i = 37; i < 48; ++i) s.append(k.data() + i * d, v.data() + i * d, 1);
  ASSERT_EQ(s.size(), 48);
  EXPECT_EQ(s.bytes(), sz(48 * 2 * d) * kv_type_bytes(t));
  // Decode growth is geometric: bounded overhead, never a copy per token.
  EXPECT_LE(s.capacity_bytes(), s.bytes() * 5 / 4 + 2 * 16 * sz(d) * kv_type_bytes(t));

  std::vector<float> row(static_cast<size_t>(d));
  for (int64_t i = 0; i < 48; ++i) {
    s.k_row(i, row.data());
    for (int64_t j = 0; j < d; ++j) ASSERT_EQ(row[sz(j)], as_stored(t, k[sz(i * d + j)]));
    s.v_row(i, row.data());
    for (int64_t j = 0; j < d; ++j) ASSERT_EQ(row[sz(j)], as_stored(t, v[sz(i * d + j)]));
  }

  const std::vector<int64_t> keep = {0, 3, 4, 17, 36, 40, 47};
  s.keep(keep);
  ASSERT_EQ(s.size(), int64_t(keep.size()));
  // Memory is exact after compression: no slack, no padding.
  EXPECT_EQ(s.bytes(), keep.size() * 2 * sz(d) * kv_type_bytes(t));
  EXPECT_EQ(s.capacity_bytes(), s.bytes());
  for (size_t r = 0; r < keep.size(); ++r) {
    s.k_row(int64_t(r), row.data());
    for (int64_t j = 0; j < d; ++j) ASSERT_EQ(row[sz(j)], as_stored(t, k[sz(keep[r] * d + j)]));
    s.v_row(int64_t(r), row.data());
    for (int64_t j = 0; j < d; ++j) ASSERT_EQ(row[sz(j)], as_stored(t, v[sz(keep[r] * d + j)]));
  }
  // Fewer keys than a panel stay row-major at the documented stride.
  const size_t stride = sz(d) * kv_type_bytes(t);
  std::vector<float> raw(static_cast<size_t>(d));
  kernels::dequantize_row(t == KvType::F16 ? kernels::DType::F16 : kernels::DType::F32,
                          static_cast<const uint8_t*>(s.k_data()) + 3 * stride, raw.data(), d);
  s.k_row(3, row.data());
  EXPECT_EQ(raw, row);

  // Appending after a keep continues after the kept rows.
  s.append(k.data(), v.data(), 1);
  ASSERT_EQ(s.size(), int64_t(keep.size()) + 1);
  s.k_row(s.size() - 1, row.data());
  EXPECT_EQ(row[0], as_stored(t, k[0]));

  s.clear();
  EXPECT_EQ(s.size(), 0);
  EXPECT_EQ(s.capacity_bytes(), 0u);
}

// Keys: full panels of kKeyPanel keys dimension-major, the rest row-major after them, sealed as
// keys arrive one at a time or many at once, and rebuilt by keep().
TEST_P(HeadStoreTest, KeysAreInPanelsThenRows) {
  const KvType t = GetParam();
  const int64_t d = 24, n = 2 * kKeyPanel + 5;
  const auto k = random_rows(n, d, 4), v = random_rows(n, d, 5);
  const auto dt = t == KvType::F16 ? kernels::DType::F16 : kernels::DType::F32;
  const size_t eb = kv_type_bytes(t);
  // The element (key j, dimension e) of the raw K array under the documented layout.
  auto raw = [&](const HeadStore& s, int64_t j, int64_t e) {
    const auto* base = static_cast<const uint8_t*>(s.k_data());
    const size_t at = j < s.panel_keys()
                          ? sz(j / kKeyPanel * kKeyPanel * d + e * kKeyPanel + j % kKeyPanel)
                          : sz(j * d + e);
    float x;
    kernels::dequantize_row(dt, base + at * eb, &x, 1);
    return x;
  };
  HeadStore bulk(d, t), one(d, t);
  bulk.append(k.data(), v.data(), n);
  for (int64_t j = 0; j < n; ++j) one.append(k.data() + j * d, v.data() + j * d, 1);
  for (const HeadStore* s : {&bulk, &one}) {
    ASSERT_EQ(s->panel_keys(), 2 * kKeyPanel);
    for (int64_t j = 0; j < n; ++j)
      for (int64_t e = 0; e < d; ++e) ASSERT_EQ(raw(*s, j, e), as_stored(t, k[sz(j * d + e)]));
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
      ASSERT_EQ(raw(bulk, int64_t(j), e), as_stored(t, k[sz(keep[j] * d + e)]));
}

TEST_P(HeadStoreTest, KeepRejectsUnsortedOrOutOfRangeIndices) {
  HeadStore s(8, GetParam());
  const auto k = random_rows(5, 8, 3);
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

INSTANTIATE_TEST_SUITE_P(Types, HeadStoreTest, ::testing::Values(KvType::F32, KvType::F16),
                         [](const auto& info) { return std::string(kv_type_name(info.param)); });

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
