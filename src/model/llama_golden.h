// Test support: llama.cpp's greedy goldens (data/golden/README.md) read from their JSON files,
// and fairkv's teacher-forced logits compared with them step by step. Header-only; only the
// golden tests include it.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

namespace fairkv::model::golden {

struct Step {
  std::vector<int32_t> top_ids;   // llama.cpp's highest logits, highest first
  std::vector<float> top_logits;  // their values
  std::vector<float> logits;      // the full row, where the golden has one (else empty)
  // llama.cpp's own margin between its first and second choice.
  float gap() const { return top_logits[0] - top_logits[1]; }
};

struct Golden {
  std::vector<int32_t> prompt_ids, ids;  // ids[i] is llama.cpp's greedy choice at step i
  std::vector<Step> steps;
};

inline Golden read_golden(const std::filesystem::path& path) {
  std::ifstream in(path);
  const nlohmann::json j = nlohmann::json::parse(in);
  Golden g;
  g.prompt_ids = j.at("prompt_ids").get<std::vector<int32_t>>();
  g.ids = j.at("ids").get<std::vector<int32_t>>();
  for (const auto& s : j.at("steps")) {
    Step st;
    st.top_ids = s.at("top_ids").get<std::vector<int32_t>>();
    st.top_logits = s.at("top_logits").get<std::vector<float>>();
    if (s.contains("logits")) st.logits = s.at("logits").get<std::vector<float>>();
    g.steps.push_back(std::move(st));
  }
  return g;
}

// fairkv's teacher-forced rows (one per step, n_vocab each) against the golden's steps.
struct Comparison {
  double max_err = 0;  // largest |fairkv - llama.cpp| over every compared logit
  double sum_err = 0;  // their sum
  int64_t n_compared = 0;
  int worst_step = -1;     // where it was
  int same_argmax = 0;     // steps whose argmax (lower id on a tie) is llama.cpp's id
  std::vector<int> other;  // the steps where it is not
  double mean_err() const { return n_compared > 0 ? sum_err / double(n_compared) : 0.0; }
};

inline int32_t argmax(const float* row, size_t n) {
  return int32_t(std::max_element(row, row + n) - row);  // the first maximum: the lower id
}

inline Comparison compare(const Golden& g, const std::vector<float>& rows, size_t n_vocab) {
  Comparison c;
  for (size_t i = 0; i < g.steps.size(); ++i) {
    const float* row = rows.data() + i * n_vocab;
    const Step& s = g.steps[i];
    auto note = [&](int32_t id, float ref) {
      const double e = std::fabs(double(row[id]) - double(ref));
      c.sum_err += e;
      ++c.n_compared;
      if (e > c.max_err) c.max_err = e, c.worst_step = int(i);
    };
    for (size_t k = 0; k < s.top_ids.size(); ++k) note(s.top_ids[k], s.top_logits[k]);
    for (size_t id = 0; id < s.logits.size(); ++id) note(int32_t(id), s.logits[id]);
    if (argmax(row, n_vocab) == g.ids[i])
      ++c.same_argmax;
    else
      c.other.push_back(int(i));
  }
  return c;
}

}  // namespace fairkv::model::golden
