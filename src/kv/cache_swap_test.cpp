#include "kv/cache_swap.h"

#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <random>
#include <string>
#include <system_error>
#include <vector>

#include <unistd.h>

#include "kv/attention.h"

namespace fairkv::kv {
namespace {

namespace fs = std::filesystem;

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

constexpr int kLayers = 3, kHeads = 2;
constexpr int64_t kDim = 32;  // a whole q8_0 / q4_0 block

// A cache as serving leaves one: ragged heads, a prefill then decode appends, one compressed
// head, one head not served (empty); optionally on reserved address ranges.
SequenceCache make_cache(KvTypes t, bool reserved, uint32_t seed) {
  SequenceCache c(kLayers, kHeads, kDim, t);
  if (reserved) c.reserve_virtual(400);
  const auto k = random_rows(300, kDim, seed), v = random_rows(300, kDim, seed + 1);
  for (int l = 0; l < kLayers; ++l)
    for (int h = 0; h < kHeads; ++h) {
      if (l == 1 && h == 1) continue;
      HeadStore& s = c.head(l, h);
      const int64_t prefill = 50 + 37 * l + 11 * h;
      s.append(k.data(), v.data(), prefill);
      for (int64_t i = prefill; i < prefill + 20 + 3 * l; ++i)
        s.append(k.data() + i * kDim, v.data() + i * kDim, 1);
    }
  std::vector<int64_t> keep;
  for (int64_t i = 0; i < c.head(2, 0).size(); i += 3) keep.push_back(i);
  c.head(2, 0).keep(keep);
  c.n_past = 177;
  return c;
}

void expect_same_cache(const SequenceCache& got, const SequenceCache& want) {
  ASSERT_EQ(got.n_layers(), want.n_layers());
  ASSERT_EQ(got.n_kv_heads(), want.n_kv_heads());
  ASSERT_EQ(got.head_dim(), want.head_dim());
  ASSERT_EQ(got.types(), want.types());
  EXPECT_EQ(got.n_past, want.n_past);
  EXPECT_EQ(got.bytes(), want.bytes());
  for (int l = 0; l < want.n_layers(); ++l)
    for (int h = 0; h < want.n_kv_heads(); ++h) {
      const HeadStore &a = got.head(l, h), &b = want.head(l, h);
      ASSERT_EQ(a.size(), b.size()) << l << "/" << h;
      EXPECT_EQ(a.reserved_rows(), b.reserved_rows()) << l << "/" << h;
      if (b.size() == 0) continue;
      ASSERT_EQ(std::memcmp(a.k_data(), b.k_data(), sz(b.size()) * b.k_row_bytes()), 0)
          << "K of " << l << "/" << h;
      ASSERT_EQ(std::memcmp(a.v_data(), b.v_data(), sz(b.size()) * b.v_row_bytes()), 0)
          << "V of " << l << "/" << h;
    }
}

size_t files_in(const fs::path& dir) {
  size_t n = 0;
  for ([[maybe_unused]] const auto& e : fs::directory_iterator(dir)) ++n;
  return n;
}

class SwapTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() /
           ("fairkv-swap-test-" + std::to_string(::getpid()) + "-" +
            ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::create_directories(dir_);
  }
  void TearDown() override { fs::remove_all(dir_); }
  fs::path dir_;
};

struct Mode {
  KvTypes type;
  bool reserved, file;
};

class SwapRoundTrip : public SwapTest, public ::testing::WithParamInterface<Mode> {};

// Out frees everything; in restores every byte, length, limit and n_past; decode then goes on
// exactly as in a cache that never left.
TEST_P(SwapRoundTrip, RestoresBitExactlyAndDecodeContinuesIdentically) {
  const auto [t, reserved, file] = GetParam();
  SequenceCache cache = make_cache(t, reserved, 1);
  SequenceCache kept = cache;  // a copy that stays in memory
  expect_same_cache(kept, cache);
  SwappedCache s = file ? swap_out(cache, dir_) : swap_out(cache);
  EXPECT_EQ(s.in_file(), file);
  EXPECT_EQ(s.bytes(), swapped_bytes(kept));
  EXPECT_EQ(cache.bytes(), 0u);
  EXPECT_EQ(cache.committed_bytes(), 0u);
  EXPECT_EQ(cache.n_past, 0);
  EXPECT_EQ(cache.head(0, 0).reserved_rows(), 0);
  EXPECT_EQ(files_in(dir_), file ? 1u : 0u);
  if (file) {
    EXPECT_EQ(s.path().parent_path(), dir_);
    EXPECT_EQ(fs::file_size(s.path()), s.bytes());
  }

  SequenceCache restored(1, 1, 8, KvType::F32);  // any shape: swap_in replaces it
  swap_in(std::move(s), restored);
  EXPECT_TRUE(s.empty());
  EXPECT_EQ(files_in(dir_), 0u);
  expect_same_cache(restored, kept);

  // Decode: the same rows appended to both, then attention over every head.
  const auto k = random_rows(40, kDim, 9), v = random_rows(40, kDim, 10),
             q = random_rows(2, kDim, 11);
  for (SequenceCache* c : {&restored, &kept}) {
    for (int64_t i = 0; i < 40; ++i) {
      for (int l = 0; l < kLayers; ++l)
        for (int h = 0; h < kHeads; ++h)
          c->head(l, h).append(&k[sz(i * kDim)], &v[sz(i * kDim)], 1);
      ++c->n_past;
    }
  }
  expect_same_cache(restored, kept);
  for (int l = 0; l < kLayers; ++l)
    for (int h = 0; h < kHeads; ++h) {
      std::vector<float> out[2];
      int j = 0;
      for (const SequenceCache* c : {&restored, &kept}) {
        out[j].resize(sz(2 * kDim));
        AttentionArgs a;
        a.store = &c->head(l, h);
        a.q = q.data();
        a.group = 2;
        a.scale = 1.0f / std::sqrt(float(kDim));
        a.visible = a.store->size() - 1;
        a.out = out[j++].data();
        attend(a);
      }
      ASSERT_EQ(out[0], out[1]) << l << "/" << h;
    }
}

INSTANTIATE_TEST_SUITE_P(
    Modes, SwapRoundTrip,
    ::testing::Values(Mode{KvType::F32, false, false}, Mode{KvType::F16, false, false},
                      Mode{KvType::F16, true, false}, Mode{KvType::F32, false, true},
                      Mode{KvType::F16, false, true}, Mode{KvType::F32, true, true},
                      Mode{{KvType::Q8_0, KvType::Q4_0}, true, false},
                      Mode{{KvType::Q4_0, KvType::BF16}, false, true},
                      Mode{KvType::Q8_0, false, false},
                      Mode{{KvType::BF16, KvType::Q8_0}, true, true}),
    [](const auto& info) {
      return std::string(kv_type_name(info.param.type.k)) + "_" + kv_type_name(info.param.type.v) +
             (info.param.reserved ? "_reserved" : "_ordinary") +
             (info.param.file ? "_file" : "_host");
    });

// Host memory first, then the spill folder, then no room; limits hold, take and drop give the
// bytes (and the files) back.
TEST_F(SwapTest, SwapSpaceFillsHostThenFilesThenRefuses) {
  const size_t one = swapped_bytes(make_cache(KvType::F16, false, 1));
  SwapSpace space(one + one / 2, one + one / 2, dir_);
  SequenceCache a = make_cache(KvType::F16, false, 1), b = make_cache(KvType::F16, false, 2),
                c = make_cache(KvType::F16, false, 3);
  const SequenceCache a0 = a, b0 = b, c0 = c;
  EXPECT_EQ(space.put(1, a), SwapPlace::Host);
  EXPECT_EQ(space.put(2, b), SwapPlace::File);
  EXPECT_EQ(space.bytes_host(), one);
  EXPECT_EQ(space.bytes_file(), one);
  EXPECT_EQ(files_in(dir_), 1u);
  EXPECT_EQ(space.put(3, c), SwapPlace::NoRoom);
  EXPECT_FALSE(space.contains(3));
  expect_same_cache(c, c0);  // untouched
  EXPECT_THROW(space.put(1, c), std::invalid_argument);
  EXPECT_LE(space.bytes_host(), one + one / 2);
  EXPECT_LE(space.bytes_file(), one + one / 2);

  space.take(2, b);
  expect_same_cache(b, b0);
  EXPECT_EQ(space.bytes_file(), 0u);
  EXPECT_EQ(files_in(dir_), 0u);
  EXPECT_THROW(space.take(2, b), std::out_of_range);
  EXPECT_EQ(space.put(3, c), SwapPlace::File);  // room again
  EXPECT_EQ(files_in(dir_), 1u);
  EXPECT_TRUE(space.drop(3));
  EXPECT_FALSE(space.drop(3));
  EXPECT_EQ(files_in(dir_), 0u);
  EXPECT_EQ(space.bytes_file(), 0u);
  space.take(1, a);
  expect_same_cache(a, a0);
  EXPECT_EQ(space.bytes_host(), 0u);
  EXPECT_EQ(swap_place_name(SwapPlace::NoRoom), std::string("no room"));
}

// A spill folder that is missing or not a folder is named in the error, with errno's text; a
// failed swap-out leaves the cache as it was.
TEST_F(SwapTest, BadSpillFolderIsAClearError) {
  const fs::path missing = dir_ / "no" / "such";
  SequenceCache cache = make_cache(KvType::F32, false, 4);
  const SequenceCache before = cache;
  try {
    swap_out(cache, missing);
    FAIL() << "swap_out into a missing folder succeeded";
  } catch (const std::system_error& e) {
    const std::string what = e.what();
    EXPECT_NE(what.find(missing.string()), std::string::npos) << what;
    EXPECT_NE(what.find(std::strerror(ENOENT)), std::string::npos) << what;
  }
  expect_same_cache(cache, before);
  try {
    SwapSpace space(0, 1 << 20, missing);
    FAIL() << "a SwapSpace over a missing folder was made";
  } catch (const std::system_error& e) {
    EXPECT_NE(std::string(e.what()).find(missing.string()), std::string::npos) << e.what();
  }
  const fs::path file = dir_ / "a-file";
  std::ofstream(file) << "x";
  try {
    SwapSpace space(0, 1 << 20, file);
    FAIL() << "a SwapSpace over a file was made";
  } catch (const std::system_error& e) {
    EXPECT_NE(std::string(e.what()).find(std::strerror(ENOTDIR)), std::string::npos) << e.what();
  }
  EXPECT_THROW(SwapSpace(0, 1 << 20), std::invalid_argument);
  SwapSpace host_only(1 << 30, 0);  // no folder needed without a file limit
  EXPECT_EQ(host_only.put(7, cache), SwapPlace::Host);
}

// A spill file cut short is refused before the cache is touched, and the swapped copy keeps it.
TEST_F(SwapTest, TruncatedSpillFileIsRefused) {
  SequenceCache cache = make_cache(KvType::F16, true, 5);
  SwappedCache s = swap_out(cache, dir_);
  fs::resize_file(s.path(), s.bytes() - 10);
  SequenceCache target = make_cache(KvType::F16, false, 6);
  const SequenceCache target0 = target;
  EXPECT_THROW(swap_in(std::move(s), target), std::runtime_error);
  expect_same_cache(target, target0);
  EXPECT_TRUE(s.in_file());
  EXPECT_EQ(files_in(dir_), 1u);
  s = SwappedCache();  // dropping it deletes the file
  EXPECT_EQ(files_in(dir_), 0u);
  EXPECT_THROW(swap_in(SwappedCache(), target), std::invalid_argument);
}

}  // namespace
}  // namespace fairkv::kv
