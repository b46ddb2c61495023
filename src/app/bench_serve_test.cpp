// The pure parts of `fairkv bench-serve`: percentiles against a sorted brute force, arrival
// schedules (deterministic, mean interval 1/rate, burstiness as the gamma shape), the metrics
// and goodput of hand-made results, the SSE parser cut at every byte, and the request sources.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <limits>
#include <random>
#include <sstream>

#include "app/bench_serve_client.h"
#include "app/bench_serve_requests.h"
#include "app/bench_serve_stats.h"

namespace fairkv::app::bench {
namespace {

// numpy's linear percentile, computed the plain way: sort, find the position, interpolate.
double sorted_percentile(std::vector<double> v, double p) {
  std::sort(v.begin(), v.end());
  const double pos = p / 100 * double(v.size() - 1);
  const size_t lo = size_t(pos), hi = std::min(lo + 1, v.size() - 1);
  return v[lo] + (v[hi] - v[lo]) * (pos - double(lo));
}

TEST(BenchServeStats, PercentileEqualsSortedBruteForce) {
  std::mt19937_64 rng(7);
  for (size_t n : {1, 2, 3, 10, 101, 1000}) {
    std::vector<double> v(n);
    for (double& x : v) x = std::exponential_distribution<double>(0.1)(rng);
    if (n > 3) v[n / 2] = v[n / 3];  // ties
    for (double p : {0.0, 1.0, 25.0, 50.0, 90.0, 99.0, 99.9, 100.0})
      EXPECT_DOUBLE_EQ(percentile(v, p), sorted_percentile(v, p)) << "n " << n << " p " << p;
  }
  EXPECT_EQ(percentile({}, 50), 0);
}

TEST(BenchServeStats, SummaryIsOrdered) {
  std::mt19937_64 rng(3);
  std::vector<double> v(500);
  for (double& x : v) x = std::lognormal_distribution<double>(0, 1)(rng);
  const Summary s = summarize(v);
  EXPECT_LE(*std::min_element(v.begin(), v.end()), s.median);
  EXPECT_LE(s.median, s.p90);
  EXPECT_LE(s.p90, s.p99);
  EXPECT_LE(s.p99, *std::max_element(v.begin(), v.end()));
  double sum = 0;
  for (double x : v) sum += x;
  EXPECT_NEAR(s.mean, sum / 500, 1e-12);
}

std::vector<double> intervals(const std::vector<double>& t) {
  std::vector<double> d;
  for (size_t i = 1; i < t.size(); ++i) d.push_back(t[i] - t[i - 1]);
  return d;
}

TEST(BenchServeStats, ArrivalsAreDeterministicFromTheSeed) {
  const auto a = arrival_times(200, 4, Arrival::Poisson, 1, 11);
  EXPECT_EQ(a, arrival_times(200, 4, Arrival::Poisson, 1, 11));
  EXPECT_NE(a, arrival_times(200, 4, Arrival::Poisson, 1, 12));
  EXPECT_EQ(a[0], 0);
  EXPECT_TRUE(std::is_sorted(a.begin(), a.end()));
}

TEST(BenchServeStats, FixedArrivalsAreOneOverTheRateApart) {
  const auto t = arrival_times(50, 8, Arrival::Fixed, 1, 0);
  for (size_t i = 0; i < t.size(); ++i) EXPECT_NEAR(t[i], double(i) / 8, 1e-9);
}

TEST(BenchServeStats, InfiniteRateSendsEverythingAtOnce) {
  const auto t = arrival_times(20, std::numeric_limits<double>::infinity(), Arrival::Poisson, 1, 0);
  EXPECT_EQ(t, std::vector<double>(20, 0.0));
}

// Gamma intervals of shape k and mean 1/rate: the mean is 1/rate and the squared coefficient of
// variation 1/k (1 for a Poisson process). 20000 intervals: the sample mean's relative error is
// about 1/sqrt(20000 k), so 5% is many standard errors.
TEST(BenchServeStats, PoissonMeanIntervalAndBurstiness) {
  const double rate = 5;
  for (double k : {0.5, 1.0, 4.0}) {
    const auto d = intervals(arrival_times(20001, rate, Arrival::Poisson, k, 42));
    double mean = 0, var = 0;
    for (double x : d) mean += x;
    mean /= double(d.size());
    for (double x : d) var += (x - mean) * (x - mean);
    var /= double(d.size());
    EXPECT_NEAR(mean, 1 / rate, 0.05 / rate) << "burstiness " << k;
    EXPECT_NEAR(var / (mean * mean), 1 / k, 0.1 / k) << "burstiness " << k;
  }
}

RequestResult done(double ttft, double e2el, int64_t tokens, std::vector<double> itl) {
  RequestResult r;
  r.ok = r.usage = true;
  r.prompt_tokens = 10;
  r.output_tokens = r.requested_tokens = tokens;
  r.ttft = ttft;
  r.e2el = e2el;
  r.itl = std::move(itl);
  return r;
}

TEST(BenchServeStats, MetricsAndGoodputOfKnownResults) {
  std::vector<RequestResult> rs = {done(0.1, 1.1, 11, {0.1, 0.1}), done(0.5, 0.9, 5, {0.1}),
                                   done(0.2, 0.2, 1, {})};
  RequestResult failed;
  failed.error = "HTTP 503: busy";
  rs.push_back(failed);
  EXPECT_DOUBLE_EQ(tpot(rs[0]), 0.1);
  EXPECT_DOUBLE_EQ(tpot(rs[1]), 0.1);
  EXPECT_EQ(tpot(rs[2]), 0);
  const Slo slo = parse_slo({"ttft:300", "e2el:1000"});
  const RunMetrics m = compute_metrics(rs, 2.0, slo);
  EXPECT_EQ(m.completed, 3u);
  EXPECT_EQ(m.failed, 1u);
  EXPECT_EQ(m.good, 1u);  // only the third: the first is too long end to end, the second too slow
  EXPECT_EQ(m.total_input, 30);
  EXPECT_EQ(m.total_output, 17);
  EXPECT_DOUBLE_EQ(m.request_throughput, 1.5);
  EXPECT_DOUBLE_EQ(m.output_throughput, 8.5);
  EXPECT_DOUBLE_EQ(m.total_token_throughput, 23.5);
  EXPECT_DOUBLE_EQ(m.request_goodput, 0.5);
  EXPECT_NEAR(m.ttft_ms.mean, 800.0 / 3, 1e-9);
  EXPECT_NEAR(m.tpot_ms.mean, 100, 1e-9);  // the one-token request has no TPOT
  EXPECT_NEAR(m.itl_ms.median, 100, 1e-9);
  EXPECT_EQ(compute_metrics(rs, 2.0, Slo{}).good, 0u);  // no SLO, no goodput
}

TEST(BenchServeStats, SloItemsAreParsedOrRefusedByName) {
  const Slo s = parse_slo({"tpot:50", "ttft:2000.5"});
  EXPECT_EQ(s.tpot_ms, 50);
  EXPECT_EQ(s.ttft_ms, 2000.5);
  EXPECT_FALSE(s.e2el_ms);
  for (const char* bad : {"tpot", "tpot:", "tpot:abc", "tpot:-1", "latency:5", "tpot:5ms"}) {
    try {
      parse_slo({bad});
      ADD_FAILURE() << bad;
    } catch (const std::invalid_argument& e) {
      EXPECT_NE(std::string(e.what()).find(bad), std::string::npos) << e.what();
    }
  }
}

const std::string kStream =
    "data: {\"choices\":[{\"text\":\"Hel\",\"index\":0}]}\n\n"
    "data: {\"choices\":[{\"text\":\"\",\"index\":0}]}\n\n"
    "data: {\"choices\":[{\"text\":\"lo\",\"index\":0}]}\r\n\r\n"
    ": a comment\n\n"
    "data: {\"choices\":[{\"text\":\"!\",\"index\":0,\"finish_reason\":\"length\"}]}\n\n"
    "data: {\"choices\":[],\"usage\":{\"prompt_tokens\":7,\"completion_tokens\":3}}\n\n"
    "data: [DONE]\n\n";

// The stream cut at every byte: the same events at the times their last byte arrived.
TEST(BenchServeClient, StreamParserReadsEventsCutAnywhere) {
  for (size_t cut = 0; cut <= kStream.size(); ++cut) {
    StreamParser p(false);
    p.feed(std::string_view(kStream).substr(0, cut), 1.0);
    p.feed(std::string_view(kStream).substr(cut), 2.0);
    RequestResult r;
    p.finish(3.0, r);
    ASSERT_TRUE(r.ok) << r.error;
    EXPECT_TRUE(r.usage);
    EXPECT_EQ(r.prompt_tokens, 7);
    EXPECT_EQ(r.output_tokens, 3);
    EXPECT_EQ(r.e2el, 3.0);
    const size_t first_end = kStream.find("\n\n") + 2;
    EXPECT_EQ(r.ttft, cut >= first_end ? 1.0 : 2.0) << cut;
    ASSERT_EQ(r.itl.size(), 2u);
  }
}

TEST(BenchServeClient, StreamWithoutUsageCountsChunksAndChatReadsDeltas) {
  StreamParser p(true);
  p.feed("data: {\"choices\":[{\"delta\":{\"role\":\"assistant\",\"content\":null}}]}\n\n", 0.5);
  p.feed("data: {\"choices\":[{\"delta\":{\"content\":\"a\"}}]}\n\n", 1.0);
  p.feed("data: {\"choices\":[{\"delta\":{\"content\":\"b\"}}]}\n\n", 1.5);
  p.feed("data: [DONE]\n\n", 1.6);
  RequestResult r;
  p.finish(1.6, r);
  ASSERT_TRUE(r.ok) << r.error;
  EXPECT_FALSE(r.usage);
  EXPECT_EQ(r.output_tokens, 2);
  EXPECT_EQ(r.prompt_tokens, -1);
  EXPECT_EQ(r.ttft, 1.0);
  EXPECT_EQ(r.itl, std::vector<double>{0.5});
}

TEST(BenchServeClient, StreamErrorsFailTheRequest) {
  StreamParser cut(false);
  cut.feed("data: {\"choices\":[{\"text\":\"a\"}]}\n\n", 0.1);
  RequestResult r;
  cut.finish(0.2, r);
  EXPECT_FALSE(r.ok);
  EXPECT_NE(r.error.find("[DONE]"), std::string::npos);
  StreamParser err(false);
  err.feed("data: {\"error\":{\"message\":\"the device is lost\"}}\n\ndata: [DONE]\n\n", 0.1);
  err.finish(0.2, r);
  EXPECT_FALSE(r.ok);
  EXPECT_NE(r.error.find("the device is lost"), std::string::npos);
}

TEST(BenchServeClient, BaseUrlIsParsedOrRefused) {
  Target t;
  parse_base_url("http://localhost:9000/", t);
  EXPECT_EQ(t.host, "localhost");
  EXPECT_EQ(t.port, 9000);
  parse_base_url("http://10.0.0.1", t);
  EXPECT_EQ(t.port, 80);
  for (const char* bad : {"localhost:8080", "https://x:1", "http://x:0", "http://x:80/v1",
                          "http://:80", "http://x:eighty"})
    EXPECT_THROW(parse_base_url(bad, t), std::invalid_argument) << bad;
}

TEST(BenchServeRequests, RandomRequestsAreDeterministicAndInRange) {
  const auto a = random_requests(100, 40, 20, 0.5, 9);
  const auto b = random_requests(100, 40, 20, 0.5, 9);
  for (size_t i = 0; i < a.size(); ++i) {
    EXPECT_EQ(a[i].prompt, b[i].prompt);
    EXPECT_GE(a[i].max_tokens, 10);
    EXPECT_LE(a[i].max_tokens, 30);
    const auto words = std::count(a[i].prompt.begin(), a[i].prompt.end(), ' ') + 1;
    EXPECT_GE(words, 20);
    EXPECT_LE(words, 60);
  }
  EXPECT_NE(a[0].prompt, random_requests(1, 40, 20, 0.5, 10)[0].prompt);
  // Two tokens a word: half the words.
  const auto half = random_requests(1, 40, 20, 0, 9, 2.0);
  EXPECT_EQ(std::count(half[0].prompt.begin(), half[0].prompt.end(), ' ') + 1, 20);
}

TEST(BenchServeRequests, DatasetLinesAreReadCycledOrRefusedByLine) {
  const auto dir = std::filesystem::temp_directory_path();
  const std::string good = (dir / "bench_serve_good.jsonl").string();
  std::ofstream(good) << "{\"prompt\": \"a b\", \"max_tokens\": 4}\n\n"
                         "{\"prompt\": \"c\", \"output_len\": 2}\n";
  const auto r = load_dataset(good, 3);
  ASSERT_EQ(r.size(), 3u);
  EXPECT_EQ(r[0].prompt, "a b");
  EXPECT_EQ(r[1].max_tokens, 2);
  EXPECT_EQ(r[2].prompt, "a b");
  const std::string bad = (dir / "bench_serve_bad.jsonl").string();
  const std::pair<const char*, const char*> cases[] = {
      {"{\"prompt\": \"x\"}", "max_tokens"},
      {"{\"prompt\": 3, \"max_tokens\": 1}", "\"prompt\""},
      {"[1]", "one JSON object"},
      {"{\"prompt\": \"x\", \"max_tokens\": 0}", "max_tokens"}};
  for (const auto& [line, what] : cases) {
    std::ofstream(bad) << "{\"prompt\": \"ok\", \"max_tokens\": 1}\n" << line << "\n";
    try {
      load_dataset(bad, 5);
      ADD_FAILURE() << line;
    } catch (const std::runtime_error& e) {
      EXPECT_NE(std::string(e.what()).find(bad + ":2:"), std::string::npos) << e.what();
      EXPECT_NE(std::string(e.what()).find(what), std::string::npos) << e.what();
    }
  }
  EXPECT_THROW(load_dataset((dir / "no_such_file.jsonl").string(), 1), std::runtime_error);
  std::filesystem::remove(good);
  std::filesystem::remove(bad);
}

}  // namespace
}  // namespace fairkv::app::bench
