#include "placement/json_check.h"

#include <cerrno>
#include <cmath>
#include <cstring>
#include <fstream>
#include <limits>

#include <fmt/format.h>

#include "placement/profile.h"

namespace fairkv::placement {

namespace {

// Appends v's compact JSON text to out, stopping once out holds `limit` characters. Every level
// adds a character, so the recursion ends within `limit` levels: json::dump recurses once per
// level of the whole value and overflows the stack on the deep nesting one line of a file can
// hold ('[' x 1e6), and renders a huge value whole only to cut it.
void render(const nlohmann::json& v, std::string& out, size_t limit) {
  using nlohmann::json;
  if (out.size() >= limit) return;
  if (v.is_array() || v.is_object()) {
    out += v.is_array() ? '[' : '{';
    bool first = true;
    for (auto it = v.begin(); it != v.end() && out.size() < limit; ++it) {
      if (!first) out += ',';
      first = false;
      if (v.is_object()) out += json(it.key()).dump() + ':';
      render(it.value(), out, limit);
    }
    out += v.is_array() ? ']' : '}';
  } else if (v.is_string()) {
    // Cut first (a long string is not copied whole); a cut inside a character is replaced.
    out += json(v.get_ref<const std::string&>().substr(0, limit))
               .dump(-1, ' ', false, json::error_handler_t::replace);
  } else {
    out += v.dump();
  }
}

}  // namespace

std::string brief(const nlohmann::json& v, size_t max_chars) {
  std::string s;
  render(v, s, max_chars + 1);
  if (s.size() > max_chars) s = s.substr(0, max_chars - 3) + "...";
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
