// A chat's prompt tokens for a loaded model: its own chat template (tokenizer.chat_template) or a
// named family, rendered and tokenized with the control tokens the template writes.
#pragma once

#include <span>
#include <string>
#include <vector>

#include "model/model.h"
#include "tokenizer/chat_template.h"

namespace fairkv::model {

// The model's template, or the family `name` names when not empty (chatml, llama3, llama2,
// mistral). Throws tokenizer::ChatTemplateError naming the template that is not recognised.
tokenizer::ChatTemplate chat_template(const Model& m, const std::string& name = "");

// The rendered chat (assistant header last), tokenized; BOS is added only where the vocabulary
// wants it (and add_bos), and the template did not already write it.
std::vector<int32_t> chat_prompt_ids(const Model& m, const tokenizer::ChatTemplate& t,
                                     std::span<const tokenizer::ChatMessage> messages,
                                     bool add_bos = true);

}  // namespace fairkv::model
