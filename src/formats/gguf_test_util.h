// Checks shared by the formats tests.
#pragma once

#include <gtest/gtest.h>

#include <cstring>
#include <random>
#include <string>
#include <string_view>
#include <vector>

#include "formats/gguf.h"

namespace fairkv::gguf::testing_util {

inline std::vector<uint8_t> random_bytes(size_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::vector<uint8_t> b(n);
  for (auto& x : b) x = static_cast<uint8_t>(rng());
  return b;
}

// Expects `f` to throw gguf::Error whose message contains every one of `parts`.
template <class F>
inline void expect_error(F&& f, std::initializer_list<std::string_view> parts) {
  try {
    f();
    ADD_FAILURE() << "no error; expected one mentioning '" << *parts.begin() << "'";
  } catch (const Error& e) {
    const std::string msg = e.what();
    for (std::string_view p : parts) {
      EXPECT_NE(msg.find(p), std::string::npos) << "message: " << msg << "\nmissing: " << p;
    }
  }
}

// Payload of an array (element type, count, elements) for add_raw.
template <class T>
inline std::vector<uint8_t> array_payload(ValueType et, const std::vector<T>& xs) {
  std::vector<uint8_t> b(12);
  const auto t = static_cast<uint32_t>(et);
  const uint64_t n = xs.size();
  std::memcpy(b.data(), &t, 4);
  std::memcpy(b.data() + 4, &n, 8);
  for (const T& x : xs) {
    const auto* p = reinterpret_cast<const uint8_t*>(&x);
    b.insert(b.end(), p, p + sizeof(T));
  }
  return b;
}

inline std::vector<uint8_t> nested_payload(int depth) {
  // depth levels of ARRAY-of-ARRAY around one ARRAY of two UINT8.
  std::vector<uint8_t> inner = array_payload<uint8_t>(ValueType::UINT8, {7, 9});
  for (int d = 0; d < depth; ++d) {
    std::vector<uint8_t> outer(12);
    const auto t = static_cast<uint32_t>(ValueType::ARRAY);
    const uint64_t n = 1;
    std::memcpy(outer.data(), &t, 4);
    std::memcpy(outer.data() + 4, &n, 8);
    outer.insert(outer.end(), inner.begin(), inner.end());
    inner = std::move(outer);
  }
  return inner;
}

// Checks that a llama/qwen2-shaped file's tensors agree with its hyper-parameters (ggml's dims
// convention: dims[0] is the input dimension).
inline void check_llama_shapes(const File& f) {
  const std::string arch = f.get_string("general.architecture");
  const int64_t n_layer = f.get_int(arch + ".block_count");
  const int64_t n_embd = f.get_int(arch + ".embedding_length");
  const int64_t n_head = f.get_int(arch + ".attention.head_count");
  const int64_t n_kv = f.find_int(arch + ".attention.head_count_kv").value_or(n_head);
  const int64_t n_ff = f.get_int(arch + ".feed_forward_length");
  const int64_t hd = f.find_int(arch + ".attention.key_length").value_or(n_embd / n_head);
  const int64_t n_vocab = static_cast<int64_t>(f.get_strings("tokenizer.ggml.tokens").size());
  auto dims = [&](const std::string& name) {
    const TensorInfo* t = f.find_tensor(name);
    if (!t) throw std::runtime_error(f.path() + ": missing " + name);
    return t->dims;
  };
  using D = std::vector<int64_t>;
  EXPECT_EQ(dims("token_embd.weight"), (D{n_embd, n_vocab}));
  EXPECT_EQ(dims("output_norm.weight"), (D{n_embd}));
  for (int64_t l = 0; l < n_layer; ++l) {
    const std::string p = "blk." + std::to_string(l) + ".";
    EXPECT_EQ(dims(p + "attn_norm.weight"), (D{n_embd}));
    EXPECT_EQ(dims(p + "ffn_norm.weight"), (D{n_embd}));
    EXPECT_EQ(dims(p + "attn_q.weight"), (D{n_embd, n_head * hd}));
    EXPECT_EQ(dims(p + "attn_k.weight"), (D{n_embd, n_kv * hd}));
    EXPECT_EQ(dims(p + "attn_v.weight"), (D{n_embd, n_kv * hd}));
    EXPECT_EQ(dims(p + "attn_output.weight"), (D{n_head * hd, n_embd}));
    EXPECT_EQ(dims(p + "ffn_gate.weight"), (D{n_embd, n_ff}));
    EXPECT_EQ(dims(p + "ffn_up.weight"), (D{n_embd, n_ff}));
    EXPECT_EQ(dims(p + "ffn_down.weight"), (D{n_ff, n_embd}));
    EXPECT_EQ(f.find_tensor(p + "attn_norm.weight")->type, TensorType::F32);
    EXPECT_EQ(f.find_tensor(p + "ffn_norm.weight")->type, TensorType::F32);
  }
}

}  // namespace fairkv::gguf::testing_util
