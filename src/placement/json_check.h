// Checked reads of JSON values for the placement module's file formats: every error names the file
// and the field path ("p.json: tokens[3][2]: expected a non-negative number, got \"abc\"").
#pragma once

#include <cstddef>
#include <string>

#include <nlohmann/json.hpp>

namespace fairkv::placement {

// A short rendering of a value for error messages: its compact JSON, cut to max_chars (>= 4) with
// "..." at the end; never renders more of a large or deeply nested value than that.
std::string brief(const nlohmann::json& v, size_t max_chars = 40);

struct JsonCheck {
  std::string where;  // the file (or other source) named first in every error

  void object(const nlohmann::json& j, const std::string& path) const;
  const nlohmann::json& field(const nlohmann::json& j, const std::string& name) const;
  void array_of_size(const nlohmann::json& j, const std::string& path, int size) const;
  std::string string(const nlohmann::json& j, const std::string& path) const;
  int positive_int(const nlohmann::json& j, const std::string& path) const;
  int non_negative_int(const nlohmann::json& j, const std::string& path) const;
  double non_negative(const nlohmann::json& j, const std::string& path) const;
};

nlohmann::json read_json_file(const std::string& path);
void write_json_file(const nlohmann::json& j, const std::string& path);

}  // namespace fairkv::placement
