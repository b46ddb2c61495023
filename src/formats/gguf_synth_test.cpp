// Synthetic Llama GGUFs: presets, vocabulary, and a tiny model written to disk and read back,
// its every tensor compared with the generator's rows encoded by the kernels' quantizers.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <set>

#include "formats/gguf.h"
#include "formats/gguf_synth.h"
#include "formats/gguf_test_util.h"
#include "kernels/types.h"

namespace fairkv::gguf {
namespace {

namespace fs = std::filesystem;

kernels::DType dtype_of(TensorType t) {
  switch (t) {
    case TensorType::F32:
      return kernels::DType::F32;
    case TensorType::F16:
      return kernels::DType::F16;
    case TensorType::BF16:
      return kernels::DType::BF16;
    case TensorType::Q8_0:
      return kernels::DType::Q8_0;
    case TensorType::Q4_0:
      return kernels::DType::Q4_0;
    default:  // synth writes only the types above
      break;
  }
  return kernels::DType::F32;
}

void kernels_quantize(TensorType t, const float* src, uint8_t* dst, int64_t n) {
  kernels::quantize_row(dtype_of(t), src, dst, n);
}

TEST(GgufSynth, PresetsHaveTheRealModelsShapes) {
  const SynthShape& t = synth_shape("tinyllama-1.1b");
  EXPECT_EQ(t.n_layer, 22);
  EXPECT_EQ(t.n_embd, 2048);
  EXPECT_EQ(t.n_head, 32);
  EXPECT_EQ(t.n_head_kv, 4);
  EXPECT_EQ(t.head_dim, 64);
  EXPECT_EQ(t.n_ff, 5632);
  EXPECT_EQ(t.n_vocab, 32000);
  EXPECT_EQ(t.rope_base, 10000.0f);
  const SynthShape& l8 = synth_shape("llama-3-8b");
  EXPECT_EQ(l8.n_layer, 32);
  EXPECT_EQ(l8.n_head_kv, 8);
  EXPECT_EQ(l8.n_ff, 14336);
  EXPECT_EQ(l8.n_vocab, 128256);
  EXPECT_EQ(l8.rope_base, 500000.0f);
  const SynthShape& l70 = synth_shape("llama-3.3-70b");
  EXPECT_EQ(l70.n_layer, 80);
  EXPECT_EQ(l70.n_embd, 8192);
  EXPECT_EQ(l70.n_head, 64);
  EXPECT_EQ(l70.head_dim, 128);
  EXPECT_EQ(l70.n_ff, 28672);
  const SynthShape& m = synth_shape("mistral-24b");
  EXPECT_EQ(m.n_layer, 40);
  EXPECT_EQ(m.n_embd, 5120);
  EXPECT_EQ(m.head_dim, 128);  // not 5120 / 32
  EXPECT_EQ(m.n_ff, 32768);
  EXPECT_EQ(m.n_vocab, 131072);
  EXPECT_EQ(m.rope_base, 1e8f);
  // Published parameter counts (with untied output): TinyLlama 1.10B, Llama-3-8B 8.03B,
  // Llama-3-70B 70.6B, Mistral-Small-24B 23.6B.
  EXPECT_NEAR(synth_param_count(t, {}) / 1e9, 1.10, 0.01);
  EXPECT_NEAR(synth_param_count(l8, {}) / 1e9, 8.03, 0.01);
  EXPECT_NEAR(synth_param_count(l70, {}) / 1e9, 70.55, 0.05);
  EXPECT_NEAR(synth_param_count(m, {}) / 1e9, 23.57, 0.05);
  try {
    synth_shape("llama-9");
    ADD_FAILURE() << "accepted";
  } catch (const Error& e) {
    const std::string msg = e.what();
    EXPECT_NE(msg.find("'llama-9'"), std::string::npos) << msg;
    for (const SynthShape& s : synth_shapes()) {
      EXPECT_NE(msg.find(s.name), std::string::npos) << msg;
    }
  }
}

// data/models/quant is llama-quantize's output of this shape: every matrix row must be a whole
// number of 256-value K-quant blocks, or llama-quantize would pick another type for it.
TEST(GgufSynth, Quant256RowsTakeEveryBlockType) {
  const SynthShape& q = synth_shape("quant-256");
  for (int64_t row : {q.n_embd, q.n_head * q.head_dim, q.n_ff})  // the inner dims
    EXPECT_EQ(row % 256, 0) << row;
}

TEST(GgufSynth, VocabularyIsExactAndWellFormed) {
  for (int64_t n : {260, 512, 32000, 131072}) {
    const SynthVocab v = synth_vocab(n);
    ASSERT_EQ(static_cast<int64_t>(v.tokens.size()), n);
    ASSERT_EQ(v.scores.size(), v.tokens.size());
    ASSERT_EQ(v.types.size(), v.tokens.size());
    EXPECT_EQ(std::set<std::string>(v.tokens.begin(), v.tokens.end()).size(), v.tokens.size());
    EXPECT_EQ(v.tokens[0], "<unk>");
    EXPECT_EQ(v.types[0], 2);
    EXPECT_EQ(v.tokens[1], "<s>");
    EXPECT_EQ(v.types[1], 3);
    EXPECT_EQ(v.tokens[2], "</s>");
    EXPECT_EQ(v.types[2], 3);
    for (int b = 0; b < 256; ++b) {
      char buf[8];
      std::snprintf(buf, sizeof buf, "<0x%02X>", b);
      ASSERT_EQ(v.tokens[3 + b], buf);
      ASSERT_EQ(v.types[3 + b], 6);
    }
    EXPECT_EQ(v.tokens[259], "\xe2\x96\x81");
    for (size_t k = 259; k < v.tokens.size(); ++k) {
      ASSERT_EQ(v.types[k], 1) << k;
      ASSERT_FALSE(v.tokens[k].empty());
      if (k > 259) {
        ASSERT_LT(v.scores[k], v.scores[k - 1]) << k;
      }
    }
  }
  // Whole words with every prefix before them (llama.cpp merges pieces pairwise).
  const SynthVocab v = synth_vocab(32000);
  const std::set<std::string> all(v.tokens.begin(), v.tokens.end());
  for (const char* p : {"\xe2\x96\x81h", "\xe2\x96\x81he", "\xe2\x96\x81hel", "\xe2\x96\x81hell",
                        "\xe2\x96\x81hello", "\xe2\x96\x81the", "zz", "\xe2\x96\x81qx"}) {
    EXPECT_TRUE(all.count(p)) << p;
  }
  EXPECT_THROW(synth_vocab(259), Error);
}

// Every tensor of the written file equals the generator's rows encoded by the kernels'
// quantizer, and decodes to within the type's rounding of them.
void check_tiny(TensorType type, float tol) {
  SCOPED_TRACE(tensor_type_name(type));
  const SynthShape& shape = synth_shape("tiny");
  SynthOptions o;
  o.type = type;
  o.seed = 7;
  const fs::path path = fs::path(testing::TempDir()) /
                        (std::string("synth_tiny_") + tensor_type_name(type) + ".gguf");
  synth_llama(shape, o, kernels_quantize).write(path.string());
  File f = File::open(path.string());

  EXPECT_EQ(f.get_string("general.architecture"), "llama");
  EXPECT_EQ(f.get_int("general.file_type"), llama_file_type(type));
  EXPECT_EQ(f.get_int("llama.block_count"), 2);
  EXPECT_EQ(f.get_int("llama.embedding_length"), 64);
  EXPECT_EQ(f.get_int("llama.attention.head_count"), 4);
  EXPECT_EQ(f.get_int("llama.attention.head_count_kv"), 2);
  EXPECT_EQ(f.get_int("llama.rope.dimension_count"), 16);
  EXPECT_EQ(f.get_int("llama.context_length"), 256);
  EXPECT_EQ(f.get_int("llama.vocab_size"), 512);
  EXPECT_EQ(f.get_float("llama.rope.freq_base"), 10000.0);
  EXPECT_FLOAT_EQ(f.get_float("llama.attention.layer_norm_rms_epsilon"), 1e-5f);
  EXPECT_EQ(f.get_string("tokenizer.ggml.model"), "llama");
  EXPECT_EQ(f.get_strings("tokenizer.ggml.tokens").size(), 512u);
  EXPECT_EQ(f.get_numbers("tokenizer.ggml.scores").size(), 512u);
  EXPECT_EQ(f.get_numbers("tokenizer.ggml.token_type").size(), 512u);
  EXPECT_EQ(f.get_int("tokenizer.ggml.bos_token_id"), 1);
  EXPECT_EQ(f.get_int("tokenizer.ggml.eos_token_id"), 2);
  EXPECT_EQ(f.get_int("tokenizer.ggml.unknown_token_id"), 0);
  EXPECT_TRUE(f.get_bool("tokenizer.ggml.add_bos_token"));
  testing_util::check_llama_shapes(f);
  EXPECT_EQ(f.tensors().size(), 2u * 9u + 3u);

  int64_t params = 0;
  double sum = 0, sq = 0;
  int64_t n_proj = 0;
  for (const TensorInfo& t : f.tensors()) {
    params += t.n_elements;
    const int64_t in = t.dims[0], rows = t.n_elements / in;
    const uint64_t row_bytes = t.n_bytes / static_cast<uint64_t>(rows);
    std::vector<float> want(static_cast<size_t>(in)), got(static_cast<size_t>(in));
    std::vector<uint8_t> enc(row_bytes);
    const bool is_norm = t.name.find("norm") != std::string::npos;
    EXPECT_EQ(t.type, is_norm ? TensorType::F32 : type) << t.name;
    for (int64_t r = 0; r < rows; ++r) {
      const uint8_t* data = f.data(t) + r * row_bytes;
      kernels::dequantize_row(dtype_of(t.type), data, got.data(), in);
      if (is_norm) {
        for (float x : got) ASSERT_EQ(x, 1.0f) << t.name;
        continue;
      }
      synth_row(o.seed, t.name, r, o.std, want.data(), in);
      kernels_quantize(t.type, want.data(), enc.data(), in);
      ASSERT_EQ(std::memcmp(enc.data(), data, row_bytes), 0) << t.name << " row " << r;
      for (int64_t k = 0; k < in; ++k) {
        ASSERT_NEAR(got[k], want[k], tol) << t.name << " row " << r << " col " << k;
        sum += want[k];
        sq += double(want[k]) * want[k];
        ++n_proj;
      }
    }
  }
  EXPECT_EQ(params, synth_param_count(shape, o));
  // The weights have the asked-for scale: mean 0, std 0.02 (n ~ 200k samples).
  const double mean = sum / n_proj, sd = std::sqrt(sq / n_proj - mean * mean);
  EXPECT_LT(std::fabs(mean), 2e-4);
  EXPECT_NEAR(sd, 0.02, 0.0004);
  fs::remove(path);
}

TEST(GgufSynth, TinyRoundTripF32) {
  check_tiny(TensorType::F32, 0.0f);
}
TEST(GgufSynth, TinyRoundTripF16) {
  check_tiny(TensorType::F16, 0.07f * 0.001f);
}
TEST(GgufSynth, TinyRoundTripBF16) {
  check_tiny(TensorType::BF16, 0.07f * 0.008f);
}
TEST(GgufSynth, TinyRoundTripQ8_0) {
  check_tiny(TensorType::Q8_0, 0.07f / 127 * 0.6f);
}
TEST(GgufSynth, TinyRoundTripQ4_0) {
  check_tiny(TensorType::Q4_0, 0.07f / 8 * 1.05f);
}

TEST(GgufSynth, DeterministicFromTheSeedAndLayersOverride) {
  const SynthShape& shape = synth_shape("tiny");
  SynthOptions a;
  a.type = TensorType::Q8_0;
  a.seed = 1;
  SynthOptions b = a;
  b.seed = 2;
  const std::vector<uint8_t> ia = synth_llama(shape, a, kernels_quantize).serialize();
  EXPECT_EQ(synth_llama(shape, a, kernels_quantize).serialize(), ia);
  const std::vector<uint8_t> ib = synth_llama(shape, b, kernels_quantize).serialize();
  ASSERT_EQ(ib.size(), ia.size());
  EXPECT_NE(ib, ia);
  SynthOptions one = a;
  one.n_layer = 1;
  const std::vector<uint8_t> i1 = synth_llama(shape, one, kernels_quantize).serialize();
  File f = File::parse(i1.data(), i1.size(), "one.gguf");
  EXPECT_EQ(f.get_int("llama.block_count"), 1);
  EXPECT_EQ(f.tensors().size(), 9u + 3u);
  EXPECT_EQ(f.find_tensor("blk.1.attn_q.weight"), nullptr);
}

TEST(GgufSynth, RejectsShapesTheTypeCannotEncode) {
  SynthShape s = synth_shape("tiny");
  s.n_ff = 200;  // ffn_down's inner dimension is not a multiple of 32
  SynthOptions o;
  o.type = TensorType::Q8_0;
  try {
    synth_llama(s, o, kernels_quantize);
    ADD_FAILURE() << "accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("blk.0.ffn_down.weight"), std::string::npos) << e.what();
  }
}

}  // namespace
}  // namespace fairkv::gguf
