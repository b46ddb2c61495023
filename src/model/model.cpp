#include "model/model.h"

namespace fairkv::model {

std::unique_ptr<Model> Model::load(const std::string& path, gguf::Load load) {
  gguf::File f = gguf::File::open(path, load);
  ModelConfig c = read_config(f);
  Weights w = bind_weights(f, c);
  // Read into memory, every byte is touched anyway and one more pass is cheap; a mapping is
  // meant to start without reading the file, so it is not scanned.
  if (load == gguf::Load::Read) check_finite(f);
  tokenizer::Tokenizer t = tokenizer::Tokenizer::from_gguf(f);
  if (t.vocab_size() != c.n_vocab)
    throw gguf::Error(path + ": tokenizer.ggml.tokens: " + std::to_string(t.vocab_size()) +
                      " tokens, but token_embd.weight has " + std::to_string(c.n_vocab) + " rows");
  // Views in Weights point into the mapping, which moving the File does not relocate.
  return std::unique_ptr<Model>(new Model{std::move(f), std::move(c), std::move(w), std::move(t)});
}

}  // namespace fairkv::model
