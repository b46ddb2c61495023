// A bf16 store's layout (cache.h: keys in dimension pairs, values in key pairs, per panel of
// kKeyPanel tokens, the tail row-major) against a plain row-major reference kept beside it,
// through every way rows arrive and leave: appends one by one and in bulk, keep() (compacting a
// copy, or in place on a reserved range), copies, swapping out and back in.
#include <gtest/gtest.h>

#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "kernels/types.h"
#include "kv/cache.h"
#include "kv/cache_swap.h"

namespace fairkv::kv {
namespace {

size_t sz(int64_t x) {
  return static_cast<size_t>(x);
}

// The plain reference: the rows appended, as bf16 bits, row-major.
struct Reference {
  int64_t d;
  std::vector<uint16_t> k, v;
  int64_t size() const { return int64_t(k.size()) / d; }
  void append(const float* x, const float* y, int64_t n) {
    for (int64_t i = 0; i < n * d; ++i) {
      k.push_back(kernels::fp32_to_bf16(x[i]));
      v.push_back(kernels::fp32_to_bf16(y[i]));
    }
  }
  void keep(const std::vector<int64_t>& idx) {
    std::vector<uint16_t> k2, v2;
    for (int64_t i : idx) {
      k2.insert(k2.end(), k.begin() + i * d, k.begin() + (i + 1) * d);
      v2.insert(v2.end(), v.begin() + i * d, v.begin() + (i + 1) * d);
    }
    k.swap(k2);
    v.swap(v2);
  }
};

// Every element of s where cache.h says it lies, and through k_row / v_row, equals the reference.
void expect_layout(const HeadStore& s, const Reference& ref, const std::string& what) {
  const int64_t d = ref.d, n = ref.size();
  ASSERT_EQ(s.size(), n) << what;
  ASSERT_EQ(s.panel_keys(), n / kKeyPanel * kKeyPanel) << what;
  ASSERT_EQ(s.panel_values(), n / kValuePanel * kValuePanel) << what;
  const auto* K = static_cast<const uint16_t*>(s.k_data());
  const auto* V = static_cast<const uint16_t*>(s.v_data());
  std::vector<float> row(sz(d));
  for (int64_t j = 0; j < n; ++j) {
    const int64_t pk = j / kKeyPanel * kKeyPanel * d, tk = j % kKeyPanel;
    const int64_t pv = j / kValuePanel * kValuePanel * d, tv = j % kValuePanel;
    for (int64_t e = 0; e < d; ++e) {
      const uint16_t want_k = ref.k[sz(j * d + e)], want_v = ref.v[sz(j * d + e)];
      ASSERT_EQ(K[j < s.panel_keys() ? pk + bf16_key_index(tk, e, d) : j * d + e], want_k)
          << what << " key " << j << " dim " << e;
      ASSERT_EQ(V[j < s.panel_values() ? pv + bf16_value_index(tv, e, d) : j * d + e], want_v)
          << what << " value " << j << " dim " << e;
    }
    s.k_row(j, row.data());
    for (int64_t e = 0; e < d; ++e)
      ASSERT_EQ(row[sz(e)], kernels::bf16_to_fp32(ref.k[sz(j * d + e)])) << what << " k_row " << j;
    s.v_row(j, row.data());
    for (int64_t e = 0; e < d; ++e)
      ASSERT_EQ(row[sz(e)], kernels::bf16_to_fp32(ref.v[sz(j * d + e)])) << what << " v_row " << j;
  }
}

// The panel indices cover a panel exactly once (no two elements share a place).
TEST(Bf16Layout, IndicesArePermutationsOfAPanel) {
  for (int64_t d : {1, 2, 7, 24, 33, 128}) {
    std::vector<int> hits_k(sz(kKeyPanel * d)), hits_v(sz(kValuePanel * d));
    for (int64_t e = 0; e < d; ++e) {
      for (int64_t t = 0; t < kKeyPanel; ++t) ++hits_k.at(sz(bf16_key_index(t, e, d)));
      for (int64_t t = 0; t < kValuePanel; ++t) ++hits_v.at(sz(bf16_value_index(t, e, d)));
    }
    for (size_t i = 0; i < hits_k.size(); ++i) ASSERT_EQ(hits_k[i], 1) << "d " << d << " key " << i;
    for (size_t i = 0; i < hits_v.size(); ++i)
      ASSERT_EQ(hits_v[i], 1) << "d " << d << " value " << i;
  }
  // The tile rows: a 64-byte key row holds dimensions 2m, 2m + 1 of the 16 keys side by side; a
  // value tile (16 columns, 1 KiB) holds in its row m values 2m, 2m + 1 side by side per column.
  EXPECT_EQ(bf16_key_index(3, 10, 64), 5 * 32 + 2 * 3);
  EXPECT_EQ(bf16_key_index(3, 11, 64), 5 * 32 + 2 * 3 + 1);
  EXPECT_EQ(bf16_value_index(5, 9, 64), 2 * 32 + 2 * 9 + 1);
  EXPECT_EQ(bf16_value_index(4, 20, 64), 512 + 2 * 32 + 2 * 4);
  EXPECT_EQ(bf16_value_index(31, 23, 24), 512 + 15 * 16 + 2 * 7 + 1);  // an 8-column last tile
}

class Bf16Store : public ::testing::TestWithParam<std::tuple<int64_t, bool>> {};

// A random history of appends (one row, a few, a prefill's many) and keeps, on an ordinary and a
// reserved store at once, checked against the reference after every step; a copy, and a swap out
// and back in, hold the same.
TEST_P(Bf16Store, HistoryMatchesRowMajorReference) {
  const auto [d, reserved] = GetParam();
  std::mt19937 rng(uint32_t(d * 2 + reserved));
  std::normal_distribution<float> dist;
  HeadStore s(d, KvType::BF16);
  if (reserved) s.reserve_virtual(2000);
  Reference ref{d, {}, {}};
  for (int step = 0; step < 60; ++step) {
    const std::string what = "d " + std::to_string(d) + " step " + std::to_string(step);
    if (step % 7 == 6 && s.size() > 0) {
      std::vector<int64_t> idx;
      for (int64_t i = 0; i < s.size(); ++i)
        if (rng() % 3 != 0) idx.push_back(i);
      s.keep(idx);
      ref.keep(idx);
    } else {
      const int64_t n = step % 11 == 3 ? 40 + int64_t(rng() % 50) : 1 + int64_t(rng() % 3) / 2;
      std::vector<float> k(sz(n * d)), v(k.size());
      for (auto& x : k) x = dist(rng);
      for (auto& x : v) x = dist(rng);
      s.append(k.data(), v.data(), n);
      ref.append(k.data(), v.data(), n);
    }
    expect_layout(s, ref, what);
    if (HasFatalFailure()) return;
  }
  const HeadStore copy = s;
  expect_layout(copy, ref, "copy");
  SequenceCache c(1, 1, d, KvType::BF16);
  c.head(0, 0) = s;
  SwappedCache out = swap_out(c);
  EXPECT_EQ(c.head(0, 0).size(), 0);
  swap_in(std::move(out), c);
  expect_layout(c.head(0, 0), ref, "swapped back");
  EXPECT_EQ(c.head(0, 0).reserved_rows(), s.reserved_rows());
}

INSTANTIATE_TEST_SUITE_P(Shapes, Bf16Store,
                         ::testing::Combine(::testing::Values(int64_t(7), int64_t(24), int64_t(64),
                                                              int64_t(128)),
                                            ::testing::Bool()),
                         [](const auto& info) {
                           return "d" + std::to_string(std::get<0>(info.param)) +
                                  (std::get<1>(info.param) ? "_reserved" : "");
                         });

// Keys and values of other types beside bf16: each side keeps its own layout (f16 keys in
// dimension-major panels, q8_0 keys row-major; bf16 values in pairs).
TEST(Bf16Store, MixedTypesKeepEachSidesLayout) {
  const int64_t d = 64, n = 40;
  std::mt19937 rng(5);
  std::normal_distribution<float> dist;
  std::vector<float> k(sz(n * d)), v(k.size());
  for (auto& x : k) x = dist(rng);
  for (auto& x : v) x = dist(rng);
  for (KvType kt : {KvType::F16, KvType::Q8_0}) {
    HeadStore s(d, KvTypes(kt, KvType::BF16));
    for (int64_t i = 0; i < n; ++i) s.append(&k[sz(i * d)], &v[sz(i * d)], 1);
    ASSERT_EQ(s.panel_values(), 32);
    const auto* V = static_cast<const uint16_t*>(s.v_data());
    std::vector<float> row(sz(d));
    for (int64_t j = 0; j < n; ++j) {
      s.v_row(j, row.data());
      for (int64_t e = 0; e < d; ++e) {
        const uint16_t want = kernels::fp32_to_bf16(v[sz(j * d + e)]);
        const int64_t at = j < 32 ? bf16_value_index(j, e, d) : j * d + e;
        ASSERT_EQ(V[at], want) << kv_type_name(kt) << " value " << j << " dim " << e;
        ASSERT_EQ(row[sz(e)], kernels::bf16_to_fp32(want));
      }
      s.k_row(j, row.data());
      std::vector<float> want(sz(d));
      std::vector<uint8_t> b(kv_row_bytes(kt, d));
      kernels::quantize_row(kv_dtype(kt), &k[sz(j * d)], b.data(), d);
      kernels::dequantize_row(kv_dtype(kt), b.data(), want.data(), d);
      ASSERT_EQ(row, want) << kv_type_name(kt) << " key " << j;
    }
  }
}

}  // namespace
}  // namespace fairkv::kv
