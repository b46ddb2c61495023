#include "app/eval_ruler.h"

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <map>
#include <optional>

#include <fmt/format.h>
#include <fmt/ranges.h>
#include <nlohmann/json.hpp>

#include "app/commands.h"
#include "app/head_importance_file.h"
#include "app/ruler.h"
#include "app/svg_plot.h"
#include "kernels/clock.h"
#include "kernels/types.h"
#include "model/chat_prompt.h"
#include "model/forward.h"
#include "model/prefill_compression.h"
#include "model/sampler.h"

namespace fairkv::app {

namespace {

// Shares of the prompt ("10%"), as eval's budgets but shares only: RULER's prompts differ in
// length, so a token count would mean a different compression for every context.
std::vector<double> parse_shares(const std::string& s) {
  std::vector<double> out;
  for (const auto& t : split_list(s)) {
    double v = 0;
    try {
      size_t used = 0;
      v = std::stod(t.substr(0, t.size() - 1), &used);
      if (t.back() != '%' || used + 1 != t.size()) throw std::invalid_argument(t);
    } catch (const std::exception&) {
      throw UsageError("--budgets: '" + t + "': expected a share of the prompt (20%)");
    }
    if (!(v > 0 && v <= 100)) throw UsageError("--budgets: '" + t + "': expected (0, 100]%");
    out.push_back(v);
  }
  if (out.empty()) throw UsageError("--budgets: expected at least one budget");
  return out;
}

// The window's attention of every (layer, KV head), as the prefill hands it over.
struct WindowProbs {
  int group = 0;
  int64_t window = 0, n = 0;
  std::vector<float> probs;
};

// Greedy answer from a prefilled (possibly compressed) cache: `first` is the prefill's argmax.
std::vector<int32_t> decode(const model::Model& m, model::Forward& fwd, kv::SequenceCache& cache,
                            int32_t first, int n_predict) {
  std::vector<int32_t> out = {first};
  while (int(out.size()) < n_predict && !m.tokenizer.is_eog(out.back())) {
    model::BatchItem step{&cache, {&out.back(), 1}, false};
    const auto& logits = fwd.run({&step, 1});
    out.push_back(model::argmax({logits.data(), size_t(m.config.n_vocab)}));
  }
  if (m.tokenizer.is_eog(out.back())) out.pop_back();
  return out;
}

struct Cell {
  double score = 0;
  double kept = 0;  // share of the prompt's rows kept over all heads, summed over samples
  int n = 0;
};

double kept_share(const kv::SequenceCache& c, int64_t P) {
  double rows = 0;
  for (int l = 0; l < c.n_layers(); ++l)
    for (int h = 0; h < c.n_kv_heads(); ++h) rows += double(c.head(l, h).size());
  return rows / (double(P) * c.n_layers() * c.n_kv_heads());
}

}  // namespace

void run_ruler(const RulerArgs& a) {
  const auto m = model::Model::load(a.model, a.engine.load(a.model));
  const auto contexts = ruler::parse_contexts(a.contexts);
  const auto shares = parse_shares(a.budgets.empty() ? "10%,20%,50%" : a.budgets);
  std::vector<std::string> policies;
  if (a.policies.empty()) {
    // Every policy; those that read a head-importance file only when one is given.
    const bool imp = a.kv.raw.count("--kv-head-importance") > 0;
    for (auto p : kv::policy_names())
      if (imp || (p != "headkv" && p != "compresskv")) policies.emplace_back(p);
    if (!imp && a.dump.empty())
      fmt::print(stderr, "ruler: headkv and compresskv left out (no --kv-head-importance)\n");
  } else
    policies = split_list(a.policies);
  // The full cache is the ceiling, run once per sample whatever the list says.
  std::erase(policies, std::string("full"));
  std::vector<std::string> tasks;
  if (a.tasks.empty())
    for (auto t : ruler::task_names()) tasks.emplace_back(t);
  else
    tasks = split_list(a.tasks);
  if (a.samples < 1) throw UsageError("--samples: expected at least 1");
  if (!a.dump.empty()) {
    // The samples as {"prompt", "answer"} records (plain text, the answer prefix last), e.g. for
    // `fairkv importance` on held-out seeds.
    std::ofstream out(a.dump);
    if (!out) throw std::runtime_error(a.dump + ": cannot write (--dump)");
    const auto count = [&m](const std::string& t) {
      return int64_t(m->tokenizer.encode(t, false).size());
    };
    for (int64_t ctx : contexts)
      for (const auto& task : tasks)
        for (const auto& s : ruler::generate(task, ctx, a.samples, a.seed, count))
          out << nlohmann::json{{"prompt", s.input + "\n" + s.answer_prefix},
                                {"answer", s.answers[0]},
                                {"task", s.task},
                                {"context", s.context}}
                     .dump()
              << "\n";
    return;
  }
  // Check every (policy, budget) before the long run: a bad flag fails now, by name.
  for (const auto& p : policies) (void)a.kv.config(p, 1024);
  const kv::CompressionConfig base = a.kv.config();

  kernels::ThreadPool pool(a.engine.n_threads());
  // Instruct models get their chat template; a base model without one the plain text.
  std::optional<tokenizer::ChatTemplate> tmpl;
  try {
    tmpl = model::chat_template(*m);
  } catch (const tokenizer::ChatTemplateError&) {
    fmt::print(stderr, "ruler: the model has no chat template known here; plain prompts\n");
  }
  const auto count = [&m](const std::string& t) {
    return int64_t(m->tokenizer.encode(t, false).size());
  };
  const model::ModelConfig& mc = m->config;
  const int H = mc.n_kv_heads, L = mc.n_layers;

  // (context, task, policy, share index); policy "full" has share index 0 only.
  std::map<std::tuple<int64_t, std::string, std::string, size_t>, Cell> cells;
  std::map<int64_t, double> prompt_tokens;  // summed, per context
  // EpiCache: the most KV bytes a block-wise prefill held, and the full prefill's, per context
  // (the longest prompt's); the key similarity per layer, summed over its runs.
  std::map<std::pair<int64_t, size_t>, std::pair<size_t, size_t>> peak;  // (context, budget)
  std::vector<double> similarity(size_t(L), 0.0);
  int similarity_runs = 0;
  const auto t0 = std::chrono::steady_clock::now();
  for (int64_t ctx : contexts)
    for (const auto& task : tasks) {
      const auto samples = ruler::generate(task, ctx, a.samples, a.seed, count);
      for (size_t si = 0; si < samples.size(); ++si) {
        const auto& s = samples[si];
        const tokenizer::ChatMessage msg{"user", s.input};
        auto ids = tmpl ? model::chat_prompt_ids(*m, *tmpl, {&msg, 1})
                        : m->tokenizer.encode(s.input + "\n", m->tokenizer.add_bos());
        const auto prefix = m->tokenizer.encode(s.answer_prefix, false);
        ids.insert(ids.end(), prefix.begin(), prefix.end());
        const int64_t P = int64_t(ids.size());
        prompt_tokens[ctx] += double(P);

        model::Forward fwd(mc, m->weights, pool, a.engine.act());
        kv::SequenceCache full(L, H, mc.head_dim, a.kv.kv_type());
        std::vector<WindowProbs> probs(size_t(L * H));
        model::WindowObserver obs;
        obs.window = base.window;
        obs.observe = [&probs, H](size_t, int layer, int head, const float* p, int group,
                                  int64_t window, int64_t n) {
          WindowProbs& w = probs[size_t(layer * H + head)];
          w = {group, window, n, std::vector<float>(p, p + size_t(group) * size_t(window * n))};
        };
        model::BatchItem item{&full, ids, false};
        const auto& logits = fwd.run({&item, 1}, &obs);
        const int32_t first =
            model::argmax({logits.data() + logits.size() - size_t(mc.n_vocab), size_t(mc.n_vocab)});

        auto answer = [&](kv::SequenceCache cache) {
          return m->tokenizer.decode(decode(*m, fwd, cache, first, s.n_predict));
        };
        // CriticalKV's projected value norms depend on the prompt's cache alone: computed once
        // per sample (they cost more than a decode), handed to every DefensiveKV collector.
        std::vector<std::vector<float>> norms;
        auto value_norms = [&]() -> const std::vector<std::vector<float>>& {
          if (!norms.empty()) return norms;
          for (int l = 0; l < L; ++l) {
            const kernels::WeightMatrix& wo = m->weights.layers[size_t(l)].wo;
            auto layer = kv::projected_value_norms(
                full, l, mc.n_heads / H, wo.rows, [&wo](int64_t r, float* out) {
                  kernels::dequantize_row(wo.type, wo.row(r), out, wo.cols);
                });
            for (auto& h : layer) norms.push_back(std::move(h));
          }
          return norms;
        };
        const std::string full_text = answer(full);
        if (a.show)
          fmt::print(stderr, "\n{} {} #{}: expected [{}], full cache: \"{}\"\n", ctx, task, si + 1,
                     fmt::join(s.answers, ", "), full_text);
        Cell& fc = cells[{ctx, task, "full", 0}];
        fc.score += ruler::score(full_text, s.answers);
        fc.kept += 1;
        ++fc.n;
        for (const auto& p : policies)
          for (size_t bi = 0; bi < shares.size(); ++bi) {
            fmt::print(stderr, "\rruler: {} {} #{} ({} tokens), {} @ {}%, {:.0f} s          ", ctx,
                       task, si + 1, P, p, shares[bi], kernels::ms_since(t0) / 1000);
            const int64_t budget = std::max(
                base.window, std::max<int64_t>(1, int64_t(shares[bi] / 100.0 * double(P) + 0.5)));
            const kv::CompressionConfig c = a.kv.config(p, budget);
            kv::ScoreCollector col(c, L, H);
            if (c.needs_scores() && !c.blockwise())
              for (int l = 0; l < L; ++l)
                for (int h = 0; h < H; ++h) {
                  const WindowProbs& w = probs[size_t(l * H + h)];
                  col.observe(l, h, w.probs.data(), w.group, w.window, w.n);
                }
            if (col.needs_value_norms()) {
              const auto& vn = value_norms();
              for (int l = 0; l < L; ++l)
                for (int h = 0; h < H; ++h) col.set_value_norms(l, h, vn[size_t(l * H + h)]);
            }
            Cell& cell = cells[{ctx, task, p, bi}];
            if (c.blockwise()) {
              // Its own prefill, block by block, compressed after each.
              model::PrefillCompression pc(c, mc, &m->weights);
              model::GenerateOptions opt;
              pc.attach(opt);
              kv::SequenceCache cache(L, H, mc.head_dim, a.kv.kv_type());
              const auto rows = model::prefill(fwd, cache, ids, opt, false);
              const int32_t own_first = model::argmax({rows.data(), size_t(mc.n_vocab)});
              auto& pk = peak[{ctx, bi}];
              if (full.bytes() > pk.second ||
                  (full.bytes() == pk.second && pc.peak_bytes() > pk.first))
                pk = {pc.peak_bytes(), full.bytes()};
              const auto sim = kv::layer_key_similarity(full, cache, pc.kept_positions());
              for (int l = 0; l < L; ++l) similarity[size_t(l)] += sim[size_t(l)];
              ++similarity_runs;
              cell.kept += kept_share(cache, P);
              const std::string text =
                  m->tokenizer.decode(decode(*m, fwd, cache, own_first, s.n_predict));
              cell.score += ruler::score(text, s.answers);
              ++cell.n;
              continue;
            }
            kv::SequenceCache cache = full;
            model::compress_prompt(col, mc, nullptr, cache);
            cell.kept += kept_share(cache, P);
            cell.score += ruler::score(answer(std::move(cache)), s.answers);
            ++cell.n;
          }
      }
    }
  fmt::print(stderr, "\n");

  // The table: per context, a row per (task, policy), a column per budget; "full" fills one.
  nlohmann::json records = nlohmann::json::array();
  std::vector<std::string> all = {"full"};
  all.insert(all.end(), policies.begin(), policies.end());
  std::map<std::pair<std::string, size_t>, Cell> mean;  // (policy, budget) over tasks, contexts
  for (int64_t ctx : contexts) {
    fmt::print("context {} ({:.0f} prompt tokens on average), {} samples per task, seed {}\n", ctx,
               prompt_tokens[ctx] / double(tasks.size() * size_t(a.samples)), a.samples, a.seed);
    fmt::print("{:<16} {:<12}", "task", "policy");
    for (double sh : shares) fmt::print(" {:>7}", fmt::format("{:g}%", sh));
    fmt::print("\n");
    for (const auto& task : tasks)
      for (const auto& p : all) {
        fmt::print("{:<16} {:<12}", task, p);
        for (size_t bi = 0; bi < shares.size(); ++bi) {
          const Cell& c = cells[{ctx, task, p, p == "full" ? 0 : bi}];
          const double v = 100.0 * c.score / std::max(1, c.n);
          fmt::print(" {:>7.1f}", v);
          Cell& mc2 = mean[{p, bi}];
          mc2.score += v;
          mc2.kept += c.kept / std::max(1, c.n);
          ++mc2.n;
          if (p != "full" || bi == 0)
            records.push_back({{"context", ctx},
                               {"task", task},
                               {"policy", p},
                               {"budget", p == "full" ? "100%" : fmt::format("{:g}%", shares[bi])},
                               {"score", v},
                               {"kept", c.kept / std::max(1, c.n)},
                               {"samples", c.n}});
        }
        fmt::print("\n");
      }
  }
  fmt::print(
      "mean over tasks and contexts (in brackets: the share of the prompt's KV rows kept)\n");
  fmt::print("{:<16} {:<12}", "task", "policy");
  for (double sh : shares) fmt::print(" {:>15}", fmt::format("{:g}%", sh));
  fmt::print("\n");
  std::vector<Series> series;
  for (const auto& p : all) {
    fmt::print("{:<16} {:<12}", "all", p);
    Series s{p, {}};
    for (size_t bi = 0; bi < shares.size(); ++bi) {
      const Cell& c = mean[{p, bi}];
      const double v = c.score / std::max(1, c.n);
      fmt::print(" {:>7.1f} ({:>4.0f}%)", v, 100 * c.kept / std::max(1, c.n));
      s.points.push_back({shares[bi], v});
    }
    fmt::print("\n");
    series.push_back(std::move(s));
  }
  for (const auto& [key, pk] : peak)
    fmt::print(
        "epicache at context {}, budget {:g}%: peak KV {} bytes during the longest "
        "prompt's block-wise prefill, the full prefill's {} ({:.1f}%)\n",
        key.first, shares[key.second], pk.first, pk.second,
        100.0 * double(pk.first) / double(pk.second));
  if (similarity_runs > 0) {
    for (double& v : similarity) v /= similarity_runs;
    fmt::print("epicache key similarity per layer (block-wise vs full): {:.4f}\n",
               fmt::join(similarity, " "));
    if (!a.sensitivity_out.empty()) {
      std::ofstream out(a.sensitivity_out);
      if (!out) throw std::runtime_error(a.sensitivity_out + ": cannot write (--sensitivity-out)");
      out << layer_sensitivity_json(similarity).dump(2) << "\n";
    }
  }
  fmt::print("{:.0f} s\n", kernels::ms_since(t0) / 1000);
  if (!a.json_out.empty()) {
    std::ofstream out(a.json_out);
    if (!out) throw std::runtime_error(a.json_out + ": cannot write (--json)");
    out << records.dump(2) << "\n";
  }
  if (!a.svg_out.empty()) {
    std::ofstream out(a.svg_out);
    if (!out) throw std::runtime_error(a.svg_out + ": cannot write (--svg)");
    out << svg_line_chart("RULER-style score (mean over tasks and contexts; full = ceiling)",
                          "budget (% of prompt tokens)", "score (%)", series);
  }
}

}  // namespace fairkv::app
