#include "serve/stop_strings.h"

#include <algorithm>
#include <stdexcept>
#include <utility>

#include <fmt/format.h>

namespace fairkv::serve {

namespace {

// Where `s` stops being whole UTF-8 characters: the start of an unfinished multi-byte character
// at its end, else its size. Bytes that are not UTF-8 there are not waited on.
size_t utf8_whole(std::string_view s) {
  const size_t n = s.size();
  for (size_t back = 1; back <= 4 && back <= n; ++back) {
    const auto c = static_cast<unsigned char>(s[n - back]);
    if ((c & 0xC0) == 0x80) continue;  // a continuation byte: its lead is further back
    const size_t len = c >= 0xF8 ? 1 : c >= 0xF0 ? 4 : c >= 0xE0 ? 3 : c >= 0xC0 ? 2 : 1;
    return len > back ? n - back : n;
  }
  return n;
}

}  // namespace

void check_stop_strings(const std::vector<std::string>& stops) {
  if (stops.size() > kMaxStopStrings)
    throw std::invalid_argument(
        fmt::format("stop: expected at most {} strings, got {}", kMaxStopStrings, stops.size()));
  for (size_t i = 0; i < stops.size(); ++i) {
    if (stops[i].empty())
      throw std::invalid_argument(fmt::format("stop[{}]: expected a non-empty string", i));
    if (stops[i].size() > kMaxStopBytes)
      throw std::invalid_argument(fmt::format("stop[{}]: expected at most {} bytes, got {}", i,
                                              kMaxStopBytes, stops[i].size()));
  }
}

StopMatcher::StopMatcher(std::vector<std::string> stops) : stops_(std::move(stops)) {
  check_stop_strings(stops_);
  for (const std::string& s : stops_) max_len_ = std::max(max_len_, s.size());
}

std::string_view StopMatcher::matched() const {
  return matched_ >= 0 ? std::string_view(stops_[size_t(matched_)]) : std::string_view();
}

// The start of the longest suffix of held_ that some stop string begins with (a proper prefix:
// a whole one would have matched), else held_.size().
size_t StopMatcher::hold_start() const {
  const size_t n = held_.size();
  for (size_t i = n >= max_len_ ? n - max_len_ + 1 : 0; i < n; ++i) {
    const std::string_view tail(held_.data() + i, n - i);
    for (const std::string& s : stops_)
      if (s.size() > tail.size() && std::string_view(s).starts_with(tail)) return i;
  }
  return n;
}

StopMatcher::Output StopMatcher::feed(std::string_view piece) {
  Output out;
  if (stopped()) {
    out.stopped = true;
    return out;
  }
  held_.append(piece);
  // Any match starts inside held_: text already sent was no stop string's beginning. Earlier
  // feeds found none, so the earliest end here is the first stop to complete in the stream.
  size_t best_pos = std::string::npos, best_end = std::string::npos;
  for (size_t i = 0; i < stops_.size(); ++i) {
    const size_t pos = held_.find(stops_[i]);
    if (pos == std::string::npos) continue;
    const size_t end = pos + stops_[i].size();
    if (end < best_end || (end == best_end && pos < best_pos)) {
      best_pos = pos;
      best_end = end;
      matched_ = int(i);
    }
  }
  if (stopped()) {
    out.text = held_.substr(0, best_pos);
    out.stopped = true;
    held_.clear();
    return out;
  }
  const size_t cut = utf8_whole(std::string_view(held_).substr(0, hold_start()));
  out.text = held_.substr(0, cut);
  held_.erase(0, cut);
  return out;
}

std::string StopMatcher::flush() {
  return std::exchange(held_, std::string());
}

}  // namespace fairkv::serve
