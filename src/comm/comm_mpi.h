// The MPI backend: one process per rank, the ranks of MPI_COMM_WORLD. Compiled only when CMake
// finds MPI (FAIRKV_HAVE_MPI); make_communicator("mpi") and run_job("mpi", ...) in comm.h are the
// portable entry points.
//
// Failure handling: MPI errors come back as CommError (MPI_ERRORS_RETURN), so a failing rank can
// print its message before ending the job. Ending the job is MPI_Abort on MPI_COMM_WORLD, which
// makes mpirun kill every rank. A rank that dies without MPI_Abort (a signal, SIGKILL included,
// or exit without MPI_Finalize) also makes Open MPI's mpirun kill the others and exit non-zero:
// no rank waits in a collective for a peer that is gone. A rank that stops responding (SIGSTOP, a
// lost host) is not seen by MPI: collectives are therefore started non-blocking and waited for
// with a deadline (Communicator::collective_timeout); past it the waiting rank pings the others,
// and the job ends naming those that do not answer. MPI_Init itself cannot be timed out.
//
// Open MPI 4.1 here needs no MCA settings, in a container or as root (with
// OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1): the default shared-memory transport
// (vader, with its single-copy mechanism) passes the collective checks. For decode-size
// all-reduces, `--mca btl_vader_single_copy_mechanism none` (copy through the shared segment
// instead of a process_vm_readv per message) halved the latency here: 8192 floats at 2 ranks,
// median 6.7 us against 11 us.
//
// Reduction order: MPI_Allreduce chooses its algorithm (and so its summation order) by message
// size and rank count. At 2 ranks any order gives the same bits (float addition commutes); above 2
// results may differ from the threads backend's rank-order sum in the last bits.
#pragma once

#include <cstddef>
#include <memory>
#include <string>

#include "comm/comm.h"

namespace fairkv::comm {

// This process's rank of MPI_COMM_WORLD. Initialises MPI (MPI_THREAD_SERIALIZED: any thread may
// call, one at a time) unless it is already initialised; when it initialised MPI, the last such
// communicator's destruction calls MPI_Finalize. Throws std::runtime_error when the process was
// not started by mpirun, or MPI was finalised already (MPI starts once per process).
std::unique_ptr<Communicator> make_mpi_communicator();

// The most bytes one MPI call moves (default 1 GiB, 0 restores it); larger transfers go in pieces
// of this size, so that no count or offset inside MPI passes INT_MAX. Tests set a few bytes to
// exercise the pieces without gigabytes. Applies to collectives started after the call; every
// rank must set the same size, or their pieces no longer match.
void set_mpi_chunk_bytes(size_t bytes);

// Prints "fairkv: <message>" to stderr and ends the whole job (MPI_Abort, exit code 1).
[[noreturn]] void mpi_abort_job(const std::string& message);

}  // namespace fairkv::comm
