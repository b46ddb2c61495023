#include "model/config.h"

#include <fmt/format.h>

namespace fairkv::model {

namespace {

int positive_int(const gguf::File& f, const std::string& key, int64_t max) {
  const int64_t v = f.get_int(key);
  if (v <= 0 || v > max)
    throw gguf::Error(
        fmt::format("{}: {}: expected an integer in [1, {}], got {}", f.path(), key, max, v));
  return int(v);
}

}  // namespace

ModelConfig read_config(const gguf::File& f) {
  ModelConfig c;
  c.arch = f.get_string("general.architecture");
  if (c.arch != "llama" && c.arch != "qwen2")
    throw gguf::Error(fmt::format(
        "{}: general.architecture: unsupported architecture '{}' (supported: llama, qwen2)",
        f.path(), c.arch));
  c.name = f.find_string("general.name").value_or(c.arch);
  const std::string a = c.arch + ".";
  c.n_layers = positive_int(f, a + "block_count", gguf::kMaxBlockCount);
  c.n_embd = positive_int(f, a + "embedding_length", 1 << 20);
  c.n_heads = positive_int(f, a + "attention.head_count", 1 << 12);
  c.n_kv_heads = f.find(a + "attention.head_count_kv")
                     ? positive_int(f, a + "attention.head_count_kv", 1 << 12)
                     : c.n_heads;
  c.n_ff = positive_int(f, a + "feed_forward_length", 1 << 22);
  c.n_ctx_train = f.find_int(a + "context_length").value_or(4096);
  if (c.n_heads % c.n_kv_heads != 0)
    throw gguf::Error(
        fmt::format("{}: {}attention.head_count_kv: {} does not divide the {} query "
                    "heads",
                    f.path(), a, c.n_kv_heads, c.n_heads));
  // head_dim: explicit key_length when present (Mistral-style), else embd / heads.
  if (f.find(a + "attention.key_length")) {
    c.head_dim = positive_int(f, a + "attention.key_length", 1 << 12);
  } else {
    if (c.n_embd % c.n_heads != 0)
      throw gguf::Error(fmt::format("{}: {}embedding_length: {} is not a multiple of the {} heads",
                                    f.path(), a, c.n_embd, c.n_heads));
    c.head_dim = c.n_embd / c.n_heads;
  }
  if (c.head_dim % 2 != 0)
    throw gguf::Error(
        fmt::format("{}: head size {} must be even for rotary embeddings", f.path(), c.head_dim));
  if (auto rot = f.find_int(a + "rope.dimension_count"); rot && *rot != c.head_dim)
    throw gguf::Error(
        fmt::format("{}: {}rope.dimension_count: partial rotary ({} of {}) is not "
                    "supported",
                    f.path(), a, *rot, c.head_dim));
  c.rope_base = float(f.find_float(a + "rope.freq_base").value_or(10000.0));
  c.norm_eps = float(f.find_float(a + "attention.layer_norm_rms_epsilon").value_or(1e-5));
  if (!(c.rope_base > 0))
    throw gguf::Error(fmt::format("{}: {}rope.freq_base: expected > 0", f.path(), a));
  if (!(c.norm_eps > 0 && c.norm_eps < 1))
    throw gguf::Error(
        fmt::format("{}: {}attention.layer_norm_rms_epsilon: expected in (0, 1)", f.path(), a));
  // qwen2 rotates halves (NEOX); llama's GGUF layout rotates interleaved pairs.
  c.rope_style = c.arch == "qwen2" ? kernels::RopeStyle::Neox : kernels::RopeStyle::Interleaved;
  c.qkv_bias = c.arch == "qwen2";
  // Vocabulary size: from the embedding tensor, which every model has.
  const gguf::TensorInfo* emb = f.find_tensor("token_embd.weight");
  if (!emb) throw gguf::Error(fmt::format("{}: tensor 'token_embd.weight' is missing", f.path()));
  if (emb->dims.size() != 2 || emb->dims[0] != c.n_embd)
    throw gguf::Error(fmt::format("{}: tensor 'token_embd.weight': expected shape [{}, vocab]",
                                  f.path(), c.n_embd));
  c.n_vocab = int(emb->dims[1]);
  return c;
}

}  // namespace fairkv::model
