#include "app/engine_options.h"

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <stdexcept>
#include <thread>

#include <fmt/format.h>

#include "kernels/threadpool.h"

namespace fairkv::app {

int EngineOptions::n_threads() const {
  return threads > 0 ? threads : int(std::max(1u, std::thread::hardware_concurrency()));
}

kernels::Activations EngineOptions::act() const {
  if (activations == "ggml") return kernels::Activations::LikeGgml;
  if (activations == "ggml-order") return kernels::Activations::GgmlOrder;
  if (activations == "f32") return kernels::Activations::Float32;
  throw std::invalid_argument("--activations: expected ggml, ggml-order or f32, got '" +
                              activations + "'");
}

uint64_t available_memory() {
  std::ifstream in("/proc/meminfo");
  std::string key;
  uint64_t kib = 0;
  std::string unit;
  while (in >> key >> kib >> unit)
    if (key == "MemAvailable:") return kib * 1024;
  return 0;
}

void check_fits(double bytes, const std::string& what) {
  const uint64_t avail = available_memory();
  constexpr double gib = 1024.0 * 1024.0 * 1024.0;
  if (avail > 0 && bytes > double(avail))
    throw std::invalid_argument(
        fmt::format("{} needs {:.1f} GiB, more than the {:.1f} GiB of "
                    "memory available",
                    what, bytes / gib, double(avail) / gib));
}

gguf::Load EngineOptions::load(const std::string& path) const {
  if (mmap) return gguf::Load::Map;
  std::error_code ec;
  const uint64_t size = std::filesystem::file_size(path, ec);
  const uint64_t avail = available_memory();
  if (!ec && avail > 0 && size > avail - avail / 8) {
    std::fprintf(stderr,
                 "%s: %.1f GiB does not fit in the %.1f GiB of memory available: mapping it "
                 "instead of reading it (as --mmap)\n",
                 path.c_str(), double(size) / double(1 << 30), double(avail) / double(1 << 30));
    return gguf::Load::Map;
  }
  return gguf::Load::Read;  // a missing file fails in gguf::File::open with its own message
}

void add_engine_options(CLI::App& cmd, EngineOptions& o) {
  cmd.add_option("-t,--threads", o.threads, "Threads (default: all cores)")
      ->check(CLI::Range(1, kernels::kMaxThreads));
  cmd.add_option("--activations", o.activations,
                 "Inputs of the linear layers: ggml (rounded to the weight type as llama.cpp "
                 "does; faster), ggml-order (also llama.cpp's order of operations in every "
                 "step, for bitwise comparisons; slower) or f32 (exact)")
      ->capture_default_str();
  cmd.add_flag("--mmap,!--no-mmap", o.mmap,
               "Map the model file instead of reading it into memory (huge pages): faster start, "
               "shared page cache, slower decode (default: read, --no-mmap)");
}

}  // namespace fairkv::app
