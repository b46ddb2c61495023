// HeadKV's head importance from retrieval: the scores that `fairkv importance` accumulates while
// a model is teacher-forced through the answers of needle-in-a-haystack prompts.
#include <algorithm>
#include <stdexcept>
#include <string>

#include <nlohmann/json.hpp>

#include "kv/compress.h"

namespace fairkv::kv {

ImportanceScore parse_importance_score(std::string_view name, std::string_view option) {
  if (name == "mass") return ImportanceScore::Mass;
  if (name == "retrieval") return ImportanceScore::Retrieval;
  throw std::invalid_argument(std::string(option) + ": expected mass or retrieval, got '" +
                              std::string(name) + "'");
}

std::optional<std::pair<int64_t, int64_t>> find_answer_span(std::span<const int32_t> prompt,
                                                            std::span<const int32_t> answer) {
  const int64_t n = int64_t(prompt.size()), a = int64_t(answer.size());
  // The longest suffix answer[k..] first (a leading space token may be tokenized differently
  // inside the prompt), its last occurrence (the needle, not an earlier coincidence).
  for (int64_t k = 0; k < a; ++k) {
    const int64_t len = a - k;
    for (int64_t b = n - len; b >= 0; --b)
      if (std::equal(answer.begin() + k, answer.end(), prompt.begin() + b))
        return std::make_pair(b, b + len);
  }
  return std::nullopt;
}

void accumulate_retrieval_scores(const float* probs, int group, int64_t rows, int64_t n,
                                 std::span<const int32_t> tokens, std::span<const int32_t> targets,
                                 int64_t span_begin, int64_t span_end, ImportanceScore how,
                                 double* out) {
  if (int64_t(tokens.size()) != n || int64_t(targets.size()) != rows || span_begin < 0 ||
      span_end > n || span_begin > span_end)
    throw std::invalid_argument("accumulate_retrieval_scores: " + std::to_string(tokens.size()) +
                                " tokens for n = " + std::to_string(n) + ", " +
                                std::to_string(targets.size()) + " targets for " +
                                std::to_string(rows) + " rows, span [" +
                                std::to_string(span_begin) + ", " + std::to_string(span_end) + ")");
  for (int g = 0; g < group; ++g)
    for (int64_t r = 0; r < rows; ++r) {
      const float* p = probs + (int64_t(g) * rows + r) * n;
      const int32_t want = targets[size_t(r)];
      if (how == ImportanceScore::Mass) {
        double s = 0;
        for (int64_t j = span_begin; j < span_end; ++j)
          if (tokens[size_t(j)] == want) s += p[j];
        out[g] += s;
      } else {
        // The most attended position (the first among equals) over the whole row.
        const int64_t top = std::max_element(p, p + n) - p;
        if (top >= span_begin && top < span_end && tokens[size_t(top)] == want) out[g] += 1;
      }
    }
}

HeadImportance importance_from_scores(std::span<const double> query_scores, int layers,
                                      int kv_heads, int group) {
  if (layers < 1 || kv_heads < 1 || group < 1 ||
      query_scores.size() != size_t(layers) * size_t(kv_heads) * size_t(group))
    throw std::invalid_argument("importance_from_scores: " + std::to_string(query_scores.size()) +
                                " scores for " + std::to_string(layers) + " layers x " +
                                std::to_string(kv_heads) + " KV heads x group " +
                                std::to_string(group));
  HeadImportance imp;
  imp.layers = layers;
  imp.kv_heads = kv_heads;
  imp.importance.resize(size_t(layers) * size_t(kv_heads));
  double total = 0;
  for (size_t i = 0; i < imp.importance.size(); ++i) {
    double s = 0;
    for (int g = 0; g < group; ++g) s += std::max(0.0, query_scores[i * size_t(group) + size_t(g)]);
    imp.importance[i] = s / group;
    total += imp.importance[i];
  }
  for (double& v : imp.importance) v = total > 0 ? v / total : 1.0 / double(imp.importance.size());
  return imp;
}

}  // namespace fairkv::kv
