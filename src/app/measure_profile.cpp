#include "app/measure_profile.h"

#include <fmt/format.h>

#include "model/generate.h"
#include "model/prefill_compression.h"
#include "runtime/model_placement.h"

namespace fairkv::app {

placement::Profile measure_profile(const model::Model& m, const std::vector<Prompt>& prompts,
                                   const kv::CompressionConfig& kc, kv::KvTypes kv_type,
                                   kernels::Activations act, kernels::ThreadPool& pool,
                                   const std::string& source) {
  auto comp = model::make_prefill_compression(kc, m);
  const auto& c = m.config;
  std::vector<placement::UnitTable> samples;
  for (size_t i = 0; i < prompts.size(); ++i) {
    const auto ids = m.tokenizer.encode(prompts[i].text, m.tokenizer.add_bos());
    fmt::print(stderr, "\rprofile: prompt {}/{} ({} tokens)    ", i + 1, prompts.size(),
               ids.size());
    model::GenerateOptions opt;
    opt.n_predict = 0;
    opt.kv_type = kv_type;
    opt.activations = act;
    placement::UnitTable kept(size_t(c.n_layers), std::vector<double>(size_t(c.n_kv_heads)));
    comp->attach(opt);
    opt.after_prefill = [compress = opt.after_prefill, &kept, &c](kv::SequenceCache& cache) {
      compress(cache);
      for (int l = 0; l < c.n_layers; ++l)
        for (int h = 0; h < c.n_kv_heads; ++h)
          kept[size_t(l)][size_t(h)] = double(cache.head(l, h).size());
    };
    model::generate(m, pool, ids, opt);
    samples.push_back(std::move(kept));
  }
  fmt::print(stderr, "\n");
  placement::Profile shape = runtime::model_profile(c);
  shape.source = fmt::format("fairkv profile: {} over {} prompts of {}", kc.describe(),
                             prompts.size(), source);
  return placement::profile_from_samples(shape, std::move(samples));
}

}  // namespace fairkv::app
