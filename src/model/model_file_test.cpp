// Model files that parse as GGUF but contradict themselves are refused at load, naming the field.
#include <gtest/gtest.h>

#include <cstring>
#include <filesystem>
#include <functional>
#include <limits>
#include <string>

#include "formats/gguf.h"
#include "model/model.h"

namespace fairkv::model {
namespace {

namespace fs = std::filesystem;

const std::string kModel = std::string(FAIRKV_SHARED_DIR) + "/models/stories260K.gguf";

// A copy of the model with `edit` applied to each metadata value (it may change it in place).
std::string edited_copy(
    const std::string& name, const std::function<void(const std::string&, gguf::Value&)>& edit,
    const std::function<void(const std::string&, std::vector<uint8_t>&)>& edit_tensor = {}) {
  const gguf::File f = gguf::File::open(kModel);
  gguf::Writer w;
  for (const gguf::KeyValue& kv : f.metadata()) {
    gguf::Value v = kv.value;
    edit(kv.key, v);
    w.add_value(kv.key, v);
  }
  for (const gguf::TensorInfo& t : f.tensors()) {
    std::vector<uint8_t> bytes(f.data(t), f.data(t) + t.n_bytes);
    if (edit_tensor) edit_tensor(t.name, bytes);
    w.add_tensor(t.name, t.type, t.dims, std::move(bytes));
  }
  const std::string path = (fs::path(::testing::TempDir()) / name).string();
  w.write(path);
  return path;
}

std::string load_error(const std::string& path) {
  try {
    Model::load(path);
  } catch (const std::exception& e) {
    return e.what();
  }
  return "";
}

TEST(ModelFile, ACopyLoadsAsTheOriginal) {
  if (!fs::exists(kModel)) GTEST_SKIP() << kModel << " is absent";
  const std::string path = edited_copy("model_file_same.gguf", [](auto&, auto&) {});
  EXPECT_EQ(load_error(path), "");
  fs::remove(path);
}

TEST(ModelFile, BlockCountBelowTheLayersHeldIsRefused) {
  if (!fs::exists(kModel)) GTEST_SKIP() << kModel << " is absent";
  const std::string path = edited_copy("model_file_blocks.gguf", [](const std::string& k, auto& v) {
    if (k == "llama.block_count") v.i = 4;  // the file holds 5 layers
  });
  const std::string e = load_error(path);
  EXPECT_NE(e.find("block_count"), std::string::npos) << e;
  EXPECT_NE(e.find("blk.4."), std::string::npos) << e;
  fs::remove(path);
}

TEST(ModelFile, TokenTypesOutOfRangeAreRefused) {
  if (!fs::exists(kModel)) GTEST_SKIP() << kModel << " is absent";
  const std::string path = edited_copy("model_file_types.gguf", [](const std::string& k, auto& v) {
    if (k == "tokenizer.ggml.token_type") {
      v.ints[7] = 9;
      v.numbers[7] = 9;
    }
  });
  const std::string e = load_error(path);
  EXPECT_NE(e.find("tokenizer.ggml.token_type[7]"), std::string::npos) << e;
  fs::remove(path);
}

TEST(ModelFile, ANonFiniteWeightIsRefusedWhenReadIntoMemory) {
  if (!fs::exists(kModel)) GTEST_SKIP() << kModel << " is absent";
  const std::string path = edited_copy(
      "model_file_nan.gguf", [](auto&, auto&) {},
      [](const std::string& name, std::vector<uint8_t>& bytes) {
        if (name != "blk.2.ffn_up.weight") return;
        const float nan = std::numeric_limits<float>::quiet_NaN();
        std::memcpy(bytes.data() + 4 * 37, &nan, 4);  // F32: element 37
      });
  std::string e;
  try {
    Model::load(path, gguf::Load::Read);
  } catch (const std::exception& x) {
    e = x.what();
  }
  EXPECT_NE(e.find("tensor 'blk.2.ffn_up.weight': element 37 is not a finite number"),
            std::string::npos)
      << e;
  fs::remove(path);
}

}  // namespace
}  // namespace fairkv::model
