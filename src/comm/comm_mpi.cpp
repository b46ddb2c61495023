// MPI communicator on MPI_COMM_WORLD.
#include "comm/comm_mpi.h"

#include <mpi.h>

#include <algorithm>
#include <climits>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <stdexcept>

namespace fairkv::comm {

namespace {

// MPI counts are int: larger buffers go in pieces.
constexpr size_t kMaxCount = size_t(INT_MAX);

std::mutex g_mutex;  // guards the two below
int g_live = 0;      // MpiComm objects alive
bool g_initialized_here = false;

void check(int rc, const char* call) {
  if (rc == MPI_SUCCESS) return;
  char text[MPI_MAX_ERROR_STRING];
  int len = 0;
  if (MPI_Error_string(rc, text, &len) != MPI_SUCCESS) len = 0;
  throw CommError(std::string(call) + " failed: " +
                  (len > 0 ? std::string(text, size_t(len)) : "error " + std::to_string(rc)));
}

class MpiComm final : public Communicator {
 public:
  MpiComm() {
    std::lock_guard<std::mutex> lock(g_mutex);
    int finalized = 0, initialized = 0;
    check(MPI_Finalized(&finalized), "MPI_Finalized");
    if (finalized) {
      throw std::runtime_error(
          "communicator 'mpi': MPI was already finalized in this process (it starts once)");
    }
    check(MPI_Initialized(&initialized), "MPI_Initialized");
    if (!initialized) {
      int provided = 0;
      check(MPI_Init_thread(nullptr, nullptr, MPI_THREAD_SERIALIZED, &provided), "MPI_Init_thread");
      g_initialized_here = true;
      if (provided < MPI_THREAD_SERIALIZED) {
        // Calls still come from one thread at a time in practice; say what the library offers.
        std::fprintf(stderr,
                     "fairkv: MPI provides thread level %d (< MPI_THREAD_SERIALIZED): call the "
                     "communicator from the thread that created it\n",
                     provided);
      }
    }
    // Errors as return codes, so a rank can report its own message before ending the job.
    check(MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN), "MPI_Comm_set_errhandler");
    check(MPI_Comm_rank(MPI_COMM_WORLD, &rank_), "MPI_Comm_rank");
    check(MPI_Comm_size(MPI_COMM_WORLD, &size_), "MPI_Comm_size");
    ++g_live;
  }

  ~MpiComm() override {
    std::lock_guard<std::mutex> lock(g_mutex);
    if (--g_live == 0 && g_initialized_here) {
      MPI_Finalize();
      g_initialized_here = false;
    }
  }

  int rank() const override { return rank_; }
  int size() const override { return size_; }
  std::string name() const override { return "mpi"; }

  void all_reduce_sum(float* data, size_t n) override {
    // Every rank loops over the same pieces: n is the same everywhere.
    size_t done = 0;
    do {
      const size_t count = std::min(kMaxCount, n - done);
      check(
          MPI_Allreduce(MPI_IN_PLACE, data + done, int(count), MPI_FLOAT, MPI_SUM, MPI_COMM_WORLD),
          "MPI_Allreduce");
      done += count;
    } while (done < n);
  }

  void all_gather(const void* send, size_t bytes_per_rank, void* recv) override {
    char* out = static_cast<char*>(recv);
    char* mine = out + size_t(rank_) * bytes_per_rank;
    if (bytes_per_rank <= kMaxCount) {
      // MPI forbids overlapping send and receive buffers; in place is spelled MPI_IN_PLACE.
      check(MPI_Allgather(send == mine ? MPI_IN_PLACE : send, int(bytes_per_rank), MPI_BYTE, recv,
                          int(bytes_per_rank), MPI_BYTE, MPI_COMM_WORLD),
            "MPI_Allgather");
      return;
    }
    // Over 2 GiB per rank: one broadcast per rank, each in pieces.
    if (send != mine) std::memcpy(mine, send, bytes_per_rank);
    for (int root = 0; root < size_; ++root) {
      broadcast(out + size_t(root) * bytes_per_rank, bytes_per_rank, root);
    }
  }

  void broadcast(void* data, size_t bytes, int root) override {
    if (root < 0 || root >= size_) {
      throw std::invalid_argument("broadcast: root " + std::to_string(root) +
                                  " is not a rank of a job of " + std::to_string(size_));
    }
    char* p = static_cast<char*>(data);
    size_t done = 0;
    do {
      const size_t count = std::min(kMaxCount, bytes - done);
      check(MPI_Bcast(p + done, int(count), MPI_BYTE, root, MPI_COMM_WORLD), "MPI_Bcast");
      done += count;
    } while (done < bytes);
  }

  void barrier() override { check(MPI_Barrier(MPI_COMM_WORLD), "MPI_Barrier"); }

  [[noreturn]] void abort(const std::string& why) override {
    mpi_abort_job("rank " + std::to_string(rank_) + " aborted: " + why);
  }

 private:
  int rank_ = 0;
  int size_ = 1;
};

}  // namespace

std::unique_ptr<Communicator> make_mpi_communicator() {
  if (!launched_by_mpirun()) {
    throw std::runtime_error(
        "communicator 'mpi': this process was not started by mpirun (no OMPI_COMM_WORLD_SIZE, "
        "PMI_SIZE or PMIX_RANK in the environment); start every rank with: mpirun -np <ranks> "
        "<program> ...");
  }
  return std::make_unique<MpiComm>();
}

void mpi_abort_job(const std::string& message) {
  std::fprintf(stderr, "fairkv: %s\n", message.c_str());
  std::fflush(stderr);
  int initialized = 0, finalized = 0;
  MPI_Initialized(&initialized);
  MPI_Finalized(&finalized);
  if (initialized && !finalized) MPI_Abort(MPI_COMM_WORLD, 1);
  std::_Exit(1);  // MPI_Abort does not return; without MPI running, exiting is the whole job
}

}  // namespace fairkv::comm
