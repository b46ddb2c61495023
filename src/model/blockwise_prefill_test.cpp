// EpiCache's block-wise prefill (PrefillCompression with a block-wise policy, model::prefill)
// against references on stories260K: with one block it is the one-shot compression of the whole
// prompt; over many blocks its kept rows equal a brute-force replay that scores and sorts
// everything itself; the cache never holds more than budget + one block rows per head on average.
#include <gtest/gtest.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <tuple>

#include "model/generate.h"
#include "model/prefill_compression.h"

namespace fairkv::model {
namespace {

namespace fs = std::filesystem;
const fs::path kShared = FAIRKV_SHARED_DIR;

struct Fixture {
  std::unique_ptr<Model> m;
  std::vector<int32_t> ids;
};

Fixture load() {
  Fixture f;
  const fs::path model = kShared / "models/stories260K.gguf";
  const fs::path prompt = kShared / "golden/stories260K/long-context/prompt.txt";
  if (!fs::exists(model) || !fs::exists(prompt)) return f;
  f.m = Model::load(model.string());
  std::ifstream in(prompt, std::ios::binary);
  f.ids = f.m->tokenizer.encode(std::string((std::istreambuf_iterator<char>(in)), {}), true);
  return f;
}

kv::CompressionConfig epicache(int64_t budget, int64_t window, int64_t block) {
  kv::CompressionConfig c;
  c.policy = kv::Policy::EpiCache;
  c.budget = budget;
  c.window = window;
  c.epicache_block = block;
  c.resolve();
  return c;
}

// Every key and value row of every head, as float32.
std::vector<std::vector<float>> rows_of(const kv::SequenceCache& c) {
  std::vector<std::vector<float>> out;
  for (int l = 0; l < c.n_layers(); ++l)
    for (int h = 0; h < c.n_kv_heads(); ++h) {
      const kv::HeadStore& s = c.head(l, h);
      std::vector<float> v(size_t(s.size() * s.head_dim() * 2));
      for (int64_t i = 0; i < s.size(); ++i) {
        s.k_row(i, v.data() + i * s.head_dim() * 2);
        s.v_row(i, v.data() + i * s.head_dim() * 2 + s.head_dim());
      }
      out.push_back(std::move(v));
    }
  return out;
}

TEST(BlockwisePrefill, OneBlockIsTheOneShotCompression) {
  const Fixture f = load();
  if (!f.m) GTEST_SKIP() << "no shared data at " << kShared;
  const ModelConfig& mc = f.m->config;
  kernels::ThreadPool pool(2);
  const int64_t n = int64_t(f.ids.size());
  const kv::CompressionConfig c = epicache(n / 5, 16, n);  // one block: the whole prompt
  // Block-wise, through generate's prefill.
  PrefillCompression pc(c, mc, &f.m->weights);
  GenerateOptions opt;
  pc.attach(opt);
  Forward fwd(mc, f.m->weights, pool);
  kv::SequenceCache a(mc.n_layers, mc.n_kv_heads, mc.head_dim, kv::KvType::F32);
  const auto la = prefill(fwd, a, f.ids, opt, false);
  // One shot: the whole prefill observed, then the selection, as every other policy runs.
  kv::ScoreCollector col(c, mc.n_layers, mc.n_kv_heads);
  WindowObserver obs;
  obs.window = c.window;
  obs.observe = [&col](size_t, int l, int h, const float* p, int g, int64_t w, int64_t k) {
    col.observe(l, h, p, g, w, k);
  };
  kv::SequenceCache b(mc.n_layers, mc.n_kv_heads, mc.head_dim, kv::KvType::F32);
  BatchItem item{&b, f.ids, false};
  const std::vector<float> lb = fwd.run({&item, 1}, &obs);
  compress_prompt(col, mc, &f.m->weights, b);
  EXPECT_EQ(la, lb);
  EXPECT_EQ(rows_of(a), rows_of(b));
  EXPECT_LT(a.bytes(), size_t(n) * mc.n_layers * mc.n_kv_heads * mc.head_dim * 8);
  EXPECT_EQ(pc.peak_bytes(), size_t(n) * mc.n_layers * mc.n_kv_heads * mc.head_dim * 8);
}

// The reference: blocks run one by one, each head's window probabilities kept whole; after each
// block the score of a row is the largest probability any window query of the group gives it,
// every (score, row, head) of a layer is sorted and the first H x (budget - W) kept with the
// window. Tracks each kept row's prompt position and the most rows any layer held.
struct Replay {
  std::vector<std::vector<int64_t>> positions;
  int64_t peak_layer_rows = 0;
};

Replay replay(const Model& m, kernels::ThreadPool& pool, std::span<const int32_t> ids,
              int64_t budget, int64_t W, int64_t block, kv::SequenceCache& cache) {
  const ModelConfig& mc = m.config;
  const int L = mc.n_layers, H = mc.n_kv_heads;
  Forward fwd(mc, m.weights, pool);
  Replay r;
  r.positions.assign(size_t(L * H), {});
  std::vector<std::vector<float>> probs(size_t(L * H));
  std::vector<std::pair<int, int64_t>> shape(size_t(L * H));  // (group, rows) of the window
  WindowObserver obs;
  obs.window = W;
  obs.observe = [&](size_t, int l, int h, const float* p, int g, int64_t w, int64_t k) {
    EXPECT_EQ(w, W);
    probs[size_t(l * H + h)].assign(p, p + g * w * k);
    shape[size_t(l * H + h)] = {g, k};
  };
  const int64_t n = int64_t(ids.size());
  for (int64_t b : prefill_block_ends(n, block, W)) {
    const int64_t start = cache.n_past;
    BatchItem item{&cache, ids.subspan(size_t(start), size_t(b - start)), false};
    fwd.run({&item, 1}, &obs);
    for (int l = 0; l < L; ++l) {
      int64_t rows = 0;
      std::vector<std::tuple<float, int64_t, int>> all;
      for (int h = 0; h < H; ++h) {
        const auto [g, k] = shape[size_t(l * H + h)];
        EXPECT_EQ(k, cache.head(l, h).size());
        rows += k;
        auto& pos = r.positions[size_t(l * H + h)];
        for (int64_t p = start; p < b; ++p) pos.push_back(p);
        for (int64_t j = 0; j < k - W; ++j) {
          float best = 0;
          for (int64_t q = 0; q < g * W; ++q)
            best = std::max(best, probs[size_t(l * H + h)][size_t(q * k + j)]);
          all.emplace_back(best, j, h);
        }
      }
      r.peak_layer_rows = std::max(r.peak_layer_rows, rows);
      std::sort(all.begin(), all.end(), [](const auto& x, const auto& y) {
        if (std::get<0>(x) != std::get<0>(y)) return std::get<0>(x) > std::get<0>(y);
        if (std::get<1>(x) != std::get<1>(y)) return std::get<1>(x) > std::get<1>(y);
        return std::get<2>(x) < std::get<2>(y);
      });
      all.resize(std::min(all.size(), size_t(H * (budget - W))));
      std::vector<std::vector<int64_t>> keep(static_cast<size_t>(H));
      for (const auto& [s, j, h] : all) keep[size_t(h)].push_back(j);
      for (int h = 0; h < H; ++h) {
        auto& k = keep[size_t(h)];
        std::sort(k.begin(), k.end());
        const int64_t size = cache.head(l, h).size();
        for (int64_t i = size - W; i < size; ++i) k.push_back(i);
        auto& pos = r.positions[size_t(l * H + h)];
        std::vector<int64_t> kept;
        for (int64_t i : k) kept.push_back(pos[size_t(i)]);
        pos = std::move(kept);
        cache.head(l, h).keep(k);
      }
    }
  }
  return r;
}

TEST(BlockwisePrefill, EqualsABruteForceReplayAndStaysWithinBudgetPlusBlock) {
  const Fixture f = load();
  if (!f.m) GTEST_SKIP() << "no shared data at " << kShared;
  const ModelConfig& mc = f.m->config;
  const int L = mc.n_layers, H = mc.n_kv_heads;
  kernels::ThreadPool pool(2);
  const int64_t n = int64_t(f.ids.size()), W = 16;
  for (const auto& [budget, block] : {std::pair<int64_t, int64_t>{64, 100}, {40, 37}, {200, 64}}) {
    SCOPED_TRACE(::testing::Message() << "budget " << budget << ", block " << block);
    const kv::CompressionConfig c = epicache(budget, W, block);
    PrefillCompression pc(c, mc, &f.m->weights);
    GenerateOptions opt;
    pc.attach(opt);
    // Watch every block's cache before its compression.
    int64_t peak_rows = 0;
    int blocks = 0;
    opt.after_block = [&, inner = opt.after_block](kv::SequenceCache& cache, int64_t np) {
      for (int l = 0; l < L; ++l) {
        int64_t rows = 0;
        for (int h = 0; h < H; ++h) rows += cache.head(l, h).size();
        peak_rows = std::max(peak_rows, rows);
      }
      ++blocks;
      inner(cache, np);
    };
    Forward fwd(mc, f.m->weights, pool);
    kv::SequenceCache a(L, H, mc.head_dim, kv::KvType::F32);
    prefill(fwd, a, f.ids, opt, false);
    kv::SequenceCache b(L, H, mc.head_dim, kv::KvType::F32);
    const Replay r = replay(*f.m, pool, f.ids, budget, W, block, b);
    EXPECT_GT(blocks, 2);
    EXPECT_EQ(rows_of(a), rows_of(b));
    EXPECT_EQ(pc.kept_positions(), r.positions);
    EXPECT_EQ(peak_rows, r.peak_layer_rows);
    // The bound: a layer never holds more than H x (budget + block) rows (a short last block
    // may take up to W - 1 tokens from the one before it).
    EXPECT_LE(peak_rows, int64_t(H) * (budget + block + W));
    EXPECT_LE(pc.peak_bytes(), size_t(L) * H * (budget + block + W) * mc.head_dim * 8);
    EXPECT_LT(pc.peak_bytes(), size_t(n) * L * H * mc.head_dim * 8);
    // After the last block every layer holds H x budget rows exactly.
    for (int l = 0; l < L; ++l) {
      int64_t rows = 0;
      for (int h = 0; h < H; ++h) rows += a.head(l, h).size();
      EXPECT_EQ(rows, int64_t(H) * budget);
    }
  }
}

TEST(BlockwisePrefill, BlockEndsKeepAWindowInTheLastBlock) {
  EXPECT_EQ(prefill_block_ends(10, 16, 8), (std::vector<int64_t>{10}));
  EXPECT_EQ(prefill_block_ends(32, 16, 8), (std::vector<int64_t>{16, 32}));
  EXPECT_EQ(prefill_block_ends(35, 16, 8), (std::vector<int64_t>{16, 27, 35}));
  EXPECT_EQ(prefill_block_ends(20, 16, 8), (std::vector<int64_t>{12, 20}));
}

}  // namespace
}  // namespace fairkv::model
