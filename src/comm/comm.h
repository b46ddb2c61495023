// Collectives between the ranks of a multi-device decode. Every rank holds its shard of the model
// (its units, FAIRKV.md) and the ranks meet at an all-reduce after every attention block and every
// MLP, so the all-reduce is on the decode critical path twice per layer per token.
//
// Backends: "threads" (comm_threads.h: R ranks as threads of one process, deterministic sums),
// "mpi" (comm_mpi.h: one process per rank under mpirun; built when CMake finds MPI), and SoloComm
// below, one rank alone.
//
// Contract shared by the backends: every rank calls the same collectives in the same order with
// the same sizes (and the same root). A rank that fails ends the whole job with a message naming
// it; no rank is left waiting forever.
#pragma once

#include <cstddef>
#include <exception>
#include <functional>
#include <memory>
#include <stdexcept>
#include <string>
#include <utility>

namespace fairkv::comm {

// Thrown by a collective that can never complete (another rank failed or aborted, a rank returned
// while the others still called collectives, the ranks called different collectives), and by
// run_ranks for the first rank that failed: what() is "rank <r> failed: <message>", rank() names
// that rank (-1 when unknown) and cause() holds the exception it threw (null for a collective).
class CommError : public std::runtime_error {
 public:
  explicit CommError(const std::string& what, int rank = -1, std::exception_ptr cause = nullptr)
      : std::runtime_error(what), rank_(rank), cause_(std::move(cause)) {}
  int rank() const { return rank_; }
  const std::exception_ptr& cause() const { return cause_; }

 private:
  int rank_;
  std::exception_ptr cause_;
};

class Communicator {
 public:
  virtual ~Communicator() = default;

  virtual int rank() const = 0;
  virtual int size() const = 0;

  // data[i] = sum over ranks of data[i], on every rank. Threads: summed in rank order 0..R-1, so
  // the result is bit-identical across runs and equals a serial loop over the ranks. MPI: the
  // order is MPI's choice (the algorithm depends on size and rank count); at 2 ranks it does not
  // matter (float addition commutes), above 2 results may differ from threads in the last bits.
  virtual void all_reduce_sum(float* data, size_t n) = 0;

  // recv[r * bytes_per_rank, (r + 1) * bytes_per_rank) = rank r's send, on every rank. recv holds
  // size() * bytes_per_rank bytes. send may be recv + rank() * bytes_per_rank (in place);
  // otherwise it must not overlap recv.
  virtual void all_gather(const void* send, size_t bytes_per_rank, void* recv) = 0;

  // data = root's data, on every rank.
  virtual void broadcast(void* data, size_t bytes, int root) = 0;

  virtual void barrier() = 0;

  // Ends the whole job with `why` in the message every rank sees (threads: the other ranks'
  // collectives throw CommError and this call throws too; mpi: printed to stderr, then
  // MPI_Abort). Never returns.
  [[noreturn]] virtual void abort(const std::string& why) = 0;

  // "threads" or "mpi" (or "solo": SoloComm standing in for one rank of several).
  virtual std::string name() const = 0;

  // How long a collective may wait for the other ranks before the job ends, naming the ranks
  // that do not answer (a stopped process, a lost host). Only processes can stop alone: the MPI
  // backend applies it; threads of one process ignore it.
  void set_collective_timeout(double seconds) { timeout_s_ = seconds; }
  double collective_timeout() const { return timeout_s_; }

 private:
  double timeout_s_ = kDefaultCollectiveTimeout;

 public:
  // Long enough for the slowest legitimate wait (a rank still loading its model from a cold
  // disk while the others wait in the first collective), short enough that a stopped job ends.
  static constexpr double kDefaultCollectiveTimeout = 60;
};

// One rank alone: rank `rank` of a job of `size` ranks whose collectives see only this rank's data.
// At size 1 it is the whole job ("threads" with one rank) and every collective is exact. At size
// > 1 it stands in for one rank of a job whose other ranks do not run: all_reduce_sum leaves the
// data as it is, all_gather copies this rank's part into every slot, broadcast and barrier do
// nothing. The results are then not the job's, but the rank does all of its own work, which is
// what timing one rank of R alone needs. abort throws CommError naming the rank.
class SoloComm final : public Communicator {
 public:
  explicit SoloComm(int rank = 0, int size = 1);  // 0 <= rank < size, else std::invalid_argument
  int rank() const override { return rank_; }
  int size() const override { return size_; }
  std::string name() const override;  // "threads" at size 1, else "solo"
  void all_reduce_sum(float*, size_t) override {}
  void all_gather(const void* send, size_t bytes_per_rank, void* recv) override;
  void broadcast(void* data, size_t bytes, int root) override;
  void barrier() override {}
  [[noreturn]] void abort(const std::string& why) override;

 private:
  int rank_, size_;
};

// Whether this build has the MPI backend (CMake found MPI and FAIRKV_MPI is ON).
bool mpi_built();

// Whether an MPI launcher started this process (Open MPI's OMPI_COMM_WORLD_SIZE, or PMI_SIZE,
// PMI_RANK, PMIX_RANK in the environment).
bool launched_by_mpirun();
// This process's rank as the launcher's environment gives it (OMPI_COMM_WORLD_RANK, PMI_RANK,
// PMIX_RANK), without starting MPI; -1 when none is set.
int launch_rank();

// One communicator of the given kind for this process:
// - "threads": a group of one rank, a SoloComm (R > 1 thread ranks need run_ranks or ThreadGroup).
// - "mpi": this process's rank in MPI_COMM_WORLD. Throws std::runtime_error when MPI was not
//   built, or when the process was not started by mpirun.
// Any other kind: std::invalid_argument naming the kinds.
std::unique_ptr<Communicator> make_communicator(const std::string& kind);

// Runs fn(communicator) on `ranks` threads of this process (rank 0 on the calling thread) and
// returns when all are done. When a rank throws, the collectives of the others throw CommError
// instead of waiting, and once every rank has stopped, run_ranks throws CommError("rank <r> failed:
// <what>") for the first rank that failed, with its exception as cause(). ranks >= 1.
void run_ranks(int ranks, const std::function<void(Communicator&)>& fn);

// Runs fn as every rank of a job and returns when the job is done.
// - "threads": `ranks` threads of this process (run_ranks); an exception from one rank stops the
//   others and the first is rethrown here.
// - "mpi": this process is one rank of the job mpirun started; `ranks` must equal its size (0:
//   take it). An exception from fn prints "fairkv: rank <r> failed: <what>" to stderr and ends the
//   whole job with MPI_Abort (exit code 1).
void run_job(const std::string& kind, int ranks, const std::function<void(Communicator&)>& fn);

}  // namespace fairkv::comm
