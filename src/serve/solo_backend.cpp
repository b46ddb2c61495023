#include "serve/solo_backend.h"

#include <algorithm>
#include <chrono>
#include <cstring>
#include <stdexcept>

#include <fmt/format.h>

#include "kernels/clock.h"
#include "model/prefill_compression.h"

namespace fairkv::serve {

SoloBackend::SoloBackend(const model::Model& m, kernels::ThreadPool& pool, const SoloOptions& opt)
    : m_(m),
      opt_(opt),
      fwd_(m.config, m.weights, pool, opt.activations,
           opt.batch_invariant ? kernels::Batching::Invariant : kernels::Batching::Fastest),
      swap_(opt.swap_host_bytes, opt.swap_file_bytes, opt.swap_dir) {}

size_t SoloBackend::row_bytes() const {
  const model::ModelConfig& c = m_.config;
  return size_t(c.n_layers) * size_t(c.n_kv_heads) * opt_.kv_type.token_bytes(c.head_dim);
}

SoloBackend::Seq& SoloBackend::find(SeqId seq) {
  auto it = seqs_.find(seq);
  if (it == seqs_.end()) throw std::logic_error(fmt::format("solo backend: no sequence {}", seq));
  return it->second;
}
const SoloBackend::Seq& SoloBackend::find(SeqId seq) const {
  return const_cast<SoloBackend*>(this)->find(seq);
}

void SoloBackend::open(SeqId seq, int64_t max_rows) {
  const model::ModelConfig& c = m_.config;
  Seq s;
  s.cache = std::make_unique<kv::SequenceCache>(c.n_layers, c.n_kv_heads, c.head_dim, opt_.kv_type);
  if (opt_.reserve_address_space) s.cache->reserve_virtual(max_rows);
  s.max_rows = max_rows;
  seqs_[seq] = std::move(s);
}

void SoloBackend::close(SeqId seq) {
  swap_.drop(seq);
  seqs_.erase(seq);
}

std::span<const float> SoloBackend::run(std::span<const StepItem> items) {
  const auto t0 = std::chrono::steady_clock::now();
  const model::ModelConfig& c = m_.config;
  batch_.clear();
  int64_t window = 0;
  for (const StepItem& it : items) {
    Seq& s = find(it.seq);
    batch_.push_back({s.cache.get(), it.tokens, false});
    if (it.compress && it.compress->needs_scores()) {
      s.collector = std::make_unique<kv::ScoreCollector>(*it.compress, c.n_layers, c.n_kv_heads);
      window = std::max(window, it.compress->window);
    }
  }
  // One window for the whole step (the widest asked); each request's collector reads the last
  // rows of it that its own window covers.
  model::WindowObserver observer;
  observer.window = window;
  std::vector<float> part;
  observer.observe = [&](size_t item, int layer, int kv_head, const float* probs, int group,
                         int64_t rows, int64_t n) {
    const StepItem& it = items[item];
    if (!it.compress || !it.compress->needs_scores()) return;
    kv::ScoreCollector& col = *find(it.seq).collector;
    const int64_t w = std::min<int64_t>(it.compress->window, rows);
    if (w == rows) return col.observe(layer, kv_head, probs, group, rows, n);
    part.resize(size_t(group * w * n));
    for (int g = 0; g < group; ++g)
      std::memcpy(&part[size_t(g * w * n)], probs + (g * rows + rows - w) * n,
                  sizeof(float) * size_t(w * n));
    col.observe(layer, kv_head, part.data(), group, w, n);
  };
  const std::vector<float>& all = fwd_.run(batch_, window > 0 ? &observer : nullptr);
  for (const StepItem& it : items) {
    Seq& s = find(it.seq);
    if (!s.collector) continue;
    model::compress_prompt(*s.collector, c, &m_.weights, *s.cache);
    s.collector.reset();
  }
  logits_.assign(all.begin(), all.end());
  step_ms_ = kernels::ms_since(t0);
  return logits_;
}

int64_t SoloBackend::rows(SeqId seq) const {
  const kv::SequenceCache& cache = *find(seq).cache;
  int64_t n = 0;
  for (int l = 0; l < cache.n_layers(); ++l)
    for (int h = 0; h < cache.n_kv_heads(); ++h) n += cache.head(l, h).size();
  return n;
}

std::vector<RankLoad> SoloBackend::loads() const {
  RankLoad l;
  for (const auto& [id, s] : seqs_) l.kv_bytes += s.cache->committed_bytes();
  l.step_ms = step_ms_;
  return {l};
}

size_t SoloBackend::bytes_for(int64_t rows, int64_t max_rows) const {
  if (!opt_.reserve_address_space) return size_t(rows) * row_bytes();
  const model::ModelConfig& c = m_.config;
  return size_t(c.n_layers) * size_t(c.n_kv_heads) *
         kv::HeadStore::reserved_bytes(rows, max_rows, c.head_dim, opt_.kv_type);
}

size_t SoloBackend::growth_bytes(SeqId seq, int64_t new_rows, bool /*prompt_done*/) const {
  const kv::SequenceCache& cache = *find(seq).cache;
  size_t b = 0;
  for (int l = 0; l < cache.n_layers(); ++l)
    for (int h = 0; h < cache.n_kv_heads(); ++h) {
      const kv::HeadStore& s = cache.head(l, h);
      b += s.committed_bytes_at(s.size() + new_rows) - s.committed_bytes();
    }
  return b;
}

SwapPlace SoloBackend::swap_out(SeqId seq) {
  Seq& s = find(seq);
  switch (swap_.put(seq, *s.cache)) {
    case kv::SwapPlace::Host:
      return SwapPlace::Host;
    case kv::SwapPlace::File:
      return SwapPlace::File;
    default:
      break;
  }
  // No room: the cache is dropped and the engine recomputes it.
  s.cache->clear();
  s.cache->n_past = 0;
  if (opt_.reserve_address_space) s.cache->reserve_virtual(s.max_rows);
  return SwapPlace::None;
}

void SoloBackend::swap_in(SeqId seq) {
  Seq& s = find(seq);
  swap_.take(seq, *s.cache);
}

std::string SoloBackend::describe() const {
  return fmt::format("one device, KV {}, {}{}", kv::kv_types_name(opt_.kv_type),
                     kernels::activations_name(opt_.activations),
                     opt_.batch_invariant ? ", batch-invariant" : "");
}

}  // namespace fairkv::serve
