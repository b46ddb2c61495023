// The files of a fuzz corpus folder, read whole: what the corpus replay tests (app's JSON
// corpus, serve's request corpus) run through the fuzzers' input readers in the normal build.
#pragma once

#include <cstdint>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>
#include <utility>
#include <vector>

namespace fairkv::fuzz {

struct CorpusFile {
  std::filesystem::path path;
  std::string name;  // the file name: seeds are named kind-*, the fuzzer's finds by their hash
  std::vector<uint8_t> bytes;
};

inline std::vector<CorpusFile> corpus_files(const std::filesystem::path& dir) {
  std::vector<CorpusFile> out;
  for (const auto& e : std::filesystem::directory_iterator(dir)) {
    if (!e.is_regular_file()) continue;
    std::ifstream in(e.path(), std::ios::binary);
    out.push_back({e.path(), e.path().filename().string(),
                   std::vector<uint8_t>(std::istreambuf_iterator<char>(in), {})});
  }
  return out;
}

}  // namespace fairkv::fuzz
