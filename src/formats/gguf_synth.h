// Llama-shaped GGUF files with random weights (`fairkv synth`): the shapes of real models, so
// that placement, memory and speed can be studied at full size without downloading weights.
//
// The file carries everything llama.cpp needs to load and run it: the llama.* hyper-parameters,
// a SentencePiece-style ("llama") vocabulary of exactly n_vocab tokens (<unk>, <s>, </s>, the 256
// byte tokens, then word pieces), and the tensors token_embd, output_norm, output and
// blk.N.{attn_norm, attn_q, attn_k, attn_v, attn_output, ffn_norm, ffn_gate, ffn_up, ffn_down}
// with ggml's dims convention (dims[0] = input features). Norm weights are F32 ones; every
// projection is drawn from (approximately) N(0, std^2), deterministic from the seed, and encoded
// to the requested type by the caller's quantizer (formats sits below kernels, so the encoder is
// passed in rather than linked).
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <string_view>
#include <vector>

#include "formats/gguf.h"

namespace fairkv::gguf {

struct SynthShape {
  std::string name;
  int64_t n_layer = 0;
  int64_t n_embd = 0;
  int64_t n_head = 0;
  int64_t n_head_kv = 0;
  int64_t head_dim = 0;  // may differ from n_embd / n_head (Mistral-Small: 5120 / 32 != 128)
  int64_t n_ff = 0;
  int64_t n_vocab = 0;
  int64_t n_ctx = 0;
  float rope_base = 10000.0f;
  float norm_eps = 1e-5f;
};

// The presets, which `fairkv synth` writes and `fairkv plan --shape` builds synthetic profiles
// of: tiny (tests), tinyllama-1.1b, llama-3-8b, llama-3.3-70b, mistral-24b (Mistral-Small),
// llama-2-7b, stories260K, quant-256 (rows of 256 for the quantized-type test models).
const std::vector<SynthShape>& synth_shapes();
// The preset of that name; throws Error listing the valid names when there is none.
const SynthShape& synth_shape(std::string_view name);

// The vocabulary: tokens, scores and token types (1 normal, 2 unknown, 3 control, 6 byte).
struct SynthVocab {
  std::vector<std::string> tokens;
  std::vector<float> scores;
  std::vector<int32_t> types;
};
// Exactly n_vocab distinct tokens; throws Error when n_vocab < 3 + 256 + 1.
SynthVocab synth_vocab(int64_t n_vocab);

// Encodes n floats (a multiple of the type's block size) as `type` into dst.
using Quantizer = std::function<void(TensorType type, const float* src, uint8_t* dst, int64_t n)>;

struct SynthOptions {
  TensorType type = TensorType::F16;  // of every projection and the embedding
  int64_t n_layer = 0;                // 0: the shape's own
  uint64_t seed = 0;
  float std = 0.02f;
};

// The ggml file type (general.file_type) that llama.cpp reports for files of this weight type.
uint32_t llama_file_type(TensorType t);

// Parameters (elements) of the model the shape and options describe.
int64_t synth_param_count(const SynthShape& s, const SynthOptions& o);

// A Writer holding the whole model, its tensors as row sources: nothing is generated until
// write()/serialize(), which produce one chunk of one tensor at a time. Throws Error on a shape
// the type cannot encode (an inner dimension not a multiple of the block size).
Writer synth_llama(const SynthShape& shape, const SynthOptions& opts, Quantizer quantize);

// The weights before encoding: `n` values of row `row` of tensor `name`, drawn from the seed.
// Exposed so that tests can check the written file against them.
void synth_row(uint64_t seed, std::string_view name, int64_t row, float std, float* dst, int64_t n);

}  // namespace fairkv::gguf
