#include "tokenizer/chat_template.h"

#include <cstdint>

#include <fmt/format.h>

#include "tokenizer/unicode_utf8.h"

namespace fairkv::tokenizer {

namespace {

bool contains(std::string_view s, std::string_view what) {
  return s.find(what) != std::string_view::npos;
}

// Python's str.isspace(), which jinja's `trim` filter and str.strip() use: ASCII whitespace, the
// information separators 0x1C-0x1F, and the Unicode spaces. A template that trims must trim the
// same characters or a content with a non-breaking space at its end renders differently.
bool py_space(uint32_t c) {
  return (c >= 0x09 && c <= 0x0D) || (c >= 0x1C && c <= 0x20) || c == 0x85 || c == 0xA0 ||
         c == 0x1680 || (c >= 0x2000 && c <= 0x200A) || c == 0x2028 || c == 0x2029 || c == 0x202F ||
         c == 0x205F || c == 0x3000;
}

// str.strip(): both ends. Bytes that do not decode are kept (Python would not have them).
std::string strip(std::string_view s) {
  size_t begin = s.size(), end = 0, pos = 0;
  while (pos < s.size()) {
    const size_t at = pos;
    uint32_t c = 0;
    if (!utf8_decode(s, pos, c)) c = 0xFFFD, pos = at + 1;
    if (py_space(c)) continue;
    begin = std::min(begin, at);
    end = pos;
  }
  return begin < end ? std::string(s.substr(begin, end - begin)) : std::string();
}

// Jinja's `(message['role'] == 'user') != (loop.index0 % 2 == 0)` check of Llama 2 and Mistral.
void check_alternation(std::span<const ChatMessage> messages) {
  for (size_t i = 0; i < messages.size(); ++i)
    if ((messages[i].role == "user") != (i % 2 == 0))
      throw ChatTemplateError(
          "the chat template raises: Conversation roles must alternate "
          "user/assistant/user/assistant/...");
}

// The default system prompt written in a ChatML template as a literal
// '<|im_start|>system\n...<|im_end|>' (the newline either escaped or a real one). Occurrences
// whose text holds quotes or braces are template code (`+ messages[0]['content']`), not a prompt.
std::optional<std::string> chatml_default_system(std::string_view t) {
  constexpr std::string_view head = "<|im_start|>system", tail = "<|im_end|>";
  for (size_t at = t.find(head); at != std::string_view::npos; at = t.find(head, at + 1)) {
    size_t p = at + head.size();
    if (t.substr(p, 2) == "\\n")
      p += 2;
    else if (t.substr(p, 1) == "\n")
      p += 1;
    else
      continue;
    const size_t end = t.find(tail, p);
    if (end == std::string_view::npos) continue;
    const std::string_view text = t.substr(p, end - p);
    if (text.find_first_of("'\"{}\\") != std::string_view::npos) continue;
    return std::string(text);
  }
  return std::nullopt;
}

std::string first_line(std::string_view t) {
  std::string line(t.substr(0, t.find('\n')));
  if (line.size() > 80) line = line.substr(0, 77) + "...";
  return line;
}

std::string render_chatml(const ChatTemplate& t, std::span<const ChatMessage> messages) {
  std::string out;
  for (size_t i = 0; i < messages.size(); ++i) {
    if (i == 0 && messages[0].role != "system" && t.default_system)
      out += "<|im_start|>system\n" + *t.default_system + "<|im_end|>\n";
    out += "<|im_start|>" + messages[i].role + "\n" + messages[i].content + "<|im_end|>\n";
  }
  return out + "<|im_start|>assistant\n";
}

std::string render_llama3(const ChatTemplate& t, std::span<const ChatMessage> messages) {
  std::string out;
  for (size_t i = 0; i < messages.size(); ++i) {
    if (i == 0) out += t.bos;
    out += "<|start_header_id|>" + messages[i].role + "<|end_header_id|>\n\n" +
           strip(messages[i].content) + "<|eot_id|>";
  }
  return out + "<|start_header_id|>assistant<|end_header_id|>\n\n";
}

// Llama 2 has no generation prompt: the prompt ends with the last user turn's " [/INST]".
std::string render_llama2(const ChatTemplate& t, std::span<const ChatMessage> messages) {
  const bool has_system = !messages.empty() && messages[0].role == "system";
  const auto turns = messages.subspan(has_system ? 1 : 0);
  check_alternation(turns);
  std::string out;
  for (size_t i = 0; i < turns.size(); ++i) {
    std::string content = turns[i].content;
    if (i == 0 && has_system)
      content = "<<SYS>>\n" + messages[0].content + "\n<</SYS>>\n\n" + content;
    if (turns[i].role == "user")
      out += t.bos + "[INST] " + strip(content) + " [/INST]";
    else if (turns[i].role == "assistant")
      out += " " + strip(content) + " " + t.eos;
  }
  return out;
}

std::string render_mistral(const ChatTemplate& t, std::span<const ChatMessage> messages) {
  // The alternation check comes first in the template, so a leading system message fails it.
  check_alternation(messages);
  std::string out = t.bos;
  for (const ChatMessage& m : messages) {
    if (m.role == "user")
      out += "[INST] " + m.content + " [/INST]";
    else if (m.role == "assistant")
      out += m.content + t.eos;
    else
      throw ChatTemplateError(
          "the chat template raises: Only user and assistant roles are supported!");
  }
  return out;
}

}  // namespace

const char* kind_name(ChatKind k) {
  switch (k) {
    case ChatKind::ChatML:
      return "chatml";
    case ChatKind::Llama3:
      return "llama3";
    case ChatKind::Llama2:
      return "llama2";
    case ChatKind::Mistral:
      return "mistral";
  }
  return "?";
}

ChatKind kind_from_name(std::string_view name) {
  for (ChatKind k : {ChatKind::ChatML, ChatKind::Llama3, ChatKind::Llama2, ChatKind::Mistral})
    if (name == kind_name(k)) return k;
  throw ChatTemplateError(fmt::format(
      "unknown chat template \"{}\" (expected chatml, llama3, llama2 or mistral)", name));
}

ChatTemplate recognise_chat_template(std::string_view jinja, std::string bos, std::string eos) {
  ChatTemplate t;
  t.bos = std::move(bos);
  t.eos = std::move(eos);
  auto refuse = [&](std::string_view why) {
    return ChatTemplateError(
        fmt::format("chat template not recognised ({}): \"{}\"; pick one with --chat-template "
                    "chatml|llama3|llama2|mistral",
                    why, first_line(jinja)));
  };
  if (contains(jinja, "<|im_start|>")) {
    // Reasoning templates (Qwen3, SmolLM3) rewrite earlier assistant turns around <think>.
    if (contains(jinja, "<think>")) throw refuse("a ChatML template with <think> reasoning");
    t.kind = ChatKind::ChatML;
    t.default_system = chatml_default_system(jinja);
  } else if (contains(jinja, "<|start_header_id|>")) {
    // Llama 3.1 and later write a dated system header and tool sections that the Llama 3 form
    // does not have.
    if (contains(jinja, "Cutting Knowledge Date")) throw refuse("Llama 3.1's dated system header");
    t.kind = ChatKind::Llama3;
  } else if (contains(jinja, "[INST]")) {
    if (contains(jinja, "[SYSTEM_PROMPT]") || contains(jinja, "[AVAILABLE_TOOLS]"))
      throw refuse("a Mistral template with system prompt or tool sections");
    t.kind = contains(jinja, "<<SYS>>") ? ChatKind::Llama2 : ChatKind::Mistral;
  } else {
    throw refuse(jinja.empty() ? "the model has no tokenizer.chat_template" : "unknown family");
  }
  return t;
}

std::string render_chat(const ChatTemplate& t, std::span<const ChatMessage> messages) {
  switch (t.kind) {
    case ChatKind::ChatML:
      return render_chatml(t, messages);
    case ChatKind::Llama3:
      return render_llama3(t, messages);
    case ChatKind::Llama2:
      return render_llama2(t, messages);
    case ChatKind::Mistral:
      return render_mistral(t, messages);
  }
  return {};
}

}  // namespace fairkv::tokenizer
