// A load profile measured by real prefills: each prompt is prefilled and its cache compressed
// exactly as `fairkv run` does, and the lengths every unit (layer, KV head) keeps are one sample.
// Used by `fairkv profile` (writes it) and `fairkv bench --prompts` (benches it).
#pragma once

#include <string>
#include <vector>

#include "app/prompts.h"
#include "kernels/matmul.h"
#include "kernels/threadpool.h"
#include "kv/cache.h"
#include "kv/compress.h"
#include "model/model.h"
#include "placement/profile.h"

namespace fairkv::app {

// The profile's tokens are the mean of the samples; `source` says where it came from. Progress
// goes to stderr.
placement::Profile measure_profile(const model::Model& m, const std::vector<Prompt>& prompts,
                                   const kv::CompressionConfig& kc, kv::KvTypes kv_type,
                                   kernels::Activations act, kernels::ThreadPool& pool,
                                   const std::string& source);

}  // namespace fairkv::app
