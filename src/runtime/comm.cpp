// Choosing a backend by name, and running a job's ranks under it.
#include "runtime/comm.h"

#include <cstdlib>
#include <stdexcept>

#include "runtime/comm_threads.h"
#ifdef FAIRKV_HAVE_MPI
#include "runtime/comm_mpi.h"
#endif

namespace fairkv::runtime {

namespace {

// "threads" with one rank: the group lives as long as its only communicator.
class SoloComm final : public Communicator {
 public:
  int rank() const override { return 0; }
  int size() const override { return 1; }
  std::string name() const override { return "threads"; }
  void all_reduce_sum(float* data, size_t n) override { c_.all_reduce_sum(data, n); }
  void all_gather(const void* send, size_t bytes_per_rank, void* recv) override {
    c_.all_gather(send, bytes_per_rank, recv);
  }
  void broadcast(void* data, size_t bytes, int root) override { c_.broadcast(data, bytes, root); }
  void barrier() override { c_.barrier(); }
  [[noreturn]] void abort(const std::string& why) override {
    const std::string message = "rank 0 aborted: " + why;
    group_.fail(0, message);
    throw CommError(message, 0);
  }

 private:
  ThreadGroup group_{1};
  Communicator& c_ = group_.comm(0);
};

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

}  // namespace fairkv::runtime
