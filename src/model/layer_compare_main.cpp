// layer_compare: fairkv's intermediate results against llama.cpp's, tensor by tensor.
//
//   layer_compare -m MODEL --ids 1,2,3 [--next 4,5] [--activations ggml|ggml-order|f32] [-t 2]
//   [--save DIR] DUMP_DIR
//
// Runs the prompt (one prefill) and then the --next ids one decode step each, as the SmolLM2
// goldens do (f32 KV cache), with a Forward tap (Forward::set_tap), and compares each tensor with
// DUMP_DIR/<step>.<name>.bin as scripts/goldens/llama_dump.cpp writes them from llama.cpp's eval
// callback on the same ids. Prints, per step and tensor in the order computed: the largest
// absolute difference, where, relative to the tensor's largest magnitude, and how many elements
// differ at all (0 means bitwise equal).
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

#include "kernels/threadpool.h"
#include "kv/cache.h"
#include "model/forward.h"
#include "model/model.h"

namespace {

using namespace fairkv;

std::vector<int32_t> parse_ids(const std::string& s) {
  std::vector<int32_t> out;
  std::stringstream ss(s);
  for (std::string item; std::getline(ss, item, ',');)
    if (!item.empty()) out.push_back(std::stoi(item));
  return out;
}

// A llama_dump file's floats, or empty when there is none.
std::vector<float> read_dump(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  if (!f) return {};
  int64_t ne[4];
  f.read(reinterpret_cast<char*>(ne), sizeof ne);
  std::vector<float> v(size_t(ne[0] * ne[1] * ne[2] * ne[3]));
  f.read(reinterpret_cast<char*>(v.data()), std::streamsize(v.size() * 4));
  if (!f) throw std::runtime_error(path + ": shorter than its shape says");
  return v;
}

int run(int argc, char** argv) {
  std::string model, ids, next, dir, save;
  int threads = 2;
  kernels::Activations act = kernels::Activations::LikeGgml;
  for (int i = 1; i < argc; ++i) {
    const std::string f = argv[i];
    auto value = [&]() -> std::string {
      if (i + 1 >= argc) throw std::runtime_error("missing value after " + f);
      return argv[++i];
    };
    if (f == "-m")
      model = value();
    else if (f == "--ids")
      ids = value();
    else if (f == "--next")
      next = value();
    else if (f == "-t")
      threads = std::stoi(value());
    else if (f == "--save")
      save = value();
    else if (f == "--activations")
      act = [](const std::string& v) {
        return v == "f32"          ? kernels::Activations::Float32
               : v == "ggml-order" ? kernels::Activations::GgmlOrder
                                   : kernels::Activations::LikeGgml;
      }(value());
    else if (dir.empty())
      dir = f;
    else
      throw std::runtime_error("unexpected argument " + f);
  }
  if (model.empty() || ids.empty() || dir.empty())
    throw std::runtime_error("usage: layer_compare -m MODEL --ids 1,2 [--next 3] DUMP_DIR");
  const auto m = model::Model::load(model, gguf::Load::Read);
  const auto& c = m->config;
  kernels::ThreadPool pool(threads);
  model::Forward fwd(c, m->weights, pool, act);
  kv::SequenceCache cache(c.n_layers, c.n_kv_heads, c.head_dim, kv::KvType::F32);
  int step = 0;
  fwd.set_tap([&](const std::string& name, const float* data, int64_t rows, int64_t cols) {
    if (!save.empty()) {  // fairkv's tensor in llama_dump's format
      std::ofstream o(save + "/" + std::to_string(step) + "." + name + ".bin", std::ios::binary);
      const int64_t ne[4] = {cols, rows, 1, 1};
      o.write(reinterpret_cast<const char*>(ne), sizeof ne);
      o.write(reinterpret_cast<const char*>(data), std::streamsize(rows * cols * 4));
    }
    const std::vector<float> ref =
        read_dump(dir + "/" + std::to_string(step) + "." + name + ".bin");
    if (ref.empty()) return;
    const size_t n = size_t(rows * cols);
    if (ref.size() != n) {
      std::printf("%d %-16s size %zu vs llama.cpp %zu\n", step, name.c_str(), n, ref.size());
      return;
    }
    double worst = 0, mag = 0;
    size_t at = 0, differ = 0;
    for (size_t i = 0; i < n; ++i) {
      const double d = std::fabs(double(data[i]) - double(ref[i]));
      mag = std::fmax(mag, std::fabs(double(ref[i])));
      differ += std::memcmp(&data[i], &ref[i], 4) != 0;
      if (d > worst) {
        worst = d;
        at = i;
      }
    }
    std::printf("%d %-16s max |diff| %.3g at [%zu][%zu] (%.3g of max %.3g), %zu of %zu differ\n",
                step, name.c_str(), worst, at / size_t(cols), at % size_t(cols),
                mag > 0 ? worst / mag : 0.0, mag, differ, n);
  });
  const std::vector<int32_t> prompt = parse_ids(ids);
  model::BatchItem item{&cache, prompt, false};
  fwd.run({&item, 1});
  for (int32_t id : parse_ids(next)) {
    ++step;
    model::BatchItem one{&cache, {&id, 1}, false};
    fwd.run({&one, 1});
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    return run(argc, argv);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "layer_compare: %s\n", e.what());
    return 1;
  }
}
