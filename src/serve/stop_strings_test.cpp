// The stop strings of a request: held-back prefixes, matches across pieces, the first stop to
// complete winning, whole UTF-8 characters, and a brute-force check over random splits.
#include "serve/stop_strings.h"

#include <gtest/gtest.h>

#include <random>
#include <string>
#include <vector>

namespace fairkv::serve {
namespace {

struct Fed {
  std::vector<std::string> emitted;  // one entry per feed, then the flush
  bool stopped = false;
  std::string text() const {
    std::string all;
    for (const std::string& e : emitted) all += e;
    return all;
  }
};

Fed feed_all(StopMatcher& m, const std::vector<std::string>& pieces) {
  Fed f;
  for (const std::string& p : pieces) {
    StopMatcher::Output o = m.feed(p);
    f.emitted.push_back(o.text);
    f.stopped = o.stopped;
  }
  f.emitted.push_back(m.flush());
  return f;
}

std::string error_of(const std::vector<std::string>& stops) {
  try {
    StopMatcher m(stops);
  } catch (const std::invalid_argument& e) {
    return e.what();
  }
  return "";
}

TEST(StopMatcher, WithoutStopsTextPassesThrough) {
  StopMatcher m({});
  EXPECT_EQ(m.feed("Hello").text, "Hello");
  EXPECT_EQ(m.feed(", world").text, ", world");
  EXPECT_EQ(m.flush(), "");
  EXPECT_FALSE(m.stopped());
}

TEST(StopMatcher, AStopSplitAcrossPiecesEndsTheTextBeforeIt) {
  StopMatcher m({"</s>"});
  EXPECT_EQ(m.feed("Hello <").text, "Hello ");  // "<" might begin the stop
  EXPECT_EQ(m.feed("/").text, "");
  const StopMatcher::Output o = m.feed("s> and more");
  EXPECT_EQ(o.text, "");
  EXPECT_TRUE(o.stopped);
  EXPECT_EQ(m.matched(), "</s>");
  // Nothing after the stop: neither later pieces nor the flush.
  EXPECT_TRUE(m.feed("tail").stopped);
  EXPECT_EQ(m.feed("tail").text, "");
  EXPECT_EQ(m.flush(), "");
}

TEST(StopMatcher, AStopInsideOnePieceKeepsTheTextBeforeIt) {
  StopMatcher m({"STOP"});
  const StopMatcher::Output o = m.feed("one two STOP three");
  EXPECT_EQ(o.text, "one two ");
  EXPECT_TRUE(o.stopped);
}

TEST(StopMatcher, APrefixThatDoesNotMatchIsReleased) {
  StopMatcher m({"STOP"});
  EXPECT_EQ(m.feed("ST").text, "");
  EXPECT_EQ(m.feed("O").text, "");
  EXPECT_EQ(m.feed("NE").text, "STONE");
  // A held prefix that becomes the start of a new one keeps only the new one.
  EXPECT_EQ(m.feed("SS").text, "S");
  EXPECT_EQ(m.feed("T").text, "");
  EXPECT_EQ(m.flush(), "ST");  // the end of generation releases what was held
  EXPECT_FALSE(m.stopped());
  EXPECT_EQ(m.matched(), "");
}

TEST(StopMatcher, RepeatedLettersHoldOnlyTheLongestPrefix) {
  StopMatcher m({"aab"});
  EXPECT_EQ(m.feed("aa").text, "");
  EXPECT_EQ(m.feed("a").text, "a");
  const StopMatcher::Output o = m.feed("b");
  EXPECT_EQ(o.text, "");
  EXPECT_TRUE(o.stopped);
}

TEST(StopMatcher, OfSeveralStopsTheFirstToCompleteWins) {
  StopMatcher m({"\n\nUser:", "\n\n"});
  const Fed f = feed_all(m, {"Answer.", "\n", "\nUser: more"});
  EXPECT_EQ(f.text(), "Answer.");
  EXPECT_EQ(m.matched(), "\n\n");
  // "z" completes before the longer stop that starts earlier, whatever the split.
  for (const auto& pieces : std::vector<std::vector<std::string>>{
           {"xyz_long"}, {"x", "y", "z", "_long"}, {"xy", "z_lo", "ng"}}) {
    StopMatcher n({"xyz_long", "z"});
    const Fed g = feed_all(n, pieces);
    EXPECT_EQ(g.text(), "xy");
    EXPECT_TRUE(g.stopped);
    EXPECT_EQ(n.matched(), "z");
  }
}

TEST(StopMatcher, OverlappingStopsEndingTogetherCutAtTheEarlierStart) {
  StopMatcher a({"bc", "abc"});
  EXPECT_EQ(a.feed("xabcd").text, "x");
  EXPECT_EQ(a.matched(), "abc");
  StopMatcher b({"abc", "bcd"});
  EXPECT_EQ(feed_all(b, {"xab", "cd"}).text(), "x");
  EXPECT_EQ(b.matched(), "abc");
}

TEST(StopMatcher, Utf8CharactersStayWhole) {
  // "你好。再见" with the stop "。", fed one byte at a time: every emitted piece is whole
  // characters, and the text before the stop comes out intact.
  const std::string text = "你好。再见";
  StopMatcher m({"。"});
  std::vector<std::string> bytes;
  for (char c : text) bytes.emplace_back(1, c);
  const Fed f = feed_all(m, bytes);
  EXPECT_EQ(f.text(), "你好");
  EXPECT_TRUE(f.stopped);
  for (const std::string& e : f.emitted) EXPECT_TRUE(e.empty() || e == "你" || e == "好") << e;

  // Without stops, a four-byte character split by byte-fallback tokens waits for its last byte.
  StopMatcher n({});
  const std::string emoji = "🙂";
  EXPECT_EQ(n.feed("ok " + emoji.substr(0, 1)).text, "ok ");
  EXPECT_EQ(n.feed(emoji.substr(1, 2)).text, "");
  EXPECT_EQ(n.feed(emoji.substr(3)).text, emoji);

  // A character sharing its lead byte with the stop is released once it differs.
  StopMatcher e({"é"});
  const std::string grave = "è";
  EXPECT_EQ(e.feed(grave.substr(0, 1)).text, "");
  EXPECT_EQ(e.feed(grave.substr(1)).text, grave);
}

TEST(StopMatcher, InvalidUtf8IsNotHeldForever) {
  StopMatcher m({});
  EXPECT_EQ(m.feed("a\x80\x80\x80\x80").text, "a\x80\x80\x80\x80");
  EXPECT_EQ(m.feed("\xff").text, "\xff");
  EXPECT_EQ(m.feed("\xe4\xbd").text, "");  // an unfinished character: flushed at the end
  EXPECT_EQ(m.flush(), "\xe4\xbd");
}

// Reference: the stop that ends first in the whole text (earliest start on a tie).
std::pair<std::string, bool> expected_output(const std::string& text,
                                             const std::vector<std::string>& stops) {
  size_t best_pos = std::string::npos, best_end = std::string::npos;
  for (const std::string& s : stops) {
    const size_t pos = text.find(s);
    if (pos == std::string::npos) continue;
    const size_t end = pos + s.size();
    if (end < best_end || (end == best_end && pos < best_pos)) {
      best_pos = pos;
      best_end = end;
    }
  }
  if (best_pos == std::string::npos) return {text, false};
  return {text.substr(0, best_pos), true};
}

TEST(StopMatcher, AnySplitGivesTheWholeTextsAnswer) {
  std::mt19937 rng(7);
  auto random_string = [&](size_t min_len, size_t max_len) {
    std::string s(std::uniform_int_distribution<size_t>(min_len, max_len)(rng), 'a');
    for (char& c : s) c = char('a' + std::uniform_int_distribution<int>(0, 2)(rng));
    return s;
  };
  for (int trial = 0; trial < 3000; ++trial) {
    std::vector<std::string> stops(std::uniform_int_distribution<size_t>(0, 4)(rng));
    for (std::string& s : stops) s = random_string(1, 4);
    const std::string text = random_string(0, 24);
    std::vector<std::string> pieces;
    for (size_t b = 0; b < text.size();) {
      const size_t len = std::uniform_int_distribution<size_t>(0, 5)(rng);
      pieces.push_back(text.substr(b, len));
      b += len;
    }
    StopMatcher m(stops);
    const Fed f = feed_all(m, pieces);
    const auto [want, stopped] = expected_output(text, stops);
    ASSERT_EQ(f.text(), want) << "text " << text << ", trial " << trial;
    ASSERT_EQ(m.stopped(), stopped) << "text " << text << ", trial " << trial;
  }
}

TEST(StopMatcher, BadStopListsNameStop) {
  EXPECT_EQ(error_of(std::vector<std::string>(16, "x")), "");
  EXPECT_EQ(error_of(std::vector<std::string>(17, "x")),
            "stop: expected at most 16 strings, got 17");
  EXPECT_EQ(error_of({"ok", ""}), "stop[1]: expected a non-empty string");
  EXPECT_EQ(error_of({std::string(256, 'x')}), "");
  EXPECT_EQ(error_of({std::string(257, 'x')}), "stop[0]: expected at most 256 bytes, got 257");
}

}  // namespace
}  // namespace fairkv::serve
