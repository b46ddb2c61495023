// Tokenizers: llama.cpp's test vectors (../shared/vocab), the golden prompts, hand-worked
// vocabularies whose ids follow from the algorithm by hand, the pre-tokenizer splits, UTF-8
// repair, and the errors for broken metadata.
#include "tokenizer/tokenizer.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <map>
#include <sstream>
#include <thread>

#include "tokenizer/pretok.h"
#include "tokenizer/unicode_utf8.h"

namespace fairkv::tokenizer {
namespace {

namespace fs = std::filesystem;
const fs::path kShared = FAIRKV_SHARED_DIR;

std::string slurp(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  return std::string((std::istreambuf_iterator<char>(in)), {});
}

// .inp: each text followed by "\n__ggml_vocab_test__\n" (llama.cpp's test-tokenizer-0 reads
// them this way); .out: one line of ids per text.
std::vector<std::string> read_texts(const fs::path& p) {
  const std::string all = slurp(p), sep = "\n__ggml_vocab_test__\n";
  std::vector<std::string> out;
  size_t b = 0;
  for (size_t e; b < all.size() && (e = all.find(sep, b)) != std::string::npos; b = e + sep.size())
    out.push_back(all.substr(b, e - b));
  if (b < all.size()) out.push_back(all.substr(b));
  return out;
}

std::vector<int32_t> parse_ids(const std::string& line) {
  std::istringstream ss(line);
  std::vector<int32_t> ids;
  for (int32_t v; ss >> v;) ids.push_back(v);
  return ids;
}

std::vector<std::vector<int32_t>> read_ids(const fs::path& p) {
  std::ifstream in(p);
  std::vector<std::vector<int32_t>> out;
  for (std::string line; std::getline(in, line);) out.push_back(parse_ids(line));
  return out;
}

std::vector<int32_t> cat(std::vector<int32_t> a, const std::vector<int32_t>& b) {
  a.insert(a.end(), b.begin(), b.end());
  return a;
}

fs::path vocab_path(const std::string& name) {
  return kShared / "vocab" / ("ggml-vocab-" + name + ".gguf");
}

// Opening and loading a shared vocabulary once per test binary.
const Tokenizer& shared_tokenizer(const std::string& name) {
  static std::map<std::string, Tokenizer> cache;
  auto it = cache.find(name);
  if (it == cache.end())
    it = cache.emplace(name, Tokenizer::from_gguf(gguf::File::open(vocab_path(name).string())))
             .first;
  return it->second;
}

#define REQUIRE_VOCAB(name)          \
  if (!fs::exists(vocab_path(name))) \
  GTEST_SKIP() << "no shared vocabularies at " << kShared / "vocab"

// ---------------------------------------------------------------------------------------------
// llama.cpp's vectors

class Vocab : public ::testing::TestWithParam<std::string> {};

TEST_P(Vocab, EncodesEveryTestVectorExactlyAndDecodesBack) {
  REQUIRE_VOCAB(GetParam());
  const Tokenizer& tok = shared_tokenizer(GetParam());
  const std::string path = vocab_path(GetParam()).string();
  const auto texts = read_texts(path + ".inp");
  const auto expected = read_ids(path + ".out");
  ASSERT_EQ(texts.size(), expected.size());
  ASSERT_EQ(texts.size(), 46u);
  for (size_t i = 0; i < texts.size(); ++i) {
    // test-tokenizer-0 tokenizes with add_special = false, parse_special = false.
    const auto ids = tok.encode(texts[i], false);
    EXPECT_EQ(ids, expected[i]) << "text #" << i << ": '" << texts[i] << "'";
    // None of these texts spells a special token, so parsing them changes nothing.
    EXPECT_EQ(tok.encode(texts[i], false, true), expected[i]) << "text #" << i;
    // SentencePiece gives back the space that add_space_prefix put in front.
    const std::string want =
        tok.model() == "llama" && !texts[i].empty() ? " " + texts[i] : texts[i];
    EXPECT_EQ(tok.decode(ids), want) << "text #" << i;
  }
}

INSTANTIATE_TEST_SUITE_P(LlamaCpp, Vocab,
                         ::testing::Values("llama-spm", "llama-bpe", "qwen2", "gpt-2"),
                         [](const auto& info) {
                           std::string n = info.param;
                           for (char& c : n)
                             if (c == '-') c = '_';
                           return n;
                         });

// A long text mixing every test vector with long runs (spaces, newlines, one letter, digits,
// emoji) comes back byte for byte; it also exercises long merge queues.
TEST_P(Vocab, LongMixedTextRoundTrips) {
  REQUIRE_VOCAB(GetParam());
  const Tokenizer& tok = shared_tokenizer(GetParam());
  std::string text;
  for (const std::string& t : read_texts(vocab_path(GetParam()).string() + ".inp")) text += t;
  text += std::string(3000, ' ') + "x" + std::string(1000, '\n') + std::string(5000, 'a') +
          std::string(999, '7') + " ";
  for (int i = 0; i < 300; ++i) text += "\xF0\x9F\xA6\x99";  // llama emoji
  text += std::string(2000, '\t');
  const auto ids = tok.encode(text, false);
  ASSERT_FALSE(ids.empty());
  EXPECT_EQ(tok.decode(ids), tok.model() == "llama" ? " " + text : text);
}

TEST(SharedVocab, ConcurrentEncodesAgree) {
  REQUIRE_VOCAB("llama-bpe");
  const Tokenizer& tok = shared_tokenizer("llama-bpe");
  const std::string path = vocab_path("llama-bpe").string();
  const auto texts = read_texts(path + ".inp");
  const auto expected = read_ids(path + ".out");
  std::vector<int> wrong(4, 0);
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t)
    threads.emplace_back([&, t] {
      for (int rep = 0; rep < 20; ++rep)
        for (size_t i = 0; i < texts.size(); ++i)
          if (tok.encode(texts[i], false) != expected[i]) ++wrong[size_t(t)];
    });
  for (auto& th : threads) th.join();
  EXPECT_EQ(wrong, std::vector<int>(4, 0));
}

TEST(SharedVocab, FlagsAndSpecialIdsFollowLlamaCpp) {
  REQUIRE_VOCAB("llama-bpe");
  const Tokenizer& spm = shared_tokenizer("llama-spm");
  EXPECT_EQ(spm.model(), "llama");
  EXPECT_TRUE(spm.add_bos());
  EXPECT_EQ(spm.bos(), 1);
  EXPECT_EQ(spm.eos(), 2);
  EXPECT_EQ(spm.vocab_size(), 32000);
  EXPECT_EQ(spm.token_type(3), TokenType::Byte);
  EXPECT_EQ(spm.token_text(3), "<0x00>");

  const Tokenizer& l3 = shared_tokenizer("llama-bpe");
  EXPECT_EQ(l3.pre(), "llama-bpe");
  EXPECT_TRUE(l3.add_bos());  // Llama 3 adds BOS without the key
  EXPECT_EQ(l3.bos(), 128000);
  EXPECT_TRUE(l3.is_eog(128001));  // EOS
  EXPECT_TRUE(l3.is_eog(128009));  // <|eot_id|>, by its text
  EXPECT_FALSE(l3.is_eog(128000));
  EXPECT_EQ(l3.find_token("<|eot_id|>"), 128009);
  EXPECT_EQ(l3.find_token("no such token"), -1);

  const Tokenizer& g2 = shared_tokenizer("gpt-2");
  EXPECT_FALSE(g2.add_bos());
  EXPECT_EQ(g2.eos(), 50256);
  EXPECT_THROW(g2.decode_token(50257), std::out_of_range);
  EXPECT_THROW(g2.decode_token(-1), std::out_of_range);
}

TEST(SharedVocab, ControlTokensOnlyWithParseSpecial) {
  REQUIRE_VOCAB("llama-bpe");
  const Tokenizer& tok = shared_tokenizer("llama-bpe");
  const std::string text = "<|begin_of_text|>Hello<|eot_id|>";
  EXPECT_EQ(tok.encode(text, false, true),
            cat(cat({128000}, tok.encode("Hello", false)), {128009}));
  const auto plain = tok.encode(text, false, false);
  EXPECT_EQ(std::count(plain.begin(), plain.end(), 128000), 0);
  EXPECT_EQ(std::count(plain.begin(), plain.end(), 128009), 0);
  EXPECT_EQ(tok.decode(plain), text);
  // Control tokens decode to nothing unless asked for.
  EXPECT_EQ(tok.decode(tok.encode(text, false, true)), "Hello");
  EXPECT_EQ(tok.decode(tok.encode(text, false, true), true), text);
}

TEST(SharedVocab, UserDefinedTokensAlwaysMatch) {
  REQUIRE_VOCAB("qwen2");
  const Tokenizer& tok = shared_tokenizer("qwen2");
  ASSERT_EQ(tok.token_type(151646), TokenType::UserDefined);
  ASSERT_EQ(tok.token_text(151646), "[PAD151646]");
  const auto want = cat(cat(tok.encode("a", false), {151646}), tok.encode(" b", false));
  EXPECT_EQ(tok.encode("a[PAD151646] b", false, false), want);
  EXPECT_EQ(tok.decode(want), "a[PAD151646] b");
}

TEST(SharedVocab, SentencePiecePrefixesTextAfterASpecialToken) {
  REQUIRE_VOCAB("llama-spm");
  const Tokenizer& tok = shared_tokenizer("llama-spm");
  // "<s>" is parsed, and the text after it gets its own leading space, as in llama.cpp.
  EXPECT_EQ(tok.encode("<s>Hello</s>", false, true),
            cat(cat({1}, tok.encode("Hello", false)), {2}));
  EXPECT_EQ(tok.encode("Hello", true), cat({1}, tok.encode("Hello", false)));
}

TEST(SharedVocab, InvalidUtf8BecomesReplacementCharactersForBpe) {
  REQUIRE_VOCAB("gpt-2");
  for (const char* name : {"gpt-2", "llama-bpe"}) {
    const Tokenizer& tok = shared_tokenizer(name);
    EXPECT_EQ(tok.encode("a\xFF b\xE2\x82", false),
              tok.encode("a\xEF\xBF\xBD b\xEF\xBF\xBD\xEF\xBF\xBD", false))
        << name;
  }
}

TEST(SharedVocab, InvalidUtf8FallsBackToBytesForSentencePiece) {
  REQUIRE_VOCAB("llama-spm");
  const Tokenizer& tok = shared_tokenizer("llama-spm");
  // 0xE2 announces three bytes, so "\xE2ab" is one symbol that is no token: its bytes.
  const std::vector<int32_t> want = {tok.find_token("\xE2\x96\x81"), tok.find_token("<0xE2>"),
                                     tok.find_token("<0x61>"), tok.find_token("<0x62>")};
  EXPECT_EQ(tok.encode("\xE2"
                       "ab",
                       false),
            want);
  EXPECT_EQ(tok.decode(want),
            " \xE2"
            "ab");
}

// ---------------------------------------------------------------------------------------------
// Golden prompts of stories260K (SentencePiece, 512 tokens)

TEST(TokenizerGolden, StoriesPromptsAndContinuations) {
  const fs::path model = kShared / "models/stories260K.gguf";
  if (!fs::exists(model)) GTEST_SKIP() << "no shared data at " << kShared;
  const gguf::File f = gguf::File::open(model.string());
  const Tokenizer tok = Tokenizer::from_gguf(f);
  EXPECT_EQ(tok.bos(), 1);
  EXPECT_EQ(tok.eos(), 2);
  EXPECT_TRUE(tok.add_bos());
  for (const char* c : {"once-upon", "tom-dog", "long-context"}) {
    const fs::path dir = kShared / "golden/stories260K" / c;
    std::ifstream tf(dir / "tokens.txt");
    std::string line, prompt_ids, cont_ids;
    std::getline(tf, line), std::getline(tf, prompt_ids), std::getline(tf, line),
        std::getline(tf, cont_ids);
    const std::string prompt = slurp(dir / "prompt.txt");
    const auto ids = tok.encode(prompt, true);
    EXPECT_EQ(ids, parse_ids(prompt_ids)) << c;
    EXPECT_EQ(tok.decode(ids), " " + prompt) << c;
    EXPECT_EQ(tok.decode(parse_ids(cont_ids)), slurp(dir / "continuation.txt")) << c;
  }
}

// ---------------------------------------------------------------------------------------------
// Hand-worked vocabularies

gguf::File image(const gguf::Writer& w, const std::string& name) {
  const auto bytes = w.serialize();
  return gguf::File::parse(bytes.data(), bytes.size(), name);
}

const std::string kU = "\xE2\x96\x81";  // U+2581

// SentencePiece-style: ids and scores chosen so that each case below has one right answer.
gguf::Writer spm_writer() {
  gguf::Writer w;
  w.add_string("tokenizer.ggml.model", "llama");
  w.add_strings(
      "tokenizer.ggml.tokens",
      {"<unk>", "<s>",    "</s>", "<0xC3>", "<0xA9>", kU,   "a",  "b",   "c",      "x",     "y",
       "z",     kU + "a", "ab",   "bc",     "abc",    "xy", "yz", "[U]", "<0x21>", kU + "x"});
  w.add_f32s("tokenizer.ggml.scores",
             {0, 0, 0, 0, 0, -1, -1, -1, -1, -1, -1, -1, -3, -5, -2, -4, -1.5f, -1.5f, 0, 0, -10});
  w.add_i32s("tokenizer.ggml.token_type",
             {2, 3, 3, 6, 6, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 4, 6, 1});
  return w;
}

TEST(Spm, MergesTheBestScoringPairFirst) {
  const Tokenizer tok = Tokenizer::from_gguf(image(spm_writer(), "spm.gguf"));
  // "▁abc": bc (-2) beats ▁a (-3) beats ab (-5); then abc (-4) is stale because ▁a took the a.
  // Merging the first listed or the longest would give ▁ + abc instead.
  EXPECT_EQ(tok.encode("abc", false), (std::vector<int32_t>{12, 14}));
  // "▁xyz": xy and yz tie at -1.5; the leftmost wins.
  EXPECT_EQ(tok.encode("xyz", false), (std::vector<int32_t>{5, 16, 11}));
  // Spaces are U+2581: "▁a▁b".
  EXPECT_EQ(tok.encode("a b", false), (std::vector<int32_t>{12, 5, 7}));
  EXPECT_EQ(tok.encode("", false), std::vector<int32_t>{});
  EXPECT_EQ(tok.encode("", true), std::vector<int32_t>{1});
  EXPECT_EQ(tok.encode("a", true), (std::vector<int32_t>{1, 12}));
}

TEST(Spm, CharactersOutsideTheVocabularyFallBackToBytes) {
  const Tokenizer tok = Tokenizer::from_gguf(image(spm_writer(), "spm.gguf"));
  // é = C3 A9 has byte tokens; ! only as <0x21>; q has neither, so it is <unk>.
  EXPECT_EQ(tok.encode("\xC3\xA9!", false), (std::vector<int32_t>{5, 3, 4, 19}));
  EXPECT_EQ(tok.encode("q", false), (std::vector<int32_t>{5, 0}));
  EXPECT_EQ(tok.decode({5, 3, 4, 19}), " \xC3\xA9!");
}

TEST(Spm, SpecialTokens) {
  const Tokenizer tok = Tokenizer::from_gguf(image(spm_writer(), "spm.gguf"));
  // Parsed: <s>, then "a" with its own prefix space.
  EXPECT_EQ(tok.encode("<s>a", false, true), (std::vector<int32_t>{1, 12}));
  // Not parsed: "▁<s>a" character by character; < s > are unknown.
  EXPECT_EQ(tok.encode("<s>a", false, false), (std::vector<int32_t>{5, 0, 0, 0, 6}));
  // The user-defined [U] is matched either way; "b" after it gets a prefix space.
  EXPECT_EQ(tok.encode("a[U]b", false, false), (std::vector<int32_t>{12, 18, 5, 7}));
  EXPECT_EQ(tok.decode({12, 18, 5, 7}), " a[U] b");
  EXPECT_EQ(tok.decode_token(1), "");
  EXPECT_EQ(tok.decode_token(1, true), "<s>");
  EXPECT_EQ(tok.decode_token(0), "");
  EXPECT_EQ(tok.decode_token(0, true), "<unk>");
  EXPECT_TRUE(tok.is_eog(2));
  EXPECT_FALSE(tok.is_eog(1));
}

TEST(Spm, AddSpacePrefixKeyIsHonoured) {
  gguf::Writer w = spm_writer();
  w.add_bool("tokenizer.ggml.add_space_prefix", false);
  w.add_bool("tokenizer.ggml.add_bos_token", false);
  const Tokenizer tok = Tokenizer::from_gguf(image(w, "spm.gguf"));
  EXPECT_FALSE(tok.add_bos());
  // "abc": bc (-2), then abc (-4).
  EXPECT_EQ(tok.encode("abc", false), (std::vector<int32_t>{15}));
  // " abc" is "▁abc" as with the prefix: bc, then ▁a.
  EXPECT_EQ(tok.encode(" abc", false), (std::vector<int32_t>{12, 14}));
}

// Byte-level BPE: h e l o stand for themselves, Ġ (U+0120) is the space byte.
gguf::Writer bpe_writer(const std::string& pre) {
  gguf::Writer w;
  w.add_string("tokenizer.ggml.model", "gpt2");
  w.add_string("tokenizer.ggml.pre", pre);
  w.add_strings("tokenizer.ggml.tokens", {"h", "e", "l", "o", "\xC4\xA0", "ll", "he", "llo", "hell",
                                          "\xC4\xA0h", "<|endoftext|>", "hello"});
  w.add_i32s("tokenizer.ggml.token_type", {1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 3, 1});
  w.add_strings("tokenizer.ggml.merges", {"l l", "h e", "ll o", "he ll", "\xC4\xA0 h"});
  w.add_u32("tokenizer.ggml.bos_token_id", 10);
  w.add_u32("tokenizer.ggml.eos_token_id", 10);
  return w;
}

TEST(Bpe, AppliesMergesLowestRankFirst) {
  const Tokenizer tok = Tokenizer::from_gguf(image(bpe_writer("gpt-2"), "bpe.gguf"));
  EXPECT_FALSE(tok.add_bos());
  // h e l l o: "l l" (0), "h e" (1), "ll o" (2); "he ll" (3) is stale by then.
  EXPECT_EQ(tok.encode("hello", false), (std::vector<int32_t>{6, 7}));
  // h e l l: "l l", "h e", then "he ll".
  EXPECT_EQ(tok.encode("hell", false), (std::vector<int32_t>{8}));
  // Ġ h e l l o: "Ġ h" (4) would be first in the text but is last by rank; h has merged into
  // he before it comes up.
  EXPECT_EQ(tok.encode(" hello", false), (std::vector<int32_t>{4, 6, 7}));
  EXPECT_EQ(tok.decode({4, 6, 7}), " hello");
  // i has no token and no byte of it is one: llama.cpp drops it.
  EXPECT_EQ(tok.encode("hi", false), (std::vector<int32_t>{0}));
}

TEST(Bpe, Llama3TakesWholePiecesFoundInTheVocabulary) {
  const Tokenizer tok = Tokenizer::from_gguf(image(bpe_writer("llama-bpe"), "bpe.gguf"));
  EXPECT_TRUE(tok.add_bos());
  // "hello" is a token that no merge sequence reaches; ignore_merges takes it whole.
  EXPECT_EQ(tok.encode("hello", false), (std::vector<int32_t>{11}));
  EXPECT_EQ(tok.encode("hello", true), (std::vector<int32_t>{10, 11}));
  EXPECT_EQ(tok.encode("hell", false), (std::vector<int32_t>{8}));
}

TEST(Bpe, SpecialTokens) {
  const Tokenizer tok = Tokenizer::from_gguf(image(bpe_writer("gpt-2"), "bpe.gguf"));
  EXPECT_EQ(tok.encode("hello<|endoftext|>", false, true), (std::vector<int32_t>{6, 7, 10}));
  const auto plain = tok.encode("hello<|endoftext|>", false, false);
  EXPECT_EQ(std::count(plain.begin(), plain.end(), 10), 0);
  EXPECT_TRUE(tok.is_eog(10));
  EXPECT_EQ(tok.decode_token(10), "");
  EXPECT_EQ(tok.decode_token(10, true), "<|endoftext|>");
}

// ---------------------------------------------------------------------------------------------
// Pre-tokenizers

std::vector<std::string> split(const std::string& pre, const std::string& text) {
  const auto spec = pre_tokenizer_spec(pre);
  EXPECT_TRUE(spec) << pre;
  if (!spec) return {};
  PreTokenizer p(spec->regexes);
  std::vector<std::string_view> pieces;
  p.split(text, pieces);
  return {pieces.begin(), pieces.end()};
}

using Pieces = std::vector<std::string>;

TEST(PreTokenizer, Gpt2) {
  EXPECT_EQ(split("gpt-2", "Hello, y'all! 1234567  x\n"),
            (Pieces{"Hello", ",", " y", "'", "all", "!", " 1234567", " ", " x", "\n"}));
  EXPECT_EQ(split("gpt-2", "we'LL we'll"), (Pieces{"we", "'", "LL", " we", "'ll"}));
}

TEST(PreTokenizer, Llama3) {
  EXPECT_EQ(split("llama-bpe", "Hello, y'all! 1234567  x\n"),
            (Pieces{"Hello", ",", " y", "'all", "!", " ", "123", "456", "7", " ", " x", "\n"}));
  EXPECT_EQ(split("llama3", "we'LL\n\n  \n"), (Pieces{"we", "'LL", "\n\n  \n"}));
  EXPECT_EQ(split("llama3", ".\n\nx"), (Pieces{".\n\n", "x"}));
}

TEST(PreTokenizer, Qwen2SplitsDigits) {
  EXPECT_EQ(split("qwen2", "ab 1234"), (Pieces{"ab", " ", "1", "2", "3", "4"}));
}

TEST(PreTokenizer, MongolianVowelSeparatorIsNotASpace) {
  // A format character as in llama.cpp (PCRE2's \s says space): the space in front joins it,
  // and the pieces are the text's own bytes, not the stand-in the expressions ran on.
  const std::string text = "a \xE1\xA0\x8Ex";
  EXPECT_EQ(split("gpt-2", text), (Pieces{"a", " \xE1\xA0\x8E", "x"}));
  EXPECT_EQ(split("smollm", "1" + text), (Pieces{"1", "a", " \xE1\xA0\x8E", "x"}));
}

TEST(PreTokenizer, DefaultRunsFourExpressionsInTurn) {
  // Punctuation runs, then GPT-2 on each piece, then digit runs, then groups of three digits.
  EXPECT_EQ(split("default", "a,b 123456"), (Pieces{"a", ",", "b", " ", "123", "456"}));
  EXPECT_EQ(split("", "a,b"), (Pieces{"a", ",", "b"}));  // absent key = default
}

TEST(PreTokenizer, UnknownNamesAreRejected) {
  EXPECT_FALSE(pre_tokenizer_spec("no-such-pre"));
  EXPECT_NE(pre_tokenizer_names().find("qwen2"), std::string::npos);
}

TEST(PreTokenizer, PiecesCoverTheText) {
  const std::string text = "  Ünïcödé\u00A0\u2003spaces\t\t9\u0663\u0664 \xF0\x9F\x9A\x80!!?\r\n";
  for (const char* pre : {"default", "gpt-2", "llama3", "qwen2", "starcoder", "falcon"}) {
    std::string joined;
    for (const auto& p : split(pre, text)) {
      EXPECT_FALSE(p.empty()) << pre;
      joined += p;
    }
    EXPECT_EQ(joined, text) << pre;
  }
}

// ---------------------------------------------------------------------------------------------
// UTF-8

TEST(Utf8, ValidityIsStrict) {
  EXPECT_TRUE(utf8_is_valid("plain ASCII text, long enough to take the fast path"));
  EXPECT_TRUE(utf8_is_valid("\xC3\xA9\xE2\x96\x81\xF0\x9F\xA6\x99"));
  EXPECT_FALSE(utf8_is_valid("\xC0\x80"));          // overlong
  EXPECT_FALSE(utf8_is_valid("\xED\xA0\x80"));      // surrogate
  EXPECT_FALSE(utf8_is_valid("\xF4\x90\x80\x80"));  // past U+10FFFF
  EXPECT_FALSE(utf8_is_valid("abcdefgh\xE2\x82"));  // truncated
  EXPECT_FALSE(utf8_is_valid("\x80"));
}

TEST(Utf8, RepairMatchesLlamaCpp) {
  EXPECT_EQ(utf8_repair("h\xC3\xA9llo"), "h\xC3\xA9llo");
  EXPECT_EQ(utf8_repair("a\xFF"
                        "b"),
            "a\xEF\xBF\xBD"
            "b");
  // A truncated sequence: each byte on its own is U+FFFD.
  EXPECT_EQ(utf8_repair("\xE2\x82"), "\xEF\xBF\xBD\xEF\xBF\xBD");
  // Overlong forms are decoded and written shortest; surrogates are replaced.
  EXPECT_EQ(utf8_repair("\xC1\x81"), "A");
  EXPECT_EQ(utf8_repair("\xED\xA0\x80"), "\xEF\xBF\xBD");
}

// ---------------------------------------------------------------------------------------------
// Broken metadata: each error names the file and the key.

void expect_error(const gguf::Writer& w, const std::string& key) {
  try {
    Tokenizer::from_gguf(image(w, "broken.gguf"));
    ADD_FAILURE() << "loaded a vocabulary with a bad " << key;
  } catch (const gguf::Error& e) {
    const std::string msg = e.what();
    EXPECT_NE(msg.find("broken.gguf"), std::string::npos) << msg;
    EXPECT_NE(msg.find(key), std::string::npos) << msg;
  }
}

TEST(TokenizerErrors, MissingOrMalformedKeys) {
  {
    gguf::Writer w;
    w.add_string("tokenizer.ggml.model", "llama");
    expect_error(w, "tokenizer.ggml.tokens");
  }
  {
    gguf::Writer w;
    w.add_strings("tokenizer.ggml.tokens", {"a"});
    expect_error(w, "tokenizer.ggml.model");
  }
  {
    gguf::Writer w;
    w.add_string("tokenizer.ggml.model", "bert");
    w.add_strings("tokenizer.ggml.tokens", {"a"});
    expect_error(w, "tokenizer.ggml.model");
  }
  {
    gguf::Writer w;
    w.add_string("tokenizer.ggml.model", "llama");
    w.add_strings("tokenizer.ggml.tokens", {"a", "b"});
    w.add_f32s("tokenizer.ggml.scores", {0});
    expect_error(w, "tokenizer.ggml.scores");
  }
  {
    gguf::Writer w;
    w.add_string("tokenizer.ggml.model", "llama");
    w.add_strings("tokenizer.ggml.tokens", {"a", "b"});
    w.add_i32s("tokenizer.ggml.token_type", {1, 1, 1});
    expect_error(w, "tokenizer.ggml.token_type");
  }
  {
    gguf::Writer w;
    w.add_string("tokenizer.ggml.model", "llama");
    w.add_f32s("tokenizer.ggml.tokens", {1, 2});
    expect_error(w, "tokenizer.ggml.tokens");
  }
  {
    gguf::Writer w;
    w.add_string("tokenizer.ggml.model", "llama");
    w.add_strings("tokenizer.ggml.tokens", {"a", "b", "a"});
    expect_error(w, "tokenizer.ggml.tokens");
  }
  {
    gguf::Writer w;
    w.add_string("tokenizer.ggml.model", "llama");
    w.add_strings("tokenizer.ggml.tokens", {"a", "b"});
    w.add_u32("tokenizer.ggml.bos_token_id", 7);
    expect_error(w, "tokenizer.ggml.bos_token_id");
  }
}

TEST(TokenizerErrors, BpeKeys) {
  {
    gguf::Writer w;
    w.add_string("tokenizer.ggml.model", "gpt2");
    w.add_string("tokenizer.ggml.pre", "gpt-2");
    w.add_strings("tokenizer.ggml.tokens", {"a", "b", "ab"});
    expect_error(w, "tokenizer.ggml.merges");
  }
  {
    gguf::Writer w;
    w.add_string("tokenizer.ggml.model", "gpt2");
    w.add_string("tokenizer.ggml.pre", "gpt-2");
    w.add_strings("tokenizer.ggml.tokens", {"a", "b", "ab"});
    w.add_strings("tokenizer.ggml.merges", {"a b", "ab"});
    expect_error(w, "tokenizer.ggml.merges[1]");
  }
  {
    gguf::Writer w;
    w.add_string("tokenizer.ggml.model", "gpt2");
    w.add_string("tokenizer.ggml.pre", "no-such-pre");
    w.add_strings("tokenizer.ggml.tokens", {"a"});
    w.add_strings("tokenizer.ggml.merges", {});
    expect_error(w, "tokenizer.ggml.pre");
  }
}

TEST(TokenizerErrors, NoneSentinelKeepsTheDefault) {
  // Converters write 0xFFFFFFFF for "no such token"; llama.cpp keeps its default then.
  gguf::Writer w = spm_writer();
  w.add_u32("tokenizer.ggml.bos_token_id", 0xFFFFFFFFu);
  w.add_u32("tokenizer.ggml.padding_token_id", 0xFFFFFFFFu);
  const Tokenizer tok = Tokenizer::from_gguf(image(w, "spm.gguf"));
  EXPECT_EQ(tok.bos(), 1);
}

}  // namespace
}  // namespace fairkv::tokenizer
