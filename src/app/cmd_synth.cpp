// `fairkv synth`: write a GGUF with random weights of a real model's shape (llama.cpp loads it),
// one chunk of one tensor in memory at a time, with progress on stderr.
#include <fmt/format.h>

#include <chrono>
#include <cstdio>
#include <memory>
#include <string>

#include "app/commands.h"
#include "formats/gguf.h"
#include "formats/gguf_synth.h"
#include "kernels/types.h"
#include "model/weights.h"

namespace fairkv::app {

namespace {

struct SynthArgs {
  std::string out, shape, type = "f16";
  int64_t layers = 0;
  uint64_t seed = 0;
};

std::string size_str(double b) {
  if (b >= 1024.0 * 1024 * 1024) return fmt::format("{:.2f} GiB", b / (1024.0 * 1024 * 1024));
  return fmt::format("{:.1f} MiB", b / (1024.0 * 1024));
}

std::string count_str(int64_t n) {
  if (n >= 1000000000) return fmt::format("{:.3f} B", double(n) / 1e9);
  if (n >= 1000000) return fmt::format("{:.1f} M", double(n) / 1e6);
  return fmt::format("{:.1f} K", double(n) / 1e3);
}

void synth(const SynthArgs& a) {
  const gguf::SynthShape& shape = gguf::synth_shape(a.shape);
  const auto type = gguf::tensor_type_from_name(a.type);
  if (!type) throw UsageError("--type: expected f32, f16, bf16, q8_0 or q4_0, got " + a.type);
  if (a.layers < 0) throw UsageError("--layers: expected a number of layers >= 1");
  gguf::SynthOptions opts;
  opts.type = *type;
  opts.n_layer = a.layers;
  opts.seed = a.seed;
  gguf::Writer w = gguf::synth_llama(
      shape, opts, [](gguf::TensorType t, const float* src, uint8_t* dst, int64_t n) {
        kernels::quantize_row(model::dtype_of(t), src, dst, n);
      });

  const int64_t n_layer = a.layers > 0 ? a.layers : shape.n_layer;
  std::fprintf(stderr, "synth: %s, %lld layers, %s weights, %s parameters -> %s\n",
               shape.name.c_str(), static_cast<long long>(n_layer), gguf::tensor_type_name(*type),
               count_str(gguf::synth_param_count(shape, opts)).c_str(), a.out.c_str());
  const auto start = std::chrono::steady_clock::now();
  auto last = start;
  w.set_progress([&](uint64_t done, uint64_t total) {
    const auto now = std::chrono::steady_clock::now();
    if (done < total && now - last < std::chrono::milliseconds(500)) return;
    last = now;
    std::fprintf(stderr, "\rsynth: %s of %s (%3.0f%%)", size_str(double(done)).c_str(),
                 size_str(double(total)).c_str(),
                 total ? 100.0 * double(done) / double(total) : 100.0);
    std::fflush(stderr);
  });
  w.write(a.out);
  const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  std::fprintf(stderr, "\nsynth: wrote %s in %.1f s\n", a.out.c_str(), s);
}

}  // namespace

void add_synth_command(CLI::App& app) {
  auto a = std::make_shared<SynthArgs>();
  std::string names;
  for (const gguf::SynthShape& s : gguf::synth_shapes())
    names += (names.empty() ? "" : ", ") + s.name;
  CLI::App* cmd = app.add_subcommand(
      "synth", "Write a GGUF with random weights of a real model's shape (loadable by llama.cpp)");
  cmd->add_option("-o,--output", a->out, "Output GGUF file")->required();
  cmd->add_option("--shape", a->shape, "Model shape: " + names)->required();
  cmd->add_option("--type", a->type, "Weight type: f32, f16, bf16, q8_0 or q4_0 (norms stay f32)")
      ->capture_default_str();
  cmd->add_option("--layers", a->layers, "Number of layers (default: the shape's own)")
      ->check(CLI::Range(int64_t(1), gguf::kMaxBlockCount));
  cmd->add_option("--seed", a->seed, "Random seed of the weights")->capture_default_str();
  cmd->callback([a] { synth(*a); });
}

}  // namespace fairkv::app
