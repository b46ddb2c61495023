// Ranks that must agree before a job starts. The ranks of an MPI job each parse their own command
// line and load their own copy of the model; started with different arguments, model files or
// builds they would meet in different collectives and hang, or compute garbage and exit 0. Each
// rank therefore fingerprints what it was given and the job compares them first.
#pragma once

#include <cstdint>
#include <span>
#include <string>

#include "comm/comm.h"
#include "formats/gguf.h"

namespace fairkv::runtime {

struct JobFingerprint {
  uint64_t args = 0;        // the command line, without argv[0] and the model's path
  uint64_t model = 0;       // the model file: size, header, and a sample of the tensor data
  uint64_t model_size = 0;  // bytes
  uint64_t build = 0;       // the running executable's bytes
};

// The fingerprint of this process: `args` as main() received them, and the open model file.
JobFingerprint job_fingerprint(std::span<const std::string> args, const gguf::File& model);

// Compares every rank's fingerprint with rank 0's (a collective). When one differs, every rank
// throws RanksDisagree with the same message, naming the first such rank and what differs.
struct RanksDisagree : std::runtime_error {
  using std::runtime_error::runtime_error;
};
void check_ranks_agree(comm::Communicator& comm, const JobFingerprint& mine);

}  // namespace fairkv::runtime
