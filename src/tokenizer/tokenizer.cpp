// Tokenizer::encode (special tokens first, then the model's algorithm on the text between
// them) and decoding.
#include "tokenizer/tokenizer.h"

#include <algorithm>
#include <array>
#include <limits>
#include <stdexcept>

#include <fmt/format.h>

#include "tokenizer/state.h"

namespace fairkv::tokenizer {

namespace {

constexpr std::string_view kSpace = "\xE2\x96\x81";  // U+2581, SentencePiece's space

struct Fragment {
  int32_t token;  // -1: text[begin, begin + len) still to tokenize
  size_t begin, len;
};

// llama.cpp's tokenizer_st_partition: each special token in turn, longest first, is cut out of
// every text fragment left, leftmost occurrences first.
std::vector<Fragment> partition(const TokenizerState& s, std::string_view text,
                                bool parse_special) {
  std::vector<Fragment> frags{{-1, 0, text.size()}}, next;
  std::array<bool, 256> present{};
  for (unsigned char c : text) present[c] = true;
  for (int32_t id : s.specials) {
    if (!parse_special && s.types[size_t(id)] != TokenType::UserDefined) continue;
    const std::string_view tok = s.tokens[id];
    if (!present[static_cast<unsigned char>(tok[0])] || text.find(tok) == std::string_view::npos)
      continue;
    next.clear();
    for (const Fragment& f : frags) {
      if (f.token >= 0) {
        next.push_back(f);
        continue;
      }
      size_t b = f.begin;
      const size_t end = f.begin + f.len;
      for (size_t m; (m = text.substr(b, end - b).find(tok)) != std::string_view::npos;) {
        if (m > 0) next.push_back({-1, b, m});
        next.push_back({id, 0, 0});
        b += m + tok.size();
      }
      if (b < end) next.push_back({-1, b, end - b});
    }
    frags.swap(next);
  }
  return frags;
}

std::string unescape_spaces(std::string_view t) {
  std::string s;
  s.reserve(t.size());
  for (size_t i = 0; i < t.size();) {
    if (t.substr(i, kSpace.size()) == kSpace) {
      s += ' ';
      i += kSpace.size();
    } else {
      s += t[i++];
    }
  }
  return s;
}

int hex_digit(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  return -1;
}

}  // namespace

std::vector<int32_t> Tokenizer::encode(std::string_view text, bool add_bos,
                                       bool parse_special) const {
  const TokenizerState& s = *s_;
  // Symbols are indexed with 32-bit integers.
  if (text.size() > size_t(std::numeric_limits<int32_t>::max() / 4))
    throw std::length_error(fmt::format("tokenizer: a text of {} bytes is too long", text.size()));
  std::vector<int32_t> out;
  out.reserve(text.size() / 3 + 2);
  if (add_bos) {
    if (s.bos < 0) throw std::runtime_error(s.file + ": the vocabulary has no BOS token");
    out.push_back(s.bos);
  }
  if (text.empty()) return out;

  std::string escaped;
  for (const Fragment& f : partition(s, text, parse_special)) {
    if (f.token >= 0) {
      out.push_back(f.token);
      continue;
    }
    const std::string_view piece = text.substr(f.begin, f.len);
    if (s.spm) {
      // Every run of text starts the text or follows a special token, which is where llama.cpp
      // prefixes the space.
      escaped.clear();
      if (s.add_space_prefix) escaped += kSpace;
      for (char c : piece) {
        if (c == ' ')
          escaped += kSpace;
        else
          escaped += c;
      }
      spm_encode(s, escaped, out);
    } else {
      bpe_encode(s, piece, out);
    }
  }
  return out;
}

std::string Tokenizer::decode_token(int32_t id, bool special) const {
  const TokenizerState& s = *s_;
  const TokenType t = token_type(id);
  const std::string_view text = s.tokens[id];
  switch (t) {
    case TokenType::Control:
    case TokenType::Unknown:
      return special ? std::string(text) : std::string();
    case TokenType::UserDefined:
      return std::string(text);
    case TokenType::Normal:
      return s.spm ? unescape_spaces(text) : bpe_decode_text(s, text);
    case TokenType::Byte:
      // SentencePiece's <0xXX>; llama.cpp gives nothing for byte tokens of BPE vocabularies.
      if (s.spm && text.size() == 6 && text.substr(0, 3) == "<0x" && text[5] == '>' &&
          hex_digit(text[3]) >= 0 && hex_digit(text[4]) >= 0)
        return std::string(1, char(hex_digit(text[3]) * 16 + hex_digit(text[4])));
      return {};
    case TokenType::Unused:
    case TokenType::Undefined:
      return {};
  }
  return {};
}

std::string Tokenizer::decode(const std::vector<int32_t>& ids, bool special) const {
  std::string out;
  for (int32_t id : ids) out += decode_token(id, special);
  return out;
}

int32_t Tokenizer::bos() const {
  return s_->bos;
}
int32_t Tokenizer::eos() const {
  return s_->eos;
}
bool Tokenizer::is_eog(int32_t id) const {
  return std::binary_search(s_->eog.begin(), s_->eog.end(), id);
}
bool Tokenizer::add_bos() const {
  return s_->add_bos;
}
int32_t Tokenizer::vocab_size() const {
  return s_->vocab_size();
}
const std::string& Tokenizer::model() const {
  return s_->model;
}
const std::string& Tokenizer::pre() const {
  return s_->pre;
}

std::string_view Tokenizer::token_text(int32_t id) const {
  token_type(id);  // range check
  return s_->tokens[id];
}

TokenType Tokenizer::token_type(int32_t id) const {
  if (id < 0 || id >= s_->vocab_size())
    throw std::out_of_range(fmt::format("{}: token id {} is outside the vocabulary of {} tokens",
                                        s_->file, id, s_->vocab_size()));
  return s_->types[size_t(id)];
}

int32_t Tokenizer::find_token(std::string_view text) const {
  return s_->tokens.find(text);
}

}  // namespace fairkv::tokenizer
