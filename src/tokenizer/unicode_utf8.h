// UTF-8 helpers for the tokenizers: character lengths as llama.cpp counts them, encoding,
// validation, and the repair llama.cpp applies before its byte-level BPE pre-tokenizers.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

namespace fairkv::tokenizer {

inline constexpr uint32_t kReplacementChar = 0xFFFD;

// Bytes of the character that starts with `lead`, from its high nibble alone (0x0-0xB: 1,
// 0xC-0xD: 2, 0xE: 3, 0xF: 4), as llama.cpp splits text into symbols. A stray continuation
// byte counts as one character; callers clamp the length to the bytes left.
inline size_t utf8_char_len(unsigned char lead) {
  static constexpr uint8_t kLen[16] = {1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 2, 2, 3, 4};
  return kLen[lead >> 4];
}

// Appends the UTF-8 encoding of `cp` (which must be at most 0x10FFFF).
void utf8_append(std::string& out, uint32_t cp);

// Whether `s` is well-formed UTF-8 (no overlong forms, surrogates or values past 0x10FFFF), the
// form PCRE2 requires of a subject.
bool utf8_is_valid(std::string_view s);

// Decodes one character at s[pos] the way llama.cpp does (the lead byte gives the length and
// every continuation byte must be 10xxxxxx; overlong forms are accepted) and advances pos.
// Returns false, leaving pos unchanged, when the bytes do not form a character.
bool utf8_decode(std::string_view s, size_t& pos, uint32_t& cp);

// llama.cpp's reading of arbitrary bytes as text: each byte that does not start a character
// becomes U+FFFD, every character is re-encoded in its shortest form, and surrogates or values
// past 0x10FFFF (which llama.cpp cannot encode either) become U+FFFD. Well-formed input comes
// back unchanged.
std::string utf8_repair(std::string_view s);

}  // namespace fairkv::tokenizer
