// `fairkv perplexity`: the perplexity of a model over a text file, with llama-perplexity's
// conventions (model/perplexity.h) and its output: the running estimate "[1]x.xxxx,[2]..." on
// stdout as chunks finish, then "Final estimate: PPL = x.xxxx +/- y.yyyyy".
#include <chrono>
#include <cstdio>
#include <fstream>
#include <memory>
#include <string>

#include "app/commands.h"
#include "app/engine_options.h"
#include "app/kv_options.h"
#include "kernels/clock.h"
#include "kernels/threadpool.h"
#include "model/model.h"
#include "model/perplexity.h"

namespace fairkv::app {

namespace {

struct PerplexityArgs {
  std::string model, file;
  KvOptions kv;  // only its types
  EngineOptions engine;
  model::PerplexityOptions opt;
};

void perplexity(const PerplexityArgs& a) {
  std::ifstream in(a.file, std::ios::binary);
  if (!in) throw UsageError(a.file + ": cannot read the text file (-f)");
  const std::string text((std::istreambuf_iterator<char>(in)), {});
  model::PerplexityOptions opt = a.opt;
  try {
    opt.kv_type = a.kv.kv_type();
  } catch (const std::invalid_argument& e) {
    throw UsageError(e.what());
  }
  opt.activations = a.engine.act();
  // llama-perplexity's n_batch is at most the n_seq chunks it runs side by side.
  if (opt.n_batch > opt.n_ctx) opt.n_batch -= opt.n_batch % opt.n_ctx;

  const auto m = model::Model::load(a.model, a.engine.load(a.model));
  kernels::ThreadPool pool(a.engine.n_threads());
  // As llama-perplexity (common_tokenize with add_special, special tokens not parsed): the
  // whole file at once, BOS first only when the vocabulary asks for one.
  auto t0 = std::chrono::steady_clock::now();
  const auto tokens = m->tokenizer.encode(text, m->tokenizer.add_bos());
  std::fprintf(stderr, "perplexity: %zu tokens, tokenization took %.1f ms\n", tokens.size(),
               kernels::ms_since(t0));
  const int n_chunk_max = int(tokens.size() / size_t(std::max(1, opt.n_ctx)));
  const int n_chunk = opt.n_chunks < 0 ? n_chunk_max : std::min(opt.n_chunks, n_chunk_max);
  std::fprintf(stderr,
               "perplexity: calculating perplexity over %d chunks, n_ctx=%d, batch_size=%d, "
               "n_seq=%d\n",
               n_chunk, opt.n_ctx,
               std::min(opt.n_batch, opt.n_ctx * std::max(1, opt.n_batch / opt.n_ctx)),
               std::max(1, opt.n_batch / opt.n_ctx));
  t0 = std::chrono::steady_clock::now();
  const auto r = model::perplexity(*m, pool, tokens, opt, [](int chunk, double ppl) {
    std::printf("[%d]%.4lf,", chunk + 1, ppl);
    std::fflush(stdout);
  });
  std::printf("\n");
  std::printf("Final estimate: PPL = %.4lf +/- %.5lf\n", r.ppl(), r.error());
  std::fflush(stdout);
  const double ms = kernels::ms_since(t0);
  std::fprintf(stderr, "perplexity: %lld tokens scored, %.2f s, %.1f tok/s run\n",
               static_cast<long long>(r.count), ms / 1000,
               ms > 0 ? 1000.0 * double(n_chunk) * opt.n_ctx / ms : 0.0);
}

}  // namespace

void add_perplexity_command(CLI::App& app) {
  auto a = std::make_shared<PerplexityArgs>();
  CLI::App* cmd = app.add_subcommand(
      "perplexity", "Perplexity over a text file, as llama.cpp's llama-perplexity computes it");
  cmd->add_option("-m,--model", a->model, "GGUF model file")->required();
  cmd->add_option("-f,--file", a->file, "Text file")->required();
  cmd->add_option("-c,--ctx-size", a->opt.n_ctx, "Tokens per chunk (the second half is scored)")
      ->capture_default_str()
      ->check(CLI::Range(4, 1 << 20));
  cmd->add_option("--chunks", a->opt.n_chunks, "At most this many chunks (-1: all)")
      ->capture_default_str();
  cmd->add_option("-b,--batch-size", a->opt.n_batch,
                  "Tokens per forward call; from 2 x ctx-size on, chunks run side by side")
      ->capture_default_str()
      ->check(CLI::PositiveNumber);
  add_kv_type_options(*cmd, a->kv);
  add_engine_options(*cmd, a->engine);
  cmd->callback([a] { perplexity(*a); });
}

}  // namespace fairkv::app
