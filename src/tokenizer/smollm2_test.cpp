// SmolLM2's tokenizer (byte-level BPE, pre-tokenizer "smollm", ChatML control tokens) against
// llama.cpp: the ids llama-tokenize gives for every text of data/golden/smollm2/tokenize.jsonl
// (written by scripts/make-goldens), with and without special tokens parsed. Skips when the
// model is not in models/ (scripts/get-model fetches it).
#include <gtest/gtest.h>

#include <algorithm>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "formats/gguf.h"
#include "tokenizer/chat_template.h"
#include "tokenizer/pretok.h"
#include "tokenizer/tokenizer.h"

namespace fairkv::tokenizer {
namespace {

namespace fs = std::filesystem;
const fs::path kSource = FAIRKV_SOURCE_DIR;
const fs::path kModel = kSource / "models/SmolLM2-135M-Instruct.Q4_1.gguf";
const fs::path kGolden = kSource / "data/golden/smollm2/tokenize.jsonl";

// The metadata without the tensors: fairkv's GGUF reader does not accept Q4_1 tensors (yet), and
// the tokenizer needs none of them. A copy of the file's first bytes with the header's tensor
// count set to zero is a valid GGUF that ends after the key-values; 16 MB holds them with room
// to spare (SmolLM2's 49152 tokens and 48900 merges take about 2 MB).
gguf::File open_vocabulary(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  std::vector<uint8_t> head(std::min<uintmax_t>(fs::file_size(path), 16u << 20));
  in.read(reinterpret_cast<char*>(head.data()), static_cast<std::streamsize>(head.size()));
  // GGUF v2/v3 header: magic (4 bytes), version (uint32), tensor count (uint64), ...
  if (!in || head.size() < 24 || std::memcmp(head.data(), "GGUF", 4) != 0)
    throw gguf::Error(path.string() + ": not a GGUF file");
  std::fill(head.begin() + 8, head.begin() + 16, uint8_t{0});
  return gguf::File::parse(head.data(), head.size(), path.string());
}

const Tokenizer& smollm2() {
  static const Tokenizer tok = Tokenizer::from_gguf(open_vocabulary(kModel));
  return tok;
}

#define REQUIRE_MODEL()    \
  if (!fs::exists(kModel)) \
  GTEST_SKIP() << "no SmolLM2 model at " << kModel << " (scripts/get-model fetches it)"

std::string show(const std::vector<int32_t>& ids) {
  std::string s;
  for (int32_t id : ids) s += (s.empty() ? "" : " ") + std::to_string(id);
  return s;
}

TEST(SmolLM2, VocabularyFlagsFollowLlamaCpp) {
  REQUIRE_MODEL();
  const Tokenizer& tok = smollm2();
  EXPECT_EQ(tok.model(), "gpt2");
  EXPECT_EQ(tok.pre(), "smollm");
  EXPECT_EQ(tok.vocab_size(), 49152);
  // tokenizer.ggml.add_bos_token is false: llama.cpp adds nothing in front of a prompt.
  EXPECT_FALSE(tok.add_bos());
  EXPECT_EQ(tok.bos(), 1);  // <|im_start|>
  EXPECT_EQ(tok.eos(), 2);  // <|im_end|>
  // <|endoftext|> ends generation by its text, <|im_end|> as EOS; <|im_start|> does not.
  EXPECT_TRUE(tok.is_eog(0));
  EXPECT_TRUE(tok.is_eog(2));
  EXPECT_FALSE(tok.is_eog(1));
  // All 17 special tokens are control tokens, matched in text only when parse_special is set.
  for (int32_t id = 0; id < 17; ++id) EXPECT_EQ(tok.token_type(id), TokenType::Control) << id;
  EXPECT_EQ(tok.token_type(17), TokenType::Normal);
}

// smollm splits every digit off first, then applies GPT-2's expression to each piece, so digits
// never merge and the space in front of a number stays a piece of its own.
TEST(SmolLM2, PreTokenizerIsolatesDigits) {
  const auto spec = pre_tokenizer_spec("smollm");
  ASSERT_TRUE(spec);
  EXPECT_FALSE(spec->ignore_merges);
  EXPECT_FALSE(spec->add_bos);
  const PreTokenizer pt(spec->regexes);
  std::vector<std::string_view> pieces;
  pt.split("abc123 45's x", pieces);
  EXPECT_EQ(pieces,
            (std::vector<std::string_view>{"abc", "1", "2", "3", " ", "4", "5", "'s", " x"}));
}

TEST(SmolLM2, EncodesEveryGoldenTextLikeLlamaCpp) {
  REQUIRE_MODEL();
  std::ifstream in(kGolden);
  ASSERT_TRUE(in) << "missing " << kGolden << " (scripts/make-goldens writes it)";
  const Tokenizer& tok = smollm2();
  size_t texts = 0, matched = 0;
  for (std::string line; std::getline(in, line);) {
    const auto row = nlohmann::json::parse(line);
    const std::string name = row.at("name"), text = row.at("text");
    const auto want = row.at("ids").get<std::vector<int32_t>>();
    const auto want_special = row.at("ids_special").get<std::vector<int32_t>>();
    SCOPED_TRACE("text '" + name + "'");
    ++texts;
    const auto ids = tok.encode(text, tok.add_bos(), false);
    const auto ids_special = tok.encode(text, tok.add_bos(), true);
    EXPECT_EQ(show(ids), show(want)) << "parse_special = false";
    EXPECT_EQ(show(ids_special), show(want_special)) << "parse_special = true";
    matched += ids == want && ids_special == want_special;
    // smollm sets no clean_spaces in llama.cpp, so decoding is plain concatenation and gives
    // the text back, control tokens included when asked for.
    EXPECT_EQ(tok.decode(want), text);
    EXPECT_EQ(tok.decode(want_special, true), text);
  }
  EXPECT_GE(texts, 40u) << kGolden << " has fewer texts than make-goldens writes";
  std::printf("[ smollm2  ] %zu of %zu texts encode exactly as llama.cpp's\n", matched, texts);
}

// The prompts of the greedy goldens (data/golden/smollm2/greedy), as llama_greedy tokenized them:
// special tokens parsed, as a chat front end sends them.
TEST(SmolLM2, GreedyPromptsTokenizeLikeLlamaCpp) {
  REQUIRE_MODEL();
  const Tokenizer& tok = smollm2();
  size_t cases = 0;
  for (const auto& e : fs::directory_iterator(kSource / "data/golden/smollm2/greedy")) {
    std::ifstream in(e.path());
    const auto g = nlohmann::json::parse(in);
    SCOPED_TRACE(e.path().filename().string());
    const auto want = g.at("prompt_ids").get<std::vector<int32_t>>();
    EXPECT_EQ(show(tok.encode(g.at("prompt").get<std::string>(), tok.add_bos(), true)), show(want));
    ++cases;
  }
  EXPECT_GE(cases, 5u);
}

// The template SmolLM2 ships in its metadata is recognised as ChatML with its default system
// prompt, and the rendered prompt tokenizes into the control tokens that frame each turn.
TEST(SmolLM2, ChatTemplateFromTheFile) {
  REQUIRE_MODEL();
  const auto jinja = open_vocabulary(kModel).find_string("tokenizer.chat_template");
  ASSERT_TRUE(jinja);
  const Tokenizer& tok = smollm2();
  const ChatTemplate t = recognise_chat_template(*jinja, std::string(tok.token_text(tok.bos())),
                                                 std::string(tok.token_text(tok.eos())));
  EXPECT_EQ(t.kind, ChatKind::ChatML);
  const std::vector<ChatMessage> chat = {{"user", "Hi"}};
  const std::string text = render_chat(t, chat);
  EXPECT_EQ(text,
            "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging "
            "Face<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n");
  const auto ids = tok.encode(text, false, true);
  ASSERT_FALSE(ids.empty());
  EXPECT_EQ(ids.front(), 1);                            // <|im_start|>
  EXPECT_EQ(std::count(ids.begin(), ids.end(), 1), 3);  // three turns open
  EXPECT_EQ(std::count(ids.begin(), ids.end(), 2), 2);  // two closed
}

}  // namespace
}  // namespace fairkv::tokenizer
