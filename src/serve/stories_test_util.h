// The serving tests' model: stories260K from shared/models, loaded once per test suite; a suite's
// tests skip, naming the file, where it is absent.
#pragma once

#include <gtest/gtest.h>

#include <filesystem>
#include <string>

#include "model/model.h"

namespace fairkv::serve::testing {

inline const std::string kModel = std::string(FAIRKV_SHARED_DIR) + "/models/stories260K.gguf";

class Stories260KTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    if (!model_ && std::filesystem::exists(kModel)) model_ = model::Model::load(kModel).release();
  }
  void SetUp() override {
    if (!model_) GTEST_SKIP() << kModel << " is absent";
  }
  static const model::Model& m() { return *model_; }
  static inline model::Model* model_ = nullptr;  // kept for the process, as each suite's was
};

}  // namespace fairkv::serve::testing
