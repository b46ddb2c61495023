// comm_mpi_check: the MPI communicator under mpirun, for ctest (src/comm/CMakeLists.txt).
//
//   mpirun -np R comm_mpi_check collectives  every collective against a serial reference; prints
//                                            "comm_mpi_check: all checks passed on R ranks"
//   mpirun -np 2 comm_mpi_check throw        rank 1 throws at collective 100: the job must end
//                                            with "fairkv: rank 1 failed: injected failure ..."
//   mpirun -np 2 comm_mpi_check kill         rank 1 SIGKILLs itself at collective 100, while
//                                            rank 0 waits in it: mpirun must end the job
//
// Every rank can compute every rank's input (a hash of rank and index), so each checks the
// results itself; a mismatch throws, which ends the job with the message (run_job).
#include <cmath>
#include <csignal>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <stdexcept>
#include <string>
#include <vector>

#include "comm/comm.h"
#include "comm/test_util.h"

namespace {

using fairkv::comm::Communicator;
using fairkv::comm::testing::gather_byte;
using fairkv::comm::testing::mix;
using fairkv::comm::testing::serial_sum;
using fairkv::comm::testing::value;

void expect(bool ok, const std::string& what) {
  if (!ok) throw std::runtime_error("FAILED: " + what);
}

void check_all_reduce(Communicator& c, size_t n, uint64_t salt) {
  const int R = c.size();
  std::vector<float> v(n);
  for (size_t i = 0; i < n; ++i) v[i] = value(c.rank(), i, salt);
  c.all_reduce_sum(v.data(), n);
  for (size_t i = 0; i < n; ++i) {
    const float want = serial_sum(R, i, salt);
    float bound = 0;
    for (int r = 0; r < R; ++r) bound += std::fabs(value(r, i, salt));
    // Two ranks: any order is the same sum. More: MPI's order, within the rounding of R - 1 adds.
    const bool ok =
        R <= 2 ? v[i] == want : std::fabs(v[i] - want) <= float(R - 1) * 2 * 0x1p-24f * bound;
    expect(ok, "all_reduce_sum n=" + std::to_string(n) + " element " + std::to_string(i) +
                   ": got " + std::to_string(v[i]) + ", serial rank-order sum " +
                   std::to_string(want));
  }
  // Every rank must hold the same bits, or the ranks' copies of the activations drift apart.
  std::vector<float> all(n * size_t(R));
  c.all_gather(v.data(), n * sizeof(float), all.data());
  for (int r = 0; r < R; ++r) {
    expect(n == 0 || std::memcmp(all.data() + size_t(r) * n, v.data(), n * sizeof(float)) == 0,
           "all_reduce_sum n=" + std::to_string(n) + ": rank " + std::to_string(r) +
               " holds different bits than rank " + std::to_string(c.rank()));
  }
}

void check_all_gather(Communicator& c, size_t bytes, bool in_place) {
  const int R = c.size();
  std::vector<unsigned char> recv(bytes * size_t(R), 0xEE);
  std::vector<unsigned char> send(bytes);
  for (size_t i = 0; i < bytes; ++i) send[i] = gather_byte(c.rank(), i);
  if (in_place) {
    if (bytes > 0) std::memcpy(recv.data() + size_t(c.rank()) * bytes, send.data(), bytes);
    c.all_gather(recv.data() + size_t(c.rank()) * bytes, bytes, recv.data());
  } else {
    c.all_gather(send.data(), bytes, recv.data());
  }
  for (int r = 0; r < R; ++r) {
    for (size_t i = 0; i < bytes; ++i) {
      expect(recv[size_t(r) * bytes + i] == gather_byte(r, i),
             "all_gather bytes=" + std::to_string(bytes) + (in_place ? " in place" : "") +
                 ": wrong byte " + std::to_string(i) + " of rank " + std::to_string(r));
    }
  }
}

void check_broadcast(Communicator& c, size_t bytes, int root) {
  std::vector<unsigned char> data(bytes);
  for (size_t i = 0; i < bytes; ++i) {
    data[i] = (unsigned char)(mix(uint64_t(c.rank()) * 31 + i + uint64_t(root) * 1000));
  }
  c.broadcast(data.data(), bytes, root);
  for (size_t i = 0; i < bytes; ++i) {
    expect(data[i] == (unsigned char)(mix(uint64_t(root) * 31 + i + uint64_t(root) * 1000)),
           "broadcast bytes=" + std::to_string(bytes) + " root=" + std::to_string(root) +
               ": wrong byte " + std::to_string(i));
  }
}

void collectives(Communicator& c) {
  expect(c.name() == "mpi", "name() is '" + c.name() + "'");
  uint64_t salt = 1;
  for (size_t n : {size_t(0), size_t(1), size_t(3), size_t(16), size_t(17), size_t(1000),
                   size_t(8192), size_t(100003)}) {
    check_all_reduce(c, n, salt++);
  }
  for (size_t bytes : {size_t(0), size_t(1), size_t(7), size_t(4096), size_t(100001)}) {
    check_all_gather(c, bytes, false);
    check_all_gather(c, bytes, true);
  }
  for (int root = 0; root < c.size(); ++root) {
    for (size_t bytes : {size_t(1), size_t(1000), size_t(65537)}) check_broadcast(c, bytes, root);
  }
  // Back-to-back collectives of mixed kinds, as decode issues them.
  for (int i = 0; i < 500; ++i) {
    check_all_reduce(c, size_t(1 + i % 37), salt++);
    if (i % 50 == 0) c.barrier();
    if (i % 7 == 0) check_broadcast(c, 64, i % c.size());
  }
  c.barrier();
  if (c.rank() == 0) std::printf("comm_mpi_check: all checks passed on %d ranks\n", c.size());
}

// Rank 1 fails at collective 100 of a loop; the others are then inside that collective.
void fail_midway(Communicator& c, bool kill) {
  std::vector<float> v(8192, 1.0f);
  for (int i = 0; i < 1000; ++i) {
    if (i == 100 && c.rank() == 1) {
      if (kill) std::raise(SIGKILL);
      throw std::runtime_error("injected failure at collective 100");
    }
    c.all_reduce_sum(v.data(), v.size());
  }
  std::printf("comm_mpi_check: rank %d finished: FAILED to end the job\n", c.rank());
}

}  // namespace

int main(int argc, char** argv) {
  const std::string mode = argc == 2 ? argv[1] : "";
  if (mode != "collectives" && mode != "throw" && mode != "kill") {
    std::fprintf(stderr, "usage: mpirun -np <ranks> %s collectives|throw|kill\n", argv[0]);
    return 2;
  }
  try {
    fairkv::comm::run_job("mpi", 0, [&](Communicator& c) {
      if (mode == "collectives") {
        collectives(c);
      } else {
        fail_midway(c, mode == "kill");
      }
    });
  } catch (const std::exception& e) {
    std::fprintf(stderr, "comm_mpi_check: %s\n", e.what());
    return 1;
  }
  return 0;
}
