#include "app/prompts.h"

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <stdexcept>

#include <nlohmann/json.hpp>

namespace fairkv::app {

namespace fs = std::filesystem;

namespace {

std::string read_file(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  if (!in) throw std::runtime_error(p.string() + ": cannot read");
  return std::string((std::istreambuf_iterator<char>(in)), {});
}

}  // namespace

std::vector<Prompt> read_jsonl_prompts(std::istream& in, const std::string& path) {
  const fs::path p(path);
  std::vector<Prompt> out;
  std::string line;
  for (int n = 1; std::getline(in, line); ++n) {
    if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
    nlohmann::json j;
    try {
      j = nlohmann::json::parse(line);
    } catch (const nlohmann::json::exception& e) {
      throw std::runtime_error(p.string() + ":" + std::to_string(n) + ": not JSON: " + e.what());
    }
    if (!j.is_object() || !j.contains("prompt") || !j["prompt"].is_string())
      throw std::runtime_error(p.string() + ":" + std::to_string(n) +
                               ": expected an object with a string \"prompt\"");
    Prompt pr{"line " + std::to_string(n), j["prompt"].get<std::string>(), std::nullopt};
    if (j.contains("answer")) {
      if (!j["answer"].is_string())
        throw std::runtime_error(p.string() + ":" + std::to_string(n) +
                                 ": \"answer\": expected a string");
      pr.answer = j["answer"].get<std::string>();
    }
    out.push_back(std::move(pr));
  }
  return out;
}

std::vector<Prompt> read_prompts(const std::string& path) {
  const fs::path p(path);
  std::vector<Prompt> out;
  if (fs::is_directory(p)) {
    std::vector<fs::path> files;
    // Prompt files in the folder, or a prompt.txt in each subfolder (the golden cases' layout).
    for (const auto& e : fs::directory_iterator(p)) {
      if (e.is_regular_file() && e.path().extension() == ".txt") files.push_back(e.path());
      if (e.is_directory() && fs::is_regular_file(e.path() / "prompt.txt"))
        files.push_back(e.path() / "prompt.txt");
    }
    std::sort(files.begin(), files.end());
    for (const auto& f : files)
      out.push_back({f.filename() == "prompt.txt" ? f.parent_path().filename().string()
                                                  : f.filename().string(),
                     read_file(f), std::nullopt});
  } else if (!fs::exists(p)) {
    throw std::runtime_error(path + ": no such file or folder (--prompts)");
  } else if (p.extension() == ".jsonl") {
    std::ifstream in(p);
    out = read_jsonl_prompts(in, path);
  } else {
    std::ifstream in(p);
    std::string line;
    for (int n = 1; std::getline(in, line); ++n) {
      // A file written on Windows ends its lines in CRLF: the \r is not part of the prompt.
      if (!line.empty() && line.back() == '\r') line.pop_back();
      if (line.find_first_not_of(" \t") != std::string::npos)
        out.push_back({"line " + std::to_string(n), line, std::nullopt});
    }
  }
  if (out.empty()) throw std::runtime_error(path + ": no prompts found (--prompts)");
  return out;
}

}  // namespace fairkv::app
