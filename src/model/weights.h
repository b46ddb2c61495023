// Views of a model's tensors inside the mapped GGUF file, checked against the configuration.
#pragma once

#include <memory>
#include <vector>

#include "formats/gguf.h"
#include "kernels/matmul.h"
#include "model/config.h"

namespace fairkv::model {

struct LayerWeights {
  const float* attn_norm = nullptr;
  kernels::WeightMatrix wq, wk, wv, wo;  // wq: q_dim x embd, wk/wv: kv_dim x embd, wo: embd x q_dim
  const float* bq = nullptr;             // qwen2 biases, else null
  const float* bk = nullptr;
  const float* bv = nullptr;
  const float* ffn_norm = nullptr;
  kernels::WeightMatrix w_gate, w_up, w_down;  // gate/up: ff x embd, down: embd x ff
};

struct Weights {
  kernels::WeightMatrix tok_embd;  // vocab x embd
  const float* output_norm = nullptr;
  kernels::WeightMatrix output;  // vocab x embd (the embedding itself when tied)
  std::vector<LayerWeights> layers;
  // Float32 copies of small vectors stored in another type (norms, biases).
  std::vector<std::unique_ptr<std::vector<float>>> owned;
};

kernels::DType dtype_of(gguf::TensorType t);

// Throws gguf::Error naming the tensor and the element when a weight is NaN or infinite
// (kernels/finite.h: quantized tensors through their block scales).
void check_finite(const gguf::File& f);

// Binds every tensor; throws gguf::Error naming the tensor when one is missing or misshapen.
Weights bind_weights(const gguf::File& f, const ModelConfig& c);

}  // namespace fairkv::model
