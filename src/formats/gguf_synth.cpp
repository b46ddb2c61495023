// Llama-shaped GGUF with random weights: presets, vocabulary, weights (see gguf_synth.h).
#include "formats/gguf_synth.h"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <thread>
#include <unordered_set>

namespace fairkv::gguf {

namespace {

const std::string kSpace = "\xe2\x96\x81";  // "▁", SentencePiece's word-start marker

// Token types as llama.cpp numbers them.
constexpr int32_t kNormal = 1, kUnknown = 2, kControl = 3, kByte = 6;

uint64_t splitmix64(uint64_t& s) {
  uint64_t z = (s += 0x9e3779b97f4a7c15ULL);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
  return z ^ (z >> 31);
}

uint64_t fnv1a(std::string_view s) {
  uint64_t h = 0xcbf29ce484222325ULL;
  for (char c : s) h = (h ^ static_cast<unsigned char>(c)) * 0x100000001b3ULL;
  return h;
}

}  // namespace

const std::vector<SynthShape>& synth_shapes() {
  // name, layers, embd, heads, kv heads, head size, ffn, vocab, context, rope base, norm eps
  static const std::vector<SynthShape> shapes = {
      {"tiny", 2, 64, 4, 2, 16, 192, 512, 256, 10000.0f, 1e-5f},
      {"tinyllama-1.1b", 22, 2048, 32, 4, 64, 5632, 32000, 2048, 10000.0f, 1e-5f},
      {"llama-3-8b", 32, 4096, 32, 8, 128, 14336, 128256, 8192, 500000.0f, 1e-5f},
      {"llama-3.3-70b", 80, 8192, 64, 8, 128, 28672, 128256, 8192, 500000.0f, 1e-5f},
      {"mistral-24b", 40, 5120, 32, 8, 128, 32768, 131072, 32768, 100000000.0f, 1e-5f},
      {"llama-2-7b", 32, 4096, 32, 32, 128, 11008, 32000, 4096, 10000.0f, 1e-5f},
      {"stories260K", 5, 64, 8, 4, 8, 172, 512, 512, 10000.0f, 1e-5f},
      // Every row a multiple of 256, so that llama-quantize can give every tensor any ggml type
      // (K-quants included); one layer and 320 tokens keep a Q8_0 copy under 600 KB
      // (data/models/quant).
      {"quant-256", 1, 256, 4, 2, 64, 256, 320, 256, 10000.0f, 1e-5f},
  };
  return shapes;
}

const SynthShape& synth_shape(std::string_view name) {
  std::vector<std::string> names;
  for (const SynthShape& s : synth_shapes()) {
    if (s.name == name) return s;
    names.push_back(s.name);
  }
  throw Error(fmt::format("--shape: unknown shape '{}' (expected one of: {})", name,
                          fmt::join(names, ", ")));
}

SynthVocab synth_vocab(int64_t n_vocab) {
  constexpr int64_t kFixed = 3 + 256;
  if (n_vocab <= kFixed) {
    throw Error(
        fmt::format("vocabulary: expected more than {} tokens (3 control tokens and 256 "
                    "byte tokens), found {}",
                    kFixed, n_vocab));
  }
  SynthVocab v;
  v.tokens.reserve(static_cast<size_t>(n_vocab));
  auto add = [&](std::string t, float score, int32_t type) {
    v.tokens.push_back(std::move(t));
    v.scores.push_back(score);
    v.types.push_back(type);
  };
  add("<unk>", 0.0f, kUnknown);
  add("<s>", 0.0f, kControl);
  add("</s>", 0.0f, kControl);
  for (int b = 0; b < 256; ++b) add(fmt::format("<0x{:02X}>", b), 0.0f, kByte);

  // Word pieces, most "frequent" first (highest score, as SentencePiece orders them). Every
  // prefix of a word comes before the word, so that llama.cpp's bigram merges can reach it.
  std::unordered_set<std::string> seen(v.tokens.begin(), v.tokens.end());
  auto piece = [&](const std::string& p) {
    if (static_cast<int64_t>(v.tokens.size()) >= n_vocab || !seen.insert(p).second) return;
    add(p, -static_cast<float>(v.tokens.size() - kFixed), kNormal);
  };
  piece(kSpace);
  for (char c = 'a'; c <= 'z'; ++c) piece(std::string(1, c));
  for (char c = 'a'; c <= 'z'; ++c) piece(kSpace + std::string(1, c));
  static const char* const words[] = {
      "the",   "and",  "to",     "of",     "a",    "in",    "is",    "it",    "you",   "that",
      "he",    "was",  "for",    "on",     "are",  "with",  "as",    "his",   "they",  "be",
      "at",    "one",  "have",   "this",   "from", "or",    "had",   "by",    "word",  "but",
      "what",  "some", "we",     "can",    "out",  "other", "were",  "all",   "there", "when",
      "up",    "use",  "your",   "how",    "said", "an",    "each",  "she",   "which", "do",
      "their", "time", "if",     "will",   "way",  "about", "many",  "then",  "them",  "write",
      "would", "like", "so",     "these",  "her",  "long",  "make",  "thing", "see",   "him",
      "two",   "has",  "look",   "more",   "day",  "could", "go",    "come",  "did",   "number",
      "sound", "no",   "most",   "people", "my",   "over",  "know",  "water", "than",  "call",
      "first", "who",  "may",    "down",   "side", "been",  "now",   "find",  "hello", "world",
      "once",  "upon", "little", "girl",   "boy",  "dog",   "cat",   "happy", "play",  "friend",
      "story", "big",  "red",    "blue",   "name", "key",   "number"};
  for (const char* w : words) {
    const std::string word = kSpace + w;
    // Prefixes by byte: "▁" is three bytes and is already a piece, so start after it.
    for (size_t len = kSpace.size() + 1; len <= word.size(); ++len) piece(word.substr(0, len));
  }
  for (char c = 'A'; c <= 'Z'; ++c) piece(std::string(1, c));
  for (char c = 'A'; c <= 'Z'; ++c) piece(kSpace + std::string(1, c));
  for (char c = '0'; c <= '9'; ++c) piece(std::string(1, c));
  for (const char* p : {".", ",", "!", "?", "'", "\"", "-", ":", ";", "(", ")"}) piece(p);
  // Then letter combinations of growing length, each bare and after a word start.
  for (int len = 2; static_cast<int64_t>(v.tokens.size()) < n_vocab; ++len) {
    std::string s(static_cast<size_t>(len), 'a');
    while (static_cast<int64_t>(v.tokens.size()) < n_vocab) {
      piece(s);
      piece(kSpace + s);
      int k = len - 1;  // next string over a-z, last letter fastest
      while (k >= 0 && s[static_cast<size_t>(k)] == 'z') s[static_cast<size_t>(k--)] = 'a';
      if (k < 0) break;
      ++s[static_cast<size_t>(k)];
    }
  }
  return v;
}

uint32_t llama_file_type(TensorType t) {
  switch (t) {
    case TensorType::F32:
      return 0;  // LLAMA_FTYPE_ALL_F32
    case TensorType::F16:
      return 1;  // LLAMA_FTYPE_MOSTLY_F16
    case TensorType::Q4_0:
      return 2;  // LLAMA_FTYPE_MOSTLY_Q4_0
    case TensorType::Q8_0:
      return 7;  // LLAMA_FTYPE_MOSTLY_Q8_0
    case TensorType::BF16:
      return 32;  // LLAMA_FTYPE_MOSTLY_BF16
    case TensorType::Q4_1:
      return 3;  // LLAMA_FTYPE_MOSTLY_Q4_1
    case TensorType::Q5_0:
      return 8;  // LLAMA_FTYPE_MOSTLY_Q5_0
    case TensorType::Q5_1:
      return 9;  // LLAMA_FTYPE_MOSTLY_Q5_1
    case TensorType::Q2_K:
      return 10;  // LLAMA_FTYPE_MOSTLY_Q2_K
    case TensorType::Q3_K:
      return 12;  // LLAMA_FTYPE_MOSTLY_Q3_K_M
    case TensorType::Q4_K:
      return 15;  // LLAMA_FTYPE_MOSTLY_Q4_K_M
    case TensorType::Q5_K:
      return 17;  // LLAMA_FTYPE_MOSTLY_Q5_K_M
    case TensorType::Q6_K:
      return 18;  // LLAMA_FTYPE_MOSTLY_Q6_K
  }
  return 0;
}

void synth_row(uint64_t seed, std::string_view name, int64_t row, float std, float* dst,
               int64_t n) {
  // One stream per (seed, tensor, row): the values do not depend on how the rows are chunked or
  // which thread makes them. Each value is an Irwin-Hall sum of four 16-bit uniforms, scaled to
  // variance std^2: close to normal, bounded at 3.46 std, and free of libm, so the same seed
  // gives the same bytes on every platform.
  uint64_t s = seed ^ fnv1a(name);
  s = splitmix64(s) ^ static_cast<uint64_t>(row);
  splitmix64(s);
  const float scale = std * std::sqrt(3.0f) / 65536.0f;
  for (int64_t k = 0; k < n; ++k) {
    const uint64_t x = splitmix64(s);
    const int64_t sum = static_cast<int64_t>((x & 0xffff) + ((x >> 16) & 0xffff) +
                                             ((x >> 32) & 0xffff) + (x >> 48));
    // sum of 4 lanes has mean 4 * 32767.5 = 131070; centring on it keeps the mean at zero.
    dst[k] = static_cast<float>(static_cast<double>(sum) - 131070.0) * scale;
  }
}

int64_t synth_param_count(const SynthShape& s, const SynthOptions& o) {
  const int64_t L = o.n_layer > 0 ? o.n_layer : s.n_layer;
  const int64_t q = s.n_head * s.head_dim, kv = s.n_head_kv * s.head_dim;
  const int64_t per_layer =
      2 * s.n_embd + s.n_embd * (q + 2 * kv) + q * s.n_embd + 3 * s.n_embd * s.n_ff;
  return 2 * s.n_embd * s.n_vocab + s.n_embd + L * per_layer;
}

Writer synth_llama(const SynthShape& shape, const SynthOptions& opts, Quantizer quantize) {
  const SynthShape& s = shape;
  const int64_t n_layer = opts.n_layer > 0 ? opts.n_layer : s.n_layer;
  if (s.n_embd <= 0 || s.n_head <= 0 || s.n_head_kv <= 0 || s.head_dim <= 0 || s.n_ff <= 0 ||
      n_layer <= 0 || s.n_head % s.n_head_kv != 0) {
    throw Error(
        fmt::format("shape '{}': expected positive sizes and heads a multiple of the KV "
                    "heads",
                    s.name));
  }
  if (n_layer > kMaxBlockCount)
    throw Error(fmt::format("layers: expected at most {} (what a model's reader accepts), got {}",
                            kMaxBlockCount, n_layer));
  const SynthVocab vocab = synth_vocab(s.n_vocab);

  Writer w;
  w.add_string("general.architecture", "llama");
  w.add_string("general.name", s.name + " (synthetic)");
  w.set_alignment(32);
  w.add_u32("general.file_type", llama_file_type(opts.type));
  if (opts.type == TensorType::Q8_0 || opts.type == TensorType::Q4_0) {
    w.add_u32("general.quantization_version", 2);
  }
  w.add_u32("llama.context_length", static_cast<uint32_t>(s.n_ctx));
  w.add_u32("llama.embedding_length", static_cast<uint32_t>(s.n_embd));
  w.add_u32("llama.block_count", static_cast<uint32_t>(n_layer));
  w.add_u32("llama.feed_forward_length", static_cast<uint32_t>(s.n_ff));
  w.add_u32("llama.attention.head_count", static_cast<uint32_t>(s.n_head));
  w.add_u32("llama.attention.head_count_kv", static_cast<uint32_t>(s.n_head_kv));
  w.add_u32("llama.attention.key_length", static_cast<uint32_t>(s.head_dim));
  w.add_u32("llama.attention.value_length", static_cast<uint32_t>(s.head_dim));
  w.add_u32("llama.rope.dimension_count", static_cast<uint32_t>(s.head_dim));
  w.add_f32("llama.rope.freq_base", s.rope_base);
  w.add_f32("llama.attention.layer_norm_rms_epsilon", s.norm_eps);
  w.add_u32("llama.vocab_size", static_cast<uint32_t>(s.n_vocab));
  w.add_string("tokenizer.ggml.model", "llama");
  w.add_strings("tokenizer.ggml.tokens", vocab.tokens);
  w.add_f32s("tokenizer.ggml.scores", vocab.scores);
  w.add_i32s("tokenizer.ggml.token_type", vocab.types);
  w.add_u32("tokenizer.ggml.bos_token_id", 1);
  w.add_u32("tokenizer.ggml.eos_token_id", 2);
  w.add_u32("tokenizer.ggml.unknown_token_id", 0);
  w.add_bool("tokenizer.ggml.add_bos_token", true);
  w.add_bool("tokenizer.ggml.add_eos_token", false);

  const uint64_t seed = opts.seed;
  const float std = opts.std;
  auto weight = [&](const std::string& name, int64_t in, int64_t out, TensorType type) {
    const uint64_t row_bytes = tensor_bytes(type, {in}, "tensor '" + name + "'");
    w.add_tensor(name, type, {in, out}, [=](int64_t first, int64_t n_rows, uint8_t* dst) {
      // Rows are independent: split them over the cores.
      const int64_t n_threads = std::clamp<int64_t>(
          std::min<int64_t>(std::thread::hardware_concurrency(), n_rows * in >> 18), 1, 16);
      auto work = [&](int64_t t) {
        std::vector<float> row(static_cast<size_t>(in));
        for (int64_t r = t; r < n_rows; r += n_threads) {
          synth_row(seed, name, first + r, std, row.data(), in);
          quantize(type, row.data(), dst + static_cast<uint64_t>(r) * row_bytes, in);
        }
      };
      std::vector<std::thread> pool;
      for (int64_t t = 1; t < n_threads; ++t) pool.emplace_back(work, t);
      work(0);
      for (std::thread& th : pool) th.join();
    });
  };
  auto norm = [&](const std::string& name) {
    w.add_tensor(name, TensorType::F32, {s.n_embd}, [n = s.n_embd](int64_t, int64_t, uint8_t* dst) {
      const float one = 1.0f;
      for (int64_t k = 0; k < n; ++k) std::memcpy(dst + 4 * k, &one, 4);
    });
  };

  const TensorType t = opts.type;
  const int64_t q = s.n_head * s.head_dim, kv = s.n_head_kv * s.head_dim;
  weight("token_embd.weight", s.n_embd, s.n_vocab, t);
  for (int64_t l = 0; l < n_layer; ++l) {
    const std::string p = fmt::format("blk.{}.", l);
    norm(p + "attn_norm.weight");
    weight(p + "attn_q.weight", s.n_embd, q, t);
    weight(p + "attn_k.weight", s.n_embd, kv, t);
    weight(p + "attn_v.weight", s.n_embd, kv, t);
    weight(p + "attn_output.weight", q, s.n_embd, t);
    norm(p + "ffn_norm.weight");
    weight(p + "ffn_gate.weight", s.n_embd, s.n_ff, t);
    weight(p + "ffn_up.weight", s.n_embd, s.n_ff, t);
    weight(p + "ffn_down.weight", s.n_ff, s.n_embd, t);
  }
  norm("output_norm.weight");
  weight("output.weight", s.n_embd, s.n_vocab, t);
  return w;
}

}  // namespace fairkv::gguf
