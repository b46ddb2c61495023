// Chat templates: a conversation rendered as the prompt text an instruction-tuned model was
// trained on, as Hugging Face's apply_chat_template renders the model's own Jinja template
// (tokenizer.chat_template in the GGUF metadata) with add_generation_prompt = true.
//
// fairkv has no Jinja interpreter. It recognises the few template families of the models it runs
// by what the template text contains, and renders each family in C++ exactly as jinja2 renders
// that family's published template for a list of {role, content} messages:
// - chatml:  "<|im_start|>" (SmolLM2, Qwen2, OpenHermes); a default system turn written in the
//            template (SmolLM2's "You are a helpful AI assistant named SmolLM, ...") is used when
//            the conversation does not start with a system message.
// - llama3:  "<|start_header_id|>" without the Llama 3.1 date header; contents trimmed, BOS
//            text first.
// - llama2:  "<<SYS>>" with "[INST]": the system message folded into the first user turn.
// - mistral: "[INST]" without "<<SYS>>" (Mistral-7B-Instruct v0.1/v0.2): user and assistant
//            turns only; a system message is an error, as the template raises one.
// Anything else (tools, Llama 3.1's dated system header, Mistral's [SYSTEM_PROMPT]) is refused
// with an error that says what was not recognised; `kind_from_name` lets the user pick a family.
#pragma once

#include <optional>
#include <span>
#include <stdexcept>
#include <string>
#include <string_view>

namespace fairkv::tokenizer {

enum class ChatKind { ChatML, Llama3, Llama2, Mistral };

struct ChatMessage {
  std::string role;  // "system", "user" or "assistant"
  std::string content;
};

struct ChatTemplate {
  ChatKind kind = ChatKind::ChatML;
  // chatml: the system turn's text that the template writes when the first message is not a
  // system message (empty: the template writes none).
  std::optional<std::string> default_system;
  // The values of jinja's bos_token and eos_token: the texts of the vocabulary's BOS and EOS.
  std::string bos, eos;
};

// Thrown for a template that is not recognised, a name that is not a family, or a conversation
// that the template itself would refuse (raise_exception in the Jinja text).
struct ChatTemplateError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

const char* kind_name(ChatKind k);
// "chatml", "llama3", "llama2" or "mistral"; throws ChatTemplateError for anything else.
ChatKind kind_from_name(std::string_view name);

// The family of a Jinja template text, with what it embeds (a default system prompt). `bos` and
// `eos` are stored as given. Throws ChatTemplateError naming the template (its first line).
ChatTemplate recognise_chat_template(std::string_view jinja, std::string bos, std::string eos);

// The prompt text, with the assistant's header last (add_generation_prompt = true).
std::string render_chat(const ChatTemplate& t, std::span<const ChatMessage> messages);

}  // namespace fairkv::tokenizer
