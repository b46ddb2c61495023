// Tokenizers against llama.cpp's test vectors (../shared/vocab) and the golden prompts.
#include "model/tokenizer.h"

#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <sstream>

namespace fairkv::model {
namespace {

namespace fs = std::filesystem;
const fs::path kShared = FAIRKV_SHARED_DIR;

std::string slurp(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  return std::string((std::istreambuf_iterator<char>(in)), {});
}

// .inp: texts each followed by "\n__ggml_vocab_test__\n"; .out: one line of ids per text.
std::vector<std::string> read_texts(const fs::path& p) {
  const std::string all = slurp(p), sep = "\n__ggml_vocab_test__\n";
  std::vector<std::string> out;
  size_t b = 0;
  for (size_t e; (e = all.find(sep, b)) != std::string::npos; b = e + sep.size())
    out.push_back(all.substr(b, e - b));
  return out;
}

std::vector<std::vector<int32_t>> read_ids(const fs::path& p) {
  std::ifstream in(p);
  std::vector<std::vector<int32_t>> out;
  for (std::string line; std::getline(in, line);) {
    std::istringstream ss(line);
    std::vector<int32_t> ids;
    for (int32_t v; ss >> v;) ids.push_back(v);
    out.push_back(ids);
  }
  return out;
}

class Vocab : public ::testing::TestWithParam<std::string> {};

TEST_P(Vocab, EncodesEveryTestVectorExactlyAndDecodesBack) {
  const fs::path gguf = kShared / "vocab" / ("ggml-vocab-" + GetParam() + ".gguf");
  if (!fs::exists(gguf)) GTEST_SKIP() << "no shared vocabularies at " << kShared;
  const gguf::File f = gguf::File::open(gguf.string());
  const Tokenizer tok = Tokenizer::from_gguf(f);
  const auto texts = read_texts(gguf.string() + ".inp");
  const auto expected = read_ids(gguf.string() + ".out");
  ASSERT_EQ(texts.size(), expected.size());
  ASSERT_GT(texts.size(), 10u);
  for (size_t i = 0; i < texts.size(); ++i) {
    const auto ids = tok.encode(texts[i], false);
    EXPECT_EQ(ids, expected[i]) << "text #" << i << ": '" << texts[i] << "'";
    std::string back = tok.decode(ids);
    // SentencePiece adds a leading space that decoding gives back.
    if (tok.model() == "llama" && !texts[i].empty() && !back.empty() && back[0] == ' ')
      back.erase(0, 1);
    EXPECT_EQ(back, texts[i]) << "text #" << i;
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

TEST(Stories, GoldenPromptsAndContinuations) {
  const fs::path model = kShared / "models/stories260K.gguf";
  if (!fs::exists(model)) GTEST_SKIP() << "no shared data at " << kShared;
  const gguf::File f = gguf::File::open(model.string());
  const Tokenizer tok = Tokenizer::from_gguf(f);
  EXPECT_EQ(tok.bos(), 1);
  EXPECT_EQ(tok.eos(), 2);
  for (const char* c : {"once-upon", "tom-dog", "long-context"}) {
    const fs::path dir = kShared / "golden/stories260K" / c;
    std::ifstream tf(dir / "tokens.txt");
    std::string line, prompt_ids, cont_ids;
    std::getline(tf, line), std::getline(tf, prompt_ids), std::getline(tf, line),
        std::getline(tf, cont_ids);
    auto parse = [](const std::string& s) {
      std::istringstream ss(s);
      std::vector<int32_t> v;
      for (int32_t x; ss >> x;) v.push_back(x);
      return v;
    };
    EXPECT_EQ(tok.encode(slurp(dir / "prompt.txt"), true), parse(prompt_ids)) << c;
    auto cont = parse(cont_ids);
    EXPECT_EQ(tok.decode(cont), slurp(dir / "continuation.txt")) << c;
  }
}

TEST(Tokenizer, MissingVocabularyIsAClearError) {
  gguf::Writer w;
  w.add_string("tokenizer.ggml.model", "llama");
  const auto bytes = w.serialize();
  const gguf::File f = gguf::File::parse(bytes.data(), bytes.size(), "novocab.gguf");
  try {
    Tokenizer::from_gguf(f);
    FAIL() << "a tokenizer without tokens loaded";
  } catch (const gguf::Error& e) {
    EXPECT_NE(std::string(e.what()).find("tokenizer.ggml.tokens"), std::string::npos) << e.what();
  }
}

}  // namespace
}  // namespace fairkv::model
