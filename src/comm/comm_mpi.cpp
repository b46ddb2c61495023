// MPI communicator on MPI_COMM_WORLD.
#include "comm/comm_mpi.h"

#include <mpi.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "kernels/clock.h"

namespace fairkv::comm {

namespace {

// The most bytes one MPI call moves; larger transfers go in pieces. MPI counts are int, and MPI
// libraries derive offsets and sizes from them, not always in 64 bits (older Open MPI sources of
// the non-blocking all-gather place rank r's block at r * count * extent with an int product;
// Linux moves at most 2 GiB - 4 KiB per process_vm_readv), so one call's whole transfer, all
// ranks' blocks together, stays well below INT_MAX bytes.
constexpr size_t kDefaultChunkBytes = size_t(1) << 30;
std::atomic<size_t> g_chunk_bytes{kDefaultChunkBytes};

std::mutex g_mutex;  // guards the two below
int g_live = 0;      // MpiComm objects alive
bool g_initialized_here = false;

// A collective as the error messages name it: what, how many bytes, from which root.
struct Call {
  const char* what;
  size_t bytes;
  int root = -1;
};

std::string describe(const Call& c) {
  std::string s = std::string(c.what) + " of " + std::to_string(c.bytes) + " bytes";
  if (c.root >= 0) s += " from rank " + std::to_string(c.root);
  return s;
}

void check(int rc, const char* call, const Call* in = nullptr) {
  if (rc == MPI_SUCCESS) return;
  char text[MPI_MAX_ERROR_STRING];
  int len = 0;
  if (MPI_Error_string(rc, text, &len) != MPI_SUCCESS) len = 0;
  std::string msg = std::string(call) + (in ? " (" + describe(*in) + ")" : "") + " failed: " +
                    (len > 0 ? std::string(text, size_t(len)) : "error " + std::to_string(rc));
  int cls = 0;
  // A message longer than its receive buffer: the ranks did not call this collective alike.
  if (MPI_Error_class(rc, &cls) == MPI_SUCCESS && cls == MPI_ERR_TRUNCATE)
    msg +=
        "; another rank called it with a different size (every rank must call the same "
        "collectives with the same sizes)";
  throw CommError(msg);
}

// Point-to-point tags of the liveness check, apart from any collective's traffic.
constexpr int kPingTag = 7301, kPongTag = 7302;

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
    const size_t piece = std::max<size_t>(1, g_chunk_bytes / sizeof(float));
    const Call call{"all-reduce", n * sizeof(float)};
    size_t done = 0;
    do {
      const size_t count = std::min(piece, n - done);
      MPI_Request req;
      check(MPI_Iallreduce(MPI_IN_PLACE, data + done, int(count), MPI_FLOAT, MPI_SUM,
                           MPI_COMM_WORLD, &req),
            "MPI_Iallreduce", &call);
      finish(req, call);
      done += count;
    } while (done < n);
  }

  void all_gather(const void* send, size_t bytes_per_rank, void* recv) override {
    char* out = static_cast<char*>(recv);
    char* mine = out + size_t(rank_) * bytes_per_rank;
    if (bytes_per_rank * size_t(size_) <= g_chunk_bytes) {
      // MPI forbids overlapping send and receive buffers; in place is spelled MPI_IN_PLACE.
      const Call call{"all-gather", bytes_per_rank};
      MPI_Request req;
      check(MPI_Iallgather(send == mine ? MPI_IN_PLACE : send, int(bytes_per_rank), MPI_BYTE, recv,
                           int(bytes_per_rank), MPI_BYTE, MPI_COMM_WORLD, &req),
            "MPI_Iallgather", &call);
      finish(req, call);
      return;
    }
    // Larger: one broadcast per rank, each in pieces.
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
    const size_t piece = g_chunk_bytes;
    const Call call{"broadcast", bytes, root};
    char* p = static_cast<char*>(data);
    size_t done = 0;
    do {
      const size_t count = std::min(piece, bytes - done);
      MPI_Request req;
      check(MPI_Ibcast(p + done, int(count), MPI_BYTE, root, MPI_COMM_WORLD, &req), "MPI_Ibcast",
            &call);
      finish(req, call);
      done += count;
    } while (done < bytes);
  }

  void barrier() override {
    MPI_Request req;
    const Call call{"barrier", 0};
    check(MPI_Ibarrier(MPI_COMM_WORLD, &req), "MPI_Ibarrier", &call);
    finish(req, call);
  }

  [[noreturn]] void abort(const std::string& why) override {
    mpi_abort_job("rank " + std::to_string(rank_) + " aborted: " + why);
  }

 private:
  // Waits for a collective, answering the other ranks' pings meanwhile. Past the timeout, pings
  // every rank: those that do not answer within a few seconds are stopped or gone, and the job
  // ends naming them (a rank still computing answers as soon as it reaches its collective).
  void finish(MPI_Request& req, const Call& call) {
    const auto t0 = kernels::Clock::now();
    int done = 0;
    for (long spin = 0;; ++spin) {
      check(MPI_Test(&req, &done, MPI_STATUS_IGNORE), "MPI_Test", &call);
      if (done) return;
      answer_pings();
      if (spin < 20000) continue;  // decode-size collectives finish within microseconds
      std::this_thread::sleep_for(std::chrono::microseconds(50));
      if (kernels::ms_since(t0) > 1000.0 * collective_timeout()) lost_ranks(call.what);
    }
  }

  void answer_pings() {
    int flag = 0;
    MPI_Status st;
    check(MPI_Iprobe(MPI_ANY_SOURCE, kPingTag, MPI_COMM_WORLD, &flag, &st), "MPI_Iprobe");
    if (!flag) return;
    char ping = 0;
    check(MPI_Recv(&ping, 1, MPI_CHAR, st.MPI_SOURCE, kPingTag, MPI_COMM_WORLD, MPI_STATUS_IGNORE),
          "MPI_Recv");
    MPI_Request req;
    check(MPI_Isend(&pong_, 1, MPI_CHAR, st.MPI_SOURCE, kPongTag, MPI_COMM_WORLD, &req),
          "MPI_Isend");
    MPI_Request_free(&req);
  }

  [[noreturn]] void lost_ranks(const char* what) {
    std::vector<MPI_Request> pings(size_t(size_), MPI_REQUEST_NULL);
    std::vector<char> answered(size_t(size_), 0), replies(size_t(size_), 0);
    std::vector<MPI_Request> pongs(size_t(size_), MPI_REQUEST_NULL);
    const char ping = 1;
    for (int r = 0; r < size_; ++r) {
      if (r == rank_) continue;
      MPI_Isend(&ping, 1, MPI_CHAR, r, kPingTag, MPI_COMM_WORLD, &pings[size_t(r)]);
      MPI_Irecv(&replies[size_t(r)], 1, MPI_CHAR, r, kPongTag, MPI_COMM_WORLD, &pongs[size_t(r)]);
    }
    const auto t0 = kernels::Clock::now();
    while (kernels::ms_since(t0) < 3000) {
      answer_pings();
      for (int r = 0; r < size_; ++r) {
        int flag = 0;
        if (r != rank_ && !answered[size_t(r)]) {
          MPI_Test(&pongs[size_t(r)], &flag, MPI_STATUS_IGNORE);
          answered[size_t(r)] = char(flag);
        }
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(1));
    }
    std::string lost;
    for (int r = 0; r < size_; ++r)
      if (r != rank_ && !answered[size_t(r)])
        lost += (lost.empty() ? "" : ", ") + std::to_string(r);
    mpi_abort_job("rank " + std::to_string(rank_) + ": " + what + " waited " +
                  std::to_string(int(collective_timeout())) + " s (--comm-timeout); " +
                  (lost.empty()
                       ? std::string("every rank answers, yet the collective does not complete")
                       : "no answer from rank " + lost + " (stopped, or its host lost)") +
                  ": the job ends");
  }

  int rank_ = 0;
  int size_ = 1;
  char pong_ = 1;
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

void set_mpi_chunk_bytes(size_t bytes) {
  g_chunk_bytes = bytes > 0 ? bytes : kDefaultChunkBytes;
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
