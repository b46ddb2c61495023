// Tokenizers read from GGUF metadata, producing the ids llama.cpp produces:
// - "llama" (SentencePiece-style): spaces become U+2581, a space is prefixed to each run of
//   text (tokenizer.ggml.add_space_prefix, default true), then the adjacent pair whose
//   concatenation is the best-scoring vocabulary entry is merged until none is (ties: the
//   leftmost); characters left outside the vocabulary fall back to <0xXX> byte tokens.
// - "gpt2" (byte-level BPE): text is split by the regex pre-tokenizer that tokenizer.ggml.pre
//   names (GPT-2, Llama 3, Qwen2, ..., run with PCRE2), each piece's bytes are mapped to GPT-2's
//   printable code points, and tokenizer.ggml.merges are applied lowest rank first. Bytes that
//   are not UTF-8 become U+FFFD first, as in llama.cpp.
// Special tokens: user-defined tokens (type 4) written in the text always become their token;
// control and unknown tokens (types 3, 2) only with parse_special, longest first.
//
// Loading builds flat hash tables over the vocabulary and the merges (Llama 3's 128k tokens and
// 280k merges load in tens of milliseconds); encoding is O(n log n) in the text's length. A
// Tokenizer is immutable after loading: encode and decode may run on many threads at once.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "formats/gguf.h"

namespace fairkv::tokenizer {

// tokenizer.ggml.token_type values, as llama.cpp numbers them.
enum class TokenType : uint8_t {
  Undefined = 0,
  Normal = 1,
  Unknown = 2,
  Control = 3,
  UserDefined = 4,
  Unused = 5,
  Byte = 6,
};

struct TokenizerState;  // state.h

class Tokenizer {
 public:
  // Throws gguf::Error naming the file and the key when the metadata is missing or inconsistent
  // (no tokens, scores or types of another length, an unknown model or pre-tokenizer, a
  // malformed merge, a special token id outside the vocabulary, a token listed twice).
  static Tokenizer from_gguf(const gguf::File& f);

  Tokenizer(Tokenizer&&) noexcept;
  Tokenizer& operator=(Tokenizer&&) noexcept;
  ~Tokenizer();

  // add_bos puts BOS first (throws std::runtime_error when the vocabulary has none).
  // parse_special matches control tokens written in the text ("<s>", "<|eot_id|>").
  std::vector<int32_t> encode(std::string_view text, bool add_bos,
                              bool parse_special = false) const;
  // The bytes a token stands for: U+2581 as a space, <0xXX> as its byte, GPT-2 code points as
  // their bytes. Control and unknown tokens give "" unless `special`, then their text.
  // Throws std::out_of_range for an id outside the vocabulary.
  std::string decode_token(int32_t id, bool special = false) const;
  // The pieces concatenated. For "llama" vocabularies the text of encode() comes back with
  // the space that add_space_prefix put in front.
  std::string decode(const std::vector<int32_t>& ids, bool special = false) const;

  int32_t bos() const;  // -1 when the vocabulary has none
  int32_t eos() const;
  bool is_eog(int32_t id) const;  // end of generation: EOS, EOT, EOM and their usual texts
  bool add_bos() const;           // tokenizer.ggml.add_bos_token or the model's default
  int32_t vocab_size() const;
  const std::string& model() const;  // "llama" or "gpt2"
  const std::string& pre() const;    // the pre-tokenizer of a gpt2 vocabulary ("" for llama)

  // The vocabulary entry as stored (U+2581 and GPT-2 code points included).
  std::string_view token_text(int32_t id) const;
  TokenType token_type(int32_t id) const;
  // The id whose text is exactly `text`, or -1.
  int32_t find_token(std::string_view text) const;

 private:
  explicit Tokenizer(std::unique_ptr<TokenizerState> s);
  std::unique_ptr<TokenizerState> s_;
};

}  // namespace fairkv::tokenizer
