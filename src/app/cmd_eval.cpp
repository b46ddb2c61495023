// `fairkv eval`: fidelity of KV compression policies against the full cache.
//
// For every prompt the full cache's greedy continuation is the reference. Each (policy, budget)
// then prefills the prompt, compresses, and teacher-forces that same continuation: the mean KL
// divergence of the next-token distributions and the top-1 agreement are taken over the rows
// that the compressed cache influences. Prompts with answers (.jsonl) are also scored by whether
// the compressed cache's own greedy continuation starts with the answer.
#include <cstdio>
#include <fstream>
#include <map>
#include <memory>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "app/commands.h"
#include "app/engine_options.h"
#include "app/eval_ruler.h"
#include "app/kv_options.h"
#include "app/prompts.h"
#include "app/svg_plot.h"
#include "model/fidelity.h"
#include "model/generate.h"
#include "model/prefill_compression.h"

namespace fairkv::app {

namespace {

struct EvalArgs {
  std::string model, prompts, policies = "full,streaming,snapkv,pyramidkv,adakv",
                              budgets = "20%,40%,60%", json_out, svg_out;
  int n_predict = 32;
  std::string suite, contexts = "1k,2k,4k", tasks;
  int samples = 2;
  uint64_t seed = 1;
  bool show = false;
  std::string dump, sensitivity_out;
  EngineOptions engine;
  KvOptions kv;
};

struct Budget {
  std::string text;
  bool share = false;  // "20%": a share of the prompt's tokens
  double value = 0;
};

std::vector<Budget> parse_budgets(const std::string& s) {
  std::vector<Budget> out;
  for (const auto& t : split_list(s)) {
    Budget b{t, !t.empty() && t.back() == '%', 0};
    try {
      size_t used = 0;
      b.value = std::stod(b.share ? t.substr(0, t.size() - 1) : t, &used);
      if (used != t.size() - (b.share ? 1 : 0)) throw std::invalid_argument(t);
    } catch (const std::exception&) {
      throw UsageError("--budgets: '" + t + "': expected a token count (64) or a share (20%)");
    }
    if (!(b.value > 0) || (b.share && b.value > 100))
      throw UsageError("--budgets: '" + t + "': expected a positive count or a share in (0, 100]%");
    out.push_back(b);
  }
  if (out.empty()) throw UsageError("--budgets: expected at least one budget");
  return out;
}

struct Cell {
  double kl = 0, top1 = 0, kv_bytes = 0;
  int solved = 0, with_answer = 0, n = 0;
};

void run(const EvalArgs& a) {
  const auto m = model::Model::load(a.model, a.engine.load(a.model));
  const auto prompts = read_prompts(a.prompts);
  const auto policies = split_list(a.policies);
  const auto budgets = parse_budgets(a.budgets);
  if (policies.empty()) throw UsageError("--policies: expected at least one policy");
  if (a.n_predict < 1) throw UsageError("-n: expected at least 1 token");
  kernels::ThreadPool pool(a.engine.n_threads());
  const int64_t V = m->config.n_vocab;
  const kv::CompressionConfig base = a.kv.config();

  std::map<std::pair<size_t, size_t>, Cell> cells;  // (policy, budget)
  for (size_t pi = 0; pi < prompts.size(); ++pi) {
    const auto& pr = prompts[pi];
    const auto ids = m->tokenizer.encode(pr.text, m->tokenizer.add_bos());
    const int64_t P = int64_t(ids.size());
    // Reference: the full cache's greedy continuation and its rows.
    model::GenerateOptions full;
    full.n_predict = a.n_predict;
    full.sampler.temp = 0;
    full.kv_type = a.kv.kv_type();
    full.activations = a.engine.act();
    const auto ref = model::generate(*m, pool, ids, full);
    std::vector<int32_t> forced = ref.output;
    if (!forced.empty() && m->tokenizer.is_eog(forced.back())) forced.pop_back();
    const auto ref_rows = model::teacher_force(*m, pool, ids, forced, full);
    for (size_t po = 0; po < policies.size(); ++po)
      for (size_t bi = 0; bi < budgets.size(); ++bi) {
        fmt::print(stderr, "\reval: prompt {}/{} ({} tokens), {} @ {}          ", pi + 1,
                   prompts.size(), P, policies[po], budgets[bi].text);
        const auto& b = budgets[bi];
        int64_t budget = b.share ? std::max<int64_t>(1, int64_t(b.value / 100.0 * double(P) + 0.5))
                                 : int64_t(b.value);
        // Every score-based policy keeps the observation window: a smaller budget means the
        // window alone.
        budget = std::max(budget, base.window);
        auto comp = model::make_prefill_compression(
            a.kv.config(policies[po], policies[po] == "full" ? 0 : budget), *m);
        model::GenerateOptions opt = full;
        comp->attach(opt);
        size_t kv_bytes = 0;
        const auto rows = model::teacher_force(*m, pool, ids, forced, opt, &kv_bytes);
        // Row 0 comes from the prefill itself, before compression: compare the rest.
        Cell& c = cells[{po, bi}];
        if (!forced.empty()) {
          const auto f = model::compare_rows(std::span(ref_rows).subspan(size_t(V)),
                                             std::span(rows).subspan(size_t(V)), V);
          c.kl += f.kl;
          c.top1 += f.top1;
        } else {
          c.top1 += 1;
        }
        c.kv_bytes += double(kv_bytes);
        ++c.n;
        if (pr.answer) {
          model::GenerateOptions g = opt;
          g.n_predict = a.n_predict;
          const auto out = model::generate(*m, pool, ids, g);
          std::string text = m->tokenizer.decode(out.output);
          if (!text.empty() && text[0] == ' ') text.erase(0, 1);
          ++c.with_answer;
          if (text.rfind(*pr.answer, 0) == 0) ++c.solved;
        }
      }
  }
  fmt::print(stderr, "\n");

  nlohmann::json records = nlohmann::json::array();
  fmt::print("{:<12} {:>8} {:>10} {:>8} {:>12} {:>10}\n", "policy", "budget", "KL", "top-1",
             "KV bytes", "accuracy");
  std::vector<Series> series;
  for (size_t po = 0; po < policies.size(); ++po) {
    Series s{policies[po], {}};
    for (size_t bi = 0; bi < budgets.size(); ++bi) {
      const Cell& c = cells[{po, bi}];
      const double n = std::max(1, c.n);
      nlohmann::json r = {{"policy", policies[po]},
                          {"budget", budgets[bi].text},
                          {"kl", c.kl / n},
                          {"top1", c.top1 / n},
                          {"kv_bytes", c.kv_bytes / n}};
      std::string acc = "-";
      if (c.with_answer > 0) {
        r["accuracy"] = double(c.solved) / c.with_answer;
        acc = fmt::format("{}/{}", c.solved, c.with_answer);
      }
      records.push_back(r);
      fmt::print("{:<12} {:>8} {:>10.5f} {:>8.3f} {:>12.0f} {:>10}\n", policies[po],
                 budgets[bi].text, c.kl / n, c.top1 / n, c.kv_bytes / n, acc);
      s.points.push_back({budgets[bi].value, c.top1 / n});
    }
    series.push_back(std::move(s));
  }
  if (!a.json_out.empty()) {
    std::ofstream out(a.json_out);
    if (!out) throw std::runtime_error(a.json_out + ": cannot write (--json)");
    out << records.dump(2) << "\n";
  }
  if (!a.svg_out.empty()) {
    std::ofstream out(a.svg_out);
    if (!out) throw std::runtime_error(a.svg_out + ": cannot write (--svg)");
    out << svg_line_chart(
        "Top-1 agreement with the full cache",
        budgets[0].share ? "budget (% of prompt tokens)" : "budget (tokens per head)",
        "top-1 agreement", series);
  }
}

}  // namespace

void add_eval_command(CLI::App& app) {
  auto a = std::make_shared<EvalArgs>();
  CLI::App* cmd =
      app.add_subcommand("eval", "Fidelity of KV compression policies vs the full cache");
  cmd->add_option("-m,--model", a->model, "GGUF model file")->required();
  cmd->add_option("--prompts", a->prompts,
                  "Text file (one prompt per line), folder of .txt, or .jsonl");
  auto* pol = cmd->add_option("--policies", a->policies,
                              "Comma-separated policies (--suite ruler: every policy)")
                  ->capture_default_str();
  auto* bud = cmd->add_option("--budgets", a->budgets,
                              "Comma-separated budgets: tokens per head (64) or shares (20%); "
                              "--suite ruler: shares, 10%,20%,50%")
                  ->capture_default_str();
  cmd->add_option("--suite", a->suite, "Generated suite instead of --prompts: ruler")
      ->check(CLI::IsMember({"ruler"}));
  cmd->add_option("--contexts", a->contexts, "--suite ruler: context lengths (1k,2k,4k)")
      ->capture_default_str();
  cmd->add_option("--tasks", a->tasks, "--suite ruler: comma-separated tasks (all)");
  cmd->add_option("--samples", a->samples, "--suite ruler: samples per task and context")
      ->capture_default_str();
  cmd->add_option("--seed", a->seed, "--suite ruler: generation seed")->capture_default_str();
  cmd->add_option("--dump", a->dump,
                  "--suite ruler: write the samples as {prompt, answer} .jsonl and stop");
  cmd->add_option("--sensitivity-out", a->sensitivity_out,
                  "--suite ruler: write EpiCache's layer sensitivity (key similarity of its "
                  "block-wise caches to the full ones) for --kv-layer-sensitivity");
  cmd->add_flag("--show", a->show, "--suite ruler: print each sample's answers and full output");
  cmd->add_option("-n,--n-predict", a->n_predict, "Continuation tokens scored per prompt")
      ->capture_default_str();
  add_engine_options(*cmd, a->engine);
  cmd->add_option("--json", a->json_out, "Write the records as JSON");
  cmd->add_option("--svg", a->svg_out, "Write a plot of top-1 agreement against budget");
  add_kv_options(*cmd, a->kv, /*with_policy=*/false);
  cmd->callback([a, pol, bud] {
    if (a->suite == "ruler") {
      if (!a->prompts.empty()) throw UsageError("--prompts: not with --suite ruler");
      RulerArgs r;
      r.model = a->model;
      r.policies = pol->count() ? a->policies : "";
      r.budgets = bud->count() ? a->budgets : "";
      r.contexts = a->contexts;
      r.tasks = a->tasks;
      r.samples = a->samples;
      r.seed = a->seed;
      r.show = a->show;
      r.dump = a->dump;
      r.sensitivity_out = a->sensitivity_out;
      r.json_out = a->json_out;
      r.svg_out = a->svg_out;
      r.engine = a->engine;
      r.kv = a->kv;
      run_ruler(r);
      return;
    }
    if (a->prompts.empty()) throw UsageError("--prompts: required (or --suite ruler)");
    run(*a);
  });
}

}  // namespace fairkv::app
