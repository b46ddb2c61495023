// What the runtime's checks (runtime_test, exec_mpi_check) compare the ranks against: the plain
// single-device engine, and profiles with heavy units that make the planners replicate them.
#pragma once

#include <memory>
#include <vector>

#include "kernels/threadpool.h"
#include "kv/cache.h"
#include "kv/compress.h"
#include "model/forward.h"
#include "model/model.h"
#include "model/prefill_compression.h"
#include "model/sampler.h"
#include "placement/profile.h"
#include "runtime/model_placement.h"

namespace fairkv::runtime::testing {

struct Reference {
  std::vector<int32_t> output;
  std::vector<float> logits;  // the row each output token was chosen from
  size_t kept = 0;            // cache bytes after the prefill (and compression)
  // [layer * H + head]: the value rows the prefill (and compression) kept, as float32.
  std::vector<std::vector<float>> values;
};

// A store's value rows as float32.
inline std::vector<float> value_rows(const kv::HeadStore& st) {
  std::vector<float> v(size_t(st.size() * st.head_dim()));
  for (int64_t j = 0; j < st.size(); ++j) st.v_row(j, v.data() + j * st.head_dim());
  return v;
}

// Single-device greedy generation with the plain engine, one sequence at a time.
inline Reference single_device(const model::Model& m, const std::vector<int32_t>& prompt,
                               int n_predict, const kv::CompressionConfig* comp,
                               kernels::Activations act = kernels::Activations::Float32,
                               kv::KvTypes kv_type = kv::KvType::F32) {
  model::GenerateOptions opt;
  std::unique_ptr<model::PrefillCompression> pc;
  if (comp) {
    pc = model::make_prefill_compression(*comp, m);
    pc->attach(opt);
  }
  kernels::ThreadPool pool(1);
  model::Forward fwd(m.config, m.weights, pool, act);
  kv::SequenceCache cache(m.config.n_layers, m.config.n_kv_heads, m.config.head_dim, kv_type);
  Reference r;
  const std::vector<float> prompt_logits = model::prefill(fwd, cache, prompt, opt, false);
  const std::vector<float>* logits = &prompt_logits;
  r.kept = cache.bytes();
  for (int l = 0; l < m.config.n_layers; ++l)
    for (int h = 0; h < m.config.n_kv_heads; ++h) r.values.push_back(value_rows(cache.head(l, h)));
  while (true) {
    const int32_t tok = model::argmax(*logits);
    r.output.push_back(tok);
    r.logits.insert(r.logits.end(), logits->begin(), logits->end());
    if (m.tokenizer.is_eog(tok) || int(r.output.size()) >= n_predict) break;
    model::BatchItem step{&cache, {&r.output.back(), 1}, false};
    logits = &fwd.run({&step, 1});
  }
  return r;
}

// The model's shape with every unit at `light` tokens but head `layer % kv_heads` of every layer
// at `heavy`, so that fair-copy and split replicate it.
inline placement::Profile heavy_unit_profile(const model::ModelConfig& c, double light,
                                             double heavy) {
  placement::Profile p = model_profile(c, light);
  for (int l = 0; l < c.n_layers; ++l) p.tokens[size_t(l)][size_t(l % c.n_kv_heads)] = heavy;
  return p;
}

}  // namespace fairkv::runtime::testing
