#include "tokenizer/pretok.h"

#include <memory>
#include <new>
#include <stdexcept>

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

#include "tokenizer/unicode_utf8.h"

namespace fairkv::tokenizer {

namespace {

// llama.cpp's expressions (src/llama-vocab.cpp), byte for byte.
const char* const kGpt2 =
    "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)";
// Llama 3's tokenizer.json has (?i:'s|...); the case-insensitive group is spelled out.
const char* const kLlama3 =
    "(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|"
    "\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";
// Qwen2: Llama 3's expression with single digits.
const char* const kQwen2 =
    "(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|"
    "\\p{N}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";

struct Named {
  const char* names;  // space-separated tokenizer.ggml.pre values
  std::vector<std::string> regexes;
  bool ignore_merges;
  bool add_bos;
};

const std::vector<Named>& table() {
  static const std::vector<Named> t = {
      {"default", {"[\\p{P}\\$\\+<=>\\^~\\|]+", kGpt2, "\\p{N}+", "[0-9][0-9][0-9]"}, false, false},
      {"llama3 llama-v3 llama-bpe falcon3", {kLlama3}, true, true},
      {"dbrx smaug-bpe", {kLlama3}, false, false},
      {"gpt-2 phi-2 roberta-bpe gigachat mpt olmo jais", {kGpt2}, false, false},
      {"starcoder refact command-r smollm codeshell exaone minerva-7b",
       {"\\p{N}", kGpt2},
       false,
       false},
      {"qwen2 stablelm2 megrez", {kQwen2}, false, false},
      {"falcon", {"[\\p{P}\\$\\+<=>\\^~\\|`]+", kGpt2, "[0-9][0-9][0-9]"}, false, false},
  };
  return t;
}

bool listed(std::string_view names, std::string_view name) {
  while (!names.empty()) {
    const size_t sp = names.find(' ');
    if (names.substr(0, sp) == name) return true;
    if (sp == std::string_view::npos) break;
    names.remove_prefix(sp + 1);
  }
  return false;
}

std::string pcre2_message(int code) {
  PCRE2_UCHAR buf[256];
  if (pcre2_get_error_message(code, buf, sizeof buf) < 0)
    return "PCRE2 error " + std::to_string(code);
  return reinterpret_cast<const char*>(buf);
}

}  // namespace

std::optional<PreTokenizerSpec> pre_tokenizer_spec(std::string_view pre) {
  if (pre.empty()) pre = "default";
  for (const Named& n : table())
    if (listed(n.names, pre)) return PreTokenizerSpec{n.regexes, n.ignore_merges, n.add_bos};
  return std::nullopt;
}

std::string pre_tokenizer_names() {
  std::string s;
  for (const Named& n : table()) {
    if (!s.empty()) s += ' ';
    s += n.names;
  }
  return s;
}

struct PreTokenizer::Regex {
  pcre2_code* code = nullptr;

  explicit Regex(const std::string& pattern) {
    int err = 0;
    PCRE2_SIZE at = 0;
    code = pcre2_compile(reinterpret_cast<PCRE2_SPTR>(pattern.data()), pattern.size(),
                         PCRE2_UTF | PCRE2_UCP, &err, &at, nullptr);
    if (!code)
      throw std::runtime_error("pre-tokenizer regex '" + pattern + "' does not compile at offset " +
                               std::to_string(at) + ": " + pcre2_message(err));
    // Without JIT (unsupported CPU) the interpreter gives the same matches, only slower.
    pcre2_jit_compile(code, PCRE2_JIT_COMPLETE);
  }
  ~Regex() { pcre2_code_free(code); }
  Regex(const Regex&) = delete;
  Regex& operator=(const Regex&) = delete;

  // One match at or after `pos`; the subject is only the piece, so lookaheads stop at its end
  // as they do in llama.cpp, which matches piece by piece.
  int match(std::string_view piece, size_t pos, pcre2_match_data* md) const {
    const auto* subject = reinterpret_cast<PCRE2_SPTR>(piece.data());
    // The text was validated once by the caller; PCRE2 would otherwise re-check all of it on
    // every call, which makes a split quadratic.
    int rc = pcre2_match(code, subject, piece.size(), pos, PCRE2_NO_UTF_CHECK, md, nullptr);
    if (rc == PCRE2_ERROR_JIT_STACKLIMIT)  // the interpreter keeps its backtracking on the heap
      rc = pcre2_match(code, subject, piece.size(), pos, PCRE2_NO_UTF_CHECK | PCRE2_NO_JIT, md,
                       nullptr);
    return rc;
  }

  void split(std::string_view piece, std::vector<std::string_view>& out) const {
    std::unique_ptr<pcre2_match_data, decltype(&pcre2_match_data_free)> owner(
        pcre2_match_data_create_from_pattern(code, nullptr), &pcre2_match_data_free);
    if (!owner) throw std::bad_alloc();
    pcre2_match_data* md = owner.get();
    size_t gap = 0, pos = 0;
    const size_t n = piece.size();
    int rc = 0;
    while (pos < n) {
      rc = match(piece, pos, md);
      if (rc < 0) break;
      const PCRE2_SIZE* ov = pcre2_get_ovector_pointer(md);
      const size_t b = ov[0], e = ov[1];
      if (e == b) {  // an empty match consumes nothing: look again one character on
        pos = b + utf8_char_len(static_cast<unsigned char>(piece[b < n ? b : n - 1]));
        continue;
      }
      if (b > gap) out.push_back(piece.substr(gap, b - gap));
      out.push_back(piece.substr(b, e - b));
      gap = pos = e;
    }
    if (rc < 0 && rc != PCRE2_ERROR_NOMATCH)
      throw std::runtime_error("pre-tokenizer: PCRE2 match failed: " + pcre2_message(rc));
    if (gap < n) out.push_back(piece.substr(gap));
  }
};

PreTokenizer::PreTokenizer(const std::vector<std::string>& regexes) {
  for (const std::string& r : regexes) regexes_.push_back(std::make_unique<Regex>(r));
}

PreTokenizer::~PreTokenizer() = default;

void PreTokenizer::split(std::string_view text, std::vector<std::string_view>& out) const {
  if (text.empty()) return;
  // PCRE2's \s (UCP) still counts U+180E MONGOLIAN VOWEL SEPARATOR as a space, as Unicode did
  // before 6.3; llama.cpp follows today's White_Space property, where it is a format character
  // (Cf), so " \u180E" is one piece there and two here. The expressions run on a copy in which
  // it is U+2060 WORD JOINER, a format character of the same UTF-8 length that every class used
  // here treats as llama.cpp treats U+180E, and the pieces map back to `text` by offset.
  constexpr std::string_view kVowelSeparator = "\xE1\xA0\x8E", kWordJoiner = "\xE2\x81\xA0";
  std::string swapped;
  std::string_view subject = text;
  if (text.find(kVowelSeparator) != std::string_view::npos) {
    swapped.assign(text);
    for (size_t at = 0; (at = swapped.find(kVowelSeparator, at)) != std::string::npos;
         at += kWordJoiner.size())
      swapped.replace(at, kWordJoiner.size(), kWordJoiner);
    subject = swapped;
  }
  std::vector<std::string_view> cur{subject}, next;
  for (const auto& re : regexes_) {
    next.clear();
    for (std::string_view piece : cur) re->split(piece, next);
    cur.swap(next);
  }
  for (std::string_view piece : cur)
    out.push_back(text.substr(size_t(piece.data() - subject.data()), piece.size()));
}

}  // namespace fairkv::tokenizer
