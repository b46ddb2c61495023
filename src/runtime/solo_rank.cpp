#include "runtime/solo_rank.h"

#include <algorithm>
#include <cmath>
#include <mutex>

#include "kernels/clock.h"

namespace fairkv::runtime {

using kernels::Clock;
using kernels::ms_between;

namespace {

int64_t rounded(double x) {
  return std::max<int64_t>(0, std::llround(x));
}

// Random keys and values to fill caches from: 4096 rows of each, made once. Timing does not
// depend on the values (only that they are finite and vary), and generating gigabytes of noise
// per rank and round would cost a quarter of the bench's time.
struct NoiseRows {
  int64_t rows = 4096, dim = 0;
  std::vector<float> k, v;
};
const NoiseRows& noise_rows(int64_t dim) {
  static std::mutex mu;
  static std::unique_ptr<NoiseRows> pool;
  std::lock_guard lock(mu);
  if (!pool || pool->dim != dim) {
    pool = std::make_unique<NoiseRows>();
    pool->dim = dim;
    Noise noise{0x9E3779B97F4A7C15ull};
    pool->k.resize(size_t(pool->rows * dim));
    pool->v.resize(pool->k.size());
    for (float& x : pool->k) x = noise.next(1.0f);
    for (float& x : pool->v) x = noise.next(1.0f);
  }
  return *pool;
}

}  // namespace

std::vector<std::unique_ptr<RankSequence>> fill_caches(const model::ModelConfig& c,
                                                       const placement::Placement& p,
                                                       const placement::Profile& prof, int rank,
                                                       int batch, kv::KvTypes type) {
  std::vector<std::unique_ptr<RankSequence>> seqs;
  int64_t n_past = 1;
  for (const auto& row : prof.tokens)
    for (double t : row) n_past = std::max(n_past, rounded(t));
  const NoiseRows& pool = noise_rows(c.head_dim);
  int64_t at = int64_t(rank) * 977;  // where in the pool the next store starts
  for (int b = 0; b < batch; ++b) {
    seqs.push_back(std::make_unique<RankSequence>(c, type, b));
    seqs.back()->cache.n_past = n_past;
    for (int l = 0; l < c.n_layers; ++l)
      for (const placement::Share& s : p.layers[size_t(l)].devices[size_t(rank)]) {
        const int64_t total = rounded(prof.tokens[size_t(l)][size_t(s.head)]);
        const auto [r0, r1] = rows_held(p, l, s.head, rank, b, batch, total);
        kv::HeadStore& store = seqs.back()->cache.head(l, s.head);
        store.reserve(r1 - r0);
        for (int64_t done = 0; done < r1 - r0;) {
          at %= pool.rows;
          const int64_t n = std::min(r1 - r0 - done, pool.rows - at);
          store.append(&pool.k[size_t(at * c.head_dim)], &pool.v[size_t(at * c.head_dim)], n);
          done += n;
          at += n + 131;
        }
      }
  }
  return seqs;
}

std::vector<RankItem> decode_items(std::vector<std::unique_ptr<RankSequence>>& seqs,
                                   std::vector<int32_t>& tokens) {
  std::vector<RankItem> items;
  tokens.assign(seqs.size(), 1);
  for (size_t i = 0; i < seqs.size(); ++i) items.push_back({seqs[i].get(), {&tokens[i], 1}});
  return items;
}

SoloRank::SoloRank(const model::ModelConfig& c, const model::Weights& w,
                   const placement::Placement& p, const placement::Profile& prof, int rank,
                   int batch, kv::KvTypes type, kernels::ThreadPool& pool)
    : comm(rank, p.devices),
      shard(shard_weights(c, w, p, rank)),
      seqs(fill_caches(c, p, prof, rank, batch, type)),
      fwd(c, w, shard, p, comm, pool),
      items(decode_items(seqs, tokens)),
      batch(batch) {
  fwd.run(items, batch);
}

double collectives_ms(int R, int batch, const model::ModelConfig& c, int gathers, size_t q_floats,
                      size_t lse_bytes) {
  if (R == 1) return 0.0;
  const int reps = 20;
  double ms = 0;
  std::mutex mu;
  comm::run_ranks(R, [&](comm::Communicator& comm) {
    std::vector<float> x(size_t(batch) * size_t(c.n_embd), 1.0f);
    std::vector<uint8_t> send(lse_bytes), recv(lse_bytes * size_t(R));
    std::vector<float> q(q_floats, 1.0f);
    comm.barrier();
    const auto t0 = Clock::now();
    for (int i = 0; i < reps; ++i) {
      for (int l = 0; l < c.n_layers; ++l) {
        comm.all_reduce_sum(x.data(), x.size());
        comm.all_reduce_sum(x.data(), x.size());
      }
      for (int g = 0; g < gathers; ++g) {
        comm.all_reduce_sum(q.data(), q.size());
        comm.all_gather(send.data(), send.size(), recv.data());
        comm.all_reduce_sum(q.data(), q.size());
      }
    }
    comm.barrier();
    if (comm.rank() == 0) {
      std::lock_guard lock(mu);
      ms = ms_between(t0, Clock::now()) / reps;
    }
  });
  return ms;
}

size_t kv_bytes(const std::vector<std::unique_ptr<RankSequence>>& seqs) {
  size_t b = 0;
  for (const auto& s : seqs) b += s->cache.bytes();
  return b;
}

}  // namespace fairkv::runtime
