// `fairkv run`: generate a continuation of a prompt, streamed to stdout, with timings on stderr.
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <memory>
#include <string>

#include <fmt/format.h>

#include "app/commands.h"
#include "app/engine_options.h"
#include "app/kv_options.h"
#include "app/prompts.h"
#include "app/run_devices.h"
#include "app/sampler_options.h"
#include "kernels/threadpool.h"
#include "model/chat_prompt.h"
#include "model/generate.h"
#include "model/model.h"
#include "model/prefill_compression.h"
#include "tokenizer/chat_template.h"

#include <nlohmann/json.hpp>

namespace fairkv::app {

namespace {

struct RunArgs {
  std::string model, prompt, prompt_file, logits_out;
  KvOptions kv;
  EngineOptions engine;
  DeviceOptions dev;
  bool temp_given = false, prompt_given = false, file_given = false;
  int n_predict = 64;
  int64_t ctx_size = 0;
  SamplerOptions sampling;
  model::SamplerConfig sampler;  // sampling.resolve()
  bool no_bos = false;
  // --chat: the prompt is the user's message, rendered with the model's chat template.
  bool chat = false;
  std::string chat_template, system;
};

void write_logits(const std::string& path, const std::vector<float>& rows) {
  std::ofstream out(path, std::ios::binary);
  if (!out) throw std::runtime_error(path + ": cannot open for writing (--logits-out)");
  out.write(reinterpret_cast<const char*>(rows.data()), std::streamsize(rows.size() * 4));
  if (!out) throw std::runtime_error(path + ": write failed (--logits-out)");
}

// The prompt of -p or -f.
std::string prompt_text(const RunArgs& a) {
  if (a.prompt_given == a.file_given)
    throw UsageError("give the prompt with exactly one of -p TEXT or -f FILE");
  if (a.prompt_given) {
    if (a.prompt.empty()) throw UsageError("-p: the prompt is empty");
    return a.prompt;
  }
  // A pipe (-f <(...)) is fine; a directory would read as an I/O error far from its cause.
  if (std::filesystem::is_directory(a.prompt_file))
    throw UsageError(a.prompt_file + ": a directory, expected a prompt file (-f)");
  std::ifstream in(a.prompt_file, std::ios::binary);
  if (!in) throw UsageError(a.prompt_file + ": cannot read the prompt file (-f)");
  std::string text(std::istreambuf_iterator<char>(in), {});
  if (text.empty()) throw UsageError(a.prompt_file + ": the prompt file is empty (-f)");
  return text;
}

// The prompt's token ids. With --chat the text is one user message (after the --system one),
// rendered by the model's tokenizer.chat_template or the family --chat-template names, and the
// control tokens the template writes are parsed as tokens. BOS is added only where the
// vocabulary wants it and the template did not already write it.
std::vector<int32_t> prompt_ids(const RunArgs& a, const model::Model& m, const std::string& text) {
  const auto& tok = m.tokenizer;
  if (!a.chat) return tok.encode(text, tok.add_bos() && !a.no_bos);
  const tokenizer::ChatTemplate t = model::chat_template(m, a.chat_template);
  std::vector<tokenizer::ChatMessage> messages;
  if (!a.system.empty()) messages.push_back({"system", a.system});
  messages.push_back({"user", text});
  return model::chat_prompt_ids(m, t, messages, !a.no_bos);
}

void run_devices(const RunArgs& a) {
  if (a.chat) throw UsageError("--chat: one device only for now (drop --devices)");
  DeviceRun r;
  r.model = a.model;
  if (!a.dev.batch_file.empty()) {
    if (a.prompt_given || a.file_given)
      throw UsageError("give the prompts with either --batch-file or -p / -f, not both");
    for (const Prompt& p : read_prompts(a.dev.batch_file)) r.prompts.push_back(p.text);
  } else {
    r.prompts.push_back(prompt_text(a));
  }
  if (model::shapes_logits(a.sampler))
    throw UsageError(
        "--devices: decoding on devices has no penalties or --logit-bias for now; drop them");
  if (a.sampler.temp > 0) {
    if (a.temp_given)
      throw UsageError("--devices: decoding on devices is greedy only for now; use --temp 0");
    r.greedy_note = true;
  }
  if (a.n_predict < 0) throw UsageError("-n: expected a number of tokens >= 0");
  if (!a.logits_out.empty()) throw UsageError("--logits-out: single device only");
  if (!a.kv.stats_out.empty())
    throw UsageError("--kv-stats-out: single device only (the ranks hold the kept lengths)");
  if (a.ctx_size < 0) throw UsageError("-c/--ctx-size: expected a number of tokens >= 0");
  r.ctx_size = a.ctx_size;
  r.add_bos = !a.no_bos;
  r.n_predict = a.n_predict;
  r.threads = a.engine.n_threads();
  r.kv_type = a.kv.kv_type();
  r.activations = a.engine.act();
  const kv::CompressionConfig kc = a.kv.config();
  if (kc.policy != kv::Policy::Full) r.compression = &kc;
  r.dev = a.dev;
  set_activity(fmt::format("running on {} devices", a.dev.devices));
  run_on_devices(r);
}

void run(const RunArgs& a) {
  if (a.dev.wanted()) return run_devices(a);
  const std::string text = prompt_text(a);
  if (a.n_predict < 0) throw UsageError("-n: expected a number of tokens >= 0");
  set_activity("loading the model " + a.model);
  const auto m = model::Model::load(a.model, a.engine.load(a.model));
  kernels::ThreadPool pool(a.engine.n_threads());

  const auto prompt = prompt_ids(a, *m, text);
  const model::ModelConfig& c = m->config;
  const int64_t tokens = a.ctx_size > 0 ? a.ctx_size : int64_t(prompt.size()) + a.n_predict;
  check_fits(
      double(tokens) * c.n_layers * c.n_kv_heads * double(a.kv.kv_type().token_bytes(c.head_dim)),
      fmt::format("-n/-c: the KV cache of {} tokens", tokens));
  model::GenerateOptions opt;
  opt.n_predict = a.n_predict;
  opt.ctx_size = a.ctx_size;
  opt.sampler = a.sampler;
  opt.keep_logits = !a.logits_out.empty();
  opt.kv_type = a.kv.kv_type();
  opt.activations = a.engine.act();
  std::unique_ptr<model::PrefillCompression> comp;
  const kv::CompressionConfig kc = a.kv.config();
  if (kc.policy != kv::Policy::Full || !a.kv.stats_out.empty()) {
    comp = model::make_prefill_compression(kc, *m);
    comp->attach(opt);
  }
  if (comp) {
    // Statistics of the prompt's cache right after compression: a summary on stderr, the
    // per-head lengths as JSON with --kv-stats-out.
    opt.after_prefill = [compress = opt.after_prefill, &a, &kc,
                         pc = comp.get()](kv::SequenceCache& cache) {
      if (compress) compress(cache);
      std::fprintf(stderr, "kv: %s: %lld prompt tokens, %zu bytes held; kept per head:\n",
                   kc.describe().c_str(), static_cast<long long>(cache.n_past), cache.bytes());
      if (kc.blockwise())
        std::fprintf(stderr, "kv: block-wise prefill: at most %zu bytes held at once\n",
                     pc->peak_bytes());
      for (int l = 0; l < cache.n_layers(); ++l) {
        std::string row;
        for (int h = 0; h < cache.n_kv_heads(); ++h)
          row += fmt::format(" {}", cache.head(l, h).size());
        std::fprintf(stderr, "kv:   layer %d:%s\n", l, row.c_str());
      }
      if (a.kv.stats_out.empty()) return;
      const kv::SequenceCache* caches[] = {&cache};
      const int64_t prompt_tokens[] = {cache.n_past};
      nlohmann::json j = kv::stats_json(caches, prompt_tokens);
      j["policy"] = kc.describe();
      if (kc.blockwise()) j["peak_kv_bytes"] = pc->peak_bytes();
      std::ofstream out(a.kv.stats_out);
      if (!out) throw std::runtime_error(a.kv.stats_out + ": cannot write (--kv-stats-out)");
      out << j.dump(2) << "\n";
    };
  }

  set_activity(
      fmt::format("generating {} tokens after a prompt of {}", a.n_predict, prompt.size()));
  const auto res = model::generate(*m, pool, prompt, opt, [&](int32_t tok) {
    if (m->tokenizer.is_eog(tok)) return;
    const std::string piece = m->tokenizer.decode_token(tok);
    std::fwrite(piece.data(), 1, piece.size(), stdout);
    std::fflush(stdout);
  });
  std::fputc('\n', stdout);
  std::fflush(stdout);
  if (!a.logits_out.empty()) write_logits(a.logits_out, res.logits);
  auto rate = [](int64_t n, double ms) { return ms > 0 ? 1000.0 * double(n) / ms : 0.0; };
  std::fprintf(stderr, "prefill: %lld tokens, %.2f ms, %.2f tok/s\n",
               static_cast<long long>(res.prefill_tokens), res.prefill_ms,
               rate(res.prefill_tokens, res.prefill_ms));
  std::fprintf(stderr, "decode: %lld tokens, %.2f ms, %.2f tok/s\n",
               static_cast<long long>(res.decode_tokens), res.decode_ms,
               rate(res.decode_tokens, res.decode_ms));
}

}  // namespace

void add_run_command(CLI::App& app) {
  auto a = std::make_shared<RunArgs>();
  CLI::App* cmd = app.add_subcommand("run", "Generate a continuation of a prompt");
  cmd->add_option("-m,--model", a->model, "GGUF model file")->required();
  auto* prompt = cmd->add_option("-p,--prompt", a->prompt, "Prompt text");
  auto* file = cmd->add_option("-f,--file", a->prompt_file, "Read the prompt from a file");
  cmd->add_option("-n,--n-predict", a->n_predict, "Tokens to generate")->capture_default_str();
  add_engine_options(*cmd, a->engine);
  cmd->add_option("-c,--ctx-size", a->ctx_size, "Context size in tokens (0: prompt + n)")
      ->capture_default_str();
  CLI::Option* temp = add_sampler_options(*cmd, a->sampling);
  add_kv_options(*cmd, a->kv);
  cmd->add_option("--logits-out", a->logits_out,
                  "Write float32 logits rows over prompt ++ continuation to FILE");
  cmd->add_flag("--no-bos", a->no_bos, "Do not add a BOS token");
  cmd->add_flag("--chat,--conversation", a->chat,
                "The prompt is a user message: render it with the model's chat template "
                "(tokenizer.chat_template) and stop at the end of the turn (-cnv too)");
  cmd->add_option("--chat-template", a->chat_template,
                  "Chat template family instead of the model's: chatml, llama3, llama2, mistral "
                  "(implies --chat)");
  cmd->add_option("--system", a->system, "System message of the chat (implies --chat)");
  add_device_options(*cmd, a->dev);
  cmd->callback([a, temp, prompt, file] {
    a->temp_given = temp->count() > 0;
    a->prompt_given = prompt->count() > 0;
    a->file_given = file->count() > 0;
    a->sampler = a->sampling.resolve();  // checked before the model loads
    a->chat = a->chat || !a->chat_template.empty() || !a->system.empty();
    run(*a);
  });
}

}  // namespace fairkv::app
