// exec_mpi_check MODEL: run under mpirun with 2 (or more) processes. Every planner's placement of
// the model over the job's ranks decodes a batch of prompts, full and with Ada-KV, and rank 0
// checks the greedy outputs against the single-device engine. Prints
// "exec_mpi_check: all checks passed on N ranks", or each mismatch and exits 1; exits 77 (skip)
// when the model file is absent.
#include <cstdio>
#include <filesystem>
#include <random>
#include <string>
#include <vector>

#include "model/forward.h"
#include "model/model.h"
#include "model/prefill_compression.h"
#include "model/sampler.h"
#include "placement/planners.h"
#include "runtime/comm.h"
#include "runtime/exec.h"

namespace rt = fairkv::runtime;
namespace pl = fairkv::placement;
using namespace fairkv;

namespace {

std::vector<int32_t> single_device(const model::Model& m, const std::vector<int32_t>& prompt,
                                   int n_predict, const kv::CompressionConfig* comp) {
  model::GenerateOptions opt;
  std::unique_ptr<model::PrefillCompression> pc;
  if (comp) {
    pc = model::make_prefill_compression(*comp, m);
    pc->attach(opt);
  }
  kernels::ThreadPool pool(1);
  model::Forward fwd(m.config, m.weights, pool);
  kv::SequenceCache cache(m.config.n_layers, m.config.n_kv_heads, m.config.head_dim,
                          kv::KvType::F32);
  model::BatchItem item{&cache, prompt, false};
  const std::vector<float>* logits = &fwd.run({&item, 1}, opt.prefill_observer);
  if (opt.after_prefill) opt.after_prefill(cache);
  std::vector<int32_t> out;
  while (true) {
    out.push_back(model::argmax(*logits));
    if (m.tokenizer.is_eog(out.back()) || int(out.size()) >= n_predict) break;
    model::BatchItem step{&cache, {&out.back(), 1}, false};
    logits = &fwd.run({&step, 1});
  }
  return out;
}

}  // namespace

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
  const auto comm = rt::make_communicator("mpi");
  const int R = comm->size();
  std::mt19937 rng(3);
  std::vector<std::vector<int32_t>> prompts;
  for (int len : {61, 40, 83, 52}) {
    std::uniform_int_distribution<int32_t> tok(3, c.n_vocab - 1);
    prompts.emplace_back(size_t(len));
    for (int32_t& t : prompts.back()) t = tok(rng);
  }
  pl::Profile prof;
  prof.model = "check";
  prof.layers = c.n_layers;
  prof.kv_heads = c.n_kv_heads;
  prof.query_heads = c.n_heads;
  prof.head_dim = c.head_dim;
  prof.tokens.assign(size_t(c.n_layers), std::vector<double>(size_t(c.n_kv_heads), 40.0));
  for (int l = 0; l < c.n_layers; ++l) prof.tokens[size_t(l)][size_t(l % c.n_kv_heads)] = 1000;
  kv::CompressionConfig ada;
  ada.policy = kv::Policy::AdaKV;
  ada.budget = 16;
  ada.window = 8;
  int failures = 0;
  for (const kv::CompressionConfig* comp : {static_cast<const kv::CompressionConfig*>(nullptr),
                                            static_cast<const kv::CompressionConfig*>(&ada)})
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
        if (res.outputs[i] != single_device(*m, prompts[i], eo.n_predict, comp)) {
          std::printf("exec_mpi_check: %s %s prompt %zu differs from the single device\n", planner,
                      comp ? "adakv" : "full", i);
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
