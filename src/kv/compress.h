// Compression of a prompt's KV cache after prefill: which tokens every (layer, KV head) keeps.
//
// A pure function layer, independent of the model. Its input is, for every (layer, KV head), the
// softmax probabilities of the observation window (the last W prompt tokens) over the n prompt
// tokens, for each query head of the GQA group: group x W x n floats, query head first, rows
// masked causally (zero past each row's own token). That is what kv::attend's `probs` output
// gives and what model::WindowObserver hands over. Its output is, per (layer, KV head), the
// sorted indices of the tokens to keep, ready for HeadStore::keep.
//
// The work is split in two so that a long prompt never needs all layers' probabilities at once:
// score_head() reduces one head's window to what the policies need (n floats and two numbers) as
// soon as the layer has run; select_tokens() then allocates budgets and picks tokens once every
// layer is scored. compress() chains the two for callers (tests) that hold the whole tensor.
//
// Budget convention (as ../shared/golden/README.md): the budget is the average number of tokens
// kept per KV head, the observation window included. Score-based policies always keep the window
// and choose budget - W more tokens among the n - W before it; a prompt of at most `budget`
// tokens is kept whole. Ties between equal scores go to the more recent token, then to the lower
// head index, so that every selection is deterministic.
//
// Policies (papers; the defaults follow them and every hyper-parameter can be set):
//   full        keep everything.
//   streaming   StreamingLLM (Xiao et al., arXiv 2309.17453): `sinks` first tokens + the most
//               recent budget - sinks.
//   snapkv      SnapKV (Li et al., arXiv 2404.14469): window attention averaged over the window's
//               queries, combined over the GQA group, pooled (avg, kernel 5); top budget - W per
//               head, the same for every head.
//   pyramidkv   PyramidKV (Cai et al., arXiv 2406.02069): SnapKV scores; per-layer budgets fall
//               linearly from layer 0 to L-1 between max and min = (budget - W) / beta, beta = 20,
//               averaging budget - W (the max is clipped to the prompt, the min raised to match).
//   adakv       Ada-KV (Feng et al., arXiv 2407.11550): scores as SnapKV but max-pooled with
//               kernel 7; one top-k over the scores of all heads of a layer (H x (budget - W)
//               tokens), after the safeguard that first gives every head its own top
//               floor(alpha x (budget - W)) tokens, alpha = 0.2. alpha = 1 is SnapKV's split.
//   headkv      HeadKV (Fu et al., arXiv 2410.19258): static per-head budgets from per-head
//               importance (HeadImportance): every head gets (budget - W)(1 - 1/beta) and a pool of
//               L x H x (budget - W) / beta is shared in proportion to importance (beta = 1.01);
//               tokens chosen per head by SnapKV scores (max pool 7, as its reference runs).
//   cake        CAKE (Qin et al., ICLR 2025, arXiv 2503.12491): layer budgets proportional to the
//               preference H_l^(1/tau1) x V_l^(1/tau2), H_l the entropy of the layer's window
//               attention over the prefix and V_l the summed variance over the window's queries
//               (tau1 = tau2 = 1); tokens chosen by mean + gamma x variance (gamma = 200),
//               avg-pooled with kernel 5, uniform over the heads of a layer.
//   defensivekv DefensiveKV (Feng et al., arXiv 2510.13334, "Taming the Fragility of KV Cache
//               Eviction"): defensive aggregation: every window row is avg-pooled (kernel 5) and
//               rescaled to keep its mass, the score of a token is its worst case (max) over the
//               window's rows and the group's query heads, raised to at least the head's mean
//               score (prior-risk correction); budgets by one top-k over all heads of a layer as
//               Ada-KV (alpha = 0: its reference has no floor). Then, as its reference
//               (EfficientDefensiveKVPress.vwl1norm, "following CriticalKV"), the value-norm stage
//               of CriticalKV (Feng et al., arXiv 2502.03805), on by default (--kv-critical):
//               every score is re-weighted by the token's projected value norm N_j = mean over
//               the group's query heads q of ||W_o^q v_j||_1, normalised over the layer's heads
//               per token (N_hj / sum_h' N_h'j, as the reference). By default CriticalKV's fixed
//               split (--kv-critical-share 0.5): each head's attention-only budget (the
//               layer-wide top-k of the scores) keeps its top (1 - S) by attention, the layer-wide
//               top-k of the re-weighted scores the rest. --kv-critical-share mass instead lets
//               stage 1 keep per head the fewest highest-attention prefix tokens that with the
//               window hold critical_mass (0.9) of the window's attention (capped at budget - W),
//               and the layer-wide top-k of the re-weighted scores pick the rest (on the pass-key
//               set it keeps far fewer answers: 2/5/9 of 24 against 19/24/23). The norms come
//               from the cache (projected_value_norms); callers that give none (empty
//               HeadScores::value_norm, e.g. compress() on a bare tensor) get the attention-only
//               selection.
//   zipvl       ZipVL's rule (He et al., arXiv 2410.08584): per layer, the fewest prefix tokens
//               whose attention mass, with the window's own, reaches tau (0.975) of the window's
//               attention, the layer's attention being the mean over its KV heads of the window
//               rows' attention (unpooled, GQA mean); every head of the layer keeps that many of
//               its own highest-attention tokens. The size comes from tau: --kv-budget or
//               --kv-ratio, when given, caps every head at that budget.
//   compresskv  CompressKV (Lin et al., arXiv 2508.02401): the semantic retrieval heads,
//               identified offline (the head-importance file of `fairkv importance`, as headkv),
//               choose the tokens: in every layer the `compresskv_heads` (1) KV heads of highest
//               importance average their SnapKV scores (avg pool 5) and every head of the layer
//               keeps that top-k. Layer budgets follow each layer's eviction error, measured on
//               the prompt: the window attention that a uniform split would evict, summed over
//               the layer's heads (the paper measures it offline on calibration data).
//   taskkv      Task-KV (He et al., arXiv 2501.15113): heads told apart by their distance from
//               the layer's semantic centre (the mean of its heads' outputs over the window,
//               sum_j a_j v_j with a the window rows' mean attention; from the attention rows
//               alone when no cache is at hand, as compress() on a bare tensor). The
//               `taskkv_share` (0.5) farthest heads of a layer, the heterogeneous ones, keep the
//               full budget by SnapKV scores; the others keep the `sinks` first tokens, their
//               `taskkv_middle` (8) highest-scored middle tokens and the window.
//   epicache    EpiCache (Kim et al., arXiv 2509.17396): block-wise prefill. The prompt runs in
//               blocks of `epicache_block` (512) tokens and the cache is compressed to the budget
//               after every block (model::BlockwisePrefill), so the cache never holds more than
//               budget + one block rows per head on average. A token's score is the largest
//               attention any of the block's last W queries of the group gives it (unpooled,
//               the reference's amax over query heads and queries); each layer keeps one top-k
//               over all its heads (head-level eviction, as the reference's flattened cache).
//               Layer budgets by sensitivity: with per-layer key similarities s_l (a profile of
//               block-wise against full prefill, `layer_sensitivity`) and `epicache_power` p,
//               layer l gets a share proportional to (1 - (s_l - min s)/(max s - min s))^p on
//               top of a floor of a quarter of the average; p = 0 (the default, as the
//               reference's) is uniform. Heads may hold different numbers of rows, so every
//               selection works on ragged heads: the scores of a head are its own rows'.
#pragma once

#include <cstdint>
#include <functional>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include <nlohmann/json_fwd.hpp>

#include "kv/cache.h"

namespace fairkv::kv {

enum class Policy {
  Full,
  Streaming,
  SnapKV,
  PyramidKV,
  AdaKV,
  HeadKV,
  Cake,
  DefensiveKV,
  ZipVL,
  CompressKV,
  TaskKV,
  EpiCache
};
enum class Pooling { None, Avg, Max };
enum class GqaCombine { Mean, Max };

const char* policy_name(Policy p);
// Every policy name in the order above ("full", "streaming", ...).
std::span<const std::string_view> policy_names();
// Throws std::invalid_argument naming `option` and the valid names when the name is unknown.
Policy parse_policy(std::string_view name, std::string_view option = "--kv-policy");
Pooling parse_pooling(std::string_view name, std::string_view option = "--kv-pooling");
GqaCombine parse_gqa_combine(std::string_view name, std::string_view option = "--kv-gqa");
const char* pooling_name(Pooling p);
const char* gqa_combine_name(GqaCombine g);

// Per-head importance for HeadKV: importance[layer * kv_heads + head] >= 0, not all zero.
struct HeadImportance {
  int layers = 0, kv_heads = 0;
  std::vector<double> importance;
};

struct CompressionConfig {
  Policy policy = Policy::Full;
  // Size: budget (average tokens per KV head, window included) or ratio (the share of the
  // prompt's tokens kept per head on average, in (0, 1]); exactly one of them for compressing
  // policies.
  int64_t budget = 0;
  double ratio = 0;
  int64_t window = 32;  // observation window W, always kept
  // Unset fields take the policy's default (see the table above) in resolve().
  std::optional<int> pool_kernel;  // odd, >= 1
  std::optional<Pooling> pooling;
  std::optional<double> alpha;  // Ada-KV / DefensiveKV safeguard, in [0, 1]
  double pyramid_beta = 20;     // > 1
  GqaCombine gqa = GqaCombine::Mean;
  int64_t sinks = 4;                              // streaming
  std::optional<HeadImportance> head_importance;  // headkv's and compresskv's, required by them
  double headkv_beta = 1.01;                      // > 1
  double cake_tau1 = 1, cake_tau2 = 1, cake_gamma = 200;
  // DefensiveKV's CriticalKV stage (see the table above).
  bool critical = true;
  double critical_mass = 0.9;  // in (0, 1]
  // In [0, 1]; unset: stage 1 by critical_mass. Default 0.5: on the pass-key set the mass rule
  // kept 2/5/9 of 24 at budgets 48/64/96 against 19/24/23 with the fixed split.
  std::optional<double> critical_share = 0.5;
  double zipvl_tau = 0.975;      // in (0, 1]
  int compresskv_heads = 1;      // semantic retrieval KV heads per layer, >= 1
  double taskkv_share = 0.5;     // heterogeneous heads per layer, in [0, 1]
  int64_t taskkv_middle = 8;     // middle tokens the other heads keep, >= 0
  int64_t epicache_block = 512;  // tokens per prefill block, >= window
  double epicache_power = 0;     // >= 0; 0: uniform layer budgets
  // Per-layer key similarity of block-wise against full prefill (higher: less sensitive); one
  // per layer, needed when epicache_power > 0.
  std::optional<std::vector<double>> layer_sensitivity;

  // Whether the policy needs --kv-budget or --kv-ratio (zipvl sizes itself by tau).
  bool needs_size() const;

  // Checks every field (headkv needs head_importance) and fills the policy defaults (pool
  // kernel, pooling, alpha). Throws std::invalid_argument whose message names the command-line
  // option, e.g. "--kv-budget: expected a positive integer, got -3".
  void resolve();
  int resolved_pool_kernel() const;
  Pooling resolved_pooling() const;
  double resolved_alpha() const;
  // Whether the policy reads the window's attention (full and streaming do not, so a caller can
  // skip collecting it).
  bool needs_scores() const;
  // Whether the prompt is prefilled block by block with a compression after every block
  // (EpiCache) rather than compressed once after the whole prefill.
  bool blockwise() const { return policy == Policy::EpiCache; }
  // Whether the selection reads projected value norms (DefensiveKV with its CriticalKV stage).
  bool needs_value_norms() const { return policy == Policy::DefensiveKV && critical; }
  // Kept tokens per head on average for a prompt of n tokens, window included (>= 1).
  int64_t budget_for(int64_t n_prompt) const;
  std::string describe() const;  // one line, for logs and JSON
};

// What the policies need from one (layer, KV head) after the window has been reduced.
struct HeadScores {
  // One score per prefix token (the n - W tokens before the window), pooled and GQA-combined.
  std::vector<float> score;
  // CAKE's terms, summed over the group's query heads: entropy of the window rows over the
  // prefix, and the variance over the window's rows summed over the prefix tokens.
  double entropy = 0, variance = 0;
  // DefensiveKV's CriticalKV stage: the mean attention of the window's rows over the group's
  // query heads per prefix token (unpooled), and the window's attention on itself (1 - the
  // prefix's share). value_norm: one projected value norm per prefix token, filled after the
  // prefill (projected_value_norms); empty means attention-only.
  std::vector<float> attention;
  double window_mass = 0;
  std::vector<float> value_norm;
  // Task-KV: `attention` holds the window rows' mean attention over all n tokens (window
  // included), and head_output the head's output sum_j a_j v_j (head_dim floats), filled after
  // the prefill (ScoreCollector::set_head_outputs); empty means the attention row stands in.
  std::vector<float> head_output;
};

// Reduces one head's window. probs: group x window x n, as described at the top of this file.
HeadScores score_head(const CompressionConfig& c, const float* probs, int group, int64_t window,
                      int64_t n);

// All heads of one prompt: heads[layer * n_kv_heads + head]. `window` is the window the scores
// were taken over (min(W, n)).
struct PromptScores {
  int n_layers = 0, n_kv_heads = 0;
  int64_t n_prompt = 0, window = 0;
  std::vector<HeadScores> heads;
};

// Kept token indices, sorted, per (layer, KV head): [layer * n_kv_heads + head].
using Selection = std::vector<std::vector<int64_t>>;

// Policies that need no scores (full, streaming) accept a PromptScores with empty heads.
Selection select_tokens(const CompressionConfig& c, const PromptScores& s);

// One call over the whole tensor: probs is [layer][kv head][group][window][n] floats.
Selection compress(const CompressionConfig& c, const float* probs, int n_layers, int n_kv_heads,
                   int group, int64_t window, int64_t n);

// Applies a selection to a sequence's stores (HeadStore::keep on every head).
void apply_selection(const Selection& sel, SequenceCache& cache);

// Collects score_head() results during a prefill, one (layer, head) at a time: observe() may be
// called from several threads at once for different heads.
class ScoreCollector {
 public:
  ScoreCollector(const CompressionConfig& c, int n_layers, int n_kv_heads);
  void observe(int layer, int kv_head, const float* probs, int group, int64_t window, int64_t n);
  // Whether select() uses value norms (DefensiveKV with its CriticalKV stage): then call
  // set_value_norms() for every head first, with one norm per cached token (the first n - W
  // are used).
  bool needs_value_norms() const;
  void set_value_norms(int layer, int kv_head, std::vector<float> norms);
  // Whether select() uses the heads' outputs (Task-KV): then call set_head_outputs() with the
  // prefilled cache first.
  bool needs_head_outputs() const;
  void set_head_outputs(const SequenceCache& cache);
  // Selection for a prompt of n tokens; every head must have been observed unless the policy
  // needs no scores.
  Selection select(int64_t n_prompt) const;

 private:
  CompressionConfig c_;
  PromptScores s_;
};

// ---- Building blocks, public for tests (compress_scores.cpp, compress_budget.cpp) ----

// 1-D pooling with stride 1 and padding kernel/2, as torch's avg_pool1d (zeros padded, divided by
// the kernel) and max_pool1d (padding ignored).
std::vector<float> pool1d(std::span<const float> x, Pooling p, int kernel);
// Indices of the k largest values, ties to the larger index; returned sorted by index.
std::vector<int64_t> top_k(std::span<const float> score, int64_t k);
// Splits `total` integer units over items in proportion to `weight` (>= 0), none above its cap:
// exact total (if the caps allow), largest remainders first, excess of capped items handed on.
std::vector<int64_t> distribute(int64_t total, std::span<const double> weight,
                                std::span<const int64_t> cap);
// PyramidKV's per-layer choice budgets (tokens chosen outside the window), averaging `avg`.
std::vector<int64_t> pyramid_budgets(int64_t avg, int n_layers, int64_t available, double beta);
// Ada-KV's layer-wide choice: scores[h] of every head (same length), `avg` chosen per head on
// average, every head first gets its top floor(alpha * avg). Returns the chosen prefix indices
// per head, sorted.
std::vector<std::vector<int64_t>> adakv_choose(std::span<const std::vector<float>> scores,
                                               int64_t avg, double alpha);
// HeadKV's static per-head choice budgets for all layers x heads.
std::vector<int64_t> headkv_budgets(const HeadImportance& imp, int64_t avg, int64_t available,
                                    double beta);
// CAKE's per-layer choice budgets from the per-layer preference scores.
std::vector<int64_t> cake_budgets(std::span<const double> preference, int64_t avg,
                                  int64_t available);

// CriticalKV's projected value norms of one layer: for every KV head h and cached token j, the
// mean over the group's query heads q = h * group + g of ||W_o^q v_hj||_1, where W_o^q is the
// embd x head_dim block of the output projection that reads query head q (columns q * head_dim
// onwards). wo_row(r, out) writes row r (of embd rows) of W_o as n_heads * head_dim floats.
// Returns [kv head][token].
std::vector<std::vector<float>> projected_value_norms(
    const SequenceCache& cache, int layer, int group, int64_t embd,
    const std::function<void(int64_t row, float* out)>& wo_row);
// The same for one KV head in two steps, so that ranks holding different query heads of its group
// can each take their part and one device's norms still come out bit for bit.
// projected_value_sums: for q_heads consecutive query heads of the group and the store's first n
// rows, sum over W_o's rows r (in order) of |(W_o^q v_j)_r|, as [q][j] doubles; wo_cols(r, out)
// writes those query heads' q_heads * head_dim columns of W_o's row r. mean_value_norms: the
// norms ([j]) from the whole group's sums ([g][j], query-head order), summed over g in order.
// projected_value_norms is these two steps for every head.
std::vector<double> projected_value_sums(
    const HeadStore& st, int64_t n, int q_heads, int64_t embd,
    const std::function<void(int64_t row, float* out)>& wo_cols);
std::vector<float> mean_value_norms(std::span<const double> sums, int group);

// ZipVL's count for one layer: the fewest prefix tokens whose mean attention over the layer's
// heads (scores[h], the heads' unpooled window attention, all of the same length), with the
// window's own mass 1 - sum, reaches tau; at most `cap`.
int64_t zipvl_count(std::span<const std::vector<float>> scores, double tau, int64_t cap);

// CompressKV's per-layer choice budgets: heads[l * H + h] scored, `avg` chosen per head on
// average, proportional to the mass a uniform split of `avg` per head would evict.
std::vector<int64_t> compresskv_budgets(std::span<const HeadScores> heads, int n_layers,
                                        int n_kv_heads, int64_t avg, int64_t available);
// CompressKV's tokens of one layer: the top k of the mean score of the `sr_heads` heads of
// highest importance (ties to the lower head index).
std::vector<int64_t> compresskv_choose(std::span<const HeadScores* const> layer,
                                       std::span<const double> importance, int sr_heads, int64_t k);
// EpiCache's per-layer choice budgets (tokens chosen outside the window per head), averaging
// `avg`, none above `available`: a floor of avg / 4 per layer and the rest in proportion to
// (1 - normalised similarity)^power (uniform when power is 0 or the similarities are equal).
std::vector<int64_t> epicache_budgets(std::span<const double> similarity, double power, int64_t avg,
                                      int64_t available);
// EpiCache's choice for one layer over ragged heads: one top-k of `k` tokens over the scores of
// every head (heads[h]->score, each of its own length), ties to the more recent token, then the
// lower head. Returns the chosen indices per head, sorted.
std::vector<std::vector<int64_t>> epicache_choose(std::span<const HeadScores* const> layer,
                                                  int64_t k);
// EpiCache's layer sensitivity profile: per layer, the mean cosine similarity between every row
// a block-wise prefilled cache kept (positions[l * H + h]: the prompt position of each of its
// rows) and the same position's key in the full prefill's cache. Lower: the layer's keys drift
// more when it is prefilled from a compressed cache, so it should keep more.
std::vector<double> layer_key_similarity(const SequenceCache& full, const SequenceCache& part,
                                         std::span<const std::vector<int64_t>> positions);
// EpiCache's selection (select_tokens dispatches here): heads may be ragged, each head's rows
// being its score.size() prefix rows followed by the s.window window rows.
Selection epicache_select(const CompressionConfig& c, const PromptScores& s);
// Task-KV's semantic vector of one head: sum_j attention[j] v_j over the store's first rows.
std::vector<float> head_output(const HeadScores& hs, const HeadStore& st);
// Task-KV's heterogeneous heads of one layer (sorted): the round(share x H) heads farthest (L2)
// from the mean of the heads' vectors (head_output, else attention); ties to the lower index.
std::vector<int> taskkv_heterogeneous(std::span<const HeadScores* const> layer, double share);
// Task-KV's choice for one layer (prefix indices per head, sorted), `avg` per head on average.
std::vector<std::vector<int64_t>> taskkv_choose(const CompressionConfig& c,
                                                std::span<const HeadScores* const> layer,
                                                int64_t avg);

// DefensiveKV's CriticalKV selection for one layer (used by select_tokens): heads' scores,
// attention, window mass and value norms (all of the same length), `avg` chosen per head on
// average. Returns the chosen prefix indices per head, sorted.
std::vector<std::vector<int64_t>> critical_choose(const CompressionConfig& c,
                                                  std::span<const HeadScores* const> heads,
                                                  int64_t avg);

// ---- HeadKV head importance from retrieval (fairkv importance) ----

// How a step scores a head: Mass (HeadKV's retrieval-reasoning score) sums the attention on the
// needle positions that hold the generated token; Retrieval (Wu et al.) counts 1 when the head's
// most attended position is such a position.
enum class ImportanceScore { Mass, Retrieval };
ImportanceScore parse_importance_score(std::string_view name, std::string_view option = "--score");

// Where an answer's tokens sit in a prompt: the last occurrence of the longest run answer[k..]
// (k as small as possible, at least one token) inside prompt. Returns [begin, end) or nullopt.
std::optional<std::pair<int64_t, int64_t>> find_answer_span(std::span<const int32_t> prompt,
                                                            std::span<const int32_t> answer);

// One (layer, KV head) of one teacher-forced prompt: probs is group x rows x n (the observer's
// layout), row r being the query that generates targets[r]; tokens are the n cached tokens and
// [span_begin, span_end) the needle. Adds each query head's score summed over the rows to
// out[g] (group entries).
void accumulate_retrieval_scores(const float* probs, int group, int64_t rows, int64_t n,
                                 std::span<const int32_t> tokens, std::span<const int32_t> targets,
                                 int64_t span_begin, int64_t span_end, ImportanceScore how,
                                 double* out);

// Query-head scores [layer][kv head][group] to KV-head importance: the mean over each GQA group,
// normalised to sum 1 (all zero: equal importance).
HeadImportance importance_from_scores(std::span<const double> query_scores, int layers,
                                      int kv_heads, int group);

// ---- Statistics (--kv-stats-out) ----

// {"layers": L, "kv_heads": H, "kv_type": "f32", "kv_bytes": <bytes of all kept tokens>,
//  "sequences": [{"prompt_tokens": N, "kv_bytes": b, "kept": [[...H...], ...L rows...]}]}
// `kept` is every head's current length: call it right after compression for the prompt's.
// Callers may add fields (the policy's describe(), timings) to the returned object.
nlohmann::json stats_json(std::span<const SequenceCache* const> caches,
                          std::span<const int64_t> prompt_tokens);

}  // namespace fairkv::kv
