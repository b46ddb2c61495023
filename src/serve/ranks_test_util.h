// What RanksBackend's checks (serve_test, ranks_mpi_check) drive it with and compare it to: a
// small engine-like schedule of several sequences (chunked prompts, decode steps of others in
// the same steps, a close and a new open midway, optional replans and swaps), and greedy
// model::generate on each prompt alone.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <optional>
#include <random>
#include <span>
#include <vector>

#include "kernels/threadpool.h"
#include "model/generate.h"
#include "model/model.h"
#include "model/prefill_compression.h"
#include "model/sampler.h"
#include "placement/planners.h"
#include "runtime/model_placement.h"
#include "runtime/test_util.h"
#include "serve/backend.h"

namespace fairkv::serve::testing {

// Four prompts of about 40 tokens (or of the lengths given): A, B and C open first, D when B
// closes.
inline std::vector<std::vector<int32_t>> prompts(const model::ModelConfig& c,
                                                 std::vector<int> lengths = {41, 37, 45, 39}) {
  std::mt19937 rng(11);
  std::uniform_int_distribution<int32_t> tok(3, c.n_vocab - 1);
  std::vector<std::vector<int32_t>> out;
  for (int len : lengths) {
    out.emplace_back(size_t(len));
    for (int32_t& t : out.back()) t = tok(rng);
  }
  return out;
}

inline kv::CompressionConfig adakv() {
  kv::CompressionConfig c;
  c.policy = kv::Policy::AdaKV;
  c.budget = 24;
  c.window = 8;
  return c;
}

// DefensiveKV with CriticalKV's value-norm stage (on by default).
inline kv::CompressionConfig defensivekv() {
  kv::CompressionConfig c;
  c.policy = kv::Policy::DefensiveKV;
  c.budget = 24;
  c.window = 8;
  c.critical = true;
  return c;
}

struct Reference {
  std::vector<int32_t> output;
  std::vector<float> logits;  // the row each output token was chosen from
  int64_t rows = 0;           // kept rows of every head after the prompt
};

// model::generate, greedy, one prompt alone.
inline Reference reference(const model::Model& m, const std::vector<int32_t>& prompt, int n_predict,
                           const kv::CompressionConfig* comp) {
  model::GenerateOptions opt;
  opt.n_predict = n_predict;
  opt.sampler.temp = 0;  // greedy
  opt.keep_logits = true;
  std::unique_ptr<model::PrefillCompression> pc;
  if (comp) {
    pc = model::make_prefill_compression(*comp, m);
    pc->attach(opt);
  }
  Reference r;
  auto compress = opt.after_prefill;
  opt.after_prefill = [&](kv::SequenceCache& cache) {
    if (compress) compress(cache);
    for (int l = 0; l < cache.n_layers(); ++l)
      for (int h = 0; h < cache.n_kv_heads(); ++h) r.rows += cache.head(l, h).size();
  };
  kernels::ThreadPool pool(1);
  const model::GenerateResult g = model::generate(m, pool, prompt, opt);
  r.output = g.output;
  const size_t V = size_t(m.config.n_vocab);
  // keep_logits: rows over prompt ++ output, row p predicting token p + 1.
  r.logits.assign(g.logits.begin() + std::ptrdiff_t((prompt.size() - 1) * V),
                  g.logits.begin() + std::ptrdiff_t((prompt.size() - 1 + r.output.size()) * V));
  return r;
}

struct Schedule {
  const kv::CompressionConfig* comp = nullptr;
  int n_predict = 8;
  int chunk = 16;         // prompt tokens per step; the last chunk takes the rest (>= the window)
  int close_b_after = 3;  // B's tokens before the engine closes it (and D opens)
  // Replans at these steps, before running them, by this cost model.
  std::vector<int> replan_at;
  std::optional<placement::CostModel> replan_cost;
  // Swaps A (decoding by then) and C (half-way through its prompt) out before step swap_out_at
  // and back in before step swap_in_at (-1: no swaps).
  int swap_out_at = -1, swap_in_at = -1;
};

struct Outcome {
  std::vector<std::vector<int32_t>> outputs;  // A, B, C, D
  std::vector<std::vector<float>> logits;
  std::vector<int64_t> rows;  // Backend::rows right after each prompt
  int replans = 0;            // replan() calls that changed the placement
  std::vector<SwapPlace> swaps;
  int steps = 0;
  int mixed_steps = 0;  // steps that ran prompt chunks and decode tokens together
};

// Drives the backend as the engine would: each step runs the next prompt chunk of every sequence
// still prefilling and one decode token of every other one; outputs are greedy.
inline Outcome drive(Backend& b, const std::vector<std::vector<int32_t>>& prompts,
                     const model::Model& m, const Schedule& s) {
  const size_t n = prompts.size();
  const int arrival[] = {0, 1, 3, -1};  // D opens when B closes
  const int64_t window = s.comp ? s.comp->window : 1;
  struct Seq {
    bool open = false, done = false, swapped = false;
    size_t fed = 0;  // prompt tokens run
  };
  std::vector<Seq> seqs(n);
  Outcome out;
  out.outputs.resize(n);
  out.logits.resize(n);
  out.rows.assign(n, -1);
  const size_t V = size_t(m.config.n_vocab);
  auto open = [&](size_t i) {
    b.open(SeqId(100 + i), int64_t(prompts[i].size()) + s.n_predict);
    seqs[i].open = true;
  };
  auto close = [&](size_t i) {
    b.close(SeqId(100 + i));
    seqs[i].open = false;
    seqs[i].done = true;
  };
  for (int step = 0; step < 200; ++step) {
    for (size_t i = 0; i < n; ++i)
      if (arrival[i] == step && !seqs[i].open && !seqs[i].done) open(i);
    for (int at : s.replan_at)
      if (at == step) out.replans += b.replan(*s.replan_cost) ? 1 : 0;
    for (size_t i : {size_t(0), size_t(2)}) {
      if (step == s.swap_out_at && seqs[i].open) {
        out.swaps.push_back(b.swap_out(SeqId(100 + i)));
        seqs[i].swapped = out.swaps.back() == SwapPlace::Host;
      }
      if (step == s.swap_in_at && seqs[i].swapped) {
        b.swap_in(SeqId(100 + i));
        seqs[i].swapped = false;
      }
    }
    std::vector<StepItem> items;
    std::vector<size_t> who;
    std::vector<bool> samples;  // the item's logits choose a token
    for (size_t i = 0; i < n; ++i) {
      Seq& q = seqs[i];
      if (!q.open || q.swapped) continue;
      StepItem it;
      it.seq = SeqId(100 + i);
      const size_t left = prompts[i].size() - q.fed;
      if (left > 0) {
        const size_t take = left > size_t(s.chunk) + size_t(window) ? size_t(s.chunk) : left;
        it.tokens = {prompts[i].data() + q.fed, take};
        q.fed += take;
        it.full_prompt_done = q.fed == prompts[i].size();
        if (it.full_prompt_done) it.compress = s.comp;
      } else {
        it.tokens = {&out.outputs[i].back(), 1};
      }
      samples.push_back(q.fed == prompts[i].size());
      items.push_back(it);
      who.push_back(i);
    }
    if (items.empty()) {
      if (std::all_of(seqs.begin(), seqs.end(), [](const Seq& q) { return q.done; })) break;
      continue;
    }
    const std::span<const float> logits = b.run(items);
    ++out.steps;
    const auto decode = std::count_if(items.begin(), items.end(),
                                      [](const StepItem& it) { return it.tokens.size() == 1; });
    out.mixed_steps += decode > 0 && size_t(decode) < items.size() ? 1 : 0;
    for (size_t j = 0; j < items.size(); ++j) {
      const size_t i = who[j];
      if (!samples[j]) continue;
      if (items[j].full_prompt_done) out.rows[i] = b.rows(SeqId(100 + i));
      const std::span<const float> row = logits.subspan(j * V, V);
      out.outputs[i].push_back(model::argmax(row));
      out.logits[i].insert(out.logits[i].end(), row.begin(), row.end());
    }
    for (size_t j = 0; j < items.size(); ++j) {
      const size_t i = who[j];
      const auto& o = out.outputs[i];
      if (o.empty()) continue;
      const bool b_leaves = i == 1 && int(o.size()) == s.close_b_after;
      if (b_leaves || int(o.size()) >= s.n_predict || m.tokenizer.is_eog(o.back())) {
        close(i);
        if (b_leaves) open(3);
      }
    }
  }
  return out;
}

// max |a - b| / max |b| over a row: logits agree to float summation order.
inline double rel_diff(std::span<const float> a, std::span<const float> b) {
  double d = 0, scale = 1e-6;
  for (size_t i = 0; i < b.size(); ++i) {
    d = std::max(d, double(std::fabs(a[i] - b[i])));
    scale = std::max(scale, double(std::fabs(b[i])));
  }
  return d / scale;
}

// A profile where one unit per layer is heavy and another heavier than the rest, so that the
// planners replicate (as runtime's exec_test plans).
inline placement::Placement make_placement(const model::ModelConfig& c, const std::string& planner,
                                           int devices) {
  placement::Profile prof = runtime::testing::heavy_unit_profile(c, 40.0, 1000.0);
  for (int l = 0; l < c.n_layers; ++l)
    prof.tokens[size_t(l)][size_t((l + 1) % c.n_kv_heads)] = 300.0;
  placement::PlanOptions o;
  o.planner = placement::planner_from_name(planner);
  o.devices = devices;
  return placement::plan(prof, placement::cost_model_for(prof, 4, "none", "f32"), o);
}

}  // namespace fairkv::serve::testing
