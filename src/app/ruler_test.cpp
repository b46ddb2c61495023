#include "app/ruler.h"

#include <gtest/gtest.h>

#include <map>
#include <sstream>

namespace fairkv::app::ruler {
namespace {

// A word counter stands in for a tokenizer: the generator only adds counts.
int64_t words(const std::string& t) {
  std::istringstream in(t);
  int64_t n = 0;
  for (std::string w; in >> w;) ++n;
  return n;
}

TEST(Ruler, SameSeedSameSamplesOtherSeedOthers) {
  for (auto task : task_names()) {
    const auto a = generate(task, 1024, 2, 7, words);
    const auto b = generate(task, 1024, 2, 7, words);
    const auto c = generate(task, 1024, 2, 8, words);
    ASSERT_EQ(a.size(), 2u);
    for (size_t i = 0; i < a.size(); ++i) {
      EXPECT_EQ(a[i].input, b[i].input) << task;
      EXPECT_EQ(a[i].answers, b[i].answers) << task;
      EXPECT_NE(a[i].input, c[i].input) << task;
    }
    EXPECT_NE(a[0].input, a[1].input) << task;
  }
}

TEST(Ruler, InputsFillTheContextAndHoldTheirAnswers) {
  for (int64_t ctx : {1024, 4096})
    for (auto task : task_names()) {
      const auto s = generate(task, ctx, 1, 3, words)[0];
      const int64_t n = words(s.input) + words(s.answer_prefix);
      EXPECT_LE(n, ctx - 64) << task;
      // cwe runs out of distinct words on a long context.
      if (task != "cwe" || ctx == 1024) {
        EXPECT_GE(n, ctx - 64 - 40) << task;
      }
      ASSERT_FALSE(s.answers.empty());
      if (task != "cwe" && task != "fwe") {  // needles hold their values verbatim
        for (const auto& ans : s.answers)
          EXPECT_NE(s.input.find(ans), std::string::npos) << task << " " << ans;
      }
    }
}

TEST(Ruler, NeedleShapes) {
  const auto s1 = generate("niah_single_1", 1024, 1, 1, words)[0];
  ASSERT_EQ(s1.answers.size(), 1u);
  EXPECT_EQ(s1.answers[0].size(), 7u);
  EXPECT_NE(s1.input.find("The grass is green."), std::string::npos);
  const auto s3 = generate("niah_single_3", 1024, 1, 1, words)[0];
  EXPECT_EQ(s3.answers[0].size(), 36u);  // a UUID
  EXPECT_EQ(generate("niah_multivalue", 1024, 1, 1, words)[0].answers.size(), 4u);
  EXPECT_EQ(generate("niah_multiquery", 1024, 1, 1, words)[0].answers.size(), 4u);
  const auto mk = generate("niah_multikey", 1024, 1, 1, words)[0];
  EXPECT_EQ(mk.answers.size(), 1u);
  size_t needles = 0;
  for (size_t p = 0; (p = mk.input.find("special magic numbers for", p)) != std::string::npos; ++p)
    ++needles;
  EXPECT_EQ(needles, 4u);
  const auto vt = generate("vt", 1024, 1, 1, words)[0];
  ASSERT_EQ(vt.answers.size(), 5u);
  EXPECT_NE(vt.input.find("VAR " + vt.answers[1] + " = VAR " + vt.answers[0]), std::string::npos);
}

// Counts every word of the list or text: the answers must be the strictly most frequent ones.
std::map<std::string, int> counts(const std::string& body, bool numbered) {
  std::map<std::string, int> c;
  std::istringstream in(body);
  for (std::string w; in >> w;) {
    if (numbered && (w.back() == '.' || w == "....")) continue;
    if (!numbered && w == "....") continue;
    ++c[w];
  }
  return c;
}

TEST(Ruler, ExtractionAnswersAreTheMostFrequentWords) {
  for (const char* task : {"cwe", "fwe"})
    for (int64_t ctx : {1024, 2048}) {
      const auto s = generate(task, ctx, 1, 5, words)[0];
      const size_t from = s.input.find('\n') + 1, to = s.input.rfind("\nQuestion");
      auto c = counts(s.input.substr(from, to - from), std::string(task) == "cwe");
      int least_answer = 1 << 30, most_other = 0;
      for (const auto& [w, n] : c) {
        const bool ans = std::find(s.answers.begin(), s.answers.end(), w) != s.answers.end();
        if (ans)
          least_answer = std::min(least_answer, n);
        else
          most_other = std::max(most_other, n);
      }
      EXPECT_EQ(s.answers.size(), std::string(task) == "cwe" ? 10u : 3u);
      EXPECT_GT(least_answer, most_other) << task << " " << ctx;
    }
}

TEST(Ruler, ScoreIsRecallOverTheAnswersCaseFolded) {
  const std::vector<std::string> ans = {"1234567", "Apple", "x-y"};
  EXPECT_DOUBLE_EQ(score("the numbers are 1234567 and apple.", ans), 2.0 / 3);
  EXPECT_DOUBLE_EQ(score("X-Y APPLE 1234567", ans), 1.0);
  EXPECT_DOUBLE_EQ(score("", ans), 0.0);
}

TEST(Ruler, Contexts) {
  EXPECT_EQ(parse_contexts("1k,2K,4096"), (std::vector<int64_t>{1024, 2048, 4096}));
  EXPECT_THROW(parse_contexts("1k,"), std::invalid_argument);
  EXPECT_THROW(parse_contexts("two"), std::invalid_argument);
  EXPECT_THROW(generate("nope", 1024, 1, 1, words), std::invalid_argument);
  EXPECT_THROW(generate("vt", 200, 1, 1, words), std::invalid_argument);
}

}  // namespace
}  // namespace fairkv::app::ruler
