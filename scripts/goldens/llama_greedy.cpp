// llama_greedy: greedy decoding with llama.cpp's libllama, printing what fairkv's goldens need
// as one JSON object on stdout: the prompt's ids, the continuation's ids and, for every
// generated step, the top-k token ids with their logits (optionally the full logits row of the
// first few steps).
//
// Built and run only by scripts/make-goldens, against the llama.cpp peer's libllama.so and
// llama.h (never by CMake: fairkv does not link llama.cpp). The settings are the ones the goldens
// promise: f32 K and V caches, flash attention off, CPU only without repacked weights, a fixed
// thread count.
//
//   llama_greedy -m MODEL (--prompt-file FILE | --ids 1,2,3) [-n 64] [-k 10] [-t 2]
//                [--full-steps 0] [--no-parse-special] [--no-add-special]
//
// Generation does not stop at an end-of-generation token: the goldens compare logits step by
// step, and the steps after an EOG are as good a check of the arithmetic as any other.
#include <llama.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <numeric>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

namespace {

struct Args {
  std::string model, prompt_file, ids;
  int n_predict = 64, top_k = 10, threads = 2, full_steps = 0;
  bool parse_special = true, add_special = true;
};

[[noreturn]] void usage(const char* why) {
  std::fprintf(stderr,
               "llama_greedy: %s\nusage: llama_greedy -m MODEL (--prompt-file FILE | --ids 1,2,3) "
               "[-n 64] [-k 10] [-t 2] [--full-steps 0] [--no-parse-special] "
               "[--no-add-special]\n",
               why);
  std::exit(2);
}

int to_int(const char* s, const char* flag) {
  char* end = nullptr;
  const long v = std::strtol(s, &end, 10);
  if (end == s || *end != '\0' || v < 0 || v > 1000000) usage(flag);
  return static_cast<int>(v);
}

Args parse_args(int argc, char** argv) {
  Args a;
  for (int i = 1; i < argc; ++i) {
    const std::string f = argv[i];
    auto value = [&]() -> const char* {
      if (i + 1 >= argc) usage(("missing value after " + f).c_str());
      return argv[++i];
    };
    if (f == "-m")
      a.model = value();
    else if (f == "--prompt-file")
      a.prompt_file = value();
    else if (f == "--ids")
      a.ids = value();
    else if (f == "-n")
      a.n_predict = to_int(value(), "-n");
    else if (f == "-k")
      a.top_k = to_int(value(), "-k");
    else if (f == "-t")
      a.threads = to_int(value(), "-t");
    else if (f == "--full-steps")
      a.full_steps = to_int(value(), "--full-steps");
    else if (f == "--no-parse-special")
      a.parse_special = false;
    else if (f == "--no-add-special")
      a.add_special = false;
    else
      usage(("unknown argument " + f).c_str());
  }
  if (a.model.empty()) usage("-m MODEL is required");
  if (a.prompt_file.empty() == a.ids.empty()) usage("give exactly one of --prompt-file or --ids");
  if (a.threads < 1 || a.top_k < 1) usage("-t and -k must be at least 1");
  return a;
}

// Only errors reach stderr: llama.cpp's progress lines would bury the script's own messages.
void quiet_log(ggml_log_level level, const char* text, void*) {
  if (level == GGML_LOG_LEVEL_ERROR) std::fputs(text, stderr);
}

std::vector<llama_token> tokenize(const llama_vocab* vocab, const Args& a) {
  if (!a.ids.empty()) {
    std::vector<llama_token> out;
    std::stringstream ss(a.ids);
    for (std::string item; std::getline(ss, item, ',');)
      out.push_back(to_int(item.c_str(), "--ids"));
    return out;
  }
  std::ifstream in(a.prompt_file, std::ios::binary);
  if (!in) usage(("cannot read " + a.prompt_file).c_str());
  const std::string text((std::istreambuf_iterator<char>(in)), {});
  // A first call with no room returns minus the count needed.
  const int need = -llama_tokenize(vocab, text.data(), static_cast<int32_t>(text.size()), nullptr,
                                   0, a.add_special, a.parse_special);
  std::vector<llama_token> out(static_cast<size_t>(std::max(need, 0)));
  if (llama_tokenize(vocab, text.data(), static_cast<int32_t>(text.size()), out.data(),
                     static_cast<int32_t>(out.size()), a.add_special, a.parse_special) != need)
    throw std::runtime_error("llama_tokenize failed");
  return out;
}

// %.9g prints every float so that it reads back to the same float.
void print_ids(const std::vector<llama_token>& ids) {
  std::printf("[");
  for (size_t i = 0; i < ids.size(); ++i) std::printf("%s%d", i ? ", " : "", ids[i]);
  std::printf("]");
}

void print_row(const float* logits, int n) {
  std::printf("[");
  for (int i = 0; i < n; ++i) std::printf("%s%.9g", i ? ", " : "", static_cast<double>(logits[i]));
  std::printf("]");
}

int run(const Args& a) {
  llama_log_set(quiet_log, nullptr);
  llama_backend_init();
  llama_model_params mp = llama_model_default_params();
  mp.n_gpu_layers = 0;
  // No repacked or AMX copies of the weights: ggml's plain CPU kernels are the reference. It also
  // keeps the goldens makeable where the CPU reports AMX but the sandbox does not enable it (the
  // AMX matmul dies with SIGILL on the first batch of more than one token).
  mp.use_extra_bufts = false;
  llama_model* model = llama_model_load_from_file(a.model.c_str(), mp);
  if (!model) throw std::runtime_error("cannot load " + a.model);
  const llama_vocab* vocab = llama_model_get_vocab(model);
  const int n_vocab = llama_vocab_n_tokens(vocab);

  std::vector<llama_token> prompt = tokenize(vocab, a);
  if (prompt.empty()) throw std::runtime_error("the prompt has no tokens");

  llama_context_params cp = llama_context_default_params();
  cp.n_ctx = static_cast<uint32_t>(prompt.size() + static_cast<size_t>(a.n_predict) + 16);
  cp.n_batch = cp.n_ctx;  // the whole prompt in one decode call
  cp.n_ubatch = cp.n_ctx;
  cp.n_seq_max = 1;
  cp.n_threads = a.threads;
  cp.n_threads_batch = a.threads;
  cp.flash_attn_type = LLAMA_FLASH_ATTN_TYPE_DISABLED;
  cp.type_k = GGML_TYPE_F32;
  cp.type_v = GGML_TYPE_F32;
  cp.offload_kqv = false;
  cp.no_perf = true;
  llama_context* ctx = llama_init_from_model(model, cp);
  if (!ctx) throw std::runtime_error("cannot create a context");

  std::vector<llama_token> out;
  std::vector<int> order(static_cast<size_t>(n_vocab));
  std::printf("{\"prompt_ids\": ");
  print_ids(prompt);
  std::printf(", \"steps\": [");
  std::vector<llama_token> feed = prompt;
  for (int step = 0; step < a.n_predict; ++step) {
    if (llama_decode(ctx, llama_batch_get_one(feed.data(), static_cast<int32_t>(feed.size()))))
      throw std::runtime_error("llama_decode failed at step " + std::to_string(step));
    const float* logits = llama_get_logits_ith(ctx, -1);
    // Highest logit first; the lower id wins a tie, so the choice is reproducible.
    std::iota(order.begin(), order.end(), 0);
    const int k = std::min(a.top_k, n_vocab);
    std::partial_sort(order.begin(), order.begin() + k, order.end(), [&](int x, int y) {
      return logits[x] != logits[y] ? logits[x] > logits[y] : x < y;
    });
    std::printf("%s\n  {\"top_ids\": [", step ? "," : "");
    for (int i = 0; i < k; ++i) std::printf("%s%d", i ? ", " : "", order[static_cast<size_t>(i)]);
    std::printf("], \"top_logits\": [");
    for (int i = 0; i < k; ++i)
      std::printf("%s%.9g", i ? ", " : "",
                  static_cast<double>(logits[order[static_cast<size_t>(i)]]));
    std::printf("]");
    if (step < a.full_steps) {
      std::printf(", \"logits\": ");
      print_row(logits, n_vocab);
    }
    std::printf("}");
    out.push_back(order[0]);
    feed.assign(1, order[0]);
  }
  std::printf("],\n \"ids\": ");
  print_ids(out);
  std::printf(", \"eog\": [");
  bool first = true;
  for (size_t i = 0; i < out.size(); ++i)
    if (llama_vocab_is_eog(vocab, out[i])) {
      std::printf("%s%zu", first ? "" : ", ", i);
      first = false;
    }
  std::printf("]}\n");

  llama_free(ctx);
  llama_model_free(model);
  llama_backend_free();
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    return run(parse_args(argc, argv));
  } catch (const std::exception& e) {
    std::fprintf(stderr, "llama_greedy: %s\n", e.what());
    return 1;
  }
}
