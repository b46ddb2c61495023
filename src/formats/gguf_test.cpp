// GGUF reader and writer: round trips of every value and tensor type, and the shared model
// files. Malformed images: gguf_malformed_test.cpp.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <random>

#include <sys/stat.h>

#include "formats/gguf.h"
#include "formats/gguf_test_util.h"

namespace fairkv::gguf {
namespace {

namespace fs = std::filesystem;
using namespace testing_util;

TEST(GgufTypes, SizesAndNames) {
  EXPECT_EQ(tensor_bytes(TensorType::F32, {3, 5}, "x"), 60u);
  EXPECT_EQ(tensor_bytes(TensorType::F16, {3, 5}, "x"), 30u);
  EXPECT_EQ(tensor_bytes(TensorType::BF16, {7}, "x"), 14u);
  EXPECT_EQ(tensor_bytes(TensorType::Q8_0, {64, 3}, "x"), 2u * 3u * 34u);
  EXPECT_EQ(tensor_bytes(TensorType::Q4_0, {32, 2, 2}, "x"), 4u * 18u);
  // ggml's block sizes: elements and bytes per block of every type added with the K-quants.
  EXPECT_EQ(tensor_bytes(TensorType::Q4_1, {64, 3}, "x"), 6u * 20u);
  EXPECT_EQ(tensor_bytes(TensorType::Q5_0, {64, 3}, "x"), 6u * 22u);
  EXPECT_EQ(tensor_bytes(TensorType::Q5_1, {64, 3}, "x"), 6u * 24u);
  EXPECT_EQ(tensor_bytes(TensorType::Q2_K, {512, 3}, "x"), 6u * 84u);
  EXPECT_EQ(tensor_bytes(TensorType::Q3_K, {512, 3}, "x"), 6u * 110u);
  EXPECT_EQ(tensor_bytes(TensorType::Q4_K, {512, 3}, "x"), 6u * 144u);
  EXPECT_EQ(tensor_bytes(TensorType::Q5_K, {512, 3}, "x"), 6u * 176u);
  EXPECT_EQ(tensor_bytes(TensorType::Q6_K, {512, 3}, "x"), 6u * 210u);
  expect_error([] { tensor_bytes(TensorType::Q4_K, {128}, "w"); },
               {"w: dims[0]", "block size 256"});
  for (uint32_t id : {3u, 6u, 7u, 10u, 11u, 12u, 13u, 14u}) {
    EXPECT_TRUE(is_tensor_type(id)) << id;
    EXPECT_EQ(static_cast<uint32_t>(static_cast<TensorType>(id)), id);
  }
  for (uint32_t id : {4u, 5u, 9u, 15u, 16u, 29u, 31u, 39u}) EXPECT_FALSE(is_tensor_type(id)) << id;
  EXPECT_STREQ(tensor_type_name(TensorType::Q5_K), "Q5_K");
  EXPECT_EQ(tensor_type_from_name("Q8_0"), TensorType::Q8_0);
  EXPECT_EQ(tensor_type_from_name("bf16"), TensorType::BF16);
  EXPECT_FALSE(tensor_type_from_name("q4_k").has_value());
  EXPECT_TRUE(is_tensor_type(30));
  EXPECT_FALSE(is_tensor_type(2000));
  expect_error([] { tensor_bytes(TensorType::Q4_0, {33}, "w"); }, {"w: dims[0]", "block size 32"});
  expect_error([] { tensor_bytes(TensorType::F32, {1, 2, 3, 4, 5}, "w"); }, {"w: n_dims"});
  expect_error([] { tensor_bytes(TensorType::F32, {4, 0}, "w"); }, {"w: dims[1]", ">= 1"});
  expect_error(
      [] {
        tensor_bytes(TensorType::F32, {int64_t{1} << 62, 4}, "w");
      },
      {"element count"});
  expect_error([] { tensor_bytes(TensorType::F32, {int64_t{1} << 62}, "w"); }, {"byte size"});
}

TEST(GgufRoundTrip, EveryValueType) {
  Writer w;
  w.add_u8("t.u8", 250);
  w.add_i8("t.i8", -120);
  w.add_u16("t.u16", 65000);
  w.add_i16("t.i16", -32000);
  w.add_u32("t.u32", 4000000000u);
  w.add_i32("t.i32", -2000000000);
  w.add_u64("t.u64", std::numeric_limits<uint64_t>::max());
  w.add_i64("t.i64", std::numeric_limits<int64_t>::min());
  w.add_f32("t.f32", 1.5e-5f);
  w.add_f64("t.f64", 3.141592653589793);
  w.add_bool("t.true", true);
  w.add_bool("t.false", false);
  w.add_string("t.str", "caf\xc3\xa9 \xe2\x96\x81the");
  w.add_string("t.empty", "");
  w.add_strings("t.strs", {"<unk>", "", "\xe2\x96\x81hello"});
  w.add_f32s("t.f32s", {0.f, -1.25f, 3e38f});
  w.add_i32s("t.i32s", {-1, 0, 2147483647});
  w.add_strings("t.no_strs", {});
  Value u64s;
  u64s.type = ValueType::ARRAY;
  u64s.elem_type = ValueType::UINT64;
  u64s.ints = {0, -1, 5};  // -1 is 2^64-1 as UINT64
  w.add_value("t.u64s", u64s);
  Value bools;
  bools.type = ValueType::ARRAY;
  bools.elem_type = ValueType::BOOL;
  bools.ints = {1, 0, 1};
  w.add_value("t.bools", bools);
  Value f64s;
  f64s.type = ValueType::ARRAY;
  f64s.elem_type = ValueType::FLOAT64;
  f64s.numbers = {1e300, -2.5};
  w.add_value("t.f64s", f64s);
  for (ValueType et : {ValueType::UINT8, ValueType::INT8, ValueType::UINT16, ValueType::INT16,
                       ValueType::UINT32, ValueType::INT64}) {
    Value a;
    a.type = ValueType::ARRAY;
    a.elem_type = et;
    a.ints = {1, 2, 3};
    w.add_value(std::string("t.arr.") + value_type_name(et), a);
  }
  w.add_raw("t.nested", ValueType::ARRAY, nested_payload(3));
  // An ARRAY of two ARRAYs of STRING.
  {
    std::vector<uint8_t> p(12);
    const auto at = static_cast<uint32_t>(ValueType::ARRAY);
    const uint64_t two = 2;
    std::memcpy(p.data(), &at, 4);
    std::memcpy(p.data() + 4, &two, 8);
    for (int k = 0; k < 2; ++k) {
      std::vector<uint8_t> s(12);
      const auto st = static_cast<uint32_t>(ValueType::STRING);
      const uint64_t one = 1, len = 2;
      std::memcpy(s.data(), &st, 4);
      std::memcpy(s.data() + 4, &one, 8);
      s.insert(s.end(), reinterpret_cast<const uint8_t*>(&len),
               reinterpret_cast<const uint8_t*>(&len) + 8);
      s.insert(s.end(), {'h', 'i'});
      p.insert(p.end(), s.begin(), s.end());
    }
    w.add_raw("t.nested_strs", ValueType::ARRAY, p);
  }

  const std::vector<uint8_t> img = w.serialize();
  File f = File::parse(img.data(), img.size(), "mem.gguf");
  EXPECT_EQ(f.version(), 3u);
  EXPECT_EQ(f.alignment(), 32u);
  EXPECT_TRUE(f.tensors().empty());
  EXPECT_EQ(f.get_int("t.u8"), 250);
  EXPECT_EQ(f.find("t.u8")->type, ValueType::UINT8);
  EXPECT_EQ(f.get_int("t.i8"), -120);
  EXPECT_EQ(f.get_int("t.u16"), 65000);
  EXPECT_EQ(f.get_int("t.i16"), -32000);
  EXPECT_EQ(f.get_int("t.u32"), 4000000000LL);
  EXPECT_EQ(f.get_int("t.i32"), -2000000000);
  EXPECT_EQ(f.find("t.u64")->u, std::numeric_limits<uint64_t>::max());
  expect_error([&] { f.get_int("t.u64"); }, {"mem.gguf: metadata 't.u64'", "fits in int64"});
  EXPECT_EQ(f.get_int("t.i64"), std::numeric_limits<int64_t>::min());
  EXPECT_EQ(f.get_float("t.f32"), static_cast<double>(1.5e-5f));
  EXPECT_EQ(f.get_float("t.f64"), 3.141592653589793);
  EXPECT_EQ(f.get_float("t.u16"), 65000.0);
  EXPECT_TRUE(f.get_bool("t.true"));
  EXPECT_FALSE(f.get_bool("t.false"));
  EXPECT_EQ(f.get_string("t.str"), "caf\xc3\xa9 \xe2\x96\x81the");
  EXPECT_EQ(f.get_string("t.empty"), "");
  EXPECT_EQ(f.get_strings("t.strs"), (std::vector<std::string>{"<unk>", "", "\xe2\x96\x81hello"}));
  EXPECT_EQ(f.get_numbers("t.f32s"), (std::vector<double>{0., -1.25, static_cast<double>(3e38f)}));
  EXPECT_EQ(f.get_numbers("t.i32s"), (std::vector<double>{-1, 0, 2147483647}));
  EXPECT_EQ(f.find("t.i32s")->ints, (std::vector<int64_t>{-1, 0, 2147483647}));
  EXPECT_EQ(f.find("t.no_strs")->array_size(), 0u);
  EXPECT_EQ(f.find("t.u64s")->ints, (std::vector<int64_t>{0, -1, 5}));
  EXPECT_EQ(f.find("t.u64s")->numbers[1], 18446744073709551615.0);
  EXPECT_EQ(f.find("t.bools")->ints, (std::vector<int64_t>{1, 0, 1}));
  EXPECT_EQ(f.get_numbers("t.f64s"), (std::vector<double>{1e300, -2.5}));
  for (ValueType et : {ValueType::UINT8, ValueType::INT8, ValueType::UINT16, ValueType::INT16,
                       ValueType::UINT32, ValueType::INT64}) {
    const Value* v = f.find(std::string("t.arr.") + value_type_name(et));
    ASSERT_NE(v, nullptr);
    EXPECT_EQ(v->elem_type, et);
    EXPECT_EQ(v->ints, (std::vector<int64_t>{1, 2, 3}));
  }
  const Value* nested = f.find("t.nested");
  ASSERT_NE(nested, nullptr);
  EXPECT_EQ(nested->elem_type, ValueType::ARRAY);
  EXPECT_EQ(nested->array_size(), 1u);
  EXPECT_EQ(f.find("t.nested_strs")->array_size(), 2u);
  // Everything after the nested arrays was still read in place.
  EXPECT_EQ(f.metadata().back().key, "t.nested_strs");

  // Typed getters name the file, the key and what they wanted.
  expect_error([&] { f.get_string("t.u8"); }, {"mem.gguf: metadata 't.u8'", "STRING", "UINT8"});
  expect_error([&] { f.get_int("absent.key"); }, {"metadata 'absent.key'", "absent"});
  expect_error([&] { f.get_strings("t.f32s"); }, {"ARRAY of STRING", "ARRAY of FLOAT32"});
  expect_error([&] { f.get_numbers("t.strs"); }, {"numeric ARRAY"});
  expect_error([&] { f.get_bool("t.u8"); }, {"BOOL"});
  EXPECT_FALSE(f.find_int("absent").has_value());
  EXPECT_EQ(f.find_string("t.str").value(), "caf\xc3\xa9 \xe2\x96\x81the");
  EXPECT_EQ(f.find("t.i32s")->to_string(), "[-1, 0, 2147483647]");
  EXPECT_EQ(f.find("t.strs")->to_string(2), "[\"<unk>\", \"\", ... (3 STRING)]");
  EXPECT_EQ(f.find("t.true")->to_string(), "true");

  // A reader's Value written back gives the same bytes for the same entry.
  Writer w2;
  for (const KeyValue& kv : f.metadata()) {
    if (kv.value.type == ValueType::ARRAY && kv.value.elem_type == ValueType::ARRAY) continue;
    w2.add_value(kv.key, kv.value);
  }
  const std::vector<uint8_t> img2 = w2.serialize();
  File f2 = File::parse(img2.data(), img2.size(), "mem2.gguf");
  for (const KeyValue& kv : f2.metadata()) {
    const Value* a = f.find(kv.key);
    ASSERT_NE(a, nullptr);
    EXPECT_EQ(a->to_string(100), kv.value.to_string(100)) << kv.key;
  }
}

struct TensorCase {
  const char* name;
  TensorType type;
  std::vector<int64_t> dims;
};

std::vector<TensorCase> tensor_cases() {
  return {{"a.f32", TensorType::F32, {5, 3}},         {"b.f16", TensorType::F16, {7}},
          {"c.bf16", TensorType::BF16, {2, 3, 4, 5}}, {"d.q8_0", TensorType::Q8_0, {64, 3}},
          {"e.q4_0", TensorType::Q4_0, {32, 2, 3}},   {"f.f32", TensorType::F32, {1}},
          {"g.q4_1", TensorType::Q4_1, {32, 2}},      {"h.q5_0", TensorType::Q5_0, {64}},
          {"i.q5_1", TensorType::Q5_1, {32, 3}},      {"j.q2_k", TensorType::Q2_K, {256, 2}},
          {"k.q3_k", TensorType::Q3_K, {256}},        {"l.q4_k", TensorType::Q4_K, {512, 2}},
          {"m.q5_k", TensorType::Q5_K, {256, 3}},     {"n.q6_k", TensorType::Q6_K, {256, 1, 2}}};
}

TEST(GgufRoundTrip, EveryTensorTypeAndAlignment) {
  const std::vector<TensorCase> cases = tensor_cases();
  for (uint64_t align : {uint64_t{32}, uint64_t{1}, uint64_t{64}, uint64_t{4096}}) {
    Writer w;
    if (align != 32) w.set_alignment(align);
    w.add_string("general.architecture", "test");
    std::vector<std::vector<uint8_t>> data;
    uint32_t seed = 1;
    for (const TensorCase& c : cases) {
      data.push_back(random_bytes(tensor_bytes(c.type, c.dims, c.name), seed++));
      w.add_tensor(c.name, c.type, c.dims, data.back());
    }
    const std::vector<uint8_t> img = w.serialize();
    File f = File::parse(img.data(), img.size(), "t.gguf");
    EXPECT_EQ(f.alignment(), align);
    EXPECT_EQ(f.data_offset() % align, 0u);
    ASSERT_EQ(f.tensors().size(), cases.size());
    for (size_t k = 0; k < cases.size(); ++k) {
      const TensorCase& c = cases[k];
      const TensorInfo* t = f.find_tensor(c.name);
      ASSERT_NE(t, nullptr);
      EXPECT_EQ(&f.tensors()[k], t);  // file order kept
      EXPECT_EQ(t->type, c.type);
      EXPECT_EQ(t->dims, c.dims);
      EXPECT_EQ(t->offset % align, 0u);
      int64_t n = 1;
      for (int64_t d : c.dims) n *= d;
      EXPECT_EQ(t->n_elements, n);
      ASSERT_EQ(t->n_bytes, data[k].size());
      EXPECT_EQ(std::memcmp(f.data(*t), data[k].data(), t->n_bytes), 0) << c.name;
    }
    EXPECT_EQ(f.find_tensor("missing"), nullptr);
  }
}

TEST(GgufRoundTrip, StreamedRowsMatchBytesAndFileMatchesImage) {
  // A tensor produced row by row gives the same file as the same bytes given up front, and
  // write() puts exactly serialize()'s bytes on disk.
  const std::vector<int64_t> dims = {64, 9};
  const uint64_t n = tensor_bytes(TensorType::Q8_0, dims, "x");
  const std::vector<uint8_t> bytes = random_bytes(n, 7);
  const uint64_t row = n / 9;
  Writer a, b;
  a.add_string("k", "v");
  b.add_string("k", "v");
  a.add_tensor("w", TensorType::Q8_0, dims, bytes);
  int calls = 0;
  b.add_tensor("w", TensorType::Q8_0, dims, [&](int64_t r0, int64_t nr, uint8_t* dst) {
    ++calls;
    std::memcpy(dst, bytes.data() + r0 * row, nr * row);
  });
  uint64_t last_done = 0, last_total = 0;
  b.set_progress([&](uint64_t done, uint64_t total) {
    last_done = done;
    last_total = total;
  });
  const std::vector<uint8_t> img = a.serialize();
  EXPECT_EQ(b.serialize(), img);
  EXPECT_GE(calls, 1);
  EXPECT_EQ(last_done, n);
  EXPECT_EQ(last_total, n);

  const fs::path path = fs::path(testing::TempDir()) / "gguf_test_stream.gguf";
  b.write(path.string());
  EXPECT_FALSE(fs::exists(path.string() + ".partial"));
  std::ifstream in(path, std::ios::binary);
  std::vector<uint8_t> disk((std::istreambuf_iterator<char>(in)), {});
  EXPECT_EQ(disk, img);
  File f = File::open(path.string());
  EXPECT_EQ(f.file_size(), img.size());
  EXPECT_EQ(std::memcmp(f.data(*f.find_tensor("w")), bytes.data(), n), 0);
  // Read into memory instead of mapped: the same metadata and bytes.
  File r = File::open(path.string(), Load::Read);
  EXPECT_EQ(r.file_size(), img.size());
  EXPECT_EQ(r.get_string("k"), "v");
  EXPECT_EQ(std::memcmp(r.data(*r.find_tensor("w")), bytes.data(), n), 0);
  fs::remove(path);
}

TEST(GgufWriter, RejectsBadInput) {
  Writer w;
  w.add_u32("a", 1);
  expect_error([&] { w.add_u32("a", 2); }, {"metadata 'a'", "unique"});
  expect_error([&] { w.add_string("", "x"); }, {"non-empty"});
  expect_error([&] { w.set_alignment(48); }, {"general.alignment", "power of two"});
  expect_error([&] { w.add_tensor("t", TensorType::F32, {4}, std::vector<uint8_t>(15)); },
               {"tensor 't'", "expected 16 bytes"});
  expect_error([&] { w.add_tensor("t", TensorType::Q8_0, {16}, std::vector<uint8_t>(17)); },
               {"tensor 't'", "dims[0]", "block size 32"});
  w.add_tensor("t", TensorType::F32, {4}, std::vector<uint8_t>(16));
  expect_error([&] { w.add_tensor("t", TensorType::F32, {4}, std::vector<uint8_t>(16)); },
               {"tensor 't'", "unique"});
  expect_error([&] { w.write("/nonexistent-dir/x.gguf"); }, {"/nonexistent-dir/x.gguf", "open"});
}

TEST(GgufRead, Version2IsAcceptedAndFileErrorsNameThePath) {
  Writer w;
  w.add_string("general.architecture", "llama");
  std::vector<uint8_t> img = w.serialize();
  img[4] = 2;
  EXPECT_EQ(File::parse(img.data(), img.size(), "v2.gguf").version(), 2u);
  expect_error([] { File::open("/nonexistent/model.gguf"); }, {"/nonexistent/model.gguf: open"});
  expect_error([] { File::open("/tmp"); }, {"/tmp: open", "regular", "a directory"});
  expect_error([] { File::open("/tmp", Load::Read); }, {"/tmp: open", "a directory"});
  expect_error([] { File::open("/dev/zero"); }, {"/dev/zero: open", "a character device"});
}

TEST(GgufRead, AFifoIsRefusedWithoutWaitingForAWriter) {
  // Opening a FIFO for reading blocks until a writer comes: the reader must not wait for one.
  const fs::path fifo = fs::path(::testing::TempDir()) / "gguf_test.fifo";
  fs::remove(fifo);
  ASSERT_EQ(mkfifo(fifo.c_str(), 0600), 0);
  expect_error([&] { File::open(fifo.string()); }, {"gguf_test.fifo: open", "a FIFO"});
  fs::remove(fifo);
}

TEST(GgufRead, EmptyFileNamesTheMagic) {
  const fs::path empty = fs::path(::testing::TempDir()) / "gguf_test_empty.gguf";
  std::ofstream(empty).close();
  expect_error([&] { File::open(empty.string()); }, {"gguf_test_empty.gguf: header.magic"});
  fs::remove(empty);
}

// ---------------------------------------------------------------------------------------------
// The shared model files.

std::string shared(const std::string& rel) {
  return std::string(FAIRKV_SHARED_DIR) + "/" + rel;
}

TEST(GgufShared, Stories260K) {
  const std::string path = shared("models/stories260K.gguf");
  if (!fs::exists(path)) GTEST_SKIP() << path << " is absent";
  File f = File::open(path);
  EXPECT_EQ(f.version(), 3u);
  EXPECT_EQ(f.get_string("general.architecture"), "llama");
  EXPECT_EQ(f.get_int("llama.block_count"), 5);
  EXPECT_EQ(f.get_int("llama.embedding_length"), 64);
  EXPECT_EQ(f.get_int("llama.attention.head_count"), 8);
  EXPECT_EQ(f.get_int("llama.attention.head_count_kv"), 4);
  EXPECT_EQ(f.get_int("llama.feed_forward_length"), 172);
  EXPECT_EQ(f.get_int("llama.rope.dimension_count"), 8);
  EXPECT_FLOAT_EQ(f.get_float("llama.attention.layer_norm_rms_epsilon"), 1e-5f);
  EXPECT_EQ(f.get_string("tokenizer.ggml.model"), "llama");
  const auto& tokens = f.get_strings("tokenizer.ggml.tokens");
  ASSERT_EQ(tokens.size(), 512u);
  EXPECT_EQ(tokens[0], "<unk>");
  EXPECT_EQ(tokens[1], "<s>");
  EXPECT_EQ(tokens[2], "</s>");
  EXPECT_EQ(tokens[3 + 0x41], "<0x41>");
  EXPECT_EQ(f.get_numbers("tokenizer.ggml.scores").size(), 512u);
  EXPECT_EQ(f.get_numbers("tokenizer.ggml.token_type")[3], 6.0);  // byte token
  EXPECT_EQ(f.get_int("tokenizer.ggml.bos_token_id"), 1);
  EXPECT_EQ(f.get_int("tokenizer.ggml.eos_token_id"), 2);
  // 5 layers x 9 tensors + embedding, final norm, output.
  EXPECT_EQ(f.tensors().size(), 5u * 9u + 3u);
  uint64_t end = 0;
  for (const TensorInfo& t : f.tensors()) {
    EXPECT_EQ(t.type, TensorType::F32) << t.name;
    end = std::max(end, t.offset + t.n_bytes);
  }
  EXPECT_EQ(f.data_offset() + end, f.file_size());  // the data section is exactly the tensors
  const TensorInfo* emb = f.find_tensor("token_embd.weight");
  const TensorInfo* out = f.find_tensor("output.weight");
  ASSERT_TRUE(emb && out);
  EXPECT_EQ(emb->dims, (std::vector<int64_t>{64, 512}));
  EXPECT_EQ(f.find_tensor("blk.4.ffn_down.weight")->dims, (std::vector<int64_t>{172, 64}));
  EXPECT_EQ(f.find_tensor("blk.0.attn_k.weight")->dims, (std::vector<int64_t>{64, 32}));
  // The output projection is tied to the embedding (README): the same bytes.
  ASSERT_EQ(emb->n_bytes, out->n_bytes);
  EXPECT_EQ(std::memcmp(f.data(*emb), f.data(*out), emb->n_bytes), 0);
  // Trained weights: finite and of a sane scale.
  const float* w = reinterpret_cast<const float*>(f.data(*emb));
  double sq = 0;
  for (int64_t k = 0; k < emb->n_elements; ++k) {
    ASSERT_TRUE(std::isfinite(w[k]));
    sq += double(w[k]) * w[k];
  }
  const double rms = std::sqrt(sq / emb->n_elements);
  EXPECT_GT(rms, 0.01);
  EXPECT_LT(rms, 10.0);
}

using testing_util::check_llama_shapes;

TEST(GgufShared, SyntheticModelsAndVocabularies) {
  const std::string dir = shared("models/synthetic");
  if (!fs::is_directory(dir)) GTEST_SKIP() << dir << " is absent";
  int n = 0;
  for (const auto& e : fs::directory_iterator(dir)) {
    if (e.path().extension() != ".gguf") continue;
    SCOPED_TRACE(e.path().string());
    File f = File::open(e.path().string());
    check_llama_shapes(f);
    // The weight type in the name is the type of the projections.
    const std::string stem = e.path().stem().string();
    const std::string suffix = stem.substr(stem.rfind('-') + 1);
    EXPECT_EQ(f.find_tensor("blk.0.attn_q.weight")->type, tensor_type_from_name(suffix).value());
    ++n;
  }
  EXPECT_GE(n, 1);
  const std::string vocab = shared("vocab");
  if (!fs::is_directory(vocab)) return;
  for (const auto& e : fs::directory_iterator(vocab)) {
    if (e.path().extension() != ".gguf") continue;
    SCOPED_TRACE(e.path().string());
    File f = File::open(e.path().string());  // vocabulary only: no tensors
    EXPECT_TRUE(f.tensors().empty());
    EXPECT_GT(f.get_strings("tokenizer.ggml.tokens").size(), 30000u);
  }
}

}  // namespace
}  // namespace fairkv::gguf
