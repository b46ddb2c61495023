// Internal to the tokenizers: what Tokenizer::from_gguf builds and the encoders read.
#pragma once

#include <algorithm>
#include <array>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "tokenizer/pretok.h"
#include "tokenizer/tables.h"
#include "tokenizer/tokenizer.h"

namespace fairkv::tokenizer {

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

// The merge loop of both encoders. syms is a linked list of symbols (start, len, prev, next; len
// 0 once absorbed by its left neighbour); heap holds the candidate pairs as a heap under `later`
// (the pair it pops first merges first), each with its left symbol and the two symbols' summed
// length when it was found. try_pair(l, r) pushes the pair of symbols l and r when they can
// merge; merged(left, pair) updates what an encoder keeps beside the text (BPE: the merge key).
template <class Symbol, class Bigram, class Later, class TryPair, class Merged>
void merge_symbols(std::vector<Symbol>& syms, std::vector<Bigram>& heap, Later later,
                   TryPair try_pair, Merged merged) {
  for (int32_t i = 1; i < int32_t(syms.size()); ++i) try_pair(i - 1, i);
  while (!heap.empty()) {
    std::pop_heap(heap.begin(), heap.end(), later);
    const Bigram b = heap.back();
    heap.pop_back();
    Symbol& L = syms[size_t(b.left)];
    // Symbols only grow, and only by absorbing their right neighbour: the pair is still these
    // two texts exactly when left is alive and left + its next have the lengths they had.
    if (L.len == 0 || L.next < 0) continue;
    Symbol& R = syms[size_t(L.next)];
    if (L.len + R.len != b.len) continue;
    merged(L, b);
    L.len += R.len;
    R.len = 0;
    L.next = R.next;
    if (R.next >= 0) syms[size_t(R.next)].prev = b.left;
    try_pair(L.prev, b.left);
    try_pair(b.left, L.next);
  }
}

// spm.cpp: appends the ids of `escaped` (spaces already U+2581, prefix added).
void spm_encode(const TokenizerState& s, std::string_view escaped, std::vector<int32_t>& out);

// bpe.cpp
// Sets up the byte maps and the merge table (ranks = order); throws gguf::Error naming the
// file and the key for a merge without a space.
void bpe_init(TokenizerState& s, const std::vector<std::string>& merges);
// Appends the ids of one run of text (no special tokens in it).
void bpe_encode(const TokenizerState& s, std::string_view text, std::vector<int32_t>& out);
// The bytes of a BPE token's text (GPT-2 code points back to bytes).
std::string bpe_decode_text(const TokenizerState& s, std::string_view text);

}  // namespace fairkv::tokenizer
