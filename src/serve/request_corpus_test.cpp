// Replays the request fuzzer's corpus (fuzz/corpus/request) in the normal build: every request
// file is either read or refused with a message naming the input and the line; the hand-made seeds
// named bad-* must be refused and those named request-* read; the fuzzer's finds (named by their
// hash) may go either way. Deeply nested values are refused like any other bad field.
#include <gtest/gtest.h>

#include <filesystem>
#include <string>
#include <vector>

#include "fuzz/corpus_files.h"
#include "fuzz/request_inputs.h"

namespace fairkv::serve {
namespace {

namespace fs = std::filesystem;

TEST(RequestCorpus, EveryFileIsReadOrRefusedNamingTheLine) {
  const fs::path dir = fs::path(FAIRKV_SOURCE_DIR) / "fuzz" / "corpus" / "request";
  if (!fs::is_directory(dir)) GTEST_SKIP() << dir << " is absent";
  int read = 0, refused = 0;
  for (const fuzz::CorpusFile& f : fuzz::corpus_files(dir)) {
    SCOPED_TRACE(f.path.string());
    std::string why;
    const bool ok = fuzz::read_request_input(f.bytes.data(), f.bytes.size(), &why);
    const std::string& name = f.name;
    if (ok) {
      EXPECT_NE(name.rfind("bad-", 0), 0u) << "a malformed seed was read";
      ++read;
    } else {
      EXPECT_NE(name.rfind("request-", 0), 0u) << "a valid seed was refused: " << why;
      EXPECT_EQ(why.rfind("input.jsonl: line ", 0), 0u) << why;
      ++refused;
    }
  }
  EXPECT_GT(read, 0);
  EXPECT_GT(refused, 0);
}

// json::dump recursed once per level: a value nested a million deep in a bad field overflowed
// the stack while the error message was written.
TEST(RequestCorpus, ValuesNestedAMillionDeepAreRefused) {
  const std::string deep = std::string(1000000, '[') + std::string(1000000, ']');
  for (const std::string& line :
       {"{\"prompt\": " + deep + "}", "{\"prompt\": \"a\", \"stop\": [" + deep + "]}"}) {
    std::string why;
    EXPECT_FALSE(
        fuzz::read_request_input(reinterpret_cast<const uint8_t*>(line.data()), line.size(), &why));
    EXPECT_EQ(why.rfind("input.jsonl: line 1: field \"", 0), 0u) << why.substr(0, 200);
    EXPECT_LT(why.size(), 300u);
  }
}

}  // namespace
}  // namespace fairkv::serve
