// Tokenizer::from_gguf: the vocabulary, its special tokens and flags, with llama.cpp's defaults.
#include <algorithm>
#include <limits>

#include <fmt/format.h>

#include "tokenizer/state.h"

namespace fairkv::tokenizer {

namespace {

// Texts llama.cpp treats as end of generation whatever the ids in the metadata say.
constexpr std::string_view kEogTexts[] = {"<|eot_id|>",    "<|im_end|>", "<|end|>", "<end_of_turn>",
                                          "<|endoftext|>", "<|eom_id|>", "<EOT>"};

// llama.cpp's token types: 0 undefined, 1 normal, 2 unknown, 3 control, 4 user-defined,
// 5 unused, 6 byte. Anything else is a broken file, not a token to treat as undefined.
TokenType token_type_of(const gguf::File& f, size_t i, double v) {
  if (v >= 0 && v <= 6 && v == double(int(v)))
    return v == 0 ? TokenType::Undefined : TokenType(int(v));
  throw gguf::Error(
      fmt::format("{}: tokenizer.ggml.token_type[{}]: expected a type from 0 to 6, "
                  "got {}",
                  f.path(), i, v));
}

void load_vocabulary(const gguf::File& f, TokenizerState& s) {
  const auto& tokens = f.get_strings("tokenizer.ggml.tokens");
  const size_t n = tokens.size();
  if (n == 0) throw gguf::Error(f.path() + ": tokenizer.ggml.tokens: the vocabulary is empty");
  // Merge keys past the vocabulary must stay within int32.
  if (n > size_t(std::numeric_limits<int32_t>::max() / 2))
    throw gguf::Error(fmt::format("{}: tokenizer.ggml.tokens: {} tokens is too many", f.path(), n));
  size_t chars = 0;
  for (const std::string& t : tokens) chars += t.size();
  s.tokens.reserve(n, chars);
  for (size_t i = 0; i < n; ++i) {
    // llama.cpp names empty tokens so that no text maps to them.
    const std::string empty_name = tokens[i].empty() ? fmt::format("[EMPTY_{}]", i) : "";
    const std::string_view t = tokens[i].empty() ? std::string_view(empty_name) : tokens[i];
    const auto [id, added] = s.tokens.insert(t);
    if (!added)
      throw gguf::Error(fmt::format("{}: tokenizer.ggml.tokens: token {} '{}' repeats token {}",
                                    f.path(), i, t, id));
  }

  s.scores.assign(n, 0.0f);
  if (f.find("tokenizer.ggml.scores")) {
    const auto& v = f.get_numbers("tokenizer.ggml.scores");
    if (v.size() != n)
      throw gguf::Error(
          fmt::format("{}: tokenizer.ggml.scores: expected {} scores (one per token), got {}",
                      f.path(), n, v.size()));
    for (size_t i = 0; i < n; ++i) s.scores[i] = float(v[i]);
  }
  s.types.assign(n, TokenType::Normal);
  if (f.find("tokenizer.ggml.token_type")) {
    const auto& v = f.get_numbers("tokenizer.ggml.token_type");
    if (v.size() != n)
      throw gguf::Error(
          fmt::format("{}: tokenizer.ggml.token_type: expected {} types (one per token), got {}",
                      f.path(), n, v.size()));
    for (size_t i = 0; i < n; ++i) s.types[i] = token_type_of(f, i, v[i]);
  }
}

// A special token id from the metadata: absent or the "none" value converters write
// (0xFFFFFFFF, -1) keeps llama.cpp's default; any other id must be in the vocabulary.
int32_t special_id(const gguf::File& f, const TokenizerState& s, const char* key, int32_t dflt) {
  const auto v = f.find_int(key);
  const int64_t n = s.vocab_size();
  if (dflt >= n) dflt = -1;
  if (!v || *v == -1 || *v == 0xFFFFFFFFll) return dflt;
  if (*v < 0 || *v >= n)
    throw gguf::Error(fmt::format("{}: {}: token id {} is outside the vocabulary of {} tokens",
                                  f.path(), key, *v, n));
  return int32_t(*v);
}

void load_specials(const gguf::File& f, TokenizerState& s) {
  const bool spm = s.spm;
  s.bos = special_id(f, s, "tokenizer.ggml.bos_token_id", spm ? 1 : 11);
  s.eos = special_id(f, s, "tokenizer.ggml.eos_token_id", spm ? 2 : 11);
  s.unk = special_id(f, s, "tokenizer.ggml.unknown_token_id", spm ? 0 : -1);
  const int32_t eot = special_id(f, s, "tokenizer.ggml.eot_token_id", -1);
  const int32_t eom = special_id(f, s, "tokenizer.ggml.eom_token_id", -1);

  for (int32_t id : {s.eos, eot, eom})
    if (id >= 0) s.eog.push_back(id);
  for (std::string_view t : kEogTexts) {
    const int32_t id = s.tokens.find(t);
    if (id < 0) continue;
    s.eog.push_back(id);
    // llama.cpp makes these control tokens even where the converter did not.
    s.types[size_t(id)] = TokenType::Control;
  }
  std::sort(s.eog.begin(), s.eog.end());
  s.eog.erase(std::unique(s.eog.begin(), s.eog.end()), s.eog.end());

  for (int32_t id = 0; id < s.vocab_size(); ++id) {
    const TokenType t = s.types[size_t(id)];
    if (t == TokenType::Control || t == TokenType::UserDefined || t == TokenType::Unknown)
      s.specials.push_back(id);
  }
  std::stable_sort(s.specials.begin(), s.specials.end(),
                   [&](int32_t a, int32_t b) { return s.tokens[a].size() > s.tokens[b].size(); });
}

}  // namespace

Tokenizer::Tokenizer(std::unique_ptr<TokenizerState> s) : s_(std::move(s)) {}
Tokenizer::Tokenizer(Tokenizer&&) noexcept = default;
Tokenizer& Tokenizer::operator=(Tokenizer&&) noexcept = default;
Tokenizer::~Tokenizer() = default;

Tokenizer Tokenizer::from_gguf(const gguf::File& f) {
  auto state = std::make_unique<TokenizerState>();
  TokenizerState& s = *state;
  s.file = f.path();
  s.model = f.get_string("tokenizer.ggml.model");
  if (s.model != "llama" && s.model != "gpt2")
    throw gguf::Error(
        fmt::format("{}: tokenizer.ggml.model: unsupported tokenizer '{}' (supported: llama, gpt2)",
                    f.path(), s.model));
  s.spm = s.model == "llama";

  PreTokenizerSpec spec;
  if (!s.spm) {
    s.pre = f.find_string("tokenizer.ggml.pre").value_or("");
    const auto found = pre_tokenizer_spec(s.pre);
    if (!found)
      throw gguf::Error(
          fmt::format("{}: tokenizer.ggml.pre: unsupported pre-tokenizer '{}' (supported: {})",
                      f.path(), s.pre, pre_tokenizer_names()));
    spec = *found;
    if (s.pre.empty()) s.pre = "default";
  }

  load_vocabulary(f, s);
  load_specials(f, s);

  const gguf::Value* v = f.find("tokenizer.ggml.add_bos_token");
  s.add_bos = v ? f.get_bool("tokenizer.ggml.add_bos_token") : (s.spm || spec.add_bos);
  v = f.find("tokenizer.ggml.add_space_prefix");
  s.add_space_prefix = v ? f.get_bool("tokenizer.ggml.add_space_prefix") : s.spm;

  if (s.spm) {
    for (int b = 0; b < 256; ++b) {
      int32_t id = s.tokens.find(fmt::format("<0x{:02X}>", b));
      if (id < 0) id = s.tokens.find(std::string(1, char(b)));
      s.byte_token[size_t(b)] = id >= 0 ? id : s.unk;
    }
  } else {
    s.ignore_merges = spec.ignore_merges;
    s.pretok = std::make_unique<PreTokenizer>(spec.regexes);
    bpe_init(s, f.get_strings("tokenizer.ggml.merges"));
  }
  return Tokenizer(std::move(state));
}

}  // namespace fairkv::tokenizer
