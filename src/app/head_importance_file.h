// The head-importance file of HeadKV, which `fairkv importance` writes and --kv-head-importance
// reads: {"layers": L, "kv_heads": H, "importance": [[h0, h1, ...], ...]} with L rows of H
// non-negative numbers, not all zero. (HeadKV's own files score query heads; average them over
// each GQA group.) Read here with the command line's other input files (prompts.h), so that kv
// computes on the importance it is handed and reads no files.
#pragma once

#include <string>
#include <vector>

#include <nlohmann/json_fwd.hpp>

#include "kv/compress.h"

namespace fairkv::app {

// Throws std::runtime_error naming the file and the field on any malformed input.
kv::HeadImportance read_head_importance(const std::string& path);
// The same from parsed JSON; `path` names it in messages.
kv::HeadImportance head_importance_from_json(const nlohmann::json& j, const std::string& path);
// The object read_head_importance() reads; callers may add fields.
nlohmann::json head_importance_json(const kv::HeadImportance& imp);

// EpiCache's layer-sensitivity profile, which `fairkv eval --suite ruler --sensitivity-out`
// writes and --kv-layer-sensitivity reads: {"layers": L, "key_similarity": [s0, s1, ...]}, one
// finite number per layer. Throws std::runtime_error naming the file and the field.
std::vector<double> read_layer_sensitivity(const std::string& path);
nlohmann::json layer_sensitivity_json(const std::vector<double>& similarity);

}  // namespace fairkv::app
