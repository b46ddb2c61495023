// Options of the forward pass shared by the commands that run a model: -t, --activations and
// --no-mmap.
#pragma once

#include <CLI/CLI.hpp>
#include <cstdint>
#include <string>

#include "formats/gguf.h"
#include "kernels/matmul.h"

namespace fairkv::app {

// MemAvailable of /proc/meminfo in bytes; 0 when unknown.
uint64_t available_memory();
// Throws std::invalid_argument, starting with `what`, when `bytes` exceed the memory available:
// work that cannot fit is refused before it starts, not ended by the allocator.
void check_fits(double bytes, const std::string& what);

struct EngineOptions {
  int threads = 0;                   // 0: every core
  std::string activations = "ggml";  // llama.cpp's rounding by default: its numbers, its speed
  bool mmap = false;  // default: read the weights into memory (faster decode, see gguf::Load)

  int n_threads() const;
  kernels::Activations act() const;  // throws std::invalid_argument naming --activations
  // How to load `path`: mapped with --mmap, or when the file does not fit in the memory
  // available now (reading it would only swap; a note on stderr says so); read otherwise.
  gguf::Load load(const std::string& path) const;
};

void add_engine_options(CLI::App& cmd, EngineOptions& o);

}  // namespace fairkv::app
