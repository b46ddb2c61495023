// `fairkv importance`: a HeadKV head-importance file for a model, from retrieval prompts.
//
// HeadKV (Fu et al., arXiv 2410.19258) budgets each head by its retrieval-reasoning score. For
// every {"prompt", "answer"} record the answer is teacher-forced after the prompt, as one prefill
// of prompt ++ answer (the last answer token left out), whose last A rows (A answer tokens) are
// exactly the queries that generate the answer: model::WindowObserver hands their softmax
// probabilities over. The needle is located as the answer's tokens inside the prompt. A query
// head scores, per answer token, the attention it puts on the needle positions that hold that
// token (--score mass, HeadKV's variant), or 1 when its most attended position is one of them
// (--score retrieval, Wu et al.'s retrieval score). Scores are summed over prompts, averaged over
// each GQA group (the cache is per KV head) and normalised to sum 1.
#include <cstdio>
#include <fstream>
#include <iostream>
#include <memory>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "app/commands.h"
#include "app/engine_options.h"
#include "app/head_importance_file.h"
#include "app/prompts.h"
#include "kv/compress.h"
#include "model/generate.h"
#include "tokenizer/tokenizer.h"

namespace fairkv::app {

namespace {

struct ImportanceArgs {
  std::string model, prompts, out, score = "mass";
  EngineOptions engine;
};

// The answer's tokens as they follow the prompt: the tail of encode(prompt + " " + answer) when
// its head is the prompt's own tokens, else the answer encoded alone.
std::vector<int32_t> answer_tokens(const tokenizer::Tokenizer& tok, const std::string& prompt,
                                   const std::vector<int32_t>& ids, const std::string& answer) {
  const auto whole = tok.encode(prompt + " " + answer, tok.add_bos());
  if (whole.size() > ids.size() && std::equal(ids.begin(), ids.end(), whole.begin()))
    return {whole.begin() + std::ptrdiff_t(ids.size()), whole.end()};
  return tok.encode(" " + answer, false);
}

void run(const ImportanceArgs& a) {
  const auto how = kv::parse_importance_score(a.score, "--score");
  const auto m = model::Model::load(a.model, a.engine.load(a.model));
  const auto prompts = read_prompts(a.prompts);
  kernels::ThreadPool pool(a.engine.n_threads());
  const auto& c = m->config;
  const int L = c.n_layers, H = c.n_kv_heads, G = c.group();
  std::vector<double> scores(size_t(L) * size_t(H) * size_t(G), 0.0);
  int used = 0;
  int64_t steps = 0;
  for (size_t i = 0; i < prompts.size(); ++i) {
    const auto& pr = prompts[i];
    if (!pr.answer) {
      fmt::print(stderr, "\nimportance: {}: no answer, skipped\n", pr.name);
      continue;
    }
    const auto ids = m->tokenizer.encode(pr.text, m->tokenizer.add_bos());
    const auto ans = answer_tokens(m->tokenizer, pr.text, ids, *pr.answer);
    const auto span = kv::find_answer_span(ids, ans);
    if (ans.empty() || !span) {
      fmt::print(stderr, "\nimportance: {}: the answer's tokens are not in the prompt, skipped\n",
                 pr.name);
      continue;
    }
    fmt::print(stderr, "\rimportance: prompt {}/{} ({} tokens, needle at {}-{})    ", i + 1,
               prompts.size(), ids.size(), span->first, span->second);
    // prompt ++ answer without its last token: the last A rows generate the A answer tokens.
    std::vector<int32_t> seq = ids;
    seq.insert(seq.end(), ans.begin(), ans.end() - 1);
    const int64_t rows = int64_t(ans.size());
    model::WindowObserver obs;
    obs.window = rows;
    obs.observe = [&](size_t, int layer, int kv_head, const float* probs, int group, int64_t window,
                      int64_t n) {
      if (window != rows || n != int64_t(seq.size()) || group != G)
        throw std::runtime_error("importance: unexpected observation window");
      // Each (layer, KV head) writes its own slots: safe from several threads.
      kv::accumulate_retrieval_scores(probs, group, rows, n, seq, ans, span->first, span->second,
                                      how, &scores[(size_t(layer) * H + size_t(kv_head)) * G]);
    };
    model::GenerateOptions opt;
    opt.n_predict = 0;
    opt.activations = a.engine.act();
    opt.prefill_observer = &obs;
    model::generate(*m, pool, seq, opt);
    ++used;
    steps += rows;
  }
  fmt::print(stderr, "\n");
  if (used == 0) throw UsageError("--prompts: no record with an answer found in its prompt");
  const kv::HeadImportance imp = kv::importance_from_scores(scores, L, H, G);
  nlohmann::json j = head_importance_json(imp);
  j["source"] = fmt::format(
      "fairkv importance --score {}: {} prompts of {} ({} answer tokens) on {}, query heads "
      "averaged over each GQA group of {}, normalised to sum 1",
      a.score, used, a.prompts, steps, a.model, G);
  fmt::print(stderr, "{:>6}", "layer");
  for (int h = 0; h < H; ++h) fmt::print(stderr, " {:>8}", fmt::format("head {}", h));
  fmt::print(stderr, "\n");
  for (int l = 0; l < L; ++l) {
    fmt::print(stderr, "{:>6}", l);
    for (int h = 0; h < H; ++h) fmt::print(stderr, " {:>8.4f}", imp.importance[size_t(l) * H + h]);
    fmt::print(stderr, "\n");
  }
  if (a.out.empty()) {
    std::cout << j.dump(2) << "\n";
    return;
  }
  std::ofstream out(a.out);
  if (!out) throw std::runtime_error(a.out + ": cannot write (-o)");
  out << j.dump(2) << "\n";
  fmt::print(stderr, "wrote {}\n", a.out);
}

}  // namespace

void add_importance_command(CLI::App& app) {
  auto a = std::make_shared<ImportanceArgs>();
  CLI::App* cmd = app.add_subcommand(
      "importance", "HeadKV head-importance file from retrieval prompts (--kv-head-importance)");
  cmd->add_option("-m,--model", a->model, "GGUF model file")->required();
  cmd->add_option("--prompts", a->prompts,
                  ".jsonl of {\"prompt\", \"answer\"} records, the answer quoted in the prompt")
      ->required();
  cmd->add_option("-o,--output", a->out, "Importance JSON to write (default: stdout)");
  cmd->add_option("--score", a->score,
                  "mass: attention on the needle's matching tokens (HeadKV); retrieval: top-1 "
                  "hits (Wu et al.)")
      ->capture_default_str();
  add_engine_options(*cmd, a->engine);
  cmd->callback([a] { run(*a); });
}

}  // namespace fairkv::app
