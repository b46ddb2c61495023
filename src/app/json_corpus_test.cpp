// Replays the JSON fuzzer's corpus (fuzz/corpus/json) in the normal build: every input file of
// fairkv's JSON and JSONL readers is either read or refused with a message naming the input;
// the hand-made seeds named bad-* must be refused and the other named ones (profile-*, ...) read;
// the fuzzer's finds (named by their hash) may go either way.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <iterator>
#include <vector>

#include "fuzz/json_inputs.h"

namespace fairkv::app {
namespace {

namespace fs = std::filesystem;

TEST(JsonCorpus, EveryFileIsReadOrRefusedNamingTheInput) {
  const fs::path dir = fs::path(FAIRKV_SOURCE_DIR) / "fuzz" / "corpus" / "json";
  if (!fs::is_directory(dir)) GTEST_SKIP() << dir << " is absent";
  int read = 0, refused = 0;
  for (const auto& e : fs::directory_iterator(dir)) {
    if (!e.is_regular_file()) continue;
    SCOPED_TRACE(e.path().string());
    std::ifstream in(e.path(), std::ios::binary);
    const std::vector<uint8_t> b((std::istreambuf_iterator<char>(in)), {});
    std::string why;
    const bool ok = fuzz::read_json_input(b.data(), b.size(), &why);
    const std::string name = e.path().filename().string();
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
