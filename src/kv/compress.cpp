// Policy dispatch: configuration, validation, token selection per policy, statistics.
#include "kv/compress.h"

#include <algorithm>
#include <array>
#include <cmath>
#include <numeric>
#include <sstream>
#include <stdexcept>

#include <nlohmann/json.hpp>

namespace fairkv::kv {

namespace {

constexpr std::array<std::string_view, 12> kPolicyNames = {
    "full", "streaming",   "snapkv", "pyramidkv",  "adakv",  "headkv",
    "cake", "defensivekv", "zipvl",  "compresskv", "taskkv", "epicache"};

[[noreturn]] void bad(std::string_view option, const std::string& what) {
  throw std::invalid_argument(std::string(option) + ": " + what);
}

std::string join_names(std::span<const std::string_view> names) {
  std::string s;
  for (auto n : names) s += (s.empty() ? "" : ", ") + std::string(n);
  return s;
}

std::string fmt_double(double v) {
  std::ostringstream o;
  o << v;
  return o.str();
}

bool chooses_by_score(Policy p) {
  return p != Policy::Full && p != Policy::Streaming;
}

}  // namespace

const char* policy_name(Policy p) {
  return kPolicyNames[size_t(p)].data();
}

std::span<const std::string_view> policy_names() {
  return kPolicyNames;
}

Policy parse_policy(std::string_view name, std::string_view option) {
  for (size_t i = 0; i < kPolicyNames.size(); ++i)
    if (kPolicyNames[i] == name) return Policy(i);
  bad(option, "unknown policy '" + std::string(name) + "' (expected one of " +
                  join_names(kPolicyNames) + ")");
}

Pooling parse_pooling(std::string_view name, std::string_view option) {
  if (name == "avg") return Pooling::Avg;
  if (name == "max") return Pooling::Max;
  if (name == "none") return Pooling::None;
  bad(option, "expected avg, max or none, got '" + std::string(name) + "'");
}

GqaCombine parse_gqa_combine(std::string_view name, std::string_view option) {
  if (name == "mean") return GqaCombine::Mean;
  if (name == "max") return GqaCombine::Max;
  bad(option, "expected mean or max, got '" + std::string(name) + "'");
}

const char* pooling_name(Pooling p) {
  return p == Pooling::Avg ? "avg" : p == Pooling::Max ? "max" : "none";
}
const char* gqa_combine_name(GqaCombine g) {
  return g == GqaCombine::Mean ? "mean" : "max";
}

// ---- Configuration ----

int CompressionConfig::resolved_pool_kernel() const {
  if (pool_kernel) return *pool_kernel;
  // Ada-KV's and HeadKV's reference runs max-pool with kernel 7; SnapKV, PyramidKV, CAKE and
  // DefensiveKV average with kernel 5.
  return policy == Policy::AdaKV || policy == Policy::HeadKV ? 7 : 5;
}

Pooling CompressionConfig::resolved_pooling() const {
  if (pooling) return *pooling;
  // ZipVL's mass is the plain attention; EpiCache's score the plain largest attention.
  if (policy == Policy::ZipVL || policy == Policy::EpiCache) return Pooling::None;
  return policy == Policy::AdaKV || policy == Policy::HeadKV ? Pooling::Max : Pooling::Avg;
}

double CompressionConfig::resolved_alpha() const {
  if (alpha) return *alpha;
  return policy == Policy::AdaKV ? 0.2 : 0.0;
}

bool CompressionConfig::needs_size() const {
  return policy != Policy::Full && policy != Policy::ZipVL;
}

bool CompressionConfig::needs_scores() const {
  return chooses_by_score(policy);
}

int64_t CompressionConfig::budget_for(int64_t n_prompt) const {
  if (budget > 0) return budget;
  if (ratio > 0) return std::max<int64_t>(1, std::llround(ratio * double(n_prompt)));
  return n_prompt;
}

void CompressionConfig::resolve() {
  if (budget < 0) bad("--kv-budget", "expected a positive integer, got " + std::to_string(budget));
  if (ratio < 0 || ratio > 1 || !std::isfinite(ratio))
    bad("--kv-ratio", "expected a number in (0, 1], got " + fmt_double(ratio));
  if (budget > 0 && ratio > 0) bad("--kv-budget / --kv-ratio", "give one of them, not both");
  if (needs_size() && budget == 0 && ratio == 0)
    bad("--kv-policy " + std::string(policy_name(policy)),
        "needs a size: --kv-budget N (tokens per head) or --kv-ratio R");
  if (window < 1) bad("--kv-window", "expected a positive integer, got " + std::to_string(window));
  if (chooses_by_score(policy) && budget > 0 && budget < window)
    bad("--kv-budget", std::to_string(budget) + " is below the observation window (--kv-window " +
                           std::to_string(window) + "), which every head keeps");
  if (pool_kernel && (*pool_kernel < 1 || *pool_kernel % 2 == 0))
    bad("--kv-pool-kernel",
        "expected an odd positive integer, got " + std::to_string(*pool_kernel));
  if (alpha && !(*alpha >= 0 && *alpha <= 1))
    bad("--kv-alpha", "expected a number in [0, 1], got " + fmt_double(*alpha));
  if (!(pyramid_beta >= 1) || !std::isfinite(pyramid_beta))
    bad("--kv-pyramid-beta", "expected a number >= 1, got " + fmt_double(pyramid_beta));
  if (sinks < 0) bad("--kv-sinks", "expected a non-negative integer, got " + std::to_string(sinks));
  if (policy == Policy::Streaming && budget > 0 && budget <= sinks)
    bad("--kv-budget", std::to_string(budget) + " leaves no recent tokens after " +
                           std::to_string(sinks) + " sinks (--kv-sinks)");
  if (!(headkv_beta >= 1) || !std::isfinite(headkv_beta))
    bad("--kv-headkv-beta", "expected a number >= 1, got " + fmt_double(headkv_beta));
  if (!(cake_tau1 > 0) || !std::isfinite(cake_tau1))
    bad("--kv-cake-tau1", "expected a positive number, got " + fmt_double(cake_tau1));
  if (!(cake_tau2 > 0) || !std::isfinite(cake_tau2))
    bad("--kv-cake-tau2", "expected a positive number, got " + fmt_double(cake_tau2));
  if (!(cake_gamma >= 0) || !std::isfinite(cake_gamma))
    bad("--kv-cake-gamma", "expected a non-negative number, got " + fmt_double(cake_gamma));
  if (!(critical_mass > 0 && critical_mass <= 1))
    bad("--kv-critical-mass", "expected a number in (0, 1], got " + fmt_double(critical_mass));
  if (critical_share && !(*critical_share >= 0 && *critical_share <= 1))
    bad("--kv-critical-share", "expected a number in [0, 1], got " + fmt_double(*critical_share));
  if (!(zipvl_tau > 0 && zipvl_tau <= 1))
    bad("--kv-zipvl-tau", "expected a number in (0, 1], got " + fmt_double(zipvl_tau));
  if ((policy == Policy::HeadKV || policy == Policy::CompressKV) && !head_importance)
    bad("--kv-head-importance",
        "the " + std::string(policy_name(policy)) + " policy needs a head-importance file");
  if (compresskv_heads < 1)
    bad("--kv-compresskv-heads",
        "expected a positive integer, got " + std::to_string(compresskv_heads));
  if (!(taskkv_share >= 0 && taskkv_share <= 1))
    bad("--kv-taskkv-share", "expected a number in [0, 1], got " + fmt_double(taskkv_share));
  if (taskkv_middle < 0)
    bad("--kv-taskkv-middle",
        "expected a non-negative integer, got " + std::to_string(taskkv_middle));
  if (policy == Policy::EpiCache && epicache_block < window)
    bad("--kv-epicache-block", std::to_string(epicache_block) +
                                   " is below the observation window (--kv-window " +
                                   std::to_string(window) + "), which every block scores by");
  if (!(epicache_power >= 0) || !std::isfinite(epicache_power))
    bad("--kv-epicache-power", "expected a non-negative number, got " + fmt_double(epicache_power));
  if (policy == Policy::EpiCache && epicache_power > 0 && !layer_sensitivity)
    bad("--kv-layer-sensitivity",
        "--kv-epicache-power above 0 needs a layer-sensitivity file (`fairkv eval --suite ruler "
        "--sensitivity-out`)");
}

std::string CompressionConfig::describe() const {
  std::string s = policy_name(policy);
  if (policy == Policy::Full) return s;
  if (policy == Policy::ZipVL) s += " tau=" + fmt_double(zipvl_tau);
  if (budget > 0 || ratio > 0)
    s += budget > 0 ? " budget=" + std::to_string(budget) : " ratio=" + fmt_double(ratio);
  if (policy == Policy::Streaming) return s + " sinks=" + std::to_string(sinks);
  if (policy == Policy::EpiCache)  // its score is the largest window attention: no pooling, GQA
    return s + " window=" + std::to_string(window) + " block=" + std::to_string(epicache_block) +
           " power=" + fmt_double(epicache_power);
  s += " window=" + std::to_string(window) + " pool=" + pooling_name(resolved_pooling()) +
       std::to_string(resolved_pool_kernel()) + " gqa=" + gqa_combine_name(gqa);
  if (policy == Policy::AdaKV || policy == Policy::DefensiveKV)
    s += " alpha=" + fmt_double(resolved_alpha());
  if (policy == Policy::DefensiveKV)
    s += !critical        ? std::string(" critical=off")
         : critical_share ? " critical-share=" + fmt_double(*critical_share)
                          : " critical-mass=" + fmt_double(critical_mass);
  if (policy == Policy::PyramidKV) s += " beta=" + fmt_double(pyramid_beta);
  if (policy == Policy::HeadKV) s += " beta=" + fmt_double(headkv_beta);
  if (policy == Policy::CompressKV) s += " sr-heads=" + std::to_string(compresskv_heads);
  if (policy == Policy::TaskKV)
    s += " share=" + fmt_double(taskkv_share) + " sinks=" + std::to_string(sinks) +
         " middle=" + std::to_string(taskkv_middle);
  if (policy == Policy::Cake)
    s += " tau1=" + fmt_double(cake_tau1) + " tau2=" + fmt_double(cake_tau2) +
         " gamma=" + fmt_double(cake_gamma);
  return s;
}

// ---- Selection ----

Selection select_tokens(const CompressionConfig& c, const PromptScores& s) {
  const int L = s.n_layers, H = s.n_kv_heads;
  const int64_t n = s.n_prompt;
  const size_t N = size_t(L) * size_t(H);
  Selection sel(N);
  const int64_t B = c.budget_for(n);
  const bool sized = c.budget > 0 || c.ratio > 0;
  // EpiCache's heads may be ragged (block-wise prefill): its own selection, no shortcut.
  if (c.policy == Policy::EpiCache) return epicache_select(c, s);
  if (c.policy == Policy::Full || (n <= B && (sized || c.needs_size()))) {
    for (auto& v : sel) {
      v.resize(size_t(n));
      std::iota(v.begin(), v.end(), int64_t(0));
    }
    return sel;
  }
  if (c.policy == Policy::Streaming) {
    // StreamingLLM: the attention sinks, then the most recent tokens.
    const int64_t sinks = std::min(c.sinks, B), recent = B - sinks;
    std::vector<int64_t> keep;
    for (int64_t i = 0; i < sinks; ++i) keep.push_back(i);
    for (int64_t i = n - recent; i < n; ++i) keep.push_back(i);
    std::fill(sel.begin(), sel.end(), keep);
    return sel;
  }

  const int64_t W = s.window, P = n - W;
  if (W != std::min(c.window, n))
    throw std::invalid_argument("select_tokens: scores taken over a window of " +
                                std::to_string(W) + " tokens, the configuration's is " +
                                std::to_string(std::min(c.window, n)));
  if (s.heads.size() != N)
    throw std::invalid_argument("select_tokens: " + std::to_string(s.heads.size()) +
                                " scored heads for " + std::to_string(L) + " layers x " +
                                std::to_string(H) + " KV heads");
  for (size_t i = 0; i < N; ++i)
    if (int64_t(s.heads[i].score.size()) != P)
      throw std::invalid_argument("select_tokens: head " + std::to_string(i) + " has " +
                                  std::to_string(s.heads[i].score.size()) +
                                  " scores, expected one per prefix token (" + std::to_string(P) +
                                  ")");
  const int64_t avg = std::clamp<int64_t>(B - W, 0, P);  // chosen outside the window per head

  // Per-head choice budgets (uniform within a layer unless the policy says otherwise).
  std::vector<int64_t> head_budget(N, avg);
  switch (c.policy) {
    case Policy::PyramidKV: {
      const auto lb = pyramid_budgets(avg, L, P, c.pyramid_beta);
      for (size_t i = 0; i < N; ++i) head_budget[i] = lb[i / size_t(H)];
      break;
    }
    case Policy::CompressKV:
    case Policy::HeadKV: {
      const HeadImportance& imp = c.head_importance.value();
      if (imp.layers != L || imp.kv_heads != H)
        throw std::invalid_argument(
            std::string(policy_name(c.policy)) + ": the importance file has " +
            std::to_string(imp.layers) + " layers x " + std::to_string(imp.kv_heads) +
            " KV heads, the model " + std::to_string(L) + " x " + std::to_string(H));
      if (c.policy == Policy::HeadKV) {
        head_budget = headkv_budgets(imp, avg, P, c.headkv_beta);
      } else {
        const auto lb = compresskv_budgets(s.heads, L, H, avg, P);
        for (size_t i = 0; i < N; ++i) head_budget[i] = lb[i / size_t(H)];
      }
      break;
    }
    case Policy::ZipVL: {
      // The layer's count by attention mass, capped by the budget when one is given.
      const int64_t cap = sized ? avg : P;
      for (int l = 0; l < L; ++l) {
        std::vector<std::vector<float>> layer(static_cast<size_t>(H));
        for (int h = 0; h < H; ++h) layer[size_t(h)] = s.heads[size_t(l) * H + h].score;
        const int64_t k = zipvl_count(layer, c.zipvl_tau, cap);
        for (int h = 0; h < H; ++h) head_budget[size_t(l) * H + h] = k;
      }
      break;
    }
    case Policy::Cake: {
      // Layer preference P_l = H_l^(1/tau1) V_l^(1/tau2) over all query heads of the layer.
      std::vector<double> pref(static_cast<size_t>(L));
      for (int l = 0; l < L; ++l) {
        double ent = 0, var = 0;
        for (int h = 0; h < H; ++h) {
          ent += s.heads[size_t(l) * H + h].entropy;
          var += s.heads[size_t(l) * H + h].variance;
        }
        pref[size_t(l)] = std::pow(std::max(ent, 0.0), 1 / c.cake_tau1) *
                          std::pow(std::max(var, 0.0), 1 / c.cake_tau2);
      }
      const auto lb = cake_budgets(pref, avg, P);
      for (size_t i = 0; i < N; ++i) head_budget[i] = lb[i / size_t(H)];
      break;
    }
    default:
      break;
  }

  // DefensiveKV's CriticalKV stage runs when every head has its value norms.
  const bool critical = c.needs_value_norms() &&
                        std::all_of(s.heads.begin(), s.heads.end(), [&](const HeadScores& h) {
                          return int64_t(h.value_norm.size()) >= P;
                        });
  for (int l = 0; l < L; ++l) {
    std::vector<const HeadScores*> heads(static_cast<size_t>(H));
    for (int h = 0; h < H; ++h) heads[size_t(h)] = &s.heads[size_t(l) * H + h];
    if (critical) {
      auto chosen = critical_choose(c, heads, avg);
      for (int h = 0; h < H; ++h) sel[size_t(l) * H + h] = std::move(chosen[size_t(h)]);
    } else if (c.policy == Policy::CompressKV) {
      // The layer's retrieval heads choose for every head of the layer.
      const auto& imp = c.head_importance->importance;
      const auto chosen = compresskv_choose(heads, std::span(imp).subspan(size_t(l) * H, size_t(H)),
                                            c.compresskv_heads, head_budget[size_t(l) * H]);
      for (int h = 0; h < H; ++h) sel[size_t(l) * H + h] = chosen;
    } else if (c.policy == Policy::TaskKV) {
      auto chosen = taskkv_choose(c, heads, avg);
      for (int h = 0; h < H; ++h) sel[size_t(l) * H + h] = std::move(chosen[size_t(h)]);
    } else if (c.policy == Policy::AdaKV || c.policy == Policy::DefensiveKV) {
      std::vector<std::vector<float>> layer(static_cast<size_t>(H));
      for (int h = 0; h < H; ++h) layer[size_t(h)] = s.heads[size_t(l) * H + h].score;
      auto chosen = adakv_choose(layer, avg, c.resolved_alpha());
      for (int h = 0; h < H; ++h) sel[size_t(l) * H + h] = std::move(chosen[size_t(h)]);
    } else {
      for (int h = 0; h < H; ++h) {
        const size_t i = size_t(l) * H + h;
        sel[i] = top_k(s.heads[i].score, head_budget[i]);
      }
    }
  }
  // The observation window is always kept.
  for (auto& v : sel)
    for (int64_t i = P; i < n; ++i) v.push_back(i);
  return sel;
}

Selection compress(const CompressionConfig& c, const float* probs, int n_layers, int n_kv_heads,
                   int group, int64_t window, int64_t n) {
  PromptScores s;
  s.n_layers = n_layers;
  s.n_kv_heads = n_kv_heads;
  s.n_prompt = n;
  s.window = window;
  if (c.needs_scores()) {
    const int64_t per_head = int64_t(group) * window * n;
    for (int64_t i = 0; i < int64_t(n_layers) * n_kv_heads; ++i)
      s.heads.push_back(score_head(c, probs + i * per_head, group, window, n));
  }
  return select_tokens(c, s);
}

void apply_selection(const Selection& sel, SequenceCache& cache) {
  const size_t N = size_t(cache.n_layers()) * size_t(cache.n_kv_heads());
  if (sel.size() != N)
    throw std::invalid_argument("apply_selection: " + std::to_string(sel.size()) +
                                " head selections for a cache of " + std::to_string(N) + " heads");
  for (int l = 0; l < cache.n_layers(); ++l)
    for (int h = 0; h < cache.n_kv_heads(); ++h)
      cache.head(l, h).keep(sel[size_t(l) * cache.n_kv_heads() + h]);
}

ScoreCollector::ScoreCollector(const CompressionConfig& c, int n_layers, int n_kv_heads) : c_(c) {
  s_.n_layers = n_layers;
  s_.n_kv_heads = n_kv_heads;
  if (c_.needs_scores()) s_.heads.resize(size_t(n_layers) * size_t(n_kv_heads));
}

void ScoreCollector::observe(int layer, int kv_head, const float* probs, int group, int64_t window,
                             int64_t n) {
  if (!c_.needs_scores()) return;
  if (layer < 0 || layer >= s_.n_layers || kv_head < 0 || kv_head >= s_.n_kv_heads)
    throw std::invalid_argument("ScoreCollector::observe: no head (" + std::to_string(layer) +
                                ", " + std::to_string(kv_head) + ")");
  s_.heads[size_t(layer) * s_.n_kv_heads + kv_head] = score_head(c_, probs, group, window, n);
}

// needs_head_outputs() and set_head_outputs() are with Task-KV in compress_headwise.cpp.

bool ScoreCollector::needs_value_norms() const {
  return c_.needs_value_norms();
}

void ScoreCollector::set_value_norms(int layer, int kv_head, std::vector<float> norms) {
  if (!needs_value_norms()) return;
  if (layer < 0 || layer >= s_.n_layers || kv_head < 0 || kv_head >= s_.n_kv_heads)
    throw std::invalid_argument("ScoreCollector::set_value_norms: no head (" +
                                std::to_string(layer) + ", " + std::to_string(kv_head) + ")");
  auto& h = s_.heads[size_t(layer) * s_.n_kv_heads + kv_head];
  // Only the prefix tokens (before the window) are scored.
  if (norms.size() > h.score.size()) norms.resize(h.score.size());
  h.value_norm = std::move(norms);
}

Selection ScoreCollector::select(int64_t n_prompt) const {
  PromptScores s = s_;
  s.n_prompt = n_prompt;
  s.window = std::min(c_.window, n_prompt);
  return select_tokens(c_, s);
}

// ---- Statistics ----

nlohmann::json stats_json(std::span<const SequenceCache* const> caches,
                          std::span<const int64_t> prompt_tokens) {
  if (caches.size() != prompt_tokens.size())
    throw std::invalid_argument("stats_json: one prompt length per sequence expected");
  nlohmann::json out;
  const int L = caches.empty() ? 0 : caches[0]->n_layers();
  const int H = caches.empty() ? 0 : caches[0]->n_kv_heads();
  out["layers"] = L;
  out["kv_heads"] = H;
  out["kv_type"] = caches.empty() ? "f32" : kv_types_name(caches[0]->types());
  size_t total = 0;
  nlohmann::json seqs = nlohmann::json::array();
  for (size_t i = 0; i < caches.size(); ++i) {
    const SequenceCache& c = *caches[i];
    if (c.n_layers() != L || c.n_kv_heads() != H)
      throw std::invalid_argument("stats_json: sequences of different shapes");
    nlohmann::json kept = nlohmann::json::array();
    for (int l = 0; l < L; ++l) {
      nlohmann::json row = nlohmann::json::array();
      for (int h = 0; h < H; ++h) row.push_back(c.head(l, h).size());
      kept.push_back(std::move(row));
    }
    total += c.bytes();
    seqs.push_back({{"prompt_tokens", prompt_tokens[i]}, {"kv_bytes", c.bytes()}, {"kept", kept}});
  }
  out["kv_bytes"] = total;
  out["sequences"] = std::move(seqs);
  return out;
}

}  // namespace fairkv::kv
