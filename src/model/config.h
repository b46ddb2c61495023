// The hyper-parameters of a Llama-family model, read from GGUF metadata.
#pragma once

#include <cstdint>
#include <string>

#include "formats/gguf.h"
#include "kernels/ops.h"

namespace fairkv::model {

struct ModelConfig {
  std::string arch;  // "llama" or "qwen2"
  std::string name;
  int n_layers = 0;
  int n_embd = 0;
  int n_heads = 0;     // query heads
  int n_kv_heads = 0;  // KV heads: one unit per KV head per layer
  int head_dim = 0;
  int n_ff = 0;
  int n_vocab = 0;
  int64_t n_ctx_train = 0;
  float rope_base = 10000.0f;
  float norm_eps = 1e-5f;
  kernels::RopeStyle rope_style = kernels::RopeStyle::Interleaved;
  bool qkv_bias = false;  // qwen2

  int group() const { return n_heads / n_kv_heads; }  // query heads per KV head
  int64_t q_dim() const { return int64_t(n_heads) * head_dim; }
  int64_t kv_dim() const { return int64_t(n_kv_heads) * head_dim; }
};

// Reads and validates the configuration; throws gguf::Error naming the file and the key, or
// "unsupported architecture" for anything but llama and qwen2.
ModelConfig read_config(const gguf::File& f);

}  // namespace fairkv::model
