#include "app/prompts.h"

#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>

namespace fairkv::app {
namespace {

namespace fs = std::filesystem;

fs::path write(const std::string& name, const std::string& bytes) {
  const fs::path p = fs::path(::testing::TempDir()) / name;
  std::ofstream(p, std::ios::binary) << bytes;
  return p;
}

TEST(Prompts, LinesEndingInCrLfLoseTheCarriageReturn) {
  const fs::path p = write("prompts_crlf.txt", "first prompt\r\n\r\nsecond\r\nthird");
  const auto got = read_prompts(p.string());
  ASSERT_EQ(got.size(), 3u);
  EXPECT_EQ(got[0].text, "first prompt");
  EXPECT_EQ(got[1].text, "second");
  EXPECT_EQ(got[1].name, "line 3");
  EXPECT_EQ(got[2].text, "third");
  fs::remove(p);
}

TEST(Prompts, JsonlRecordsAndErrorsNameTheLine) {
  const fs::path ok = write("prompts_ok.jsonl", "{\"prompt\": \"a\", \"answer\": \"b\"}\r\n");
  const auto got = read_prompts(ok.string());
  ASSERT_EQ(got.size(), 1u);
  EXPECT_EQ(got[0].text, "a");
  EXPECT_EQ(got[0].answer.value_or(""), "b");
  const fs::path bad = write("prompts_bad.jsonl", "{\"prompt\": \"a\"}\n{\"prompt\": 3}\n");
  try {
    read_prompts(bad.string());
    ADD_FAILURE() << "accepted a number as a prompt";
  } catch (const std::runtime_error& e) {
    EXPECT_NE(std::string(e.what()).find("prompts_bad.jsonl:2"), std::string::npos) << e.what();
  }
  fs::remove(ok);
  fs::remove(bad);
}

}  // namespace
}  // namespace fairkv::app
