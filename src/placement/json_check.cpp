#include "placement/json_check.h"

#include <cerrno>
#include <cmath>
#include <cstring>
#include <fstream>
#include <limits>

#include <fmt/format.h>

#include "placement/profile.h"

namespace fairkv::placement {

std::string brief(const nlohmann::json& v) {
  std::string s = v.dump();
  if (s.size() > 40) s = s.substr(0, 37) + "...";
  return s;
}

void JsonCheck::object(const nlohmann::json& j, const std::string& path) const {
  if (!j.is_object())
    throw FormatError(fmt::format("{}: {}: expected a JSON object, got {}", where, path, brief(j)));
}

const nlohmann::json& JsonCheck::field(const nlohmann::json& j, const std::string& name) const {
  auto it = j.find(name);
  if (it == j.end()) throw FormatError(fmt::format("{}: {}: missing field", where, name));
  return *it;
}

void JsonCheck::array_of_size(const nlohmann::json& j, const std::string& path, int size) const {
  if (!j.is_array())
    throw FormatError(
        fmt::format("{}: {}: expected an array of {}, got {}", where, path, size, brief(j)));
  if (j.size() != size_t(size))
    throw FormatError(
        fmt::format("{}: {}: expected {} entries, got {}", where, path, size, j.size()));
}

std::string JsonCheck::string(const nlohmann::json& j, const std::string& path) const {
  if (!j.is_string())
    throw FormatError(fmt::format("{}: {}: expected a string, got {}", where, path, brief(j)));
  return j.get<std::string>();
}

int JsonCheck::non_negative_int(const nlohmann::json& j, const std::string& path) const {
  if (j.is_number_integer()) {
    const auto v = j.get<int64_t>();
    if (v >= 0 && v <= std::numeric_limits<int>::max()) return int(v);
  }
  if (j.is_number_unsigned() && j.get<uint64_t>() <= uint64_t(std::numeric_limits<int>::max()))
    return int(j.get<uint64_t>());
  throw FormatError(
      fmt::format("{}: {}: expected a non-negative integer, got {}", where, path, brief(j)));
}

int JsonCheck::positive_int(const nlohmann::json& j, const std::string& path) const {
  if ((j.is_number_integer() || j.is_number_unsigned()) && j.get<int64_t>() > 0 &&
      j.get<int64_t>() <= std::numeric_limits<int>::max())
    return int(j.get<int64_t>());
  throw FormatError(
      fmt::format("{}: {}: expected a positive integer, got {}", where, path, brief(j)));
}

double JsonCheck::non_negative(const nlohmann::json& j, const std::string& path) const {
  if (j.is_number()) {
    const double v = j.get<double>();
    if (v >= 0 && std::isfinite(v)) return v;
  }
  throw FormatError(
      fmt::format("{}: {}: expected a non-negative number, got {}", where, path, brief(j)));
}

nlohmann::json read_json_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw FormatError(fmt::format("{}: cannot open: {}", path, std::strerror(errno)));
  try {
    return nlohmann::json::parse(in);
  } catch (const nlohmann::json::parse_error& e) {
    throw FormatError(fmt::format("{}: not valid JSON: {}", path, e.what()));
  }
}

void write_json_file(const nlohmann::json& j, const std::string& path) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  if (!out) throw FormatError(fmt::format("{}: cannot write: {}", path, std::strerror(errno)));
  out << j.dump() << '\n';
  if (!out) throw FormatError(fmt::format("{}: write failed", path));
}

}  // namespace fairkv::placement
