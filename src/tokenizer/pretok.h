// Regex pre-tokenizers of byte-level BPE vocabularies, chosen by tokenizer.ggml.pre, with the
// expressions llama.cpp uses for each (run here with PCRE2 in UTF + UCP mode).
#pragma once

#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace fairkv::tokenizer {

struct PreTokenizerSpec {
  // Applied in order: each one splits every piece so far into its matches and the text between
  // them, as llama.cpp's unicode_regex_split does.
  std::vector<std::string> regexes;
  bool ignore_merges = false;  // a piece found whole in the vocabulary is one token (Llama 3)
  bool add_bos = false;        // default of tokenizer.ggml.add_bos_token
};

// The spec for a tokenizer.ggml.pre value ("" means absent, which llama.cpp reads as
// "default"); nullopt for a name this tokenizer does not know.
std::optional<PreTokenizerSpec> pre_tokenizer_spec(std::string_view pre);
// The accepted names, for error messages.
std::string pre_tokenizer_names();

class PreTokenizer {
 public:
  // Throws std::runtime_error when an expression does not compile.
  explicit PreTokenizer(const std::vector<std::string>& regexes);
  ~PreTokenizer();
  PreTokenizer(const PreTokenizer&) = delete;
  PreTokenizer& operator=(const PreTokenizer&) = delete;

  // Appends the pieces of `text` (well-formed UTF-8, see utf8_is_valid) to out, in order; they
  // cover the text exactly. Thread-safe. Throws std::runtime_error if PCRE2 fails to match
  // (a resource limit), never returns a partial split.
  void split(std::string_view text, std::vector<std::string_view>& out) const;

 private:
  struct Regex;
  std::vector<std::unique_ptr<Regex>> regexes_;
};

}  // namespace fairkv::tokenizer
