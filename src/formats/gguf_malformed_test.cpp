// Malformed GGUF images: each mutation of a valid image must be rejected with an error naming the
// right field; truncations and byte flips never crash.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstring>
#include <functional>
#include <random>
#include <string_view>

#include "formats/gguf.h"
#include "formats/gguf_test_util.h"

namespace fairkv::gguf {
namespace {

using namespace testing_util;

// The base image has known keys and tensors; each case patches one field.

struct Image {
  std::vector<uint8_t> bytes;

  // Offset of the u64 length that precedes the string `s` (searching from `from`).
  size_t find_string(std::string_view s, size_t from = 0) const {
    std::vector<uint8_t> pat(8);
    const uint64_t n = s.size();
    std::memcpy(pat.data(), &n, 8);
    pat.insert(pat.end(), s.begin(), s.end());
    auto it = std::search(bytes.begin() + from, bytes.end(), pat.begin(), pat.end());
    if (it == bytes.end()) throw std::runtime_error("pattern not found: " + std::string(s));
    return static_cast<size_t>(it - bytes.begin());
  }
  // Offset of the type tag of key `k`, and of its value.
  size_t key_type(std::string_view k) const { return find_string(k) + 8 + k.size(); }
  size_t key_value(std::string_view k) const { return key_type(k) + 4; }
  // Offset of the n_dims field of tensor `name` (tensor infos follow the metadata).
  size_t tensor_field(std::string_view name) const {
    return find_string(name, find_string("zz.last") + 20) + 8 + name.size();
  }
  size_t tensor_dims(std::string_view name, int d) const { return tensor_field(name) + 4 + 8 * d; }
  size_t tensor_type(std::string_view name) const {
    uint32_t nd;
    std::memcpy(&nd, bytes.data() + tensor_field(name), 4);
    return tensor_field(name) + 4 + 8 * nd;
  }
  size_t tensor_offset(std::string_view name) const { return tensor_type(name) + 4; }

  template <class T>
  void set(size_t off, T v) {
    std::memcpy(bytes.data() + off, &v, sizeof(T));
  }
  template <class T>
  T get(size_t off) const {
    T v;
    std::memcpy(&v, bytes.data() + off, sizeof(T));
    return v;
  }
};

Image base_image() {
  Writer w;
  w.add_string("general.architecture", "llama");
  w.add_u32("general.alignment", 32);
  w.add_u32("test.k1", 1);
  w.add_u32("test.k2", 2);
  w.add_bool("test.flag", true);
  w.add_i32s("test.arr", {1, 2, 3});
  w.add_raw("test.nested", ValueType::ARRAY, nested_payload(2));
  w.add_u8("zz.last", 0);
  w.add_tensor("ta.weight", TensorType::F32, {8, 2}, random_bytes(64, 1));
  w.add_tensor("tb.weight", TensorType::Q8_0, {32, 2}, random_bytes(68, 2));
  return Image{w.serialize()};
}

struct Malformed {
  const char* what;
  std::function<void(Image&)> mutate;
  std::vector<std::string_view> expect;  // substrings of the message
};

TEST(GgufMalformed, BaseImageIsValid) {
  Image img = base_image();
  File f = File::parse(img.bytes.data(), img.bytes.size(), "m.gguf");
  EXPECT_EQ(f.tensors().size(), 2u);
  EXPECT_EQ(f.get_int("test.k2"), 2);
}

TEST(GgufMalformed, EachMutationNamesItsField) {
  constexpr uint64_t kHuge = uint64_t{1} << 60;
  const std::vector<Malformed> cases = {
      {"magic", [](Image& m) { m.bytes[0] = 'X'; }, {"header.magic", "expected \"GGUF\""}},
      {"legacy magic",
       [](Image& m) { std::memcpy(m.bytes.data(), "GGJT", 4); },
       {"header.magic", "pre-GGUF"}},
      {"version 1",
       [](Image& m) { m.set<uint32_t>(4, 1); },
       {"header.version", "version 1 is not supported"}},
      {"version 4", [](Image& m) { m.set<uint32_t>(4, 4); }, {"header.version", "found 4"}},
      {"big-endian",
       [](Image& m) { m.set<uint32_t>(4, 0x03000000); },
       {"header.version", "big-endian"}},
      {"tensor count huge",
       [&](Image& m) { m.set<uint64_t>(8, kHuge); },
       {"header.tensor_count", "1152921504606846976 tensors"}},
      {"tensor count past the metadata",
       [&](Image& m) { m.set<uint64_t>(8, 20); },
       {"header.tensor_count", "20 tensors", "left after the metadata"}},
      {"kv count huge",
       [&](Image& m) { m.set<uint64_t>(16, kHuge); },
       {"header.metadata_kv_count"}},
      {"kv count one more",
       [](Image& m) { m.set<uint64_t>(16, m.get<uint64_t>(16) + 1); },
       // The first tensor info is read as a key/value pair; the info count then runs short.
       {"tensor[0].name", "past the end of the file"}},
      {"key length huge",
       [&](Image& m) { m.set<uint64_t>(24, kHuge); },
       {"metadata[0].key", "string length 1152921504606846976", "past the end"}},
      {"empty key",
       [](Image& m) { m.set<uint64_t>(m.find_string("test.k1"), 0); },
       {"metadata[2].key", "non-empty"}},
      {"duplicate key",
       [](Image& m) { m.bytes[m.find_string("test.k2") + 8 + 6] = '1'; },
       {"metadata 'test.k1'", "unique keys", "entries 2 and 3"}},
      {"value type 13",
       [](Image& m) { m.set<uint32_t>(m.key_type("test.k1"), 13); },
       {"metadata 'test.k1'.type", "value type 0..12, found 13"}},
      {"string value length",
       [&](Image& m) { m.set<uint64_t>(m.key_value("general.architecture"), kHuge); },
       {"metadata 'general.architecture'", "string length", "past the end"}},
      {"bool value 2",
       [](Image& m) { m.bytes[m.key_value("test.flag")] = 2; },
       {"metadata 'test.flag'", "bool (0 or 1), found 2"}},
      {"array element type",
       [](Image& m) { m.set<uint32_t>(m.key_value("test.arr"), 99); },
       {"metadata 'test.arr'.element_type", "found 99"}},
      {"array count huge",
       [&](Image& m) { m.set<uint64_t>(m.key_value("test.arr") + 4, kHuge); },
       {"metadata 'test.arr'.count", "1152921504606846976 INT32", "only"}},
      {"array count 2^64-1",
       [&](Image& m) { m.set<uint64_t>(m.key_value("test.arr") + 4, ~uint64_t{0}); },
       {"metadata 'test.arr'.count", "more than 2^64"}},
      {"nested count huge",
       [&](Image& m) { m.set<uint64_t>(m.key_value("test.nested") + 12 + 4, kHuge); },
       {"metadata 'test.nested'[0].count"}},
      {"nested inner type",
       [](Image& m) { m.set<uint32_t>(m.key_value("test.nested") + 12, 77); },
       {"metadata 'test.nested'[0].element_type", "found 77"}},
      {"alignment not a power of two",
       [](Image& m) { m.set<uint32_t>(m.key_value("general.alignment"), 48); },
       {"metadata 'general.alignment'", "power of two, found 48"}},
      {"alignment zero",
       [](Image& m) { m.set<uint32_t>(m.key_value("general.alignment"), 0); },
       {"metadata 'general.alignment'", "power of two, found 0"}},
      {"alignment type",
       [](Image& m) {
         m.set<uint32_t>(m.key_type("general.alignment"), static_cast<uint32_t>(ValueType::INT32));
       },
       {"metadata 'general.alignment'", "UINT32, found INT32"}},
      {"alignment 128 misaligns offsets",
       [](Image& m) { m.set<uint32_t>(m.key_value("general.alignment"), 128); },
       {"tensor 'tb.weight'.offset", "multiple of the alignment 128, found 64"}},
      {"tensor name length",
       [&](Image& m) { m.set<uint64_t>(m.tensor_field("ta.weight") - 17, kHuge); },
       {"tensor[0].name", "past the end"}},
      {"duplicate tensor name",
       [](Image& m) { m.bytes[m.tensor_field("tb.weight") - 8] = 'a'; },
       {"tensor 'ta.weight'.name", "unique tensor names", "tensors 0 and 1"}},
      {"n_dims 5",
       [](Image& m) { m.set<uint32_t>(m.tensor_field("ta.weight"), 5); },
       {"tensor 'ta.weight'.n_dims", "1 to 4 dimensions, found 5"}},
      {"n_dims 0",
       [](Image& m) { m.set<uint32_t>(m.tensor_field("ta.weight"), 0); },
       {"tensor 'ta.weight'.n_dims", "found 0"}},
      {"dim zero",
       [](Image& m) { m.set<uint64_t>(m.tensor_dims("ta.weight", 1), 0); },
       {"tensor 'ta.weight'.dims[1]", ">= 1, found 0"}},
      {"dim negative",
       [](Image& m) { m.set<int64_t>(m.tensor_dims("ta.weight", 0), -8); },
       {"tensor 'ta.weight'.dims[0]", ">= 1, found -8"}},
      {"element count overflow",
       [](Image& m) {
         m.set<int64_t>(m.tensor_dims("ta.weight", 0), int64_t{1} << 40);
         m.set<int64_t>(m.tensor_dims("ta.weight", 1), int64_t{1} << 40);
       },
       {"tensor 'ta.weight'", "element count that fits in int64"}},
      {"byte size overflow",
       [](Image& m) {
         m.set<int64_t>(m.tensor_dims("ta.weight", 0), int64_t{1} << 31);
         m.set<int64_t>(m.tensor_dims("ta.weight", 1), int64_t{1} << 31);
       },
       {"tensor 'ta.weight'", "byte size that fits in int64"}},
      {"huge but representable tensor",
       [](Image& m) { m.set<int64_t>(m.tensor_dims("ta.weight", 1), int64_t{1} << 40); },
       {"tensor 'ta.weight'.offset", "past the end of the data section"}},
      {"unsupported type",
       [](Image& m) { m.set<uint32_t>(m.tensor_type("ta.weight"), 16); },
       {"tensor 'ta.weight'.type", "ggml type 16 (IQ2_XXS) is not supported",
        "fairkv reads F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, Q2_K, Q3_K, Q4_K, Q5_K, Q6_K"}},
      {"activation-only type",
       [](Image& m) { m.set<uint32_t>(m.tensor_type("ta.weight"), 15); },
       {"tensor 'ta.weight'.type", "ggml type 15 (Q8_K) is not supported"}},
      {"type out of range",
       [](Image& m) { m.set<uint32_t>(m.tensor_type("ta.weight"), 1000); },
       {"tensor 'ta.weight'.type", "ggml type 1000 (unknown)"}},
      {"inner dim not a block multiple",
       [](Image& m) {
         m.set<int64_t>(m.tensor_dims("tb.weight", 0), 16);
         m.set<int64_t>(m.tensor_dims("tb.weight", 1), 4);
       },
       {"tensor 'tb.weight'", "dims[0]", "multiple of the Q8_0 block size 32, found 16"}},
      {"offset not aligned",
       [](Image& m) { m.set<uint64_t>(m.tensor_offset("tb.weight"), 65); },
       {"tensor 'tb.weight'.offset", "multiple of the alignment 32, found 65"}},
      {"offset past the end",
       [](Image& m) { m.set<uint64_t>(m.tensor_offset("tb.weight"), 1 << 20); },
       {"tensor 'tb.weight'.offset", "1048576 + 68 bytes is past the end"}},
      {"offset near 2^64",
       [](Image& m) { m.set<uint64_t>(m.tensor_offset("tb.weight"), ~uint64_t{31}); },
       {"tensor 'tb.weight'.offset", "past the end"}},
      {"overlap",
       [](Image& m) { m.set<uint64_t>(m.tensor_offset("tb.weight"), 32); },
       {"tensor 'tb.weight'.offset", "overlap tensor 'ta.weight' at [0, 64)"}},
      {"same offset",
       [](Image& m) { m.set<uint64_t>(m.tensor_offset("ta.weight"), 64); },
       {".offset", "overlap"}},
      {"data section missing",
       [](Image& m) { m.bytes.resize(m.tensor_offset("tb.weight") + 8); },
       {"data section", "file ends at"}},
      {"last tensor truncated",
       [](Image& m) { m.bytes.resize(m.bytes.size() - 40); },
       {"tensor 'tb.weight'.offset", "64 + 68 bytes is past the end"}},
  };
  for (const Malformed& c : cases) {
    SCOPED_TRACE(c.what);
    Image img = base_image();
    c.mutate(img);
    try {
      File::parse(img.bytes.data(), img.bytes.size(), "bad.gguf");
      ADD_FAILURE() << "accepted";
    } catch (const Error& e) {
      const std::string msg = e.what();
      EXPECT_EQ(msg.rfind("bad.gguf: ", 0), 0u) << msg;
      for (std::string_view p : c.expect) {
        EXPECT_NE(msg.find(p), std::string::npos) << "message: " << msg << "\nmissing: " << p;
      }
    }
  }
}

TEST(GgufMalformed, NestingDeeperThanTheLimitIsRejected) {
  Writer w;
  w.add_raw("deep", ValueType::ARRAY, nested_payload(40));
  const std::vector<uint8_t> img = w.serialize();
  expect_error([&] { File::parse(img.data(), img.size(), "deep.gguf"); },
               {"deep.gguf: metadata 'deep'", "nested at most"});
}

TEST(GgufMalformed, EveryTruncationIsAnErrorNamingTheFile) {
  const Image img = base_image();
  const File whole = File::parse(img.bytes.data(), img.bytes.size(), "whole.gguf");
  // The last tensor's trailing padding is not needed: a file may end right after its data.
  const TensorInfo& last = whole.tensors().back();
  const size_t needed = whole.data_offset() + last.offset + last.n_bytes;
  ASSERT_LT(needed, img.bytes.size());
  size_t last_field = 0;
  for (size_t n = 0; n < img.bytes.size(); ++n) {
    try {
      File::parse(img.bytes.data(), n, "cut.gguf");
      EXPECT_GE(n, needed) << "prefix of " << n << " bytes accepted";
    } catch (const Error& e) {
      const std::string msg = e.what();
      ASSERT_EQ(msg.rfind("cut.gguf: ", 0), 0u) << msg;
      if (n == 2) {
        EXPECT_NE(msg.find("header.magic"), std::string::npos) << msg;
      }
      if (n == 6) {
        EXPECT_NE(msg.find("header.version"), std::string::npos) << msg;
      }
      if (n == 12) {
        EXPECT_NE(msg.find("header.tensor_count"), std::string::npos) << msg;
      }
      if (n == 20) {
        EXPECT_NE(msg.find("header.metadata_kv_count"), std::string::npos) << msg;
      }
      last_field = n;
    }
  }
  EXPECT_EQ(last_field, needed - 1);
}

TEST(GgufMalformed, ByteFlipsNeverCrash) {
  // Every header byte set to a few hostile values: parse or gguf::Error, nothing else.
  const Image base = base_image();
  File ok = File::parse(base.bytes.data(), base.bytes.size(), "x");
  const size_t header_end = ok.data_offset();
  int errors = 0;
  for (size_t pos = 0; pos < header_end; ++pos) {
    for (uint8_t v : {uint8_t{0x00}, uint8_t{0x01}, uint8_t{0x7f}, uint8_t{0xff}}) {
      std::vector<uint8_t> b = base.bytes;
      b[pos] = v;
      try {
        File::parse(b.data(), b.size(), "flip.gguf");
      } catch (const Error&) {
        ++errors;
      }
    }
  }
  EXPECT_GT(errors, 0);
}

}  // namespace
}  // namespace fairkv::gguf
