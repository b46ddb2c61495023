// SentencePiece-style BPE over scores (tokenizer.ggml.model "llama"), as llama.cpp's
// llm_tokenizer_spm_session.
#include <algorithm>
#include <stdexcept>

#include <fmt/format.h>

#include "tokenizer/state.h"
#include "tokenizer/unicode_utf8.h"

namespace fairkv::tokenizer {

namespace {

struct Symbol {
  uint32_t start, len;  // len 0 once merged into its left neighbour
  int32_t prev, next;
};

struct Bigram {
  float score;
  int32_t left;  // the right symbol is left's next
  uint32_t len;  // left.len + right.len when it was found; stale once either grew
};

// Highest score first, then leftmost: the order llama.cpp's work queue pops them.
struct WorseBigram {
  bool operator()(const Bigram& a, const Bigram& b) const {
    return a.score < b.score || (a.score == b.score && a.left > b.left);
  }
};

}  // namespace

void spm_encode(const TokenizerState& s, std::string_view text, std::vector<int32_t>& out) {
  std::vector<Symbol> syms;
  syms.reserve(text.size());
  // Characters by their lead byte alone, clamped to the text, as llama.cpp splits them: a
  // malformed sequence stays one symbol and falls back to its bytes below.
  for (size_t off = 0; off < text.size();) {
    const size_t len =
        std::min(utf8_char_len(static_cast<unsigned char>(text[off])), text.size() - off);
    const auto i = int32_t(syms.size());
    syms.push_back({uint32_t(off), uint32_t(len), i - 1, off + len < text.size() ? i + 1 : -1});
    off += len;
  }
  if (syms.empty()) return;

  std::vector<Bigram> heap;
  auto try_pair = [&](int32_t l, int32_t r) {
    if (l < 0 || r < 0) return;
    const Symbol &L = syms[size_t(l)], &R = syms[size_t(r)];
    const int32_t id = s.tokens.find(text.substr(L.start, L.len + R.len));
    if (id < 0) return;
    heap.push_back({s.scores[size_t(id)], l, L.len + R.len});
    std::push_heap(heap.begin(), heap.end(), WorseBigram{});
  };
  merge_symbols(syms, heap, WorseBigram{}, try_pair, [](Symbol&, const Bigram&) {});

  // Every merged symbol is a token; a single character outside the vocabulary becomes bytes.
  for (int32_t i = 0; i >= 0; i = syms[size_t(i)].next) {
    const Symbol& sym = syms[size_t(i)];
    const std::string_view piece = text.substr(sym.start, sym.len);
    const int32_t id = s.tokens.find(piece);
    if (id >= 0) {
      out.push_back(id);
      continue;
    }
    for (unsigned char c : piece) {
      const int32_t bt = s.byte_token[c];
      if (bt < 0)
        throw std::runtime_error(
            fmt::format("{}: byte 0x{:02X} has no token (no <0x{:02X}>, no one-byte token and "
                        "no unknown token)",
                        s.file, c, c));
      out.push_back(bt);
    }
  }
}

}  // namespace fairkv::tokenizer
