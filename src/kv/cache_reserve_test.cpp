// Stores on reserved address ranges (HeadStore::reserve_virtual): the same bytes as an ordinary
// store fed the same rows, rows that never move, and memory that follows the rows.
#include <sys/mman.h>

#include <gtest/gtest.h>

#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "kv/cache.h"

namespace fairkv::kv {
namespace {

size_t sz(int64_t x) {
  return static_cast<size_t>(x);
}

std::vector<float> random_rows(int64_t n, int64_t d, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> dist(0.0f, 1.0f);
  std::vector<float> x(sz(n * d));
  for (float& v : x) v = dist(rng);
  return x;
}

size_t pages(size_t n) {
  const size_t pg = store_page_size();
  return (n + pg - 1) / pg * pg;
}

// The most a reserved store may hold: each region's rows rounded up to pages, plus a page each
// (V's region need not start on a page).
size_t committed_bound(const HeadStore& s) {
  return pages(sz(s.size()) * s.k_row_bytes()) + pages(sz(s.size()) * s.v_row_bytes()) +
         2 * store_page_size();
}

// Same size, same raw K and V bytes, same rows read back.
void expect_same(const HeadStore& got, const HeadStore& want, const std::string& what) {
  ASSERT_EQ(got.size(), want.size()) << what;
  ASSERT_EQ(got.panel_keys(), want.panel_keys()) << what;
  if (want.size() == 0) return;
  ASSERT_EQ(std::memcmp(got.k_data(), want.k_data(), sz(want.size()) * want.k_row_bytes()), 0)
      << what << ": K bytes";
  ASSERT_EQ(std::memcmp(got.v_data(), want.v_data(), sz(want.size()) * want.v_row_bytes()), 0)
      << what << ": V bytes";
  std::vector<float> a(sz(want.head_dim())), b(a.size());
  for (int64_t i = 0; i < want.size(); ++i) {
    got.k_row(i, a.data());
    want.k_row(i, b.data());
    ASSERT_EQ(a, b) << what << ": k_row " << i;
    got.v_row(i, a.data());
    want.v_row(i, b.data());
    ASSERT_EQ(a, b) << what << ": v_row " << i;
  }
}

struct Case {
  KvTypes type;
  int64_t head_dim;
};

class ReservedStore : public ::testing::TestWithParam<Case> {};

// A prefill, then single-row decode appends: the bytes match an ordinary store's after every
// append, K never moves, and the memory committed grows with the rows and stays within bounds.
TEST_P(ReservedStore, DecodeAppendsMatchAnOrdinaryStoreInPlace) {
  const auto [t, d] = GetParam();
  const int64_t prefill = 37, n = 37 + 300;
  const auto k = random_rows(n, d, 1), v = random_rows(n, d, 2);
  HeadStore plain(d, t), res(d, t);
  res.reserve_virtual(n);
  EXPECT_EQ(res.reserved_rows(), n);
  EXPECT_EQ(res.committed_bytes(), 0u);
  EXPECT_GE(res.capacity_bytes(), sz(n) * (res.k_row_bytes() + res.v_row_bytes()));
  plain.append(k.data(), v.data(), prefill);
  res.append(k.data(), v.data(), prefill);
  const void* k_at = res.k_data();
  const void* v_at = res.v_data();
  // V's region starts max_rows rows after K's, as an ordinary capacity of max_rows puts it.
  EXPECT_EQ(static_cast<const uint8_t*>(v_at),
            static_cast<const uint8_t*>(k_at) + sz(n) * res.k_row_bytes());
  expect_same(res, plain, "prefill");
  size_t committed = res.committed_bytes();
  for (int64_t i = prefill; i < n; ++i) {
    plain.append(k.data() + i * d, v.data() + i * d, 1);
    res.append(k.data() + i * d, v.data() + i * d, 1);
    ASSERT_EQ(res.k_data(), k_at);
    ASSERT_EQ(res.v_data(), v_at);
    ASSERT_GE(res.committed_bytes(), committed);
    committed = res.committed_bytes();
    ASSERT_GE(committed, res.bytes());
    ASSERT_LE(committed, committed_bound(res)) << "after " << res.size() << " rows";
    if (i % 17 == 0 || i + 1 == n) expect_same(res, plain, "row " + std::to_string(i));
  }
  EXPECT_EQ(plain.committed_bytes(), plain.capacity_bytes());
}

// keep() compacts in place, gives back the pages left empty, and appends continue after it.
TEST_P(ReservedStore, KeepCompactsInPlaceAndShrinksCommittedMemory) {
  const auto [t, d] = GetParam();
  const int64_t n = 1500;
  const auto k = random_rows(n + 40, d, 3), v = random_rows(n + 40, d, 4);
  HeadStore plain(d, t), res(d, t);
  res.reserve_virtual(2 * n);
  plain.append(k.data(), v.data(), n);
  res.append(k.data(), v.data(), n);
  const void* k_at = res.k_data();
  const size_t before = res.committed_bytes();
  // Irregular gaps, runs of kept rows, the last row: every kind of overlap of source and target.
  std::vector<int64_t> keep;
  for (int64_t i = 0; i < n; ++i)
    if (i % 7 == 0 || (i >= 100 && i < 140) || i % 13 == 5 || i == n - 1) keep.push_back(i);
  plain.keep(keep);
  res.keep(keep);
  EXPECT_EQ(res.k_data(), k_at);
  expect_same(res, plain, "after keep");
  EXPECT_LT(res.committed_bytes(), before);
  EXPECT_LE(res.committed_bytes(), committed_bound(res));
  // The released pages really are gone: none of K's pages past the kept rows is resident.
  const size_t k_end = pages(sz(res.size()) * res.k_row_bytes());
  const size_t k_was = pages(sz(n) * res.k_row_bytes());
  std::vector<unsigned char> resident((k_was - k_end) / store_page_size() + 1);
  auto* at = static_cast<uint8_t*>(const_cast<void*>(res.k_data())) + k_end;
  ASSERT_EQ(mincore(at, k_was - k_end, resident.data()), 0);
  for (size_t p = 0; p < (k_was - k_end) / store_page_size(); ++p)
    ASSERT_EQ(resident[p] & 1, 0) << "page " << p << " past the kept keys is still resident";
  for (int64_t i = n; i < n + 40; ++i) {
    plain.append(k.data() + i * d, v.data() + i * d, 1);
    res.append(k.data() + i * d, v.data() + i * d, 1);
  }
  expect_same(res, plain, "appends after keep");
  res.keep({});
  EXPECT_EQ(res.size(), 0);
  EXPECT_EQ(res.committed_bytes(), 0u);
}

// reserve_virtual on a store that holds rows moves them once; the limit then holds.
TEST_P(ReservedStore, ReservingAFullStoreMovesItOnceAndEnforcesTheLimit) {
  const auto [t, d] = GetParam();
  const auto k = random_rows(60, d, 5), v = random_rows(60, d, 6);
  HeadStore plain(d, t), res(d, t);
  plain.append(k.data(), v.data(), 40);
  res.append(k.data(), v.data(), 40);
  EXPECT_THROW(res.reserve_virtual(39), std::length_error);
  EXPECT_EQ(res.reserved_rows(), 0);
  res.reserve_virtual(50);
  expect_same(res, plain, "moved");
  for (int64_t i = 40; i < 50; ++i) {
    plain.append(k.data() + i * d, v.data() + i * d, 1);
    res.append(k.data() + i * d, v.data() + i * d, 1);
  }
  expect_same(res, plain, "grown to the limit");
  try {
    res.append(k.data(), v.data(), 1);
    FAIL() << "an append past the limit was accepted";
  } catch (const std::length_error& e) {
    EXPECT_NE(std::string(e.what()).find("limit of 50"), std::string::npos) << e.what();
  }
  EXPECT_THROW(res.reserve(51), std::length_error);
  EXPECT_EQ(res.size(), 50);  // a rejected append changes nothing
  expect_same(res, plain, "after the rejected append");
  // A copy gets its own reservation with the same rows and limit.
  HeadStore copy = res;
  EXPECT_EQ(copy.reserved_rows(), 50);
  EXPECT_NE(copy.k_data(), res.k_data());
  expect_same(copy, plain, "copy");
  res.clear();
  EXPECT_EQ(res.reserved_rows(), 0);
  EXPECT_EQ(res.committed_bytes(), 0u);
  EXPECT_EQ(res.capacity_bytes(), 0u);
  expect_same(copy, plain, "copy after the original's clear");
  EXPECT_THROW(res.reserve_virtual(0), std::invalid_argument);
}

INSTANTIATE_TEST_SUITE_P(Shapes, ReservedStore,
                         ::testing::Values(Case{KvType::F32, 24}, Case{KvType::F16, 24},
                                           Case{KvType::F32, 128}, Case{KvType::F16, 128},
                                           Case{KvType::Q8_0, 128}, Case{KvType::Q4_0, 64},
                                           Case{{KvType::Q8_0, KvType::F16}, 96},
                                           Case{{KvType::BF16, KvType::Q4_0}, 32}),
                         [](const auto& info) {
                           return std::string(kv_type_name(info.param.type.k)) + "_" +
                                  kv_type_name(info.param.type.v) + "_d" +
                                  std::to_string(info.param.head_dim);
                         });

// A reservation past kHugeThreshold starts on a 2 MiB boundary, so committed 2 MiB extents can
// be huge pages.
TEST(ReservedStore, LargeReservationIsHugePageAligned) {
  HeadStore s(128, KvType::F16);
  s.reserve_virtual(32768);  // 8 MiB per region
  EXPECT_EQ(reinterpret_cast<uintptr_t>(s.k_data()) % (uintptr_t(2) << 20), 0u);
  const auto k = random_rows(5000, 128, 7);
  s.append(k.data(), k.data(), 5000);
  EXPECT_LE(s.committed_bytes(), committed_bound(s));
}

TEST(SequenceCache, ReserveVirtualCoversEveryStoreAndCommittedBytesSumThem) {
  SequenceCache c(2, 3, 16, KvType::F16);
  const auto k = random_rows(100, 16, 8);
  c.head(0, 0).append(k.data(), k.data(), 10);
  c.reserve_virtual(4096);
  size_t sum = 0;
  for (int l = 0; l < 2; ++l)
    for (int h = 0; h < 3; ++h) {
      c.head(l, h).append(k.data(), k.data(), 5 + 7 * l + h);
      EXPECT_EQ(c.head(l, h).reserved_rows(), 4096);
      sum += c.head(l, h).committed_bytes();
    }
  EXPECT_EQ(c.committed_bytes(), sum);
  EXPECT_GE(c.committed_bytes(), c.bytes());
  EXPECT_EQ(c.head(0, 0).size(), 15);
  c.clear();
  EXPECT_EQ(c.committed_bytes(), 0u);
}

}  // namespace
}  // namespace fairkv::kv
