#include "placement/rebalance.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <stdexcept>

#include <fmt/format.h>

namespace fairkv::placement {

namespace {

// Dinic's max flow on a small graph with real capacities.
class MaxFlow {
 public:
  explicit MaxFlow(int nodes) : adj_(size_t(nodes)), level_(size_t(nodes)), it_(size_t(nodes)) {}

  int add_edge(int from, int to, double cap) {
    const int id = int(edges_.size());
    edges_.push_back({to, cap});
    adj_[size_t(from)].push_back(id);
    edges_.push_back({from, 0.0});
    adj_[size_t(to)].push_back(id + 1);
    return id;
  }
  double flow_on(int edge) const { return edges_[size_t(edge) ^ 1].cap; }

  double run(int s, int t, double eps) {
    eps_ = eps;
    double total = 0;
    while (bfs(s, t)) {
      std::fill(it_.begin(), it_.end(), 0);
      for (double f; (f = dfs(s, t, std::numeric_limits<double>::infinity())) > eps_;) total += f;
    }
    return total;
  }

  // Nodes reachable from s in the residual graph after run(): the source side of a min cut.
  std::vector<bool> reachable(int s) const {
    std::vector<bool> seen(adj_.size(), false);
    std::vector<int> stack{s};
    seen[size_t(s)] = true;
    while (!stack.empty()) {
      const int v = stack.back();
      stack.pop_back();
      for (int id : adj_[size_t(v)]) {
        const Edge& e = edges_[size_t(id)];
        if (e.cap > eps_ && !seen[size_t(e.to)]) {
          seen[size_t(e.to)] = true;
          stack.push_back(e.to);
        }
      }
    }
    return seen;
  }

 private:
  struct Edge {
    int to;
    double cap;
  };

  bool bfs(int s, int t) {
    std::fill(level_.begin(), level_.end(), -1);
    std::vector<int> queue{s};
    level_[size_t(s)] = 0;
    for (size_t q = 0; q < queue.size(); ++q) {
      const int v = queue[q];
      for (int id : adj_[size_t(v)]) {
        const Edge& e = edges_[size_t(id)];
        if (e.cap > eps_ && level_[size_t(e.to)] < 0) {
          level_[size_t(e.to)] = level_[size_t(v)] + 1;
          queue.push_back(e.to);
        }
      }
    }
    return level_[size_t(t)] >= 0;
  }

  double dfs(int v, int t, double pushed) {
    if (v == t) return pushed;
    for (size_t& i = it_[size_t(v)]; i < adj_[size_t(v)].size(); ++i) {
      const int id = adj_[size_t(v)][i];
      Edge& e = edges_[size_t(id)];
      if (e.cap <= eps_ || level_[size_t(e.to)] != level_[size_t(v)] + 1) continue;
      const double f = dfs(e.to, t, std::min(pushed, e.cap));
      if (f > eps_) {
        e.cap -= f;
        edges_[size_t(id) ^ 1].cap += f;
        return f;
      }
    }
    return 0;
  }

  std::vector<Edge> edges_;
  std::vector<std::vector<int>> adj_;
  std::vector<int> level_;
  std::vector<size_t> it_;
  double eps_ = 0;
};

void check_problem(const RebalanceProblem& p) {
  const int devices = int(p.base.size());
  if (p.holders.size() != p.load.size())
    throw std::invalid_argument("rebalance: one holder list per unit expected");
  for (int d = 0; d < devices; ++d)
    if (!(p.base[size_t(d)] >= 0) || !std::isfinite(p.base[size_t(d)]))
      throw std::invalid_argument(fmt::format("rebalance: device {}: bad base load", d));
  for (size_t u = 0; u < p.load.size(); ++u) {
    if (!(p.load[u] >= 0) || !std::isfinite(p.load[u]))
      throw std::invalid_argument(fmt::format("rebalance: unit {}: bad load {}", u, p.load[u]));
    if (p.holders[u].empty())
      throw std::invalid_argument(fmt::format("rebalance: unit {} has no holder", u));
    std::vector<bool> seen(size_t(devices), false);
    for (int d : p.holders[u]) {
      if (d < 0 || d >= devices)
        throw std::invalid_argument(
            fmt::format("rebalance: unit {}: device {} out of range", u, d));
      if (seen[size_t(d)])
        throw std::invalid_argument(fmt::format("rebalance: unit {}: device {} twice", u, d));
      seen[size_t(d)] = true;
    }
  }
}

}  // namespace

double hall_ratio(const RebalanceProblem& p, std::span<const int> devices) {
  if (devices.empty()) return 0;
  std::vector<bool> in(p.base.size(), false);
  double sum = 0;
  for (int d : devices) {
    in[size_t(d)] = true;
    sum += p.base[size_t(d)];
  }
  for (size_t u = 0; u < p.load.size(); ++u)
    if (std::all_of(p.holders[u].begin(), p.holders[u].end(), [&](int d) { return in[size_t(d)]; }))
      sum += p.load[u];
  return sum / double(devices.size());
}

RebalanceResult rebalance(const RebalanceProblem& p) {
  check_problem(p);
  const int units = int(p.load.size());
  const int devices = int(p.base.size());
  RebalanceResult r;
  r.share.resize(size_t(units));
  if (devices == 0) return r;

  double total = 0, scale = 0;
  for (double x : p.load) total += x;
  for (double b : p.base) scale = std::max(scale, b);
  scale = std::max(scale + total, 1e-300);

  // Start from the ratios of the whole set and of every single device.
  std::vector<int> all(static_cast<size_t>(devices));
  for (int d = 0; d < devices; ++d) all[size_t(d)] = d;
  double t = hall_ratio(p, all);
  r.critical = all;
  for (int d = 0; d < devices; ++d) {
    const int one[1] = {d};
    const double v = hall_ratio(p, one);
    if (v > t) {
      t = v;
      r.critical = {d};
    }
  }

  // Node ids: source 0, units 1..U, devices U+1..U+R, sink U+R+1.
  const int src = 0, sink = units + devices + 1;
  const double slack = 1e-13 * scale;  // absorbs rounding in the flow, far below 1e-9
  std::vector<std::vector<int>> edge(static_cast<size_t>(units));
  for (int iter = 0;; ++iter) {
    MaxFlow g(units + devices + 2);
    for (int u = 0; u < units; ++u) {
      g.add_edge(src, 1 + u, p.load[size_t(u)]);
      edge[size_t(u)].clear();
      for (int d : p.holders[size_t(u)])
        edge[size_t(u)].push_back(g.add_edge(1 + u, 1 + units + d, total + 1.0));
    }
    for (int d = 0; d < devices; ++d)
      g.add_edge(1 + units + d, sink, std::max(0.0, t + slack - p.base[size_t(d)]));
    const double flow = g.run(src, sink, 1e-15 * scale);
    ++r.flows;
    bool done = flow >= total - slack;
    if (!done) {
      const auto side = g.reachable(src);
      std::vector<int> cut;
      for (int d = 0; d < devices; ++d)
        if (side[size_t(1 + units + d)]) cut.push_back(d);
      const double v = hall_ratio(p, cut);
      // The cut's set is violated at t, so its ratio is larger; if rounding says otherwise, t is
      // optimal up to the slack and the shares are normalised below.
      if (v > t && iter < 4 * devices + 8) {
        t = v;
        r.critical = cut;
      } else {
        done = true;
      }
    }
    if (done) {
      for (int u = 0; u < units; ++u) {
        auto& s = r.share[size_t(u)];
        s.assign(p.holders[size_t(u)].size(), 0.0);
        double sum = 0;
        for (size_t i = 0; i < s.size(); ++i) {
          s[i] = std::max(0.0, g.flow_on(edge[size_t(u)][i]));
          sum += s[i];
        }
        if (sum > 0) {
          for (double& x : s) x /= sum;
        } else {
          s[0] = 1.0;  // an empty unit: its first holder keeps it
        }
      }
      break;
    }
  }
  r.max_load = t;
  return r;
}

void add_token_slice_units(RebalanceProblem& prob, std::span<const double> tokens,
                           std::vector<std::vector<int>> holders, const CostModel& cost) {
  auto add = [&](int d, double x) {
    if (d >= 0 && size_t(d) < prob.base.size()) prob.base[size_t(d)] += x;
  };
  bool sliced = false;
  for (size_t u = 0; u < holders.size(); ++u) {
    auto& hs = holders[u];
    std::sort(hs.begin(), hs.end());
    if (!hs.empty()) add(hs.back(), cost.unit_weight_load());
    for (int d : hs) add(d, cost.part_load);
    sliced = sliced || hs.size() > 1;
    prob.load.push_back(tokens[u]);
    prob.holders.push_back(std::move(hs));
  }
  if (sliced)
    for (double& b : prob.base) b += cost.split_layer_load;
}

std::vector<std::pair<int, double>> token_slice_parts(const RebalanceProblem& prob,
                                                      const RebalanceResult& r, size_t u) {
  const auto& hs = prob.holders[u];
  const auto& sh = r.share[u];
  std::vector<std::pair<int, double>> parts;
  double kept = 0;
  for (size_t i = 0; i < hs.size(); ++i) {
    const bool tail = i + 1 == hs.size();
    if (sh[i] <= 1e-12 && !tail) continue;  // too small to matter
    const double x = sh[i] <= 1e-12 ? 0.0 : sh[i];
    parts.emplace_back(hs[i], x);
    kept += x;
  }
  for (auto& [d, x] : parts) x = kept > 0 ? x / kept : 1.0 / double(parts.size());
  return parts;
}

LayerPlacement rebalance_layer(const LayerPlacement& layer, std::span<const double> tokens,
                               const CostModel& cost, int devices) {
  const int units = int(tokens.size());
  RebalanceProblem prob;
  prob.base.assign(size_t(devices), 0.0);
  std::vector<std::vector<int>> holders(static_cast<size_t>(units));
  std::vector<bool> fixed(size_t(units), false);
  LayerPlacement out;
  out.devices.resize(size_t(devices));
  for (int d = 0; d < devices && d < int(layer.devices.size()); ++d)
    for (const Share& s : layer.devices[size_t(d)]) {
      if (s.kind == ShareKind::Query) {
        // Every query slice reads the whole KV: its cost does not depend on its share.
        fixed[size_t(s.head)] = true;
        prob.base[size_t(d)] += tokens[size_t(s.head)] + cost.kv_weight_load() +
                                s.share * cost.qo_weight_load() + cost.part_load;
        out.devices[size_t(d)].push_back(s);
      } else {
        holders[size_t(s.head)].push_back(d);
      }
    }
  std::vector<double> load(size_t(units), 0.0);
  for (int u = 0; u < units; ++u) {
    if (fixed[size_t(u)]) {
      holders[size_t(u)] = {0};  // nothing to divide: a placeholder with no load
      continue;
    }
    if (holders[size_t(u)].empty())
      throw std::invalid_argument(fmt::format("rebalance_layer: head {} has no device", u));
    load[size_t(u)] = tokens[size_t(u)];
  }
  // Fixed units' placeholders carry no load and no weights (their reads are in base already).
  bool sliced = false;
  for (int u = 0; u < units; ++u) {
    auto& hs = holders[size_t(u)];
    std::sort(hs.begin(), hs.end());
    if (!fixed[size_t(u)]) {
      prob.base[size_t(hs.back())] += cost.unit_weight_load();  // the tail
      for (int d : hs) prob.base[size_t(d)] += cost.part_load;
      sliced = sliced || hs.size() > 1;
    }
    prob.load.push_back(load[size_t(u)]);
    prob.holders.push_back(hs);
  }
  if (sliced)
    for (double& b : prob.base) b += cost.split_layer_load;
  const auto r = rebalance(prob);
  for (int u = 0; u < units; ++u) {
    if (fixed[size_t(u)]) continue;
    const auto parts = token_slice_parts(prob, r, size_t(u));
    for (const auto& [d, x] : parts) {
      Share s;
      s.head = u;
      s.share = parts.size() == 1 ? 1.0 : x;
      s.kind = parts.size() == 1 ? ShareKind::Whole : ShareKind::Tokens;
      out.devices[size_t(d)].push_back(s);
    }
  }
  normalize(out);
  return out;
}

}  // namespace fairkv::placement
