// Tokenizers read from GGUF metadata, as llama.cpp builds them:
// - "llama": SentencePiece-style BPE over scores, "▁" for spaces, byte fallback <0xXX>;
// - "gpt2": byte-level BPE over ranked merges, after a regex pre-tokenizer chosen by
//   tokenizer.ggml.pre (GPT-2, Llama 3, Qwen2).
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "formats/gguf.h"

namespace fairkv::model {

class Tokenizer {
 public:
  // Throws gguf::Error naming the file and the key when the metadata is missing or inconsistent.
  static Tokenizer from_gguf(const gguf::File& f);

  Tokenizer(Tokenizer&&) noexcept;
  Tokenizer& operator=(Tokenizer&&) noexcept;
  ~Tokenizer();

  std::vector<int32_t> encode(std::string_view text, bool add_bos) const;
  // The bytes a token stands for; control tokens (BOS, EOS) give "".
  std::string decode_token(int32_t id) const;
  std::string decode(const std::vector<int32_t>& ids) const;

  int32_t bos() const;
  int32_t eos() const;
  bool is_eog(int32_t id) const;  // end of generation: EOS, EOT
  bool add_bos() const;
  int32_t vocab_size() const;
  const std::string& model() const;  // "llama" or "gpt2"
  const std::string& pre() const;    // pre-tokenizer name for gpt2

 private:
  Tokenizer();
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace fairkv::model
