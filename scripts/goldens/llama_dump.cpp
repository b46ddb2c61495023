// llama_dump: runs one prompt (given as ids) through llama.cpp's libllama with the goldens'
// settings (f32 K/V caches, flash attention off, no repacked weights) and writes the f32
// tensors its graph computes, through ggml's eval callback (cb_eval), one file each:
// DIR/<step>.<tensor name>.bin = int64 ne[4], then the floats in ne0-fastest order. The graph's
// names (attn_norm-0, Qcur-0, kq_soft_max-0, ffn_out-0, result_output, ...) say what each is.
// For comparing fairkv's intermediate results with llama.cpp's, layer by layer; built by hand
// like llama_greedy.cpp:
//   c++ -std=c++17 -O2 scripts/goldens/llama_dump.cpp -I$PEER/include -L$PEER/bin
//   -Wl,-rpath,$PEER/bin
//       -lllama -lggml -lggml-base -o /tmp/llama_dump
//   llama_dump -m MODEL --ids 1,2,3 [--next 4,5] [-t 2] [--layers 0,1,29] -o DIR
// --next feeds those ids one by one after the prompt (decode steps 1, 2, ...).
#include <ggml-backend.h>
#include <ggml.h>
#include <llama.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <set>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

namespace {

std::vector<int> parse_list(const std::string& s) {
  std::vector<int> out;
  std::stringstream ss(s);
  for (std::string item; std::getline(ss, item, ',');)
    if (!item.empty()) out.push_back(std::atoi(item.c_str()));
  return out;
}

struct Dump {
  std::string dir;
  std::set<int> layers;  // empty: all
  int step = 0;
  std::vector<char> buf;
};

// Whether a tensor name's layer suffix ("-12") is one of the layers asked for.
bool wanted(const Dump& d, const char* name) {
  if (d.layers.empty()) return true;
  const char* dash = std::strrchr(name, '-');
  if (!dash) return true;  // no layer: embeddings, output
  char* end = nullptr;
  const long l = std::strtol(dash + 1, &end, 10);
  if (end == dash + 1 || *end != '\0') return true;
  return d.layers.count(int(l)) > 0;
}

bool on_tensor(ggml_tensor* t, bool ask, void* user) {
  auto& d = *static_cast<Dump*>(user);
  if (ask) return t->type == GGML_TYPE_F32 && wanted(d, t->name);
  if (t->type != GGML_TYPE_F32) return true;
  const size_t bytes = ggml_nbytes(t);
  d.buf.resize(bytes);
  ggml_backend_tensor_get(t, d.buf.data(), 0, bytes);
  std::vector<float> out;
  out.reserve(size_t(ggml_nelements(t)));
  for (int64_t i3 = 0; i3 < t->ne[3]; ++i3)
    for (int64_t i2 = 0; i2 < t->ne[2]; ++i2)
      for (int64_t i1 = 0; i1 < t->ne[1]; ++i1)
        for (int64_t i0 = 0; i0 < t->ne[0]; ++i0) {
          float v;
          std::memcpy(
              &v, d.buf.data() + i0 * t->nb[0] + i1 * t->nb[1] + i2 * t->nb[2] + i3 * t->nb[3], 4);
          out.push_back(v);
        }
  const std::string path = d.dir + "/" + std::to_string(d.step) + "." + t->name + ".bin";
  FILE* f = std::fopen(path.c_str(), "wb");
  if (!f) throw std::runtime_error("cannot write " + path);
  const int64_t ne[4] = {t->ne[0], t->ne[1], t->ne[2], t->ne[3]};
  std::fwrite(ne, sizeof ne, 1, f);
  std::fwrite(out.data(), 4, out.size(), f);
  std::fclose(f);
  return true;
}

void quiet_log(ggml_log_level level, const char* text, void*) {
  if (level == GGML_LOG_LEVEL_ERROR) std::fputs(text, stderr);
}

int run(int argc, char** argv) {
  std::string model, ids, next, dir;
  int threads = 2;
  Dump d;
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string f = argv[i], v = argv[i + 1];
    if (f == "-m")
      model = v;
    else if (f == "--ids")
      ids = v;
    else if (f == "--next")
      next = v;
    else if (f == "-t")
      threads = std::atoi(v.c_str());
    else if (f == "--layers")
      for (int l : parse_list(v)) d.layers.insert(l);
    else if (f == "-o")
      dir = v;
    else
      throw std::runtime_error("unknown argument " + f);
  }
  if (model.empty() || ids.empty() || dir.empty())
    throw std::runtime_error("usage: llama_dump -m MODEL --ids 1,2 [--next 3,4] -o DIR");
  d.dir = dir;
  llama_log_set(quiet_log, nullptr);
  llama_backend_init();
  llama_model_params mp = llama_model_default_params();
  mp.n_gpu_layers = 0;
  mp.use_extra_bufts = false;
  llama_model* m = llama_model_load_from_file(model.c_str(), mp);
  if (!m) throw std::runtime_error("cannot load " + model);
  std::vector<llama_token> prompt;
  for (int v : parse_list(ids)) prompt.push_back(v);
  const std::vector<int> more = parse_list(next);
  llama_context_params cp = llama_context_default_params();
  cp.n_ctx = uint32_t(prompt.size() + more.size() + 16);
  cp.n_batch = cp.n_ctx;
  cp.n_ubatch = cp.n_ctx;
  cp.n_seq_max = 1;
  cp.n_threads = threads;
  cp.n_threads_batch = threads;
  cp.flash_attn_type = LLAMA_FLASH_ATTN_TYPE_DISABLED;
  cp.type_k = GGML_TYPE_F32;
  cp.type_v = GGML_TYPE_F32;
  cp.offload_kqv = false;
  cp.no_perf = true;
  cp.cb_eval = on_tensor;
  cp.cb_eval_user_data = &d;
  llama_context* ctx = llama_init_from_model(m, cp);
  if (!ctx) throw std::runtime_error("cannot create a context");
  if (llama_decode(ctx, llama_batch_get_one(prompt.data(), int32_t(prompt.size()))))
    throw std::runtime_error("llama_decode failed");
  for (int id : more) {
    ++d.step;
    llama_token t = id;
    if (llama_decode(ctx, llama_batch_get_one(&t, 1)))
      throw std::runtime_error("llama_decode failed");
  }
  llama_free(ctx);
  llama_model_free(m);
  llama_backend_free();
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    return run(argc, argv);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "llama_dump: %s\n", e.what());
    return 1;
  }
}
