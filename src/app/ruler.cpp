#include "app/ruler.h"

#include <algorithm>
#include <cctype>
#include <map>
#include <set>
#include <stdexcept>

#include <fmt/format.h>

namespace fairkv::app::ruler {

namespace {

constexpr std::string_view kTasks[] = {"niah_single_1",
                                       "niah_single_2",
                                       "niah_single_3",
                                       "niah_multikey",
                                       "niah_multivalue",
                                       "niah_multiquery",
                                       "vt",
                                       "cwe",
                                       "fwe"};

// Words for keys, the common-words lists and the essay-like haystack.
constexpr std::string_view kWords[] = {
    "apple",   "river",   "garden",   "silver",  "window",     "candle",   "forest",  "harbor",
    "pencil",  "marble",  "thunder",  "velvet",  "orange",     "meadow",   "castle",  "lantern",
    "mirror",  "planet",  "rocket",   "saddle",  "ticket",     "violin",   "wagon",   "yellow",
    "anchor",  "basket",  "copper",   "desert",  "engine",     "falcon",   "glacier", "hammer",
    "island",  "jacket",  "kettle",   "ladder",  "magnet",     "needle",   "oyster",  "pepper",
    "quartz",  "ribbon",  "sunset",   "tunnel",  "umbrella",   "valley",   "walnut",  "zipper",
    "bridge",  "cactus",  "dolphin",  "feather", "giraffe",    "helmet",   "igloo",   "jungle",
    "koala",   "lemon",   "mango",    "nickel",  "olive",      "parrot",   "quiver",  "rabbit",
    "salmon",  "tomato",  "unicorn",  "vessel",  "whistle",    "yogurt",   "badger",  "cobalt",
    "dragon",  "ember",   "fossil",   "garnet",  "hazel",      "ivory",    "jasmine", "kernel",
    "lagoon",  "mosaic",  "nectar",   "orchid",  "pebble",     "quill",    "raven",   "sphinx",
    "timber",  "tulip",   "vortex",   "willow",  "zenith",     "acorn",    "blossom", "canyon",
    "dagger",  "eclipse", "fountain", "granite", "horizon",    "insect",   "jewel",   "kayak",
    "lizard",  "monsoon", "nomad",    "oasis",   "puzzle",     "riddle",   "shadow",  "trumpet",
    "voyage",  "wizard",  "beacon",   "crystal", "dune",       "estuary",  "fjord",   "galaxy",
    "harvest", "iceberg", "journey",  "kingdom", "lighthouse", "mountain", "nebula",  "ocean",
    "prairie", "quarry",  "reef",     "summit",  "tempest",    "universe", "volcano", "waterfall"};

constexpr std::string_view kEssayWords[] = {
    "the",     "of",      "and",      "a",         "to",      "in",     "is",      "that",
    "it",      "was",     "for",      "on",        "are",     "with",   "they",    "be",
    "at",      "one",     "have",     "this",      "from",    "by",     "people",  "work",
    "time",    "startup", "idea",     "company",   "world",   "money",  "problem", "good",
    "think",   "make",    "know",     "people",    "way",     "new",    "many",    "most",
    "thing",   "hard",    "often",    "because",   "what",    "when",   "could",   "would",
    "should",  "users",   "founders", "investors", "product", "market", "growth",  "writing",
    "essay",   "city",    "school",   "young",     "old",     "better", "worse",   "ambitious",
    "curious", "simple",  "great",    "small",     "large",   "early",  "late",    "always",
    "never",   "learn",   "build",    "write",     "start",   "change", "notice",  "believe"};

// splitmix64: the same stream on every platform (std distributions are not specified).
struct Rng {
  uint64_t s;
  uint64_t next() {
    uint64_t z = (s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
  }
  size_t below(size_t n) { return size_t(next() % n); }
  template <class T, size_t N>
  std::string pick(const T (&list)[N]) {
    return std::string(list[below(N)]);
  }
};

uint64_t mix_seed(std::string_view task, int64_t context, uint64_t seed, int i) {
  uint64_t h = 1469598103934665603ull;  // FNV-1a over the task's name
  for (char c : task) h = (h ^ uint8_t(c)) * 1099511628211ull;
  Rng r{h ^ (seed * 0x9e3779b97f4a7c15ull) ^ (uint64_t(context) << 20) ^ uint64_t(i)};
  return r.next();
}

std::string number7(Rng& r) {
  return std::to_string(1000000 + r.below(9000000));
}

std::string uuid(Rng& r) {
  static const char* hex = "0123456789abcdef";
  std::string s;
  for (int len : {8, 4, 4, 4, 12}) {
    if (!s.empty()) s += '-';
    for (int k = 0; k < len; ++k) s += hex[r.below(16)];
  }
  return s;
}

// `n` distinct two-word keys ("silver-harbor").
std::vector<std::string> keys(Rng& r, int n) {
  std::set<std::string> seen;
  std::vector<std::string> out;
  while (int(out.size()) < n) {
    std::string k = r.pick(kWords) + "-" + r.pick(kWords);
    if (seen.insert(k).second) out.push_back(k);
  }
  return out;
}

const std::string kNoise =
    "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again.";

std::string essay_sentence(Rng& r) {
  const size_t n = 8 + r.below(8);
  std::string s;
  for (size_t i = 0; i < n; ++i) {
    std::string w = r.pick(kEssayWords);
    if (i == 0) w[0] = char(std::toupper(uint8_t(w[0])));
    s += (i ? " " : "") + w;
  }
  return s + ".";
}

// Haystack pieces (filler sentences) adding up to `budget` tokens, with the needles put between
// pieces at random depths, in order. Pieces are joined by spaces.
std::string haystack(Rng& r, bool essay, int64_t budget, const std::vector<std::string>& needles,
                     const TokenCount& count) {
  std::vector<std::string> pieces;
  int64_t used = 0;
  for (const auto& n : needles) used += count(n);
  const int64_t noise_tokens = count(kNoise);
  while (true) {
    std::string p = essay ? essay_sentence(r) : kNoise;
    const int64_t t = essay ? count(p) : noise_tokens;
    if (used + t > budget) break;
    used += t;
    pieces.push_back(std::move(p));
  }
  std::vector<size_t> at;  // insertion points, 0..pieces.size()
  for (size_t i = 0; i < needles.size(); ++i) at.push_back(r.below(pieces.size() + 1));
  std::sort(at.begin(), at.end());
  std::string out;
  size_t ni = 0;
  for (size_t i = 0; i <= pieces.size(); ++i) {
    while (ni < needles.size() && at[ni] == i) out += (out.empty() ? "" : " ") + needles[ni++];
    if (i < pieces.size()) out += (out.empty() ? "" : " ") + pieces[i];
  }
  return out;
}

std::string join_and(const std::vector<std::string>& xs) {
  std::string s;
  for (size_t i = 0; i < xs.size(); ++i)
    s += (i == 0 ? "" : i + 1 == xs.size() ? ", and " : ", ") + xs[i];
  return s;
}

Sample niah(std::string_view task, Rng& r, int64_t budget, const TokenCount& count) {
  Sample s;
  const bool essay = task != "niah_single_1";
  const bool uuids = task == "niah_single_3";
  const std::string what = uuids ? "UUID" : "number";
  int n_keys = 1, n_values = 1, n_queries = 1;
  if (task == "niah_multikey") n_keys = 4;
  if (task == "niah_multivalue") n_values = 4;
  if (task == "niah_multiquery") n_keys = n_queries = 4;
  const auto k = keys(r, n_keys);
  std::vector<std::string> needles;
  std::vector<std::vector<std::string>> values(static_cast<size_t>(n_keys));
  for (int i = 0; i < n_keys; ++i)
    for (int j = 0; j < n_values; ++j) {
      values[size_t(i)].push_back(uuids ? uuid(r) : number7(r));
      needles.push_back(fmt::format("One of the special magic {}s for {} is: {}.", what,
                                    k[size_t(i)], values[size_t(i)].back()));
    }
  // Needles in a shuffled order (multi-value's values are found in any order).
  for (size_t i = needles.size(); i > 1; --i) std::swap(needles[i - 1], needles[r.below(i)]);
  const size_t asked = r.below(size_t(n_keys));  // multikey: the one key asked for
  std::vector<std::string> qkeys;
  if (n_queries > 1) {
    qkeys = k;
    for (const auto& v : values) s.answers.insert(s.answers.end(), v.begin(), v.end());
  } else {
    qkeys = {k[asked]};
    s.answers = values[asked];
  }
  const std::string head = fmt::format(
      "Some special magic {}s are hidden within the following text. Make sure to memorize it. "
      "I will quiz you about the {}s afterwards.\n",
      what, what);
  const bool many = s.answers.size() > 1;
  const std::string question =
      many ? fmt::format(
                 "\nWhat are all the special magic {}s for {} mentioned in the provided "
                 "text?",
                 what, join_and(qkeys))
           : fmt::format("\nWhat is the special magic {} for {} mentioned in the provided text?",
                         what, qkeys[0]);
  s.answer_prefix =
      many ? fmt::format("The special magic {}s for {} mentioned in the provided text are", what,
                         join_and(qkeys))
           : fmt::format("The special magic {} for {} mentioned in the provided text is", what,
                         qkeys[0]);
  const int64_t fixed = count(head) + count(question) + count(s.answer_prefix);
  s.input = head + haystack(r, essay, budget - fixed, needles, count) + question;
  s.n_predict = uuids ? 32 : many ? 48 : 16;
  return s;
}

std::string var_name(Rng& r) {
  std::string v;
  for (int i = 0; i < 5; ++i) v += char('A' + r.below(26));
  return v;
}

Sample variable_tracking(Rng& r, int64_t budget, const TokenCount& count) {
  Sample s;
  const std::string value = std::to_string(10000 + r.below(90000));
  std::set<std::string> seen;
  while (seen.size() < 5) {
    std::string v = var_name(r);
    if (seen.insert(v).second) s.answers.push_back(v);
  }
  std::vector<std::string> chain = {fmt::format("VAR {} = {}.", s.answers[0], value)};
  for (size_t i = 1; i < s.answers.size(); ++i)
    chain.push_back(fmt::format("VAR {} = VAR {}.", s.answers[i], s.answers[i - 1]));
  const std::string head =
      "Memorize and track the chain(s) of variable assignment hidden in the following text.\n\n";
  const std::string question = fmt::format(
      "\nQuestion: Find all variables that are assigned the value {} in the text above.", value);
  s.answer_prefix = fmt::format(
      "Answer: According to the chain(s) of variable assignment in the text above, 5 variables "
      "are assigned the value {}, they are:",
      value);
  const int64_t fixed = count(head) + count(question) + count(s.answer_prefix);
  s.input = head + haystack(r, false, budget - fixed, chain, count) + question;
  s.n_predict = 32;
  return s;
}

Sample common_words(Rng& r, int64_t budget, const TokenCount& count) {
  Sample s;
  const std::string head =
      "Below is a numbered list of words. In these words, some appear more often than others. "
      "Memorize the ones that appear most often.\n";
  const std::string question = "\nQuestion: What are the 10 most common words in the above list?";
  s.answer_prefix = "Answer: The top 10 words that appear most often in the list are:";
  const int64_t avail = budget - count(head) - count(question) - count(s.answer_prefix);
  std::vector<size_t> order(std::size(kWords));
  for (size_t i = 0; i < order.size(); ++i) order[i] = i;
  for (size_t i = order.size(); i > 1; --i) std::swap(order[i - 1], order[r.below(i)]);
  // An entry " 123. word" costs its number's tokens and its word's (added: numbers and words
  // are split apart by every tokenizer we load). Common words take about 40% of the entries that
  // would fit; uncommon ones, three times each, fill the rest.
  auto num_cost = [&count](size_t i) { return count(fmt::format(" {}.", i + 1)); };
  auto word_cost = [&count](size_t w) { return count(" " + std::string(kWords[w])); };
  int64_t est = 0;
  for (size_t i = 0; i < 10; ++i) est += num_cost(100 + i) + word_cost(order[i]);
  const int64_t entries = std::max<int64_t>(40, avail * 10 / std::max<int64_t>(1, est));
  const int64_t common_freq = std::clamp<int64_t>(entries * 4 / 100, 4, 30);
  std::vector<std::string> words;
  int64_t used = 0;
  auto add = [&](size_t w, int64_t times) {
    for (int64_t f = 0; f < times; ++f) {
      used += num_cost(words.size()) + word_cost(w);
      words.emplace_back(kWords[w]);
    }
  };
  for (size_t i = 0; i < 10; ++i) {
    s.answers.emplace_back(kWords[order[i]]);
    add(order[i], common_freq);
  }
  for (size_t i = 10; i < order.size(); ++i) {
    const int64_t more = 3 * word_cost(order[i]) + num_cost(words.size()) +
                         num_cost(words.size() + 1) + num_cost(words.size() + 2);
    if (used + more > avail) break;
    add(order[i], 3);
  }
  for (size_t i = words.size(); i > 1; --i) std::swap(words[i - 1], words[r.below(i)]);
  std::string list;
  for (size_t i = 0; i < words.size(); ++i)
    list += fmt::format("{}{}. {}", i ? " " : "", i + 1, words[i]);
  s.input = head + list + question;
  s.n_predict = 64;
  return s;
}

Sample frequent_words(Rng& r, int64_t budget, const TokenCount& count) {
  Sample s;
  const std::string head =
      "Read the following coded text and track the frequency of each coded word. Find the three "
      "most frequently appeared coded words. ";
  const std::string question =
      "\nQuestion: Do not provide any explanation. Please ignore the dots '....'. What are the "
      "three most frequently appeared words in the above coded text?";
  s.answer_prefix =
      "Answer: According to the coded text above, the three most frequently appeared words are:";
  const int64_t avail = budget - count(head) - count(question) - count(s.answer_prefix);
  // Coded words of 4-6 letters; counts by Zipf's law with alpha 2: rank k gets top / k^2.
  std::set<std::string> seen;
  std::vector<std::string> vocab;
  while (vocab.size() < 200) {
    std::string w;
    const size_t len = 4 + r.below(3);
    for (size_t i = 0; i < len; ++i) w += char('a' + r.below(26));
    if (seen.insert(w).second) vocab.push_back(w);
  }
  int64_t tokens_per_word = 0;
  for (size_t i = 0; i < 10; ++i) tokens_per_word += count(" " + vocab[i]);
  const int64_t total = std::max<int64_t>(30, avail * 10 / std::max<int64_t>(1, tokens_per_word));
  // top * sum_k 1/k^2 ~ total, sum ~ 1.64.
  const double top = double(total) / 1.64;
  std::vector<std::string> text;
  for (size_t k = 1; k <= vocab.size(); ++k) {
    const int64_t c = std::max<int64_t>(1, int64_t(top / double(k * k)));
    for (int64_t i = 0; i < c; ++i) text.push_back(vocab[k - 1]);
  }
  for (size_t i = text.size(); i > 1; --i) std::swap(text[i - 1], text[r.below(i)]);
  std::string body;
  std::map<std::string, int64_t> kept;
  int64_t used = 0;
  for (size_t i = 0; i < text.size(); ++i) {
    std::string e = (i ? " " : "") + text[i] + (i % 8 == 7 ? " ...." : "");
    used += count(e);
    if (used > avail) break;
    body += e;
    ++kept[text[i]];
  }
  // The answers are the three most frequent words of the text as cut (rank order survives a cut:
  // the counts fall as 1, 1/4, 1/9).
  std::vector<std::pair<int64_t, std::string>> by_count;
  for (const auto& [w, c] : kept) by_count.push_back({-c, w});
  std::sort(by_count.begin(), by_count.end());
  for (size_t i = 0; i < 3 && i < by_count.size(); ++i) s.answers.push_back(by_count[i].second);
  s.input = head + body + question;
  s.n_predict = 24;
  return s;
}

}  // namespace

std::span<const std::string_view> task_names() {
  return kTasks;
}

std::vector<Sample> generate(std::string_view task, int64_t context, int samples, uint64_t seed,
                             const TokenCount& count, int64_t reserve) {
  if (std::find(std::begin(kTasks), std::end(kTasks), task) == std::end(kTasks))
    throw std::invalid_argument("ruler: unknown task '" + std::string(task) + "'");
  const int64_t budget = context - reserve;
  if (budget < 256) throw std::invalid_argument("ruler: context too small (at least 320 tokens)");
  std::vector<Sample> out;
  for (int i = 0; i < samples; ++i) {
    Rng r{mix_seed(task, context, seed, i)};
    Sample s = task == "vt"    ? variable_tracking(r, budget, count)
               : task == "cwe" ? common_words(r, budget, count)
               : task == "fwe" ? frequent_words(r, budget, count)
                               : niah(task, r, budget, count);
    s.task = std::string(task);
    s.context = context;
    out.push_back(std::move(s));
  }
  return out;
}

double score(std::string_view output, std::span<const std::string> answers) {
  if (answers.empty()) return 0;
  auto lower = [](std::string_view t) {
    std::string s(t);
    for (char& c : s) c = char(std::tolower(uint8_t(c)));
    return s;
  };
  const std::string out = lower(output);
  int found = 0;
  for (const auto& a : answers) found += out.find(lower(a)) != std::string::npos ? 1 : 0;
  return double(found) / double(answers.size());
}

std::vector<int64_t> parse_contexts(const std::string& text) {
  std::vector<int64_t> out;
  size_t start = 0;
  while (start <= text.size()) {
    size_t end = text.find(',', start);
    if (end == std::string::npos) end = text.size();
    std::string t = text.substr(start, end - start);
    int64_t mult = 1;
    if (!t.empty() && (t.back() == 'k' || t.back() == 'K')) {
      mult = 1024;
      t.pop_back();
    }
    int64_t v = 0;
    size_t used = 0;
    try {
      v = std::stoll(t, &used);
    } catch (const std::exception&) {
      used = 0;
    }
    if (t.empty() || used != t.size() || v <= 0)
      throw std::invalid_argument("--contexts: '" + text.substr(start, end - start) +
                                  "': expected a token count (2048) or kilo-tokens (2k)");
    out.push_back(v * mult);
    start = end + 1;
  }
  return out;
}

}  // namespace fairkv::app::ruler
