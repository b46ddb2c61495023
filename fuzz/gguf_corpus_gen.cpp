// Writes the seed corpus of gguf_fuzz: small valid files from the Writer (every value type,
// every tensor type, nested arrays, other alignments, a micro llama), then truncated and
// mutated copies of them. Usage: gguf_corpus_gen DIR
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <random>

#include "formats/gguf.h"

using namespace fairkv::gguf;

namespace {

std::filesystem::path g_dir;

void save(const std::string& name, const std::vector<uint8_t>& b) {
  std::ofstream out(g_dir / name, std::ios::binary);
  out.write(reinterpret_cast<const char*>(b.data()), static_cast<std::streamsize>(b.size()));
}

std::vector<uint8_t> bytes(size_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::vector<uint8_t> b(n);
  for (auto& x : b) x = static_cast<uint8_t>(rng());
  return b;
}

std::vector<uint8_t> array_header(ValueType et, uint64_t n) {
  std::vector<uint8_t> b(12);
  const auto t = static_cast<uint32_t>(et);
  std::memcpy(b.data(), &t, 4);
  std::memcpy(b.data() + 4, &n, 8);
  return b;
}

Writer all_values() {
  Writer w;
  w.add_u8("v.u8", 200);
  w.add_i8("v.i8", -100);
  w.add_u16("v.u16", 60000);
  w.add_i16("v.i16", -30000);
  w.add_u32("v.u32", 4000000000u);
  w.add_i32("v.i32", -2000000000);
  w.add_u64("v.u64", ~uint64_t{0});
  w.add_i64("v.i64", -1);
  w.add_f32("v.f32", 0.5f);
  w.add_f64("v.f64", -0.25);
  w.add_bool("v.bool", true);
  w.add_string("v.str", "\xe2\x96\x81hello");
  w.add_strings("v.strs", {"<unk>", "<s>", "</s>", "<0x0A>"});
  w.add_f32s("v.f32s", {0.f, -1.f});
  w.add_i32s("v.i32s", {1, 2, 6});
  Value b;
  b.type = ValueType::ARRAY;
  b.elem_type = ValueType::BOOL;
  b.ints = {1, 0};
  w.add_value("v.bools", b);
  return w;
}

Writer nested() {
  Writer w;
  std::vector<uint8_t> p = array_header(ValueType::ARRAY, 2);
  for (int k = 0; k < 2; ++k) {
    std::vector<uint8_t> inner = array_header(ValueType::UINT16, 2);
    inner.insert(inner.end(), {1, 0, 2, 0});
    p.insert(p.end(), inner.begin(), inner.end());
  }
  w.add_raw("n.arrays", ValueType::ARRAY, p);
  std::vector<uint8_t> s = array_header(ValueType::ARRAY, 1);
  std::vector<uint8_t> strs = array_header(ValueType::STRING, 1);
  const uint64_t len = 1;
  strs.insert(strs.end(), reinterpret_cast<const uint8_t*>(&len),
              reinterpret_cast<const uint8_t*>(&len) + 8);
  strs.push_back('x');
  s.insert(s.end(), strs.begin(), strs.end());
  w.add_raw("n.strings", ValueType::ARRAY, s);
  w.add_u8("n.after", 1);
  return w;
}

Writer tensors(uint64_t align) {
  Writer w;
  if (align != 32) w.set_alignment(align);
  w.add_string("general.architecture", "test");
  w.add_tensor("f32", TensorType::F32, {3, 2}, bytes(24, 1));
  w.add_tensor("f16", TensorType::F16, {5}, bytes(10, 2));
  w.add_tensor("bf16", TensorType::BF16, {1, 2, 1, 2}, bytes(8, 3));
  w.add_tensor("q8_0", TensorType::Q8_0, {32, 2}, bytes(68, 4));
  w.add_tensor("q4_0", TensorType::Q4_0, {64}, bytes(36, 5));
  return w;
}

// A llama-shaped file small enough for the fuzzer: 1 layer, embedding 32, 16 tokens.
Writer micro_llama() {
  Writer w;
  w.add_string("general.architecture", "llama");
  w.add_string("general.name", "micro");
  w.add_u32("llama.context_length", 64);
  w.add_u32("llama.embedding_length", 32);
  w.add_u32("llama.block_count", 1);
  w.add_u32("llama.feed_forward_length", 32);
  w.add_u32("llama.attention.head_count", 2);
  w.add_u32("llama.attention.head_count_kv", 1);
  w.add_f32("llama.attention.layer_norm_rms_epsilon", 1e-5f);
  w.add_string("tokenizer.ggml.model", "llama");
  std::vector<std::string> toks = {"<unk>", "<s>", "</s>"};
  for (char c = 'a'; toks.size() < 16; ++c) toks.push_back(std::string(1, c));
  w.add_strings("tokenizer.ggml.tokens", toks);
  w.add_f32s("tokenizer.ggml.scores", std::vector<float>(16, -1.f));
  w.add_i32s("tokenizer.ggml.token_type", std::vector<int32_t>(16, 1));
  w.add_u32("tokenizer.ggml.bos_token_id", 1);
  uint32_t seed = 10;
  auto add = [&](const std::string& name, TensorType t, std::vector<int64_t> dims) {
    w.add_tensor(name, t, dims, bytes(tensor_bytes(t, dims, name), seed++));
  };
  add("token_embd.weight", TensorType::Q8_0, {32, 16});
  add("output_norm.weight", TensorType::F32, {32});
  add("blk.0.attn_norm.weight", TensorType::F32, {32});
  add("blk.0.attn_q.weight", TensorType::Q8_0, {32, 32});
  add("blk.0.attn_k.weight", TensorType::Q4_0, {32, 16});
  add("blk.0.ffn_down.weight", TensorType::F16, {32, 32});
  return w;
}

template <class T>
std::vector<uint8_t> with(std::vector<uint8_t> b, size_t off, T v) {
  if (off + sizeof(T) <= b.size()) std::memcpy(b.data() + off, &v, sizeof(T));
  return b;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: %s DIR\n", argv[0]);
    return 2;
  }
  g_dir = argv[1];
  std::filesystem::create_directories(g_dir);

  const std::vector<uint8_t> empty = Writer().serialize();
  const std::vector<uint8_t> values = all_values().serialize();
  const std::vector<uint8_t> nest = nested().serialize();
  const std::vector<uint8_t> t32 = tensors(32).serialize();
  const std::vector<uint8_t> llama = micro_llama().serialize();
  save("valid-empty.gguf", empty);
  save("valid-values.gguf", values);
  save("valid-nested.gguf", nest);
  save("valid-tensors.gguf", t32);
  save("valid-tensors-align1.gguf", tensors(1).serialize());
  save("valid-tensors-align64.gguf", tensors(64).serialize());
  save("valid-micro-llama.gguf", llama);
  save("valid-v2.gguf", with<uint32_t>(values, 4, 2));

  // Truncations at a few depths of each valid file.
  for (const auto& [name, b] :
       {std::pair{"values", values}, std::pair{"tensors", t32}, std::pair{"llama", llama}}) {
    for (size_t cut : {size_t{3}, size_t{20}, b.size() / 3, b.size() / 2, b.size() - 1}) {
      save(std::string("cut-") + name + "-" + std::to_string(cut) + ".gguf",
           std::vector<uint8_t>(b.begin(), b.begin() + static_cast<std::ptrdiff_t>(cut)));
    }
  }
  // Header mutations.
  save("bad-version1.gguf", with<uint32_t>(values, 4, 1));
  save("bad-bigendian.gguf", with<uint32_t>(values, 4, 0x03000000));
  save("bad-tensor-count.gguf", with<uint64_t>(t32, 8, uint64_t{1} << 60));
  save("bad-kv-count.gguf", with<uint64_t>(values, 16, uint64_t{1} << 60));
  save("bad-key-length.gguf", with<uint64_t>(values, 24, ~uint64_t{0}));
  save("bad-magic.gguf", with<uint32_t>(values, 0, 0x46554747 ^ 1));
  return 0;
}
