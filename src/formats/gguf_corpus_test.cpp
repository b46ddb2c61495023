// Replays the fuzzer's seed corpus (fuzz/corpus/gguf) in the normal build: every file either
// parses or is rejected with a gguf::Error naming it; nothing else may escape.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <iterator>

#include "formats/gguf.h"

namespace fairkv::gguf {
namespace {

namespace fs = std::filesystem;

TEST(GgufCorpus, EveryFileParsesOrIsRejectedCleanly) {
  const fs::path dir = fs::path(FAIRKV_SOURCE_DIR) / "fuzz" / "corpus" / "gguf";
  if (!fs::is_directory(dir)) GTEST_SKIP() << dir << " is absent";
  int parsed = 0, rejected = 0;
  for (const auto& e : fs::directory_iterator(dir)) {
    if (!e.is_regular_file()) continue;
    SCOPED_TRACE(e.path().string());
    std::ifstream in(e.path(), std::ios::binary);
    const std::vector<uint8_t> b((std::istreambuf_iterator<char>(in)), {});
    const std::string name = e.path().filename().string();
    try {
      File f = File::parse(b.data(), b.size(), name);
      for (const TensorInfo& t : f.tensors()) {
        ASSERT_LE(f.data_offset() + t.offset + t.n_bytes, f.file_size()) << t.name;
        ASSERT_EQ(t.offset % f.alignment(), 0u) << t.name;
      }
      ++parsed;
    } catch (const Error& err) {
      EXPECT_EQ(std::string(err.what()).rfind(name + ": ", 0), 0u) << err.what();
      // The generator names its well-formed seeds valid-*.
      EXPECT_NE(name.rfind("valid-", 0), 0u) << "a valid seed was rejected: " << err.what();
      ++rejected;
    }
    // File::open must agree with File::parse on the same bytes.
    bool open_ok = true;
    try {
      File::open(e.path().string());
    } catch (const Error&) {
      open_ok = false;
    }
    bool parse_ok = true;
    try {
      File::parse(b.data(), b.size(), name);
    } catch (const Error&) {
      parse_ok = false;
    }
    EXPECT_EQ(open_ok, parse_ok);
  }
  EXPECT_GT(parsed, 0);
  EXPECT_GT(rejected, 0);
}

}  // namespace
}  // namespace fairkv::gguf
