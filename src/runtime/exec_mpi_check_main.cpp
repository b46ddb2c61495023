// exec_mpi_check MODEL: run under mpirun with 2 (or more) processes. Every planner's placement of
// the model over the job's ranks decodes a batch of prompts, full, with Ada-KV and with DefensiveKV
// (CriticalKV's value norms on), and rank 0 checks the greedy outputs against the single-device
// engine. Prints "exec_mpi_check: all checks passed on N ranks", or each mismatch and exits 1;
// exits 77 (skip) when the model file is absent.
#include <cstdio>
#include <filesystem>
#include <random>
#include <string>
#include <vector>

#include "comm/comm.h"
#include "model/model.h"
#include "placement/planners.h"
#include "runtime/exec.h"
#include "runtime/test_util.h"

namespace rt = fairkv::runtime;
namespace pl = fairkv::placement;
using namespace fairkv;

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: mpirun -np N exec_mpi_check MODEL.gguf\n");
    return 2;
  }
  if (!std::filesystem::exists(argv[1])) {
    std::printf("exec_mpi_check: skipped: %s is absent\n", argv[1]);
    return 77;  // ctest's SKIP_RETURN_CODE
  }
  const auto m = model::Model::load(argv[1]);
  const model::ModelConfig& c = m->config;
  const auto comm = fairkv::comm::make_communicator("mpi");
  const int R = comm->size();
  std::mt19937 rng(3);
  std::vector<std::vector<int32_t>> prompts;
  for (int len : {61, 40, 83, 52}) {
    std::uniform_int_distribution<int32_t> tok(3, c.n_vocab - 1);
    prompts.emplace_back(size_t(len));
    for (int32_t& t : prompts.back()) t = tok(rng);
  }
  const pl::Profile prof = rt::testing::heavy_unit_profile(c, 40.0, 1000.0);
  kv::CompressionConfig ada;
  ada.policy = kv::Policy::AdaKV;
  ada.budget = 16;
  ada.window = 8;
  // DefensiveKV with CriticalKV's value norms, which each rank takes from its own shard's W_o.
  kv::CompressionConfig defensive = ada;
  defensive.policy = kv::Policy::DefensiveKV;
  defensive.critical = true;
  int failures = 0;
  for (const kv::CompressionConfig* comp : {static_cast<const kv::CompressionConfig*>(nullptr),
                                            static_cast<const kv::CompressionConfig*>(&ada),
                                            static_cast<const kv::CompressionConfig*>(&defensive)})
    for (const char* planner : {"tp", "balanced", "fair-copy", "split"}) {
      pl::PlanOptions o;
      o.planner = pl::planner_from_name(planner);
      o.devices = R;
      const pl::Placement p = pl::plan(prof, pl::cost_model_for(prof, 4, "none", "f32"), o);
      rt::ExecOptions eo;
      eo.n_predict = 6;
      eo.compression = comp;
      rt::ExecResult res;
      try {
        kernels::ThreadPool pool(1);
        res = rt::execute(*comm, *m, p, prompts, eo, pool);
      } catch (const std::exception& e) {
        comm->abort(std::string("exec_mpi_check: ") + e.what());
      }
      if (comm->rank() != 0) continue;
      for (size_t i = 0; i < prompts.size(); ++i)
        if (res.outputs[i] !=
            rt::testing::single_device(*m, prompts[i], eo.n_predict, comp).output) {
          std::printf("exec_mpi_check: %s %s prompt %zu differs from the single device\n", planner,
                      comp ? kv::policy_name(comp->policy) : "full", i);
          ++failures;
        }
    }
  comm->barrier();
  if (comm->rank() == 0) {
    if (failures == 0) std::printf("exec_mpi_check: all checks passed on %d ranks\n", R);
    std::fflush(stdout);
  }
  return failures == 0 ? 0 : 1;
}
