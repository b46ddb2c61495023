// q8_0 and q4_0 keys in panels (cache.h, kQ8PanelBlockBytes, kQ4PanelBlockBytes): every way rows
// reach a store or leave it gives back, through k_raw_row() and k_row(), exactly the ggml blocks a
// plain row-major array of the same keys holds, and the panel bytes follow the documented layout.
#include <gtest/gtest.h>

#include <cstdint>
#include <cstring>
#include <random>
#include <string>
#include <tuple>
#include <vector>

#include "kernels/types.h"
#include "kv/cache.h"
#include "kv/cache_swap.h"

namespace fairkv::kv {
namespace {

size_t sz(int64_t x) {
  return static_cast<size_t>(x);
}

// The reference: keys quantized row by row into ggml's blocks, row-major.
struct RowRef {
  KvType t;
  int64_t d;
  std::vector<float> k, v;
  std::vector<uint8_t> rows;  // n x row bytes
  size_t kr() const { return kv_row_bytes(t, d); }
  RowRef(KvType type, int64_t n, int64_t dim, uint32_t seed) : t(type), d(dim) {
    std::mt19937 rng(seed);
    std::normal_distribution<float> z(0.0f, 1.0f);
    k.resize(sz(n * d));
    v.resize(k.size());
    for (auto& x : k) x = z(rng);
    for (auto& x : v) x = z(rng);
    rows.resize(sz(n) * kr());
    for (int64_t i = 0; i < n; ++i)
      kernels::quantize_row(kv_dtype(t), &k[sz(i * d)], &rows[sz(i) * kr()], d);
  }
};

// Store s holds the reference's keys at the indices `which`, in order.
void expect_keys(const HeadStore& s, const RowRef& ref, const std::vector<int64_t>& which,
                 const std::string& what) {
  ASSERT_EQ(s.size(), int64_t(which.size())) << what;
  ASSERT_EQ(s.panel_keys(), s.size() / kKeyPanel * kKeyPanel) << what;
  const size_t kr = ref.kr();
  std::vector<uint8_t> got(kr);
  std::vector<float> row(sz(ref.d)), want(sz(ref.d));
  for (size_t j = 0; j < which.size(); ++j) {
    const uint8_t* r = &ref.rows[sz(which[j]) * kr];
    s.k_raw_row(int64_t(j), got.data());
    ASSERT_EQ(std::memcmp(got.data(), r, kr), 0) << what << " key " << j;
    s.k_row(int64_t(j), row.data());
    kernels::dequantize_row(kv_dtype(ref.t), r, want.data(), ref.d);
    ASSERT_EQ(row, want) << what << " key " << j;
  }
}

std::vector<int64_t> iota(int64_t n) {
  std::vector<int64_t> x(sz(n));
  for (int64_t i = 0; i < n; ++i) x[sz(i)] = i;
  return x;
}

class QuantPanels : public ::testing::TestWithParam<std::tuple<KvType, int64_t>> {};

TEST_P(QuantPanels, AppendsKeepCopiesAndSwapsMatchRowMajorBlocks) {
  const auto [t, d] = GetParam();
  const int64_t n = 3 * kKeyPanel + 7;
  const RowRef ref(t, n, d, uint32_t(d));
  // One by one across panel boundaries, in bulk, in uneven chunks, and into a reserved range.
  HeadStore one(d, t), bulk(d, t), chunks(d, t), reserved(d, t);
  reserved.reserve_virtual(n + 9);
  bulk.append(ref.k.data(), ref.v.data(), n);
  for (int64_t i = 0; i < n; ++i) {
    one.append(&ref.k[sz(i * d)], &ref.v[sz(i * d)], 1);
    reserved.append(&ref.k[sz(i * d)], &ref.v[sz(i * d)], 1);
    if (i == kKeyPanel - 1 || i == kKeyPanel || i == 2 * kKeyPanel + 3) {
      expect_keys(one, ref, iota(i + 1), "one by one at " + std::to_string(i));
      expect_keys(reserved, ref, iota(i + 1), "reserved at " + std::to_string(i));
    }
  }
  for (int64_t i = 0, c = 5; i < n; i += c, c = c * 3 % 23 + 1)
    chunks.append(&ref.k[sz(i * d)], &ref.v[sz(i * d)], std::min(c, n - i));
  for (const auto& [s, what] : {std::pair{&one, "one"}, std::pair{&bulk, "bulk"},
                                std::pair{&chunks, "chunks"}, std::pair{&reserved, "reserved"}})
    expect_keys(*s, ref, iota(n), what);
  // Bulk and one-by-one stores hold the same bytes, sealed the same way.
  ASSERT_EQ(std::memcmp(one.k_data(), bulk.k_data(), sz(n) * ref.kr()), 0);
  // Compaction: keys leave panels for earlier panels and for the row-major tail.
  std::vector<int64_t> kept;
  for (int64_t i = 0; i < n; ++i)
    if (i % 5 != 2 && i != 17) kept.push_back(i);
  HeadStore copy(reserved);
  expect_keys(copy, ref, iota(n), "copy of reserved");
  bulk.keep(kept);
  reserved.keep(kept);
  expect_keys(bulk, ref, kept, "keep");
  expect_keys(reserved, ref, kept, "keep in place");
  // Appends after a compaction seal the next panel from the right keys.
  const int64_t more = kKeyPanel;
  const RowRef ext(t, n + more, d, uint32_t(d));  // same seed: same first n keys
  for (int64_t i = n; i < n + more; ++i) {
    bulk.append(&ext.k[sz(i * d)], &ext.v[sz(i * d)], 1);
    kept.push_back(i);
  }
  expect_keys(bulk, ext, kept, "appends after keep");
  // Swap out and in (bytes as stored): the panels come back as they were.
  SequenceCache cache(1, 1, d, t);
  cache.head(0, 0) = bulk;
  SwappedCache out = swap_out(cache);
  swap_in(std::move(out), cache);
  expect_keys(cache.head(0, 0), ext, kept, "swapped back in");
}

// The documented bytes: block b of panel p at p * 16 * row bytes + b * block bytes. q8_0: row g
// of it holds dimensions 4g..4g+3 (key t at byte 4t) with the sign bit flipped, then 16 scales;
// q4_0: row g holds dimensions 8g..8g+7, key t's byte i dimension 8g + i in its low nibble and
// 8g + 4 + i in its high one, then 16 scales. Tail keys are ggml's blocks in place.
TEST_P(QuantPanels, PanelBytesFollowTheDocumentedLayout) {
  const auto [t, d] = GetParam();
  const int64_t n = 2 * kKeyPanel + 3;
  const RowRef ref(t, n, d, 7);
  HeadStore s(d, t);
  s.append(ref.k.data(), ref.v.data(), n);
  const auto* base = static_cast<const uint8_t*>(s.k_data());
  const size_t kr = ref.kr(), bb = kr / sz(d / 32);
  const bool q8 = t == KvType::Q8_0;
  for (int64_t i = 0; i < n; ++i)
    for (int64_t b = 0; b < d / 32; ++b) {
      const uint8_t* blk = &ref.rows[sz(i) * kr + sz(b) * bb];
      if (i >= s.panel_keys()) {
        ASSERT_EQ(std::memcmp(base + sz(i) * kr + sz(b) * bb, blk, bb), 0);
        continue;
      }
      const uint8_t* pb = base + sz(i / kKeyPanel * kKeyPanel) * kr +
                          sz(b) * (q8 ? kQ8PanelBlockBytes : kQ4PanelBlockBytes);
      const int64_t kt = i % kKeyPanel;
      ASSERT_EQ(std::memcmp(pb + (q8 ? 512 : 256) + 2 * kt, blk, 2), 0)
          << "scale of key " << i << " block " << b;
      for (int e = 0; e < 32; ++e) {
        if (q8) {
          ASSERT_EQ(pb[(e / 4) * 64 + 4 * kt + e % 4], blk[2 + e] ^ 0x80)
              << "key " << i << " block " << b << " element " << e;
        } else {
          const int want = e < 16 ? blk[2 + e] & 15 : blk[2 + e - 16] >> 4;
          const uint8_t x = pb[(e / 8) * 64 + 4 * kt + e % 4];
          ASSERT_EQ(e % 8 < 4 ? x & 15 : x >> 4, want)
              << "key " << i << " block " << b << " element " << e;
        }
      }
    }
}

INSTANTIATE_TEST_SUITE_P(TypesAndHeadSizes, QuantPanels,
                         ::testing::Combine(::testing::Values(KvType::Q8_0, KvType::Q4_0),
                                            ::testing::Values(32, 64, 96, 128, 256)),
                         [](const auto& info) {
                           return std::string(kv_type_name(std::get<0>(info.param))) + "_d" +
                                  std::to_string(std::get<1>(info.param));
                         });

}  // namespace
}  // namespace fairkv::kv
