// fair-copy and split: the planners that add replicas to balanced.
#include <algorithm>
#include <cmath>
#include <functional>
#include <numeric>

#include "placement/planner_util.h"
#include "placement/planners.h"
#include "placement/rebalance.h"

namespace fairkv::placement {

namespace {

// Water-filling: parts p_i >= 0 with sum p_i = amount that minimise max(base_i + p_i).
std::vector<double> water_fill(std::span<const double> base, double amount) {
  const size_t m = base.size();
  std::vector<size_t> order(m);
  std::iota(order.begin(), order.end(), size_t(0));
  std::stable_sort(order.begin(), order.end(),
                   [&](size_t a, size_t b) { return base[a] < base[b]; });
  double sum = 0, level = 0;
  for (size_t k = 0; k < m; ++k) {
    sum += base[order[k]];
    level = (amount + sum) / double(k + 1);
    if (k + 1 == m || level <= base[order[k + 1]]) break;
  }
  std::vector<double> p(m);
  for (size_t i = 0; i < m; ++i) p[i] = std::max(0.0, level - base[i]);
  return p;
}

// Whole sequences: n_i >= 1 with sum n_i = batch minimising max(base_i + n_i * a), a > 0. The
// greedy that gives each next sequence to the lightest replica is optimal for identical items;
// the water level gives all but the last few of them at once.
std::vector<int> divide_batch(std::span<const double> base, int batch, double a) {
  const size_t m = base.size();
  std::vector<int> n(m, 1);
  std::vector<double> b(m);
  for (size_t i = 0; i < m; ++i) b[i] = base[i] + a;
  int left = batch - int(m);
  const auto p = water_fill(b, double(left) * a);
  for (size_t i = 0; i < m; ++i) {
    const int k = std::min(left, int(std::floor(p[i] / a)));
    n[i] += k;
    left -= k;
  }
  while (left-- > 0) {
    size_t pick = 0;
    for (size_t i = 1; i < m; ++i)
      if (base[i] + (n[i] + 1) * a < base[pick] + (n[pick] + 1) * a) pick = i;
    ++n[pick];
  }
  return n;
}

// balanced, or, when tp cannot place the heads (more devices than KV heads that vLLM's rule does
// not allow), every unit whole on its own device.
LayerPlan baseline(std::span<const double> tokens, const CostModel& cost, int devices,
                   int64_t node_limit) {
  const int heads = int(tokens.size());
  if (devices > heads && (devices % heads != 0 || cost.group % (devices / heads) != 0)) {
    std::vector<int> dev(static_cast<size_t>(heads), 0);
    std::iota(dev.begin(), dev.end(), 0);
    return {to_layer(whole_holdings(dev), devices, ShareKind::Whole), false};
  }
  return balanced_layer(tokens, cost, devices, node_limit);
}

// The device of every unit before replication: balanced's when every device can get a unit;
// with more devices than units, unit h on device h and the rest left to replicas.
std::vector<int> base_devices(const LayerPlan& balanced, int kv_heads, int devices) {
  std::vector<int> dev(static_cast<size_t>(kv_heads), 0);
  if (devices > kv_heads) {
    std::iota(dev.begin(), dev.end(), 0);
    return dev;
  }
  for (int d = 0; d < devices; ++d)
    for (const Share& s : balanced.layer.devices[size_t(d)]) dev[size_t(s.head)] = d;
  return dev;
}

bool holds(const std::vector<Holding>& parts, int device) {
  return std::any_of(parts.begin(), parts.end(),
                     [&](const Holding& x) { return x.device == device; });
}

int heaviest(std::span<const double> loads) {
  return int(std::max_element(loads.begin(), loads.end()) - loads.begin());
}

// Sets the parts of every unit to the exact min-max shares for its holders as token slices
// (only the tail reads the weights), dropping empty parts but the tail's. Parts end in device
// order.
void rebalance_holdings(Holdings& h, std::span<const double> tokens, const CostModel& cost,
                        int devices) {
  RebalanceProblem prob;
  prob.base.assign(size_t(devices), 0.0);
  std::vector<std::vector<int>> holders(h.size());
  for (size_t u = 0; u < h.size(); ++u)
    for (const Holding& x : h[u]) holders[u].push_back(x.device);
  add_token_slice_units(prob, tokens, std::move(holders), cost);
  const auto r = rebalance(prob);
  for (size_t u = 0; u < h.size(); ++u) {
    h[u].clear();
    for (const auto& [d, x] : token_slice_parts(prob, r, u)) h[u].push_back({d, x});
  }
}

// Adds up to `replicas` replicas one at a time, each the (unit on the heaviest device, other
// device) pair whose best division lowers the layer most. batch > 0: parts are whole sequences
// (fair-copy); batch == 0: continuous token parts, re-optimised exactly after every step (split).
Holdings add_replicas_greedily(Holdings h, std::span<const double> tokens, const CostModel& cost,
                               int devices, int replicas, int batch) {
  const double tol = load_tolerance(tokens, cost);
  const double w = cost.unit_weight_load();
  const bool slices = batch == 0;
  for (int step = 0; step < replicas; ++step) {
    const auto loads = holding_loads(h, tokens, cost, devices, slices);
    const int top = heaviest(loads);
    Score best = score(loads, tol);
    int best_u = -1, best_d = -1;
    std::vector<double> best_parts;
    for (size_t u = 0; u < h.size(); ++u) {
      if (!holds(h[u], top) || tokens[u] <= 0) continue;
      const size_t m = h[u].size() + 1;
      if (batch > 0 && size_t(batch) < m) continue;  // every replica needs a sequence
      for (int d = 0; d < devices; ++d) {
        if (holds(h[u], d)) continue;
        // Batch parts each read the weights; of token slices only the tail (last device) does,
        // so a replica after the current tail takes the weight read over from it.
        int old_tail = -1;
        for (const Holding& x : h[u]) old_tail = std::max(old_tail, x.device);
        const int new_tail = std::max(old_tail, d);
        std::vector<double> base(m);
        for (size_t i = 0; i + 1 < m; ++i) {
          const int dev = h[u][i].device;
          base[i] = loads[size_t(dev)] - h[u][i].part * tokens[u];
          if (slices) base[i] += (dev == new_tail ? w : 0.0) - (dev == old_tail ? w : 0.0);
        }
        base[m - 1] = loads[size_t(d)] + (!slices || d == new_tail ? w : 0.0);
        std::vector<double> parts(m);
        if (batch > 0) {
          const auto n = divide_batch(base, batch, tokens[u] / batch);
          for (size_t i = 0; i < m; ++i) parts[i] = double(n[i]) / batch;
        } else {
          parts = water_fill(base, tokens[u]);
          for (double& p : parts) p /= tokens[u];
          if (parts[m - 1] <= 1e-12) continue;  // the new replica would get nothing
        }
        auto next = loads;
        for (size_t i = 0; i < m; ++i) {
          const int dev = i + 1 < m ? h[u][i].device : d;
          next[size_t(dev)] = base[i] + parts[i] * tokens[u];
        }
        const Score s = score(next, tol);
        if (better(s, best, tol)) {
          best = s;
          best_u = int(u);
          best_d = d;
          best_parts = parts;
        }
      }
    }
    if (best_u < 0) break;  // no replica lowers the layer
    auto& parts = h[size_t(best_u)];
    parts.push_back({best_d, 0.0});
    for (size_t i = 0; i < parts.size(); ++i) parts[i].part = best_parts[i];
    if (batch == 0) rebalance_holdings(h, tokens, cost, devices);
  }
  return h;
}

// McNaughton's wrap-around with weight reads: devices in turn take units (heaviest first) up to
// target T; the unit that crosses T is cut and its rest goes on to the next device. Only the last
// piece of a unit (its tail) reads the unit's weights, so a cut costs nothing and every device
// fills to T exactly: at T = the lower bound this is optimal. When a unit's tokens fit but not its
// weight read, and `spare` replicas are left beyond the at most devices - 1 cuts, its tokens stay
// here and an empty tail on the next device takes the weight read, so this device goes on filling
// (else the device ends below T and the tail moves on). Returns false when T is too small.
bool wrap_fill(std::span<const int> order, std::span<const double> tokens, double w, int devices,
               double target, double tol, int spare, Holdings* out) {
  Holdings h(tokens.size());
  std::vector<double> owed(static_cast<size_t>(devices), 0.0);  // empty tails' weight reads
  int d = 0;
  double used = 0;
  for (int u : order) {
    double rest = tokens[size_t(u)];
    for (;;) {
      if (used + rest + w <= target + tol) {  // the rest fits with the weight read: the tail
        h[size_t(u)].push_back({d, rest});
        used += rest + w;
        break;
      }
      const double room = target - used;
      if (room >= rest - tol && rest > tol && d + 1 < devices && spare > 0) {
        --spare;
        h[size_t(u)].push_back({d, rest});
        h[size_t(u)].push_back({d + 1, 0.0});
        owed[size_t(d + 1)] += w;
        used += rest;
        break;
      }
      const double piece = std::min(room, rest);
      if (piece > tol) {  // a KV-only piece fills this device
        h[size_t(u)].push_back({d, piece});
        rest -= piece;
      }
      if (++d == devices) return false;
      used = owed[size_t(d)];
    }
  }
  for (size_t u = 0; u < h.size(); ++u)
    for (Holding& x : h[u]) x.part = tokens[u] > 0 ? x.part / tokens[u] : 1.0 / h[u].size();
  if (out) *out = std::move(h);
  return true;
}

// Best fit with splitting, for weight reads: units (heaviest first) go whole to the device with
// the least room that still takes them; a unit that fits nowhere is cut over the devices with the
// most room, each part paying the weight read. Next-fit (wrap_fill) cuts at every device
// boundary; this cuts only units that do not fit, which matters when weights are expensive.
bool best_fit_fill(std::span<const int> order, std::span<const double> tokens, double w,
                   int devices, double target, double tol, Holdings* out) {
  Holdings h(tokens.size());
  std::vector<double> used(static_cast<size_t>(devices), 0.0);
  for (int u : order) {
    double rest = tokens[size_t(u)];
    int fit = -1;
    for (int d = 0; d < devices; ++d) {
      const double room = target - used[size_t(d)] - w;
      if (room >= rest - tol && (fit < 0 || room < target - used[size_t(fit)] - w)) fit = d;
    }
    if (fit >= 0) {
      h[size_t(u)].push_back({fit, rest});
      used[size_t(fit)] += rest + w;
      continue;
    }
    // A unit of no tokens still needs a holder to read its weights: no room for that, T is
    // too small.
    if (rest <= tol) return false;
    while (rest > tol) {
      int roomiest = 0;
      for (int d = 1; d < devices; ++d)
        if (used[size_t(d)] < used[size_t(roomiest)]) roomiest = d;
      const double room = target - used[size_t(roomiest)] - w;
      if (room <= tol) return false;
      const double piece = std::min(room, rest);
      h[size_t(u)].push_back({roomiest, piece});
      used[size_t(roomiest)] += piece + w;
      rest -= piece;
    }
  }
  for (size_t u = 0; u < h.size(); ++u) {
    double sum = 0;
    for (const Holding& x : h[u]) sum += x.part;
    for (Holding& x : h[u]) x.part = sum > 0 ? x.part / sum : 1.0 / double(h[u].size());
  }
  if (out) *out = std::move(h);
  return true;
}

// Tails first, for expensive weight reads: every device gets an even number of tail slots (the
// extras on the last devices), so that its room for KV is T - slots x w; the units' tokens then
// wrap around the devices in `order`, and each unit's tail goes to the first free slot on or after
// the device where its tokens end (an empty tail when that is a later device). A unit ending
// early needs an early slot, so smallest-first orders suit it: wrap_fill instead puts the weight
// read wherever a unit happens to end, and with w near T / 2 two tails can land on one device
// while another has none. Returns false when T is too small or a unit finds no slot.
bool tail_slot_fill(std::span<const int> order, std::span<const double> tokens, double w,
                    int devices, double target, double tol, Holdings* out) {
  const int units = int(order.size());
  std::vector<int> slots(size_t(devices), units / devices);
  for (int d = devices - units % devices; d < devices; ++d) ++slots[size_t(d)];
  std::vector<double> room(static_cast<size_t>(devices));
  for (int d = 0; d < devices; ++d) {
    room[size_t(d)] = target - slots[size_t(d)] * w;
    if (room[size_t(d)] < -tol) return false;
  }
  Holdings h(tokens.size());
  std::vector<int> last(tokens.size(), 0);  // the device where each unit's tokens end
  int d = 0;
  for (int u : order) {
    double rest = tokens[size_t(u)];
    for (;;) {
      const double piece = std::min(std::max(0.0, room[size_t(d)]), rest);
      if (piece > tol || (rest <= tol && h[size_t(u)].empty())) {  // a unit of no tokens: one part
        h[size_t(u)].push_back({d, piece});
        room[size_t(d)] -= piece;
        rest -= piece;
      }
      if (rest <= tol) break;
      if (++d == devices) return false;
    }
    last[size_t(u)] = h[size_t(u)].back().device;
  }
  for (int u : order) {  // tokens end in non-decreasing device order: first free slot suffices
    int t = last[size_t(u)];
    while (t < devices && slots[size_t(t)] == 0) ++t;
    if (t == devices) return false;
    --slots[size_t(t)];
    if (t != last[size_t(u)]) h[size_t(u)].push_back({t, 0.0});
  }
  for (size_t u = 0; u < h.size(); ++u)
    for (Holding& x : h[u]) x.part = tokens[u] > 0 ? x.part / tokens[u] : 1.0 / h[u].size();
  if (out) *out = std::move(h);
  return true;
}

using Fill = std::function<bool(std::span<const int>, std::span<const double>, double, int, double,
                                double, Holdings*)>;

// The smallest target that `fill` reaches (bisection from the lower bound), its holders, and the
// exact shares for them.
Holdings fill_to_smallest_target(Fill fill, std::span<const double> tokens, const CostModel& cost,
                                 int devices) {
  const double w = cost.unit_weight_load();
  const double tol = load_tolerance(tokens, cost);
  std::vector<int> order(tokens.size());
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(),
                   [&](int a, int b) { return tokens[size_t(a)] > tokens[size_t(b)]; });
  double lo = lower_bound(tokens, cost, devices), hi = 0;
  for (double t : tokens) hi += t + w;  // one device can take everything
  hi = std::max(hi, lo);
  if (!fill(order, tokens, w, devices, lo, tol, nullptr)) {
    for (int i = 0; i < 200 && hi - lo > tol; ++i) {
      const double mid = 0.5 * (lo + hi);
      (fill(order, tokens, w, devices, mid, tol, nullptr) ? hi : lo) = mid;
    }
    lo = hi;
  }
  Holdings h;
  fill(order, tokens, w, devices, lo, tol, &h);
  rebalance_holdings(h, tokens, cost, devices);
  return h;
}

// spare: replicas the fill may add beyond its devices - 1 cuts.
Holdings wrap_around(std::span<const double> tokens, const CostModel& cost, int devices,
                     int spare = 0) {
  return fill_to_smallest_target(
      [spare](std::span<const int> order, std::span<const double> t, double w, int r, double target,
              double tol,
              Holdings* out) { return wrap_fill(order, t, w, r, target, tol, spare, out); },
      tokens, cost, devices);
}

// The better of balanced and the candidates, in order; ties keep the earlier one. Proven: the
// result reaches the lower bound, or there were no candidates and balanced was proven.
LayerPlan pick(const LayerPlan& balanced, std::span<const LayerPlacement> candidates,
               std::span<const double> tokens, const CostModel& cost, int devices) {
  const double tol = load_tolerance(tokens, cost);
  LayerPlan best = balanced;
  double best_max = max_device_load(best.layer, tokens, cost, devices);
  for (const auto& c : candidates) {
    const double m = max_device_load(c, tokens, cost, devices);
    if (m < best_max - tol) {
      best.layer = c;
      best_max = m;
    }
  }
  best.proven = (candidates.empty() && balanced.proven) ||
                best_max <= lower_bound(tokens, cost, devices) * (1 + 1e-12);
  return best;
}

}  // namespace

LayerPlan fair_copy_layer(std::span<const double> tokens, const CostModel& cost, int devices,
                          int replicas, int64_t node_limit) {
  const LayerPlan bal = baseline(tokens, cost, devices, node_limit);
  std::vector<LayerPlacement> cands;
  if (replicas > 0 && cost.batch > 1) {
    const auto dev = base_devices(bal, int(tokens.size()), devices);
    cands.push_back(to_layer(
        add_replicas_greedily(whole_holdings(dev), tokens, cost, devices, replicas, cost.batch),
        devices, ShareKind::Batch));
  }
  return pick(bal, cands, tokens, cost, devices);
}

LayerPlacement wrap_around_layer(std::span<const double> tokens, const CostModel& cost,
                                 int devices) {
  return to_layer(wrap_around(tokens, cost, devices), devices, ShareKind::Tokens);
}

LayerPlan split_layer(std::span<const double> tokens, const CostModel& cost, int devices,
                      int replicas, int64_t node_limit) {
  const LayerPlan bal = baseline(tokens, cost, devices, node_limit);
  std::vector<LayerPlacement> cands;
  if (replicas > 0) {
    const auto dev = base_devices(bal, int(tokens.size()), devices);
    cands.push_back(
        to_layer(add_replicas_greedily(whole_holdings(dev), tokens, cost, devices, replicas, 0),
                 devices, ShareKind::Tokens));
  }
  if (replicas >= devices - 1) {
    cands.push_back(wrap_around_layer(tokens, cost, devices));
    // Empty tails that keep every device full, within the replica budget: the cuts the fill
    // does not need are spare. The fill spends at most one per unit, so more change nothing.
    const int most = std::min(replicas, int(tokens.size()));
    for (int spare = 1; spare <= most; ++spare) {
      const auto h = wrap_around(tokens, cost, devices, spare);
      if (holding_replicas(h) > replicas) break;
      cands.push_back(to_layer(h, devices, ShareKind::Tokens));
    }
  }
  if (replicas > 0 && cost.unit_weight_load() > 0) {
    auto h = fill_to_smallest_target(best_fit_fill, tokens, cost, devices);
    if (holding_replicas(h) <= replicas) cands.push_back(to_layer(h, devices, ShareKind::Tokens));
    // Tails first, smallest units first (and heaviest first, the order it is given).
    for (bool smallest_first : {true, false}) {
      h = fill_to_smallest_target(
          [smallest_first](std::span<const int> order, std::span<const double> t, double w, int r,
                           double target, double tol, Holdings* out) {
            std::vector<int> o(order.begin(), order.end());
            if (smallest_first) std::reverse(o.begin(), o.end());
            return tail_slot_fill(o, t, w, r, target, tol, out);
          },
          tokens, cost, devices);
      if (holding_replicas(h) <= replicas) cands.push_back(to_layer(h, devices, ShareKind::Tokens));
    }
  }
  if (replicas > 0 && cost.batch > 1) {
    // fair-copy's replicas with exact token shares: split is never worse than fair-copy.
    const auto dev = base_devices(bal, int(tokens.size()), devices);
    auto h =
        add_replicas_greedily(whole_holdings(dev), tokens, cost, devices, replicas, cost.batch);
    rebalance_holdings(h, tokens, cost, devices);
    cands.push_back(to_layer(h, devices, ShareKind::Tokens));
  }
  return pick(bal, cands, tokens, cost, devices);
}

}  // namespace fairkv::placement
