#include "model/tokenizer.h"

#include <algorithm>
#include <map>
#include <queue>

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

#include <fmt/format.h>

namespace fairkv::model {

namespace {

enum TokenType : int32_t {
  kNormal = 1,
  kUnknown = 2,
  kControl = 3,
  kUserDefined = 4,
  kUnused = 5,
  kByte = 6
};

size_t utf8_len(unsigned char c) {
  if (c < 0x80) return 1;
  if ((c >> 5) == 0x6) return 2;
  if ((c >> 4) == 0xE) return 3;
  if ((c >> 3) == 0x1E) return 4;
  return 1;  // invalid lead byte: one byte on its own
}

std::string utf8_encode(uint32_t cp) {
  std::string s;
  if (cp < 0x80) {
    s += char(cp);
  } else if (cp < 0x800) {
    s += char(0xC0 | (cp >> 6));
    s += char(0x80 | (cp & 0x3F));
  } else if (cp < 0x10000) {
    s += char(0xE0 | (cp >> 12));
    s += char(0x80 | ((cp >> 6) & 0x3F));
    s += char(0x80 | (cp & 0x3F));
  } else {
    s += char(0xF0 | (cp >> 18));
    s += char(0x80 | ((cp >> 12) & 0x3F));
    s += char(0x80 | ((cp >> 6) & 0x3F));
    s += char(0x80 | (cp & 0x3F));
  }
  return s;
}

// Splits UTF-8 text into characters (an invalid or truncated sequence splits per byte).
std::vector<std::string_view> utf8_chars(std::string_view s) {
  std::vector<std::string_view> out;
  for (size_t i = 0; i < s.size();) {
    size_t n = std::min(utf8_len(static_cast<unsigned char>(s[i])), s.size() - i);
    out.push_back(s.substr(i, n));
    i += n;
  }
  return out;
}

const std::string kSpace = "\xE2\x96\x81";  // U+2581, SentencePiece's space

// GPT-2's reversible map of bytes to printable code points.
std::vector<uint32_t> byte_to_codepoint() {
  std::vector<uint32_t> m(256, 0);
  std::vector<bool> direct(256, false);
  for (int b = '!'; b <= '~'; ++b) direct[size_t(b)] = true;
  for (int b = 0xA1; b <= 0xAC; ++b) direct[size_t(b)] = true;
  for (int b = 0xAE; b <= 0xFF; ++b) direct[size_t(b)] = true;
  uint32_t next = 256;
  for (int b = 0; b < 256; ++b) m[size_t(b)] = direct[size_t(b)] ? uint32_t(b) : next++;
  return m;
}

// Pre-tokenizer regexes by tokenizer.ggml.pre (the expressions llama.cpp documents per model).
const char* kGpt2Regex =
    "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+";
const char* kLlama3Regex =
    "(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|"
    "\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";
const char* kQwen2Regex =
    "(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|"
    "\\p{N}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";

struct Regex {
  pcre2_code* code = nullptr;
  explicit Regex(const char* pattern) {
    int err = 0;
    PCRE2_SIZE off = 0;
    code = pcre2_compile(reinterpret_cast<PCRE2_SPTR>(pattern), PCRE2_ZERO_TERMINATED,
                         PCRE2_UTF | PCRE2_UCP | PCRE2_NO_UTF_CHECK, &err, &off, nullptr);
    if (!code) throw std::runtime_error("pre-tokenizer regex does not compile");
    pcre2_jit_compile(code, PCRE2_JIT_COMPLETE);
  }
  ~Regex() { pcre2_code_free(code); }
  Regex(const Regex&) = delete;
  Regex& operator=(const Regex&) = delete;

  // Every match in order; text between matches (none for these total regexes) is kept as is.
  std::vector<std::string_view> split(std::string_view s) const {
    std::vector<std::string_view> out;
    pcre2_match_data* md = pcre2_match_data_create_from_pattern(code, nullptr);
    size_t pos = 0;
    while (pos < s.size()) {
      int rc =
          pcre2_match(code, reinterpret_cast<PCRE2_SPTR>(s.data()), s.size(), pos, 0, md, nullptr);
      if (rc < 0) {
        out.push_back(s.substr(pos));
        break;
      }
      const PCRE2_SIZE* ov = pcre2_get_ovector_pointer(md);
      if (ov[0] > pos) out.push_back(s.substr(pos, ov[0] - pos));
      if (ov[1] == ov[0]) {  // empty match: step one character
        size_t n = utf8_len(static_cast<unsigned char>(s[pos]));
        out.push_back(s.substr(pos, n));
        pos += n;
        continue;
      }
      out.push_back(s.substr(ov[0], ov[1] - ov[0]));
      pos = ov[1];
    }
    pcre2_match_data_free(md);
    return out;
  }
};

struct PairHash {
  size_t operator()(const std::pair<std::string, std::string>& p) const {
    return std::hash<std::string>()(p.first) * 31 + std::hash<std::string>()(p.second);
  }
};

}  // namespace

struct Tokenizer::Impl {
  std::string model, pre;
  std::vector<std::string> tokens;
  std::vector<float> scores;
  std::vector<int32_t> types;
  std::unordered_map<std::string, int32_t> ids;
  std::unordered_map<std::pair<std::string, std::string>, int32_t, PairHash> merge_rank;
  int32_t bos = 1, eos = 2, eot = -1, unk = 0;
  bool add_bos = true, add_space_prefix = true;
  bool ignore_merges = false;  // Llama 3: a pre-token found whole in the vocabulary is one token
  std::vector<int32_t> byte_tokens = std::vector<int32_t>(256, -1);  // SPM <0xXX>
  std::vector<uint32_t> byte_cp;                                     // GPT-2 byte -> code point
  std::unordered_map<uint32_t, uint8_t> cp_byte;
  std::unique_ptr<Regex> regex;

  void encode_spm(std::string_view text, std::vector<int32_t>& out) const;
  void encode_bpe(std::string_view text, std::vector<int32_t>& out) const;
};

Tokenizer::Tokenizer() : impl_(std::make_unique<Impl>()) {}
Tokenizer::Tokenizer(Tokenizer&&) noexcept = default;
Tokenizer& Tokenizer::operator=(Tokenizer&&) noexcept = default;
Tokenizer::~Tokenizer() = default;

Tokenizer Tokenizer::from_gguf(const gguf::File& f) {
  Tokenizer t;
  Impl& I = *t.impl_;
  I.model = f.get_string("tokenizer.ggml.model");
  if (I.model != "llama" && I.model != "gpt2")
    throw gguf::Error(
        fmt::format("{}: tokenizer.ggml.model: unsupported tokenizer '{}' "
                    "(supported: llama, gpt2)",
                    f.path(), I.model));
  I.tokens = f.get_strings("tokenizer.ggml.tokens");
  const int64_t n = int64_t(I.tokens.size());
  if (n == 0) throw gguf::Error(f.path() + ": tokenizer.ggml.tokens: the vocabulary is empty");
  if (f.find("tokenizer.ggml.scores")) {
    const auto& s = f.get_numbers("tokenizer.ggml.scores");
    if (int64_t(s.size()) != n)
      throw gguf::Error(fmt::format("{}: tokenizer.ggml.scores: expected {} scores, got {}",
                                    f.path(), n, s.size()));
    I.scores.assign(s.begin(), s.end());
  } else {
    I.scores.assign(size_t(n), 0.0f);
  }
  if (f.find("tokenizer.ggml.token_type")) {
    const auto& s = f.get_numbers("tokenizer.ggml.token_type");
    if (int64_t(s.size()) != n)
      throw gguf::Error(fmt::format("{}: tokenizer.ggml.token_type: expected {} types, got {}",
                                    f.path(), n, s.size()));
    I.types.assign(s.begin(), s.end());
  } else {
    I.types.assign(size_t(n), kNormal);
  }
  I.ids.reserve(size_t(n) * 2);
  for (int32_t i = 0; i < int32_t(n); ++i) I.ids.emplace(I.tokens[size_t(i)], i);
  auto id_key = [&](const char* key, int32_t dflt) {
    const auto v = f.find_int(key);
    if (!v) return dflt;
    if (*v < 0 || *v >= n)
      throw gguf::Error(
          fmt::format("{}: {}: token id {} outside the vocabulary of {}", f.path(), key, *v, n));
    return int32_t(*v);
  };
  const bool spm = I.model == "llama";
  I.bos = id_key("tokenizer.ggml.bos_token_id", spm ? 1 : 11);
  I.eos = id_key("tokenizer.ggml.eos_token_id", spm ? 2 : 11);
  I.unk = id_key("tokenizer.ggml.unknown_token_id", 0);
  I.eot = id_key("tokenizer.ggml.eot_token_id", -1);
  if (const gguf::Value* v = f.find("tokenizer.ggml.add_bos_token"))
    I.add_bos = v->i != 0;
  else
    I.add_bos = spm;
  if (const gguf::Value* v = f.find("tokenizer.ggml.add_space_prefix"))
    I.add_space_prefix = v->i != 0;
  else
    I.add_space_prefix = spm;

  if (spm) {
    for (int b = 0; b < 256; ++b) {
      auto it = I.ids.find(fmt::format("<0x{:02X}>", b));
      if (it != I.ids.end()) I.byte_tokens[size_t(b)] = it->second;
    }
  } else {
    I.pre = f.find_string("tokenizer.ggml.pre").value_or("default");
    const char* re = kGpt2Regex;
    if (I.pre == "llama-bpe" || I.pre == "llama3" || I.pre == "smaug-bpe") {
      re = kLlama3Regex;
      I.ignore_merges = true;
    } else if (I.pre == "qwen2")
      re = kQwen2Regex;
    I.regex = std::make_unique<Regex>(re);
    I.byte_cp = byte_to_codepoint();
    for (int b = 0; b < 256; ++b) I.cp_byte[I.byte_cp[size_t(b)]] = uint8_t(b);
    const auto& merges = f.get_strings("tokenizer.ggml.merges");
    I.merge_rank.reserve(merges.size() * 2);
    for (size_t r = 0; r < merges.size(); ++r) {
      const std::string& m = merges[r];
      const size_t sp = m.find(' ', 1);
      if (sp == std::string::npos)
        throw gguf::Error(fmt::format(
            "{}: tokenizer.ggml.merges[{}]: expected 'left right', got '{}'", f.path(), r, m));
      I.merge_rank.emplace(std::make_pair(m.substr(0, sp), m.substr(sp + 1)), int32_t(r));
    }
  }
  return t;
}

// SentencePiece-style: start from characters, repeatedly merge the adjacent pair whose
// concatenation is the best-scoring vocabulary entry (leftmost on ties).
void Tokenizer::Impl::encode_spm(std::string_view text, std::vector<int32_t>& out) const {
  std::string s;
  if (add_space_prefix) s += kSpace;
  for (char c : text) {
    if (c == ' ')
      s += kSpace;
    else
      s += c;
  }
  std::vector<std::string> sym;
  for (auto ch : utf8_chars(s)) sym.emplace_back(ch);
  while (sym.size() > 1) {
    float best = 0;
    size_t at = SIZE_MAX;
    for (size_t i = 0; i + 1 < sym.size(); ++i) {
      auto it = ids.find(sym[i] + sym[i + 1]);
      if (it == ids.end()) continue;
      const float sc = scores[size_t(it->second)];
      if (at == SIZE_MAX || sc > best) best = sc, at = i;
    }
    if (at == SIZE_MAX) break;
    sym[at] += sym[at + 1];
    sym.erase(sym.begin() + long(at) + 1);
  }
  for (const auto& piece : sym) {
    auto it = ids.find(piece);
    if (it != ids.end()) {
      out.push_back(it->second);
      continue;
    }
    for (unsigned char b : piece) out.push_back(byte_tokens[b] >= 0 ? byte_tokens[b] : unk);
  }
}

// Byte-level BPE: each pre-token's bytes become printable code points, then the lowest-ranked
// merge present is applied until none applies.
void Tokenizer::Impl::encode_bpe(std::string_view text, std::vector<int32_t>& out) const {
  for (std::string_view word : regex->split(text)) {
    std::vector<std::string> sym;
    for (unsigned char b : word) sym.push_back(utf8_encode(byte_cp[b]));
    if (ignore_merges) {
      std::string whole;
      for (const auto& c : sym) whole += c;
      if (auto it = ids.find(whole); it != ids.end()) {
        out.push_back(it->second);
        continue;
      }
    }
    while (sym.size() > 1) {
      int32_t best = INT32_MAX;
      size_t at = SIZE_MAX;
      for (size_t i = 0; i + 1 < sym.size(); ++i) {
        auto it = merge_rank.find({sym[i], sym[i + 1]});
        if (it != merge_rank.end() && it->second < best) best = it->second, at = i;
      }
      if (at == SIZE_MAX) break;
      sym[at] += sym[at + 1];
      sym.erase(sym.begin() + long(at) + 1);
    }
    for (const auto& piece : sym) {
      auto it = ids.find(piece);
      if (it != ids.end()) {
        out.push_back(it->second);
      } else {  // a byte's code point that no token covers: should not happen in real vocabs
        for (auto ch : utf8_chars(piece)) {
          auto jt = ids.find(std::string(ch));
          out.push_back(jt != ids.end() ? jt->second : unk);
        }
      }
    }
  }
}

std::vector<int32_t> Tokenizer::encode(std::string_view text, bool add_bos) const {
  std::vector<int32_t> out;
  if (add_bos) out.push_back(impl_->bos);
  if (text.empty()) return out;
  if (impl_->model == "llama")
    impl_->encode_spm(text, out);
  else
    impl_->encode_bpe(text, out);
  return out;
}

std::string Tokenizer::decode_token(int32_t id) const {
  const Impl& I = *impl_;
  if (id < 0 || id >= int32_t(I.tokens.size())) return {};
  const int32_t type = I.types[size_t(id)];
  if (type == kControl || type == kUnused) return {};
  const std::string& t = I.tokens[size_t(id)];
  if (I.model == "llama") {
    if (type == kByte && t.size() == 6)
      return std::string(1, char(std::stoi(t.substr(3, 2), nullptr, 16)));
    std::string s;
    for (size_t i = 0; i < t.size();) {
      if (t.compare(i, kSpace.size(), kSpace) == 0) {
        s += ' ';
        i += kSpace.size();
      } else {
        s += t[i++];
      }
    }
    return s;
  }
  if (type == kUserDefined) return t;
  std::string s;
  for (auto ch : utf8_chars(t)) {
    // Decode one code point and map it back to its byte.
    uint32_t cp = static_cast<unsigned char>(ch[0]);
    if (ch.size() > 1) {
      cp &= 0xFFu >> (ch.size() + 1);
      for (size_t k = 1; k < ch.size(); ++k)
        cp = (cp << 6) | (static_cast<unsigned char>(ch[k]) & 0x3F);
    }
    auto it = I.cp_byte.find(cp);
    if (it != I.cp_byte.end())
      s += char(it->second);
    else
      s += ch;
  }
  return s;
}

std::string Tokenizer::decode(const std::vector<int32_t>& ids) const {
  std::string s;
  for (int32_t id : ids) s += decode_token(id);
  return s;
}

int32_t Tokenizer::bos() const {
  return impl_->bos;
}
int32_t Tokenizer::eos() const {
  return impl_->eos;
}
bool Tokenizer::is_eog(int32_t id) const {
  return id == impl_->eos || (impl_->eot >= 0 && id == impl_->eot);
}
bool Tokenizer::add_bos() const {
  return impl_->add_bos;
}
int32_t Tokenizer::vocab_size() const {
  return int32_t(impl_->tokens.size());
}
const std::string& Tokenizer::model() const {
  return impl_->model;
}
const std::string& Tokenizer::pre() const {
  return impl_->pre;
}

}  // namespace fairkv::model
