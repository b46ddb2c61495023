// Stop strings of a completion request (`stop` in OpenAI's API and llama-server's): generation
// ends at the first one the generated text contains, and neither it nor anything after it is
// returned. Text that could still become a stop string is held back until it is clear.
#pragma once

#include <cstddef>
#include <string>
#include <string_view>
#include <vector>

namespace fairkv::serve {

// OpenAI allows 4 stop strings and llama-server any number; 16 leaves room for chat templates'
// end markers while keeping the per-token matching cheap.
inline constexpr size_t kMaxStopStrings = 16;
inline constexpr size_t kMaxStopBytes = 256;

// Throws std::invalid_argument naming `stop` (or `stop[i]`) unless there are at most
// kMaxStopStrings strings, each non-empty and at most kMaxStopBytes bytes long.
void check_stop_strings(const std::vector<std::string>& stops);

// Fed the text of each token as it is detokenized, returns what may be sent to the client now.
// The first stop string to complete in the stream wins (the earliest start among those ending at
// the same byte), so the result does not depend on how the text is split into pieces. Emitted
// text also never ends inside a UTF-8 character: an unfinished one waits for its next bytes.
class StopMatcher {
 public:
  struct Output {
    std::string text;      // may be sent now
    bool stopped = false;  // a stop string completed: `text` ends where it began
  };

  explicit StopMatcher(std::vector<std::string> stops);  // check_stop_strings(stops) first

  // After a stop, returns {"", true} and holds nothing more.
  Output feed(std::string_view piece);
  // At the end of generation (no stop string came): the text still held back.
  std::string flush();

  bool stopped() const { return matched_ >= 0; }
  // The stop string that ended the text (llama-server's stopping_word); empty before a stop.
  std::string_view matched() const;
  const std::vector<std::string>& stops() const { return stops_; }

 private:
  size_t hold_start() const;

  std::vector<std::string> stops_;
  size_t max_len_ = 0;
  std::string held_;
  int matched_ = -1;
};

}  // namespace fairkv::serve
