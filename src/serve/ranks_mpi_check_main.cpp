// ranks_mpi_check MODEL: run under mpirun with 2 (or more) processes. Rank 0 drives RanksBackend
// ("mpi") through the engine-like schedule of ranks_test_util.h (chunked prompts, decode steps
// of others, a close and an open, replans, swaps) under split with Ada-KV, under tp with full
// caches (after idling past its collective timeout) and under fair-copy with DefensiveKV
// (CriticalKV's value norms from each rank's W_o columns), and checks every sequence's greedy
// tokens against model::generate; the other ranks follow rank 0 (serve::follow_rank0), once per
// backend. Prints "ranks_mpi_check: all checks passed on N ranks", or each mismatch and exits 1;
// exits 77 (skip) when the model file is absent.
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <iterator>
#include <string>
#include <thread>
#include <vector>

#include "comm/comm.h"
#include "serve/ranks_backend.h"
#include "serve/ranks_test_util.h"

using namespace fairkv;
namespace st = fairkv::serve::testing;

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: mpirun -np N ranks_mpi_check MODEL.gguf\n");
    return 2;
  }
  if (!std::filesystem::exists(argv[1])) {
    std::printf("ranks_mpi_check: skipped: %s is absent\n", argv[1]);
    return 77;  // ctest's SKIP_RETURN_CODE
  }
  const auto m = model::Model::load(argv[1]);
  // This rank's number (the backend and follow_rank0 open their own communicators).
  const auto comm = comm::make_communicator("mpi");
  const int R = comm->size();
  const kv::CompressionConfig ada = st::adakv(), defensive = st::defensivekv();
  struct Case {
    const char* planner;
    const kv::CompressionConfig* comp;
    bool extras;  // replans and swaps
    bool idle;    // idles past its collective timeout first
  };
  const Case cases[] = {{"split", &ada, true, false},
                        {"tp", nullptr, false, true},
                        {"fair-copy", &defensive, false, false}};
  if (comm->rank() != 0) {
    for (size_t i = 0; i < std::size(cases); ++i) serve::follow_rank0(*m, 1);
    return 0;
  }
  const auto prompts = st::prompts(m->config);
  int failures = 0;
  for (const Case& c : cases) {
    serve::RanksOptions o;
    o.comm = "mpi";
    o.n_slots = 4;
    const placement::CostModel cost =
        runtime::run_cost_model(m->config, m->weights.layers[0].wq.type, kv::KvType::F32, 4);
    o.cost = cost;
    st::Schedule s;
    s.comp = c.comp;
    if (c.extras) {
      s.replan_at = {5, 8};
      s.replan_cost = cost;
      s.swap_out_at = 4;
      s.swap_in_at = 7;
    }
    // Waiting for the engine's next call is not a collective that times out: the tp case idles
    // past its timeout first.
    if (c.idle) o.comm_timeout = 1;
    serve::RanksBackend b(*m, st::make_placement(m->config, c.planner, R), o);
    if (c.idle) std::this_thread::sleep_for(std::chrono::milliseconds(2500));
    const st::Outcome out = st::drive(b, prompts, *m, s);
    for (size_t i = 0; i < prompts.size(); ++i) {
      std::vector<int32_t> want = st::reference(*m, prompts[i], s.n_predict, c.comp).output;
      if (i == 1) want.resize(size_t(s.close_b_after));
      if (out.outputs[i] != want) {
        std::printf("ranks_mpi_check: %s %s sequence %zu differs from the single device\n",
                    c.planner, c.comp ? kv::policy_name(c.comp->policy) : "full", i);
        ++failures;
      }
    }
    std::printf("ranks_mpi_check: %s: %s, %d steps, %d replans moved shares\n", c.planner,
                b.describe().c_str(), out.steps, out.replans);
  }
  if (failures == 0) std::printf("ranks_mpi_check: all checks passed on %d ranks\n", R);
  std::fflush(stdout);
  return failures == 0 ? 0 : 1;
}
