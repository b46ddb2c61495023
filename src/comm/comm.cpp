// Choosing a backend by name, and running a job's ranks under it.
#include "comm/comm.h"

#include <cstdlib>
#include <cstring>
#include <stdexcept>

#ifdef FAIRKV_HAVE_MPI
#include "comm/comm_mpi.h"
#endif

namespace fairkv::comm {

namespace {

void check_kind(const std::string& kind) {
  if (kind != "threads" && kind != "mpi") {
    throw std::invalid_argument("communicator kind '" + kind + "': expected 'threads' or 'mpi'");
  }
}

#ifndef FAIRKV_HAVE_MPI
[[noreturn]] void no_mpi() {
  throw std::runtime_error(
      "communicator 'mpi': this build has no MPI backend (configure with -DFAIRKV_MPI=ON where "
      "CMake finds MPI, e.g. with libopenmpi-dev installed)");
}
#endif

}  // namespace

SoloComm::SoloComm(int rank, int size) : rank_(rank), size_(size) {
  if (size < 1 || rank < 0 || rank >= size)
    throw std::invalid_argument("SoloComm: rank " + std::to_string(rank) + " of " +
                                std::to_string(size) + " ranks");
}

std::string SoloComm::name() const {
  return size_ == 1 ? "threads" : "solo";
}

void SoloComm::all_gather(const void* send, size_t bytes_per_rank, void* recv) {
  for (int r = 0; r < size_; ++r) {
    char* slot = static_cast<char*>(recv) + size_t(r) * bytes_per_rank;
    if (slot != send) std::memcpy(slot, send, bytes_per_rank);
  }
}

void SoloComm::broadcast(void*, size_t, int root) {
  if (root < 0 || root >= size_)
    throw std::invalid_argument("broadcast: root " + std::to_string(root) + " of " +
                                std::to_string(size_) + " ranks");
}

void SoloComm::abort(const std::string& why) {
  throw CommError("rank " + std::to_string(rank_) + " aborted: " + why, rank_);
}

bool mpi_built() {
#ifdef FAIRKV_HAVE_MPI
  return true;
#else
  return false;
#endif
}

bool launched_by_mpirun() {
  for (const char* var : {"OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMI_RANK", "PMIX_RANK"}) {
    if (std::getenv(var) != nullptr) return true;
  }
  return false;
}

int launch_rank() {
  for (const char* var : {"OMPI_COMM_WORLD_RANK", "PMI_RANK", "PMIX_RANK"}) {
    if (const char* v = std::getenv(var)) {
      char* end = nullptr;
      const long r = std::strtol(v, &end, 10);
      if (end != v && *end == '\0' && r >= 0 && r < (1L << 30)) return int(r);
    }
  }
  return -1;
}

std::unique_ptr<Communicator> make_communicator(const std::string& kind) {
  check_kind(kind);
  if (kind == "threads") return std::make_unique<SoloComm>();
#ifdef FAIRKV_HAVE_MPI
  return make_mpi_communicator();
#else
  no_mpi();
#endif
}

void run_job(const std::string& kind, int ranks, const std::function<void(Communicator&)>& fn) {
  check_kind(kind);
  if (kind == "threads") {
    if (ranks < 1) {
      throw std::invalid_argument("communicator 'threads': expected at least 1 rank, got " +
                                  std::to_string(ranks));
    }
    run_ranks(ranks, fn);
    return;
  }
#ifdef FAIRKV_HAVE_MPI
  const auto comm = make_communicator("mpi");
  const std::string me = "rank " + std::to_string(comm->rank());
  if (ranks != 0 && ranks != comm->size()) {
    mpi_abort_job(me + " failed: the job was asked for " + std::to_string(ranks) +
                  " ranks but mpirun started " + std::to_string(comm->size()) +
                  " processes (mpirun -np " + std::to_string(ranks) + ")");
  }
  try {
    fn(*comm);
  } catch (const std::exception& e) {
    mpi_abort_job(me + " failed: " + e.what());
  } catch (...) {
    mpi_abort_job(me + " failed: unknown exception");
  }
#else
  (void)ranks;
  (void)fn;
  no_mpi();
#endif
}

}  // namespace fairkv::comm
