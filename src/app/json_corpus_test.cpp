// Replays the JSON fuzzer's corpus (fuzz/corpus/json) in the normal build: every input file of
// fairkv's JSON and JSONL readers is either read or refused with a message naming the input;
// the hand-made seeds named bad-* must be refused and the other named ones (profile-*, ...) read;
// the fuzzer's finds (named by their hash) may go either way.
#include <gtest/gtest.h>

#include <filesystem>
#include <vector>

#include "fuzz/corpus_files.h"
#include "fuzz/json_inputs.h"

namespace fairkv::app {
namespace {

namespace fs = std::filesystem;

TEST(JsonCorpus, EveryFileIsReadOrRefusedNamingTheInput) {
  const fs::path dir = fs::path(FAIRKV_SOURCE_DIR) / "fuzz" / "corpus" / "json";
  if (!fs::is_directory(dir)) GTEST_SKIP() << dir << " is absent";
  int read = 0, refused = 0;
  for (const fuzz::CorpusFile& f : fuzz::corpus_files(dir)) {
    SCOPED_TRACE(f.path.string());
    std::string why;
    const bool ok = fuzz::read_json_input(f.bytes.data(), f.bytes.size(), &why);
    const std::string& name = f.name;
    const bool bad = name.rfind("bad-", 0) == 0;
    const bool seed = name.find('-') != std::string::npos;  // hashes have none
    if (ok) {
      EXPECT_FALSE(bad) << "a malformed seed was read";
      ++read;
    } else {
      EXPECT_TRUE(bad || !seed) << "a valid seed was refused: " << why;
      EXPECT_NE(why.find("input.json"), std::string::npos) << why;
      ++refused;
    }
  }
  EXPECT_GT(read, 0);
  EXPECT_GT(refused, 0);
}

}  // namespace
}  // namespace fairkv::app
