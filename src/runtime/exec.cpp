#include "runtime/exec.h"

#include <fmt/format.h>

#include <chrono>
#include <memory>
#include <mutex>
#include <stdexcept>

#include "kernels/clock.h"
#include "model/sampler.h"
#include "placement/planners.h"
#include "placement/profile.h"
#include "placement/rebalance.h"
#include "runtime/exec_compress.h"
#include "runtime/shard.h"

namespace fairkv::runtime {

namespace {
using kernels::Clock;
using kernels::ms_since;

double dtype_bytes(kernels::DType t) {
  return double(kernels::row_bytes(t, kernels::block_size(t))) / double(kernels::block_size(t));
}
}  // namespace

placement::Profile model_profile(const model::ModelConfig& c, double tokens) {
  placement::Profile p;
  p.model = c.name;
  p.layers = c.n_layers;
  p.kv_heads = c.n_kv_heads;
  p.query_heads = c.n_heads;
  p.head_dim = c.head_dim;
  p.embd = c.n_embd;
  p.ffn = c.n_ff;
  p.tokens.assign(size_t(c.n_layers), std::vector<double>(size_t(c.n_kv_heads), tokens));
  return p;
}

void check_profile_shape(const placement::Profile& prof, const model::ModelConfig& c,
                         const std::string& where) {
  if (prof.layers != c.n_layers || prof.kv_heads != c.n_kv_heads || prof.query_heads != c.n_heads ||
      prof.head_dim != c.head_dim)
    throw std::invalid_argument(fmt::format(
        "{}: the profile is for {} layers, {} / {} heads, head size {}; the model has {} "
        "layers, {} / {} heads, head size {}",
        where, prof.layers, prof.query_heads, prof.kv_heads, prof.head_dim, c.n_layers, c.n_heads,
        c.n_kv_heads, c.head_dim));
}

placement::Placement resolve_placement(const std::string& what, const std::string& profile_path,
                                       const model::ModelConfig& c, int devices, int batch) {
  placement::Placement p;
  std::string where = what;
  if (placement::is_planner_name(what)) {
    placement::Profile prof;
    if (!profile_path.empty()) {
      prof = placement::read_profile(profile_path);
      where = profile_path;
    } else {
      prof = model_profile(c);
      prof.source = "uniform (no --profile)";
    }
    check_profile_shape(prof, c, where);
    placement::PlanOptions o;
    o.planner = placement::planner_from_name(what);
    o.devices = devices;
    p = placement::plan(prof, placement::cost_model_for(prof, batch), o);
  } else {
    p = placement::read_placement(what);
  }
  if (int(p.layers.size()) != c.n_layers || p.kv_heads != c.n_kv_heads)
    throw std::invalid_argument(
        fmt::format("{}: the placement is for {} layers and {} KV heads; the model has {} layers "
                    "and {} KV heads",
                    where, p.layers.size(), p.kv_heads, c.n_layers, c.n_kv_heads));
  if (devices > 0 && p.devices != devices)
    throw std::invalid_argument(
        fmt::format("{}: the placement is for {} devices, not {}", where, p.devices, devices));
  return p;
}

placement::Placement rebalanced(const placement::Placement& p, const model::ModelConfig& c,
                                const std::vector<std::vector<int64_t>>& lengths,
                                kernels::DType weight_type, kv::KvType kv_type) {
  placement::CostModel cost;
  cost.batch = int(lengths.size());
  cost.head_dim = c.head_dim;
  cost.group = c.group();
  cost.embd = c.n_embd;
  cost.ffn = c.n_ff;
  cost.weight_bytes = dtype_bytes(weight_type);
  cost.kv_bytes = double(kv::kv_type_bytes(kv_type));
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

ExecResult execute(Communicator& comm, const model::Model& m, const placement::Placement& p,
                   const std::vector<std::vector<int32_t>>& prompts, const ExecOptions& opt,
                   kernels::ThreadPool& pool) {
  const model::ModelConfig& c = m.config;
  if (prompts.empty()) throw std::invalid_argument("no prompts to run");
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
  if (opt.compression) {
    kv::CompressionConfig cc = *opt.compression;
    cc.resolve();
    comp = std::make_unique<RankCompression>(cc, c, size_t(n));
  }
  const std::vector<float>* logits = &fwd.run(items, n, comp ? comp->observer() : nullptr);
  if (comp) {
    std::vector<int64_t> lengths;
    for (const auto& p : prompts) lengths.push_back(int64_t(p.size()));
    comp->apply(comm, ptrs, lengths);
    for (int i = 0; i < n; ++i) res.selections.push_back(comp->selection(size_t(i)));
  }
  if (opt.after_prefill) opt.after_prefill(comm, fwd, ptrs);
  if (opt.rebalance) {
    const auto lengths = fwd.unit_lengths(ptrs);
    fwd.set_placement(rebalanced(p, c, lengths, m.weights.layers[0].wq.type, opt.kv_type));
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
  run_ranks(p.devices, [&](Communicator& comm) {
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
  run_job(comm_kind, p.devices, [&](Communicator& comm) {
    kernels::ThreadPool pool(std::max(1, opt.threads));
    out = execute(comm, m, p, prompts, opt, pool);
  });
  return out;
}

}  // namespace fairkv::runtime
