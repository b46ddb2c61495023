// A loaded model: the mapped GGUF file, its configuration, weights and tokenizer.
#pragma once

#include <memory>
#include <string>

#include "formats/gguf.h"
#include "model/config.h"
#include "model/weights.h"
#include "tokenizer/tokenizer.h"

namespace fairkv::model {

struct Model {
  gguf::File file;
  ModelConfig config;
  Weights weights;
  fairkv::tokenizer::Tokenizer tokenizer;

  // Maps (or reads, see gguf::Load) and validates the file; throws gguf::Error naming the file
  // and the field.
  static std::unique_ptr<Model> load(const std::string& path, gguf::Load load = gguf::Load::Map);
};

}  // namespace fairkv::model
