#include "app/bench_serve_requests.h"

#include <algorithm>
#include <cmath>
#include <fstream>
#include <random>
#include <stdexcept>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

namespace fairkv::app::bench {

namespace {

// Short, frequent words: one token each in GPT-2-style and SentencePiece vocabularies of a few
// tens of thousands of entries, so a prompt's token count follows its word count.
const char* const kWords[] = {
    "the",   "of",    "and",   "to",    "in",    "is",    "was",   "for",   "on",    "that",
    "with",  "as",    "by",    "at",    "from",  "his",   "her",   "it",    "an",    "were",
    "are",   "which", "this",  "also",  "be",    "has",   "had",   "one",   "two",   "first",
    "new",   "after", "who",   "they",  "have",  "their", "he",    "she",   "time",  "year",
    "city",  "world", "water", "house", "day",   "night", "man",   "woman", "child", "school",
    "game",  "book",  "road",  "river", "small", "large", "old",   "young", "good",  "long",
    "high",  "light", "dark",  "red",   "blue",  "green", "white", "black", "cold",  "warm",
    "king",  "war",   "land",  "sea",   "tree",  "dog",   "cat",   "bird",  "fish",  "food",
    "music", "story", "name",  "work",  "home",  "life",  "part",  "place", "end",   "way",
    "hand",  "head",  "eye",   "face",  "door",  "room",  "car",   "ship",  "town",  "song"};

int64_t draw_len(std::mt19937_64& rng, int64_t len, double ratio) {
  const int64_t lo = std::max<int64_t>(1, int64_t(std::floor(double(len) * (1 - ratio))));
  const int64_t hi = std::max<int64_t>(lo, int64_t(std::ceil(double(len) * (1 + ratio))));
  return std::uniform_int_distribution<int64_t>(lo, hi)(rng);
}

}  // namespace

std::string random_words(int64_t words, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::uniform_int_distribution<size_t> pick(0, std::size(kWords) - 1);
  std::string s;
  for (int64_t i = 0; i < words; ++i) {
    if (i) s += ' ';
    s += kWords[pick(rng)];
  }
  return s;
}

std::vector<BenchRequest> random_requests(size_t n, int64_t input_len, int64_t output_len,
                                          double range_ratio, uint64_t seed,
                                          double tokens_per_word) {
  std::mt19937_64 rng(seed);
  std::vector<BenchRequest> out(n);
  for (size_t i = 0; i < n; ++i) {
    const int64_t in = draw_len(rng, input_len, range_ratio);
    out[i].max_tokens = draw_len(rng, output_len, range_ratio);
    const int64_t words = std::max<int64_t>(1, std::llround(double(in) / tokens_per_word));
    out[i].prompt = random_words(words, rng());
  }
  return out;
}

std::vector<BenchRequest> load_dataset(const std::string& path, size_t n) {
  std::ifstream f(path);
  if (!f) throw std::runtime_error(fmt::format("--dataset-path: cannot open '{}'", path));
  std::vector<BenchRequest> all;
  std::string line;
  for (size_t no = 1; std::getline(f, line) && all.size() < n; ++no) {
    if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
    const auto where = [&](const std::string& what) {
      return std::runtime_error(fmt::format("{}:{}: {}", path, no, what));
    };
    const nlohmann::json j = nlohmann::json::parse(line, nullptr, false);
    if (j.is_discarded() || !j.is_object())
      throw where(
          "expected one JSON object per line, like {\"prompt\": \"...\", \"max_tokens\": 64}");
    BenchRequest r;
    if (!j.contains("prompt") || !j["prompt"].is_string() || j["prompt"].get<std::string>().empty())
      throw where("\"prompt\": expected a non-empty string");
    r.prompt = j["prompt"].get<std::string>();
    const char* key = j.contains("max_tokens") ? "max_tokens" : "output_len";
    if (!j.contains(key) || !j[key].is_number_integer() || j[key].get<int64_t>() < 1)
      throw where("\"max_tokens\" (or \"output_len\"): expected an integer >= 1");
    r.max_tokens = j[key].get<int64_t>();
    all.push_back(std::move(r));
  }
  if (all.empty()) throw std::runtime_error(fmt::format("{}: no requests in the file", path));
  std::vector<BenchRequest> out;
  out.reserve(n);
  for (size_t i = 0; i < n; ++i) out.push_back(all[i % all.size()]);
  return out;
}

}  // namespace fairkv::app::bench
