// comm_mpi_check: the MPI communicator under mpirun, for ctest (src/comm/CMakeLists.txt).
//
//   mpirun -np R comm_mpi_check collectives  every collective against a serial reference; prints
//                                            "comm_mpi_check: all checks passed on R ranks"
//   mpirun -np 2 comm_mpi_check throw        rank 1 throws at collective 100: the job must end
//                                            with "fairkv: rank 1 failed: injected failure ..."
//   mpirun -np 2 comm_mpi_check kill         rank 1 SIGKILLs itself at collective 100, while
//                                            rank 0 waits in it: mpirun must end the job
//   mpirun -np R comm_mpi_check chunks       the collectives with MPI calls of 28 bytes at most
//                                            (set_mpi_chunk_bytes): every transfer in pieces,
//                                            most with a shorter last piece
//   mpirun -np 2 comm_mpi_check huge         a broadcast of 2.5 GiB, past int counts, with the
//                                            default pieces; prints "skipped" when the memory
//                                            available is under what the two ranks need
//   mpirun -np 2 comm_mpi_check mismatch     rank 1 calls a broadcast with fewer bytes than root
//                                            0 sends: the job must end naming that broadcast
//
// Every rank can compute every rank's input (a hash of rank and index), so each checks the
// results itself; a mismatch throws, which ends the job with the message (run_job).
#include <cmath>
#include <csignal>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <stdexcept>
#include <string>
#include <vector>

#include "comm/comm.h"
#include "comm/comm_mpi.h"
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

// MemAvailable of /proc/meminfo in bytes (0 when unknown).
uint64_t available_memory() {
  std::ifstream in("/proc/meminfo");
  std::string key, unit;
  uint64_t kib = 0;
  while (in >> key >> kib >> unit)
    if (key == "MemAvailable:") return kib * 1024;
  return 0;
}

// One broadcast of more than 2 GiB from the last rank: 8-byte words every rank can recompute.
void huge_broadcast(Communicator& c) {
  const size_t bytes = (size_t(5) << 29) + 8;  // 2.5 GiB and a word
  const uint64_t need = uint64_t(c.size()) * bytes + (uint64_t(1) << 30);
  int skip = c.rank() == 0 && available_memory() < need;
  c.broadcast(&skip, sizeof skip, 0);  // every rank decides alike
  if (skip) {
    if (c.rank() == 0)
      std::printf(
          "comm_mpi_check: skipped: %.1f GiB of memory available, the broadcast needs "
          "%.1f GiB\n",
          double(available_memory()) / (1 << 30), double(need) / (1 << 30));
    return;
  }
  const int root = c.size() - 1;
  auto word = [](size_t i) { return (0x5eedull + i) * 0x9e3779b97f4a7c15ull; };
  std::vector<uint64_t> words(bytes / 8, 0);
  if (c.rank() == root)
    for (size_t i = 0; i < words.size(); ++i) words[i] = word(i);
  c.broadcast(words.data(), bytes, root);
  for (size_t i = 0; i < words.size(); ++i)
    if (words[i] != word(i))
      expect(false, "broadcast of " + std::to_string(bytes) + " bytes: wrong word " +
                        std::to_string(i) + " on rank " + std::to_string(c.rank()));
  c.barrier();
  if (c.rank() == 0)
    std::printf("comm_mpi_check: a broadcast of %zu bytes passed on %d ranks\n", bytes, c.size());
}

// Rank 1 expects fewer bytes than the root sends, as a rank that sized its buffer otherwise.
void mismatch(Communicator& c) {
  std::vector<unsigned char> data(1000, 1);
  c.broadcast(data.data(), c.rank() == 1 ? 10 : data.size(), 0);
  c.barrier();
  std::printf("comm_mpi_check: rank %d finished: FAILED to end the job\n", c.rank());
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
  if (mode != "collectives" && mode != "throw" && mode != "kill" && mode != "chunks" &&
      mode != "huge" && mode != "mismatch") {
    std::fprintf(stderr,
                 "usage: mpirun -np <ranks> %s collectives|throw|kill|chunks|huge|mismatch\n",
                 argv[0]);
    return 2;
  }
  try {
    fairkv::comm::run_job("mpi", 0, [&](Communicator& c) {
      if (mode == "collectives" || mode == "chunks") {
        if (mode == "chunks") fairkv::comm::set_mpi_chunk_bytes(28);
        collectives(c);
      } else if (mode == "huge") {
        huge_broadcast(c);
      } else if (mode == "mismatch") {
        mismatch(c);
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
