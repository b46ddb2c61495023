#include "app/head_importance_file.h"

#include <cmath>
#include <fstream>
#include <stdexcept>

#include <nlohmann/json.hpp>

namespace fairkv::app {

kv::HeadImportance read_head_importance(const std::string& path) {
  std::ifstream f(path);
  if (!f) throw std::runtime_error(path + ": cannot open the head-importance file");
  nlohmann::json j;
  try {
    f >> j;
  } catch (const std::exception& e) {
    throw std::runtime_error(path + ": not valid JSON (" + e.what() + ")");
  }
  return head_importance_from_json(j, path);
}

kv::HeadImportance head_importance_from_json(const nlohmann::json& j, const std::string& path) {
  auto field_int = [&](const char* key) {
    if (!j.is_object() || !j.contains(key) || !j[key].is_number_integer() ||
        j[key].get<int64_t>() < 1 || j[key].get<int64_t>() > 1 << 20)
      throw std::runtime_error(path + ": field '" + key + "': expected a positive integer");
    return int(j[key].get<int64_t>());
  };
  kv::HeadImportance imp;
  imp.layers = field_int("layers");
  imp.kv_heads = field_int("kv_heads");
  const auto& rows = j.contains("importance") ? j["importance"] : nlohmann::json();
  if (!rows.is_array() || int(rows.size()) != imp.layers)
    throw std::runtime_error(path + ": field 'importance': expected " + std::to_string(imp.layers) +
                             " rows (one per layer)");
  double total = 0;
  for (int l = 0; l < imp.layers; ++l) {
    const auto& row = rows[size_t(l)];
    if (!row.is_array() || int(row.size()) != imp.kv_heads)
      throw std::runtime_error(path + ": field 'importance[" + std::to_string(l) + "]': expected " +
                               std::to_string(imp.kv_heads) + " numbers");
    for (int h = 0; h < imp.kv_heads; ++h) {
      const auto& v = row[size_t(h)];
      if (!v.is_number() || !std::isfinite(v.get<double>()) || v.get<double>() < 0)
        throw std::runtime_error(path + ": field 'importance[" + std::to_string(l) + "][" +
                                 std::to_string(h) + "]': expected a non-negative number");
      imp.importance.push_back(v.get<double>());
      total += imp.importance.back();
    }
  }
  if (!(total > 0)) throw std::runtime_error(path + ": field 'importance': every value is zero");
  return imp;
}

nlohmann::json head_importance_json(const kv::HeadImportance& imp) {
  nlohmann::json rows = nlohmann::json::array();
  for (int l = 0; l < imp.layers; ++l) {
    nlohmann::json row = nlohmann::json::array();
    for (int h = 0; h < imp.kv_heads; ++h)
      row.push_back(imp.importance[size_t(l) * imp.kv_heads + h]);
    rows.push_back(std::move(row));
  }
  return {{"layers", imp.layers}, {"kv_heads", imp.kv_heads}, {"importance", std::move(rows)}};
}

std::vector<double> read_layer_sensitivity(const std::string& path) {
  std::ifstream f(path);
  if (!f) throw std::runtime_error(path + ": cannot open the layer-sensitivity file");
  nlohmann::json j;
  try {
    f >> j;
  } catch (const std::exception& e) {
    throw std::runtime_error(path + ": not valid JSON (" + e.what() + ")");
  }
  if (!j.is_object() || !j.contains("layers") || !j["layers"].is_number_integer() ||
      j["layers"].get<int64_t>() < 1 || j["layers"].get<int64_t>() > 1 << 20)
    throw std::runtime_error(path + ": field 'layers': expected a positive integer");
  const auto layers = size_t(j["layers"].get<int64_t>());
  const auto& sim = j.contains("key_similarity") ? j["key_similarity"] : nlohmann::json();
  if (!sim.is_array() || sim.size() != layers)
    throw std::runtime_error(path + ": field 'key_similarity': expected " + std::to_string(layers) +
                             " numbers (one per layer)");
  std::vector<double> out;
  for (size_t l = 0; l < layers; ++l) {
    if (!sim[l].is_number() || !std::isfinite(sim[l].get<double>()))
      throw std::runtime_error(path + ": field 'key_similarity[" + std::to_string(l) +
                               "]': expected a finite number");
    out.push_back(sim[l].get<double>());
  }
  return out;
}

nlohmann::json layer_sensitivity_json(const std::vector<double>& similarity) {
  return {{"layers", similarity.size()}, {"key_similarity", similarity}};
}

}  // namespace fairkv::app
