// The chat template families against jinja2: every expected string below is what Python's
// jinja2 3.1 rendered for the template text beside it (with Hugging Face's trim_blocks and
// lstrip_blocks, which change nothing for these templates) for the same messages,
// add_generation_prompt = true and the bos_token / eos_token given. The templates are the
// published ones: SmolLM2-135M-Instruct's as its GGUF stores it, Qwen2-Instruct's,
// OpenHermes-2.5's (ChatML without a default system prompt), Meta-Llama-3-8B-Instruct's,
// Llama-2-chat's and Mistral-7B-Instruct-v0.2's.
#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "tokenizer/chat_template.h"

namespace fairkv::tokenizer {
namespace {

const char* kSmolLM2 =
    R"J({% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system
You are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>
' }}{% endif %}{{'<|im_start|>' + message['role'] + '
' + message['content'] + '<|im_end|>' + '
'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant
' }}{% endif %})J";

const char* kQwen2 =
    R"J({% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %})J";

const char* kOpenHermes =
    R"J({% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %})J";

const char* kLlama3 =
    R"J({% set loop_messages = messages %}{% for message in loop_messages %}{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>

'+ message['content'] | trim + '<|eot_id|>' %}{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>

' }}{% endif %})J";

const char* kLlama2 =
    R"J({% if messages[0]['role'] == 'system' %}{% set loop_messages = messages[1:] %}{% set system_message = messages[0]['content'] %}{% else %}{% set loop_messages = messages %}{% set system_message = false %}{% endif %}{% for message in loop_messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}{% if loop.index0 == 0 and system_message != false %}{% set content = '<<SYS>>\n' + system_message + '\n<</SYS>>\n\n' + message['content'] %}{% else %}{% set content = message['content'] %}{% endif %}{% if message['role'] == 'user' %}{{ bos_token + '[INST] ' + content.strip() + ' [/INST]' }}{% elif message['role'] == 'assistant' %}{{ ' '  + content.strip() + ' ' + eos_token }}{% endif %}{% endfor %})J";

const char* kMistral =
    R"J({{ bos_token }}{% for message in messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}{% if message['role'] == 'user' %}{{ '[INST] ' + message['content'] + ' [/INST]' }}{% elif message['role'] == 'assistant' %}{{ message['content'] + eos_token}}{% else %}{{ raise_exception('Only user and assistant roles are supported!') }}{% endif %}{% endfor %})J";

// The three conversations every family renders: one question; a system message and a question
// (both with whitespace at their ends, which some templates trim); and three turns, the last
// ending in a no-break space and a tab (Python's strip removes both).
const std::vector<ChatMessage> kUser = {{"user", "What is the capital of France?"}};
const std::vector<ChatMessage> kSystemUser = {{"system", " Answer in one word. "},
                                              {"user", "Capital of Italy?\n"}};
const std::vector<ChatMessage> kMulti = {{"user", "Hello"},
                                         {"assistant", "   I am an assistant   "},
                                         {"user", "Another question\u00a0\t"}};

std::string render(const char* jinja, const std::vector<ChatMessage>& m, const char* bos,
                   const char* eos) {
  return render_chat(recognise_chat_template(jinja, bos, eos), m);
}

TEST(ChatTemplate, SmolLM2WritesItsDefaultSystemPrompt) {
  const ChatTemplate t = recognise_chat_template(kSmolLM2, "<|im_start|>", "<|im_end|>");
  EXPECT_EQ(t.kind, ChatKind::ChatML);
  ASSERT_TRUE(t.default_system);
  EXPECT_EQ(*t.default_system,
            "You are a helpful AI assistant named SmolLM, trained by Hugging Face");
  EXPECT_EQ(render_chat(t, kUser),
            "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging "
            "Face<|im_end|>\n<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_"
            "start|>assistant\n");
  EXPECT_EQ(render_chat(t, kSystemUser),
            "<|im_start|>system\n Answer in one word. <|im_end|>\n<|im_start|>user\nCapital of "
            "Italy?\n<|im_end|>\n<|im_start|>assistant\n");
  EXPECT_EQ(render_chat(t, kMulti),
            "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging "
            "Face<|im_end|>\n<|im_start|>user\nHello<|im_end|>\n<|im_start|>assistant\n   I am "
            "an assistant   <|im_end|>\n<|im_start|>user\nAnother question\u00a0\t<|im_end|>\n<|"
            "im_start|>assistant\n");
  // No messages: the loop never runs, so not even the default system turn is written.
  EXPECT_EQ(render_chat(t, {}), "<|im_start|>assistant\n");
}

TEST(ChatTemplate, ChatMLWithEscapedNewlinesOrNoDefault) {
  EXPECT_EQ(render(kQwen2, kUser, "", "<|im_end|>"),
            "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\nWhat "
            "is the capital of France?<|im_end|>\n<|im_start|>assistant\n");
  EXPECT_EQ(render(kQwen2, kSystemUser, "", "<|im_end|>"),
            "<|im_start|>system\n Answer in one word. <|im_end|>\n<|im_start|>user\nCapital of "
            "Italy?\n<|im_end|>\n<|im_start|>assistant\n");
  EXPECT_FALSE(recognise_chat_template(kOpenHermes, "<s>", "<|im_end|>").default_system);
  EXPECT_EQ(render(kOpenHermes, kUser, "<s>", "<|im_end|>"),
            "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n");
  EXPECT_EQ(render(kOpenHermes, kMulti, "<s>", "<|im_end|>"),
            "<|im_start|>user\nHello<|im_end|>\n<|im_start|>assistant\n   I am an assistant   "
            "<|im_end|>\n<|im_start|>user\nAnother question\u00a0\t<|im_end|>\n<|im_start|>"
            "assistant\n");
}

TEST(ChatTemplate, Llama3TrimsContentsAndStartsWithBos) {
  const char* bos = "<|begin_of_text|>";
  EXPECT_EQ(recognise_chat_template(kLlama3, bos, "<|eot_id|>").kind, ChatKind::Llama3);
  EXPECT_EQ(render(kLlama3, kUser, bos, "<|eot_id|>"),
            "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nWhat is the capital of "
            "France?<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n");
  EXPECT_EQ(render(kLlama3, kSystemUser, bos, "<|eot_id|>"),
            "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nAnswer in one "
            "word.<|eot_id|><|start_header_id|>user<|end_header_id|>\n\nCapital of "
            "Italy?<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n");
  EXPECT_EQ(render(kLlama3, kMulti, bos, "<|eot_id|>"),
            "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nHello<|eot_id|><|start_"
            "header_id|>assistant<|end_header_id|>\n\nI am an assistant<|eot_id|><|start_header_"
            "id|>user<|end_header_id|>\n\nAnother question<|eot_id|><|start_header_id|>assistant<"
            "|end_header_id|>\n\n");
}

TEST(ChatTemplate, Llama2FoldsTheSystemMessageIntoTheFirstTurn) {
  EXPECT_EQ(recognise_chat_template(kLlama2, "<s>", "</s>").kind, ChatKind::Llama2);
  EXPECT_EQ(render(kLlama2, kUser, "<s>", "</s>"),
            "<s>[INST] What is the capital of France? [/INST]");
  EXPECT_EQ(render(kLlama2, kSystemUser, "<s>", "</s>"),
            "<s>[INST] <<SYS>>\n Answer in one word. \n<</SYS>>\n\nCapital of Italy? [/INST]");
  EXPECT_EQ(render(kLlama2, kMulti, "<s>", "</s>"),
            "<s>[INST] Hello [/INST] I am an assistant </s><s>[INST] Another question [/INST]");
  const std::vector<ChatMessage> two_users = {{"user", "a"}, {"user", "b"}};
  EXPECT_THROW(render(kLlama2, two_users, "<s>", "</s>"), ChatTemplateError);
}

TEST(ChatTemplate, MistralHasNoSystemRole) {
  EXPECT_EQ(recognise_chat_template(kMistral, "<s>", "</s>").kind, ChatKind::Mistral);
  EXPECT_EQ(render(kMistral, kUser, "<s>", "</s>"),
            "<s>[INST] What is the capital of France? [/INST]");
  EXPECT_EQ(render(kMistral, kMulti, "<s>", "</s>"),
            "<s>[INST] Hello [/INST]   I am an assistant   </s>[INST] Another "
            "question\u00a0\t [/INST]");
  // jinja2 raises "Conversation roles must alternate ..." for a leading system message.
  try {
    render(kMistral, kSystemUser, "<s>", "</s>");
    FAIL() << "a system message should be refused";
  } catch (const ChatTemplateError& e) {
    EXPECT_NE(std::string(e.what()).find("must alternate"), std::string::npos) << e.what();
  }
}

TEST(ChatTemplate, UnknownTemplatesAreRefusedByName) {
  const char* gemma =
      "{% for message in messages %}{{ '<start_of_turn>' + message['role'] + '\\n' + "
      "message['content'] | trim + '<end_of_turn>\\n' }}{% endfor %}";
  try {
    recognise_chat_template(gemma, "<bos>", "<eos>");
    FAIL() << "gemma's template should be refused";
  } catch (const ChatTemplateError& e) {
    const std::string what = e.what();
    EXPECT_NE(what.find("not recognised"), std::string::npos) << what;
    EXPECT_NE(what.find("<start_of_turn>"), std::string::npos) << what;  // names the template
    EXPECT_NE(what.find("--chat-template"), std::string::npos) << what;
  }
  EXPECT_THROW(recognise_chat_template("", "", ""), ChatTemplateError);
  // Llama 3.1's dated system header and Qwen3's <think> are not the forms rendered here.
  EXPECT_THROW(recognise_chat_template("<|start_header_id|>Cutting Knowledge Date: ", "", ""),
               ChatTemplateError);
  EXPECT_THROW(recognise_chat_template("<|im_start|><think>", "", ""), ChatTemplateError);
}

TEST(ChatTemplate, FamiliesByName) {
  for (const char* name : {"chatml", "llama3", "llama2", "mistral"})
    EXPECT_STREQ(kind_name(kind_from_name(name)), name);
  EXPECT_THROW(kind_from_name("gemma"), ChatTemplateError);
}

}  // namespace
}  // namespace fairkv::tokenizer
