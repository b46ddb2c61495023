// Internal to the tokenizers: what Tokenizer::from_gguf builds and the encoders read.
#pragma once

#include <array>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "model/tokenizer.h"
#include "model/tokenizer_pretok.h"
#include "model/tokenizer_tables.h"

namespace fairkv::model {

struct TokenizerState {
  std::string file;  // for messages
  std::string model, pre;
  bool spm = true;  // "llama"; otherwise byte-level BPE ("gpt2")

  StringTable tokens;  // string number == token id
  std::vector<float> scores;
  std::vector<TokenType> types;
  int32_t bos = -1, eos = -1, unk = -1;
  std::vector<int32_t> eog;  // sorted ids that end generation
  bool add_bos = false;
  bool add_space_prefix = false;
  // Control, unknown and user-defined tokens, longest text first (ties by id).
  std::vector<int32_t> specials;

  // SentencePiece: the token standing for each byte of a character outside the vocabulary
  // (<0xXX>, else the one-byte token, else unknown).
  std::array<int32_t, 256> byte_token{};

  // Byte-level BPE.
  std::unique_ptr<PreTokenizer> pretok;
  bool ignore_merges = false;
  // A symbol's merge key: its token id, or vocab_size + its number in `extra` for merge sides
  // that are not tokens, or -1 when no merge can involve it.
  StringTable extra;
  PairTable merges;                         // (left key, right key) -> (rank, key of the result)
  std::array<std::string, 256> byte_chars;  // GPT-2 code point of each byte, UTF-8 encoded
  std::array<int32_t, 256> byte_key{};      // merge key of each byte's one-character symbol
  std::vector<int16_t> char_byte;           // GPT-2 code point -> byte, -1 for others

  int32_t vocab_size() const { return tokens.size(); }
  // The merge key of a symbol's text.
  int32_t key_of(std::string_view s) const {
    const int32_t id = tokens.find(s);
    if (id >= 0) return id;
    const int32_t e = extra.find(s);
    return e >= 0 ? vocab_size() + e : -1;
  }
};

// tokenizer_spm.cpp: appends the ids of `escaped` (spaces already U+2581, prefix added).
void spm_encode(const TokenizerState& s, std::string_view escaped, std::vector<int32_t>& out);

// tokenizer_bpe.cpp
// Sets up the byte maps and the merge table (ranks = order); throws gguf::Error naming the
// file and the key for a merge without a space.
void bpe_init(TokenizerState& s, const std::vector<std::string>& merges);
// Appends the ids of one run of text (no special tokens in it).
void bpe_encode(const TokenizerState& s, std::string_view text, std::vector<int32_t>& out);
// The bytes of a BPE token's text (GPT-2 code points back to bytes).
std::string bpe_decode_text(const TokenizerState& s, std::string_view text);

}  // namespace fairkv::model
