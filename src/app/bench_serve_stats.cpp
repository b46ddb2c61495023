#include "app/bench_serve_stats.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <random>
#include <stdexcept>

namespace fairkv::app::bench {

double percentile(std::vector<double> values, double p) {
  if (values.empty()) return 0;
  // Selection rather than a full sort: the two ranks around the position are all it needs.
  const double pos = std::clamp(p, 0.0, 100.0) / 100.0 * double(values.size() - 1);
  const size_t lo = size_t(std::floor(pos));
  std::nth_element(values.begin(), values.begin() + lo, values.end());
  const double a = values[lo];
  if (lo + 1 >= values.size()) return a;
  const double b = *std::min_element(values.begin() + lo + 1, values.end());
  return a + (b - a) * (pos - double(lo));
}

Summary summarize(const std::vector<double>& v) {
  Summary s;
  if (v.empty()) return s;
  double sum = 0;
  for (double x : v) sum += x;
  s.mean = sum / double(v.size());
  double sq = 0;
  for (double x : v) sq += (x - s.mean) * (x - s.mean);
  s.std = std::sqrt(sq / double(v.size()));
  s.median = percentile(v, 50);
  s.p90 = percentile(v, 90);
  s.p99 = percentile(v, 99);
  return s;
}

std::vector<double> arrival_times(size_t n, double rate, Arrival arrival, double burstiness,
                                  uint64_t seed) {
  std::vector<double> t(n, 0.0);
  if (!std::isfinite(rate)) return t;
  std::mt19937_64 rng(seed);
  // Shape k and scale 1/(rate k): the mean interval is 1/rate whatever the burstiness.
  std::gamma_distribution<double> gamma(burstiness, 1.0 / (rate * burstiness));
  for (size_t i = 1; i < n; ++i)
    t[i] = t[i - 1] + (arrival == Arrival::Fixed ? 1.0 / rate : gamma(rng));
  return t;
}

double tpot(const RequestResult& r) {
  if (r.output_tokens <= 1) return 0;
  return (r.e2el - r.ttft) / double(r.output_tokens - 1);
}

Slo parse_slo(const std::vector<std::string>& items) {
  Slo slo;
  for (const std::string& item : items) {
    const size_t colon = item.find(':');
    const std::string key = item.substr(0, colon);
    std::optional<double>* dst = key == "ttft"   ? &slo.ttft_ms
                                 : key == "tpot" ? &slo.tpot_ms
                                 : key == "e2el" ? &slo.e2el_ms
                                                 : nullptr;
    if (colon == std::string::npos || !dst)
      throw std::invalid_argument("--goodput: '" + item + "' is not ttft:MS, tpot:MS or e2el:MS");
    const std::string num = item.substr(colon + 1);
    size_t used = 0;
    double v = -1;
    try {
      v = std::stod(num, &used);
    } catch (const std::exception&) {
      used = 0;
    }
    if (used != num.size() || num.empty() || !(v > 0) || !std::isfinite(v))
      throw std::invalid_argument("--goodput: '" + item +
                                  "': expected a positive number of milliseconds after ':'");
    *dst = v;
  }
  return slo;
}

bool meets(const RequestResult& r, const Slo& slo) {
  if (!r.ok) return false;
  if (slo.ttft_ms && r.ttft * 1e3 > *slo.ttft_ms) return false;
  if (slo.tpot_ms && tpot(r) * 1e3 > *slo.tpot_ms) return false;
  if (slo.e2el_ms && r.e2el * 1e3 > *slo.e2el_ms) return false;
  return true;
}

RunMetrics compute_metrics(const std::vector<RequestResult>& results, double duration,
                           const Slo& slo) {
  RunMetrics m;
  m.duration = duration;
  std::vector<double> ttft, tpots, itl, e2el;
  for (const RequestResult& r : results) {
    if (!r.ok) {
      ++m.failed;
      continue;
    }
    ++m.completed;
    if (!r.usage) ++m.without_usage;
    m.total_input += std::max<int64_t>(r.prompt_tokens, 0);
    m.total_output += r.output_tokens;
    ttft.push_back(r.ttft * 1e3);
    e2el.push_back(r.e2el * 1e3);
    if (r.output_tokens > 1) tpots.push_back(tpot(r) * 1e3);
    for (double g : r.itl) itl.push_back(g * 1e3);
    if (slo.any() && meets(r, slo)) ++m.good;
  }
  if (duration > 0) {
    m.request_throughput = double(m.completed) / duration;
    m.output_throughput = double(m.total_output) / duration;
    m.total_token_throughput = double(m.total_input + m.total_output) / duration;
    m.request_goodput = double(m.good) / duration;
  }
  m.ttft_ms = summarize(ttft);
  m.tpot_ms = summarize(tpots);
  m.itl_ms = summarize(itl);
  m.e2el_ms = summarize(e2el);
  return m;
}

}  // namespace fairkv::app::bench
