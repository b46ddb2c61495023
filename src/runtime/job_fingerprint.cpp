#include "runtime/job_fingerprint.h"

#include <fmt/format.h>

#include <algorithm>
#include <chrono>
#include <fstream>
#include <thread>
#include <vector>

namespace fairkv::runtime {

namespace {

// FNV-1a: enough to tell files and argument lists apart, not meant to resist an adversary.
struct Fnv {
  uint64_t h = 0xcbf29ce484222325ull;
  void add(const void* data, size_t n) {
    const auto* p = static_cast<const uint8_t*>(data);
    for (size_t i = 0; i < n; ++i) h = (h ^ p[i]) * 0x100000001b3ull;
  }
  void add(uint64_t x) { add(&x, sizeof x); }
};

uint64_t file_hash(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  Fnv f;
  std::vector<char> buf(1 << 16);
  while (in.read(buf.data(), std::streamsize(buf.size())) || in.gcount() > 0)
    f.add(buf.data(), size_t(in.gcount()));
  return f.h;
}

}  // namespace

JobFingerprint job_fingerprint(std::span<const std::string> args, const gguf::File& model) {
  JobFingerprint fp;
  Fnv a;
  for (size_t i = 1; i < args.size(); ++i) {
    // The model is compared by its content: hosts may keep it under different paths.
    if ((args[i] == "-m" || args[i] == "--model") && i + 1 < args.size()) {
      ++i;
      continue;
    }
    if (args[i].starts_with("--model=")) continue;
    a.add(args[i].data(), args[i].size());
    a.add(uint64_t(0));  // "a b" and "ab" differ
  }
  fp.args = a.h;
  // Size, header (metadata and tensor table) and 64 KiB of tensor data from 64 tensors spread
  // over the file: hashing it whole would read every byte of a 70B model on every rank.
  Fnv m;
  fp.model_size = model.file_size();
  m.add(fp.model_size);
  m.add(uint64_t(model.data_offset()));
  for (const gguf::TensorInfo& t : model.tensors()) {
    m.add(t.name.data(), t.name.size());
    m.add(uint64_t(t.type));
    for (int64_t d : t.dims) m.add(uint64_t(d));
    m.add(t.offset);
  }
  for (const gguf::KeyValue& kv : model.metadata()) {
    m.add(kv.key.data(), kv.key.size());
    const std::string v = kv.value.to_string(64);
    m.add(v.data(), v.size());
  }
  const auto& tensors = model.tensors();
  constexpr size_t kSamples = 64, kSample = 512;
  for (size_t k = 0; k < kSamples && !tensors.empty(); ++k) {
    const gguf::TensorInfo& t = tensors[k * tensors.size() / kSamples];
    const uint8_t* d = model.data(t);
    const size_t n = size_t(std::min<uint64_t>(kSample, t.n_bytes));
    m.add(d, n);                        // its first bytes
    m.add(d + (t.n_bytes - n) / 2, n);  // and its middle
  }
  fp.model = m.h;
  fp.build = file_hash("/proc/self/exe");
  return fp;
}

void check_ranks_agree(comm::Communicator& comm, const JobFingerprint& mine) {
  std::vector<JobFingerprint> all(size_t(comm.size()));
  comm.all_gather(&mine, sizeof mine, all.data());
  const JobFingerprint& ref = all[0];
  for (int r = 1; r < comm.size(); ++r) {
    const JobFingerprint& x = all[size_t(r)];
    std::string what;
    if (x.build != ref.build)
      what = "its fairkv executable is another build";
    else if (x.model != ref.model)
      what = fmt::format("its model file differs ({} bytes against rank 0's {})", x.model_size,
                         ref.model_size);
    else if (x.args != ref.args)
      what = "its command-line arguments differ (every rank needs the same options)";
    if (what.empty()) continue;
    // Rank 0 says it and ends the job; the others wait for that end so that the message comes
    // once, and stop by themselves should it not come.
    if (comm.rank() != 0) std::this_thread::sleep_for(std::chrono::seconds(5));
    throw RanksDisagree(fmt::format("rank {} disagrees with rank 0: {}; the job stops", r, what));
  }
}

}  // namespace fairkv::runtime
