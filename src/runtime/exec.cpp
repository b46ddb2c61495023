#include "runtime/exec.h"

#include <fmt/format.h>

#include <algorithm>
#include <chrono>
#include <memory>
#include <mutex>
#include <stdexcept>

#include "kernels/clock.h"
#include "model/prefill_compression.h"
#include "model/sampler.h"
#include "placement/rebalance.h"
#include "runtime/rank_compression.h"
#include "runtime/shard.h"

namespace fairkv::runtime {

namespace {
using kernels::Clock;
using kernels::ms_since;
}  // namespace

placement::Placement rebalanced(const placement::Placement& p, const model::ModelConfig& c,
                                const std::vector<std::vector<int64_t>>& lengths,
                                const placement::CostModel& cost) {
  placement::Placement out = p;
  const int H = c.n_kv_heads;
  for (int l = 0; l < c.n_layers; ++l) {
    std::vector<double> tokens(size_t(H), 0.0);
    for (const auto& seq : lengths)
      for (int h = 0; h < H; ++h) tokens[size_t(h)] += double(seq[size_t(l * H + h)]);
    for (double& t : tokens) t /= double(std::max<size_t>(lengths.size(), 1));
    out.layers[size_t(l)] =
        placement::rebalance_layer(p.layers[size_t(l)], tokens, cost, p.devices);
  }
  return out;
}

namespace {

// EpiCache's block-wise prefill on the ranks: every prompt runs in the blocks one device cuts
// (model::prefill_block_ends), the prompts' b-th blocks in one batch, and each prompt's cache is
// compressed after each of its blocks by the ranks that own its units, to the budget of the whole
// prompt. Returns the logits of every prompt's last token, in prompt order (in `rows`).
const std::vector<float>& prefill_blockwise(comm::Communicator& comm, RankForward& fwd,
                                            const ShardedWeights& shard,
                                            const model::ModelConfig& c,
                                            const kv::CompressionConfig& cc,
                                            const std::vector<std::vector<int32_t>>& prompts,
                                            std::span<RankSequence* const> seqs,
                                            std::vector<float>& rows) {
  const size_t n = prompts.size(), V = size_t(c.n_vocab);
  std::vector<std::vector<int64_t>> ends(n);
  size_t rounds = 0;
  for (size_t i = 0; i < n; ++i) {
    ends[i] = model::prefill_block_ends(int64_t(prompts[i].size()), cc.epicache_block, cc.window);
    rounds = std::max(rounds, ends[i].size());
  }
  rows.assign(n * V, 0.0f);
  for (size_t b = 0; b < rounds; ++b) {
    std::vector<RankItem> items;
    std::vector<size_t> which;  // prompt of each item
    std::vector<std::unique_ptr<RankCompression>> comp;
    for (size_t i = 0; i < n; ++i) {
      if (b >= ends[i].size()) continue;
      const int64_t from = b ? ends[i][b - 1] : 0;
      items.push_back(
          {seqs[i],
           std::span<const int32_t>(prompts[i]).subspan(size_t(from), size_t(ends[i][b] - from))});
      which.push_back(i);
      kv::CompressionConfig own = cc;
      own.budget = cc.budget_for(int64_t(prompts[i].size()));
      own.ratio = 0;
      comp.push_back(std::make_unique<RankCompression>(own, c, 1));
    }
    RankWindowObserver observer;
    observer.window = cc.window;
    observer.observe = [&comp](size_t item, int layer, int head, int q0, int q1, const float* probs,
                               int64_t w, int64_t k) {
      comp[item]->observer()->observe(0, layer, head, q0, q1, probs, w, k);
    };
    const std::vector<float>& out = fwd.run(items, int(n), &observer);
    for (size_t j = 0; j < items.size(); ++j) {
      RankSequence* rs = seqs[which[j]];
      comp[j]->apply(comm, shard, {&rs, 1}, std::span<const int64_t>(&rs->cache.n_past, 1));
      if (b + 1 == ends[which[j]].size())
        std::copy_n(out.begin() + std::ptrdiff_t(j * V), V,
                    rows.begin() + std::ptrdiff_t(which[j] * V));
    }
  }
  return rows;
}

}  // namespace

ExecResult execute(comm::Communicator& comm, const model::Model& m, const placement::Placement& p,
                   const std::vector<std::vector<int32_t>>& prompts, const ExecOptions& opt,
                   kernels::ThreadPool& pool) {
  const model::ModelConfig& c = m.config;
  if (prompts.empty()) throw std::invalid_argument("no prompts to run");
  if (opt.rebalance && !opt.cost)
    throw std::invalid_argument("rebalancing needs the run's cost model (ExecOptions::cost)");
  for (size_t i = 0; i < prompts.size(); ++i)
    if (prompts[i].empty()) throw std::invalid_argument(fmt::format("prompt {} has no tokens", i));
  const ShardedWeights shard = shard_weights(c, m.weights, p, comm.rank());
  RankForward fwd(c, m.weights, shard, p, comm, pool, opt.activations);
  const int n = int(prompts.size());
  std::vector<std::unique_ptr<RankSequence>> seqs;
  std::vector<RankSequence*> ptrs;
  for (int i = 0; i < n; ++i) {
    seqs.push_back(std::make_unique<RankSequence>(c, opt.kv_type, i));
    ptrs.push_back(seqs.back().get());
  }
  ExecResult res;
  res.rank = comm.rank();
  res.outputs.resize(size_t(n));
  res.logits.resize(size_t(n));
  const size_t V = size_t(c.n_vocab);

  auto t0 = Clock::now();
  std::vector<RankItem> items;
  for (int i = 0; i < n; ++i) items.push_back({ptrs[size_t(i)], prompts[size_t(i)]});
  std::unique_ptr<RankCompression> comp;
  kv::CompressionConfig cc;
  if (opt.compression) {
    cc = *opt.compression;
    cc.resolve();
  }
  const std::vector<float>* logits = nullptr;
  std::vector<float> last_rows;
  if (opt.compression && cc.blockwise()) {
    logits = &prefill_blockwise(comm, fwd, shard, c, cc, prompts, ptrs, last_rows);
  } else {
    if (opt.compression) comp = std::make_unique<RankCompression>(cc, c, size_t(n));
    logits = &fwd.run(items, n, comp ? comp->observer() : nullptr);
    if (comp) {
      std::vector<int64_t> lengths;
      for (const auto& p : prompts) lengths.push_back(int64_t(p.size()));
      comp->apply(comm, shard, ptrs, lengths);
    }
  }
  if (opt.after_prefill) opt.after_prefill(comm, fwd, ptrs);
  if (opt.rebalance) {
    const auto lengths = fwd.unit_lengths(ptrs);
    fwd.set_placement(rebalanced(p, c, lengths, *opt.cost));
  }
  fwd.redistribute(ptrs, n, p);
  res.placement = fwd.placement();
  res.prefill_ms = ms_since(t0);

  // Choose from each item's logits; finished sequences leave the batch.
  std::vector<int> live(static_cast<size_t>(n));
  for (int i = 0; i < n; ++i) live[size_t(i)] = i;
  t0 = Clock::now();
  while (true) {
    std::vector<int> next;
    for (size_t j = 0; j < live.size(); ++j) {
      const int i = live[j];
      std::span<const float> row(logits->data() + j * V, V);
      const int32_t tok = model::argmax(row);
      res.outputs[size_t(i)].push_back(tok);
      if (opt.keep_logits)
        res.logits[size_t(i)].insert(res.logits[size_t(i)].end(), row.begin(), row.end());
      if (!m.tokenizer.is_eog(tok) && int(res.outputs[size_t(i)].size()) < opt.n_predict)
        next.push_back(i);
    }
    live = std::move(next);
    if (live.empty()) break;
    items.clear();
    for (int i : live) items.push_back({ptrs[size_t(i)], {&res.outputs[size_t(i)].back(), 1}});
    logits = &fwd.run(items, n);
    ++res.decode_steps;
  }
  res.decode_ms = ms_since(t0);

  // Per-rank memory, gathered so that every rank returns the same report.
  size_t kv = 0;
  for (RankSequence* s : ptrs) kv += s->cache.bytes();
  const uint64_t mine[2] = {shard.bytes, kv};
  std::vector<uint64_t> all(2 * size_t(comm.size()));
  comm.all_gather(mine, sizeof(mine), all.data());
  for (int r = 0; r < comm.size(); ++r) {
    res.weight_bytes.push_back(all[2 * size_t(r)]);
    res.kv_bytes.push_back(all[2 * size_t(r) + 1]);
  }
  return res;
}

ExecResult execute_threads(const model::Model& m, const placement::Placement& p,
                           const std::vector<std::vector<int32_t>>& prompts,
                           const ExecOptions& opt) {
  ExecResult out;
  std::mutex mu;
  comm::run_ranks(p.devices, [&](comm::Communicator& comm) {
    kernels::ThreadPool pool(std::max(1, opt.threads));
    ExecResult r = execute(comm, m, p, prompts, opt, pool);
    if (comm.rank() == 0) {
      std::lock_guard lock(mu);
      out = std::move(r);
    }
  });
  return out;
}

ExecResult execute_job(const std::string& comm_kind, const model::Model& m,
                       const placement::Placement& p,
                       const std::vector<std::vector<int32_t>>& prompts, const ExecOptions& opt) {
  if (comm_kind == "threads") return execute_threads(m, p, prompts, opt);
  ExecResult out;
  comm::run_job(comm_kind, p.devices, [&](comm::Communicator& comm) {
    comm.set_collective_timeout(opt.comm_timeout);
    // Ranks given different things would meet in different collectives: compare first.
    if (opt.fingerprint) check_ranks_agree(comm, *opt.fingerprint);
    kernels::ThreadPool pool(std::max(1, opt.threads));
    out = execute(comm, m, p, prompts, opt, pool);
  });
  return out;
}

}  // namespace fairkv::runtime
