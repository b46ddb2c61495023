#include "model/chat_prompt.h"

namespace fairkv::model {

tokenizer::ChatTemplate chat_template(const Model& m, const std::string& name) {
  const auto& tok = m.tokenizer;
  const std::string bos = tok.bos() >= 0 ? std::string(tok.token_text(tok.bos())) : "";
  const std::string eos = tok.eos() >= 0 ? std::string(tok.token_text(tok.eos())) : "";
  if (name.empty())
    return tokenizer::recognise_chat_template(
        m.file.find_string("tokenizer.chat_template").value_or(""), bos, eos);
  tokenizer::ChatTemplate t;
  t.kind = tokenizer::kind_from_name(name);
  t.bos = bos;
  t.eos = eos;
  return t;
}

std::vector<int32_t> chat_prompt_ids(const Model& m, const tokenizer::ChatTemplate& t,
                                     std::span<const tokenizer::ChatMessage> messages,
                                     bool add_bos) {
  const std::string rendered = tokenizer::render_chat(t, messages);
  const bool bos_written = !t.bos.empty() && rendered.starts_with(t.bos);
  return m.tokenizer.encode(rendered, m.tokenizer.add_bos() && add_bos && !bos_written, true);
}

}  // namespace fairkv::model
