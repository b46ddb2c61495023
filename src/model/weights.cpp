#include "model/weights.h"

#include <cstdio>

#include <fmt/format.h>
#include <fmt/ranges.h>

#include "kernels/finite.h"

namespace fairkv::model {

kernels::DType dtype_of(gguf::TensorType t) {
  switch (t) {
    case gguf::TensorType::F32:
      return kernels::DType::F32;
    case gguf::TensorType::F16:
      return kernels::DType::F16;
    case gguf::TensorType::BF16:
      return kernels::DType::BF16;
    case gguf::TensorType::Q8_0:
      return kernels::DType::Q8_0;
    case gguf::TensorType::Q4_0:
      return kernels::DType::Q4_0;
    case gguf::TensorType::Q4_1:
      return kernels::DType::Q4_1;
    case gguf::TensorType::Q5_0:
      return kernels::DType::Q5_0;
    case gguf::TensorType::Q5_1:
      return kernels::DType::Q5_1;
    case gguf::TensorType::Q2_K:
      return kernels::DType::Q2_K;
    case gguf::TensorType::Q3_K:
      return kernels::DType::Q3_K;
    case gguf::TensorType::Q4_K:
      return kernels::DType::Q4_K;
    case gguf::TensorType::Q5_K:
      return kernels::DType::Q5_K;
    case gguf::TensorType::Q6_K:
      return kernels::DType::Q6_K;
  }
  return kernels::DType::F32;
}

namespace {

struct Binder {
  const gguf::File& f;
  Weights& w;

  const gguf::TensorInfo& find(const std::string& name, std::vector<int64_t> dims) const {
    const gguf::TensorInfo* t = f.find_tensor(name);
    if (!t) throw gguf::Error(fmt::format("{}: tensor '{}' is missing", f.path(), name));
    if (t->dims != dims)
      throw gguf::Error(fmt::format("{}: tensor '{}': expected shape [{}], got [{}]", f.path(),
                                    name, fmt::join(dims, ", "), fmt::join(t->dims, ", ")));
    return *t;
  }
  kernels::WeightMatrix matrix(const std::string& name, int64_t rows, int64_t cols) const {
    const gguf::TensorInfo& t = find(name, {cols, rows});
    return kernels::WeightMatrix{dtype_of(t.type), rows, cols, f.data(t), 0};
  }
  // A vector used as float32: zero-copy when stored as F32, converted once otherwise.
  const float* vec(const std::string& name, int64_t n) const {
    const gguf::TensorInfo& t = find(name, {n});
    if (t.type == gguf::TensorType::F32) return reinterpret_cast<const float*>(f.data(t));
    auto buf = std::make_unique<std::vector<float>>(n);
    kernels::dequantize_row(dtype_of(t.type), f.data(t), buf->data(), n);
    w.owned.push_back(std::move(buf));
    return w.owned.back()->data();
  }
};

}  // namespace

void check_finite(const gguf::File& f) {
  for (const gguf::TensorInfo& t : f.tensors()) {
    int64_t n = 1;
    for (int64_t d : t.dims) n *= d;
    const int64_t bad = kernels::first_non_finite(dtype_of(t.type), f.data(t), n);
    if (bad >= 0)
      throw gguf::Error(
          fmt::format("{}: tensor '{}': element {} is not a finite number (NaN or "
                      "infinite){}",
                      f.path(), t.name, bad,
                      kernels::block_size(dtype_of(t.type)) > 1 ? " in its block's scale" : ""));
  }
}

Weights bind_weights(const gguf::File& f, const ModelConfig& c) {
  // A block_count below the layers the file holds would run a truncated model without a word.
  for (const gguf::TensorInfo& t : f.tensors()) {
    int layer = -1;
    if (std::sscanf(t.name.c_str(), "blk.%d.", &layer) == 1 && layer >= c.n_layers)
      throw gguf::Error(fmt::format("{}: tensor '{}': layer {} is past {}.block_count = {}",
                                    f.path(), t.name, layer, c.arch, c.n_layers));
  }
  Weights w;
  Binder b{f, w};
  w.tok_embd = b.matrix("token_embd.weight", c.n_vocab, c.n_embd);
  w.output_norm = b.vec("output_norm.weight", c.n_embd);
  w.output = f.find_tensor("output.weight") ? b.matrix("output.weight", c.n_vocab, c.n_embd)
                                            : w.tok_embd;  // tied output
  for (int l = 0; l < c.n_layers; ++l) {
    const std::string p = fmt::format("blk.{}.", l);
    LayerWeights L;
    L.attn_norm = b.vec(p + "attn_norm.weight", c.n_embd);
    L.wq = b.matrix(p + "attn_q.weight", c.q_dim(), c.n_embd);
    L.wk = b.matrix(p + "attn_k.weight", c.kv_dim(), c.n_embd);
    L.wv = b.matrix(p + "attn_v.weight", c.kv_dim(), c.n_embd);
    L.wo = b.matrix(p + "attn_output.weight", c.n_embd, c.q_dim());
    if (c.qkv_bias) {
      L.bq = b.vec(p + "attn_q.bias", c.q_dim());
      L.bk = b.vec(p + "attn_k.bias", c.kv_dim());
      L.bv = b.vec(p + "attn_v.bias", c.kv_dim());
    }
    L.ffn_norm = b.vec(p + "ffn_norm.weight", c.n_embd);
    L.w_gate = b.matrix(p + "ffn_gate.weight", c.n_ff, c.n_embd);
    L.w_up = b.matrix(p + "ffn_up.weight", c.n_ff, c.n_embd);
    L.w_down = b.matrix(p + "ffn_down.weight", c.n_embd, c.n_ff);
    w.layers.push_back(L);
  }
  return w;
}

}  // namespace fairkv::model
