// Byte-level BPE (tokenizer.ggml.model "gpt2"), as llama.cpp's llm_tokenizer_bpe_session.
#include <algorithm>
#include <limits>

#include <fmt/format.h>

#include "tokenizer/state.h"
#include "tokenizer/unicode_utf8.h"

namespace fairkv::tokenizer {

namespace {

// GPT-2's reversible map of bytes to printable code points: printable Latin-1 bytes stand for
// themselves, the others take the code points from 256 on, in byte order.
bool maps_to_itself(int b) {
  return (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
}

struct Symbol {
  uint32_t start, len;  // bytes of the encoded word; len 0 once merged into its left neighbour
  int32_t key;          // merge key (TokenizerState::key_of)
  int32_t prev, next;
};

// 16 bytes: long words keep large heaps, whose cost is cache misses.
struct Bigram {
  int32_t rank;
  int32_t left;    // the right symbol is left's next
  uint32_t len;    // left.len + right.len when it was found; stale once either grew
  int32_t result;  // key of the merged symbol
};

// Lowest rank first, then leftmost: the order llama.cpp's work queue pops them.
struct LaterBigram {
  bool operator()(const Bigram& a, const Bigram& b) const {
    return a.rank > b.rank || (a.rank == b.rank && a.left > b.left);
  }
};

// Scratch kept across the words of one encode call.
struct Work {
  std::string enc;
  std::vector<Symbol> syms;
  std::vector<Bigram> heap;
};

void encode_word(const TokenizerState& s, std::string_view word, Work& w,
                 std::vector<int32_t>& out) {
  w.enc.clear();
  for (unsigned char b : word) w.enc += s.byte_chars[b];
  if (s.ignore_merges) {
    const int32_t id = s.tokens.find(w.enc);
    if (id >= 0) {
      out.push_back(id);
      return;
    }
  }
  auto& syms = w.syms;
  syms.clear();
  uint32_t off = 0;
  const auto n_syms = int32_t(word.size());
  for (int32_t i = 0; i < n_syms; ++i) {
    const auto b = static_cast<unsigned char>(word[size_t(i)]);
    const auto len = uint32_t(s.byte_chars[b].size());
    syms.push_back({off, len, s.byte_key[b], i - 1, i + 1 < n_syms ? i + 1 : -1});
    off += len;
  }
  auto& heap = w.heap;
  heap.clear();
  auto try_pair = [&](int32_t l, int32_t r) {
    if (l < 0 || r < 0) return;
    const Symbol &L = syms[size_t(l)], &R = syms[size_t(r)];
    if (L.key < 0 || R.key < 0) return;
    const PairTable::Value* v = s.merges.find(L.key, R.key);
    if (!v) return;
    heap.push_back({v->rank, l, L.len + R.len, v->result});
    std::push_heap(heap.begin(), heap.end(), LaterBigram{});
  };
  merge_symbols(syms, heap, LaterBigram{}, try_pair,
                [](Symbol& left, const Bigram& pair) { left.key = pair.result; });
  const int32_t n_vocab = s.vocab_size();
  for (int32_t i = 0; i >= 0; i = syms[size_t(i)].next) {
    const Symbol& sym = syms[size_t(i)];
    if (sym.key >= 0 && sym.key < n_vocab) {
      out.push_back(sym.key);
      continue;
    }
    // Not a token (a vocabulary without some byte's character): llama.cpp looks up each byte
    // of the encoded text on its own and keeps those it finds.
    for (size_t k = 0; k < sym.len; ++k) {
      const int32_t id = s.tokens.find(std::string_view(w.enc).substr(sym.start + k, 1));
      if (id >= 0) out.push_back(id);
    }
  }
}

}  // namespace

void bpe_init(TokenizerState& s, const std::vector<std::string>& merges) {
  uint32_t next_cp = 256;
  s.char_byte.assign(256 + 68, -1);
  for (int b = 0; b < 256; ++b) {
    const uint32_t cp = maps_to_itself(b) ? uint32_t(b) : next_cp++;
    s.byte_chars[size_t(b)].clear();
    utf8_append(s.byte_chars[size_t(b)], cp);
    s.char_byte[cp] = int16_t(b);
  }

  // Merge keys are token ids; the few merge sides that are not tokens get keys past the
  // vocabulary, so that pairs are looked up by two integers.
  const int32_t n_vocab = s.vocab_size();
  std::vector<std::pair<int32_t, int32_t>> sides(merges.size());
  auto side_key = [&](std::string_view t) {
    const int32_t id = s.tokens.find(t);
    return id >= 0 ? id : n_vocab + s.extra.insert(t).first;
  };
  for (size_t r = 0; r < merges.size(); ++r) {
    const std::string& m = merges[r];
    const size_t sp = m.find(' ', 1);  // from 1: the left symbol may itself be a space
    if (sp == std::string::npos)
      throw gguf::Error(fmt::format(
          "{}: tokenizer.ggml.merges[{}]: expected two symbols separated by a space, got '{}'",
          s.file, r, m));
    if (r >= size_t(std::numeric_limits<int32_t>::max()) ||
        int64_t(n_vocab) + s.extra.size() + 2 >= std::numeric_limits<int32_t>::max())
      throw gguf::Error(s.file + ": tokenizer.ggml.merges: too many merges");
    sides[r] = {side_key(std::string_view(m).substr(0, sp)),
                side_key(std::string_view(m).substr(sp + 1))};
  }
  // Second pass, once every side has its key: the key of each merge's result.
  s.merges.reserve(merges.size());
  std::string cat;
  for (size_t r = 0; r < merges.size(); ++r) {
    const std::string& m = merges[r];
    const size_t sp = m.find(' ', 1);
    cat.assign(m, 0, sp);
    cat.append(m, sp + 1);
    // A pair listed twice keeps its first (lowest) rank, as llama.cpp's emplace does.
    s.merges.insert(sides[r].first, sides[r].second, {int32_t(r), s.key_of(cat)});
  }
  for (int b = 0; b < 256; ++b) s.byte_key[size_t(b)] = s.key_of(s.byte_chars[size_t(b)]);
}

void bpe_encode(const TokenizerState& s, std::string_view text, std::vector<int32_t>& out) {
  std::string repaired;
  if (!utf8_is_valid(text)) {
    repaired = utf8_repair(text);
    text = repaired;
  }
  std::vector<std::string_view> words;
  s.pretok->split(text, words);
  Work w;
  for (std::string_view word : words) encode_word(s, word, w, out);
}

std::string bpe_decode_text(const TokenizerState& s, std::string_view text) {
  std::string out;
  out.reserve(text.size());
  for (size_t pos = 0; pos < text.size();) {
    const size_t start = pos;
    uint32_t cp = 0;
    if (!utf8_decode(text, pos, cp)) {
      out += text[pos++];
      continue;
    }
    if (cp < s.char_byte.size() && s.char_byte[cp] >= 0)
      out += char(s.char_byte[cp]);
    else  // not a GPT-2 byte character: kept as written
      out.append(text.substr(start, pos - start));
  }
  return out;
}

}  // namespace fairkv::tokenizer
