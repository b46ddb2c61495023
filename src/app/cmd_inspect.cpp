// `fairkv inspect FILE`: what a GGUF file holds: architecture, hyper-parameters, tokenizer,
// tensors, parameters and bytes per tensor type. Reads only the header (the file is mapped).
#include <fmt/format.h>

#include <cstdio>
#include <map>
#include <memory>
#include <string>

#include "app/commands.h"
#include "formats/gguf.h"

namespace fairkv::app {

namespace {

struct InspectArgs {
  std::string file;
  bool all_tensors = false;
  bool metadata = false;
  size_t rows = 12;
};

std::string bytes_str(double b) {
  if (b >= 1024.0 * 1024 * 1024) return fmt::format("{:.2f} GiB", b / (1024.0 * 1024 * 1024));
  if (b >= 1024.0 * 1024) return fmt::format("{:.2f} MiB", b / (1024.0 * 1024));
  if (b >= 1024.0) return fmt::format("{:.1f} KiB", b / 1024.0);
  return fmt::format("{} B", b);
}

std::string count_str(int64_t n) {
  if (n >= 1000000000) return fmt::format("{:.3f} B", double(n) / 1e9);
  if (n >= 1000000) return fmt::format("{:.2f} M", double(n) / 1e6);
  if (n >= 1000) return fmt::format("{:.1f} K", double(n) / 1e3);
  return std::to_string(n);
}

std::string shape_str(const std::vector<int64_t>& dims) {
  return fmt::format("[{}]", fmt::join(dims, ", "));
}

void inspect(const InspectArgs& a) {
  const gguf::File f = gguf::File::open(a.file);
  std::string out;
  auto line = [&out](const std::string& s) { out += s + "\n"; };

  line(fmt::format("{}: GGUF v{}, {}, {} metadata keys, {} tensors, alignment {}", f.path(),
                   f.version(), bytes_str(double(f.file_size())), f.metadata().size(),
                   f.tensors().size(), f.alignment()));
  const std::string arch = f.find_string("general.architecture").value_or("");
  line(fmt::format(
      "architecture: {}{}", arch.empty() ? "(absent)" : arch,
      f.find_string("general.name") ? "  name: " + *f.find_string("general.name") : std::string()));

  // Hyper-parameters under "<arch>.", as llama.cpp names them; absent ones say so.
  auto key = [&](const char* k) { return arch + "." + k; };
  auto int_or = [&](const char* k) -> std::string {
    const auto v = f.find_int(key(k));
    return v ? std::to_string(*v) : "-";
  };
  auto float_or = [&](const char* k, const char* fallback) -> std::string {
    const auto v = f.find_float(key(k));
    return v ? fmt::format("{:g}", *v) : fallback;
  };
  if (!arch.empty()) {
    const auto n_embd = f.find_int(key("embedding_length"));
    const auto n_head = f.find_int(key("attention.head_count"));
    std::string head_size = int_or("attention.key_length");
    if (head_size == "-" && n_embd && n_head && *n_head > 0) {
      head_size = std::to_string(*n_embd / *n_head) + " (embedding / heads)";
    }
    std::string n_kv = int_or("attention.head_count_kv");
    if (n_kv == "-" && n_head) n_kv = std::to_string(*n_head) + " (= heads)";
    std::string eps = float_or("attention.layer_norm_rms_epsilon", "-");
    if (eps == "-") eps = float_or("attention.layer_norm_epsilon", "-");
    line("hyper-parameters:");
    line(fmt::format("  layers      {}", int_or("block_count")));
    line(fmt::format("  embedding   {}", int_or("embedding_length")));
    line(fmt::format("  heads       {}", int_or("attention.head_count")));
    line(fmt::format("  KV heads    {}", n_kv));
    line(fmt::format("  head size   {}", head_size));
    line(fmt::format("  FFN         {}", int_or("feed_forward_length")));
    line(fmt::format("  context     {}", int_or("context_length")));
    line(fmt::format("  rope base   {}", float_or("rope.freq_base", "- (llama default 10000)")));
    line(fmt::format("  rope dims   {}", int_or("rope.dimension_count")));
    line(fmt::format("  norm eps    {}", eps));
  }

  if (const gguf::Value* toks = f.find("tokenizer.ggml.tokens")) {
    std::string ids;
    for (const char* id : {"bos", "eos", "unknown", "padding"}) {
      const auto v = f.find_int(fmt::format("tokenizer.ggml.{}_token_id", id));
      // llama.cpp writes 2^32-1 (or -1) for "no such token".
      if (v && *v >= 0 && *v != 0xffffffffLL) ids += fmt::format(", {} {}", id, *v);
    }
    line(fmt::format("tokenizer: {}{}, vocabulary {}{}",
                     f.find_string("tokenizer.ggml.model").value_or("(no model)"),
                     f.find_string("tokenizer.ggml.pre")
                         ? " (pre " + *f.find_string("tokenizer.ggml.pre") + ")"
                         : std::string(),
                     toks->array_size(), ids));
  } else {
    line("tokenizer: (none)");
  }

  if (a.metadata) {
    line("metadata:");
    for (const gguf::KeyValue& kv : f.metadata()) {
      line(fmt::format("  {:<44} {:<8} {}", kv.key, gguf::value_type_name(kv.value.type),
                       kv.value.to_string()));
    }
  }

  const auto& ts = f.tensors();
  if (!ts.empty()) {
    const size_t shown = a.all_tensors ? ts.size() : std::min(ts.size(), a.rows);
    line(shown < ts.size()
             ? fmt::format("tensors (first {} of {}; --tensors for all):", shown, ts.size())
             : fmt::format("tensors ({}):", ts.size()));
    size_t w = 4;
    for (size_t k = 0; k < shown; ++k) w = std::max(w, ts[k].name.size());
    line(fmt::format("  {:<{}}  {:<5} {:<22} {:>12}", "name", w, "type", "shape", "bytes"));
    for (size_t k = 0; k < shown; ++k) {
      const gguf::TensorInfo& t = ts[k];
      line(fmt::format("  {:<{}}  {:<5} {:<22} {:>12}", t.name, w, gguf::tensor_type_name(t.type),
                       shape_str(t.dims), t.n_bytes));
    }
  }

  // Parameters and bytes per tensor type.
  struct Sum {
    int64_t tensors = 0, params = 0;
    uint64_t bytes = 0;
  };
  std::map<std::string, Sum> by_type;
  Sum total;
  for (const gguf::TensorInfo& t : ts) {
    Sum& s = by_type[gguf::tensor_type_name(t.type)];
    for (Sum* x : {&s, &total}) {
      x->tensors += 1;
      x->params += t.n_elements;
      x->bytes += t.n_bytes;
    }
  }
  line(fmt::format("parameters: {} ({}), tensor data {}", count_str(total.params), total.params,
                   bytes_str(double(total.bytes))));
  for (const auto& [name, s] : by_type) {
    line(fmt::format("  {:<5} {:>5} tensors {:>12} parameters {:>12}", name, s.tensors,
                     count_str(s.params), bytes_str(double(s.bytes))));
  }
  std::fputs(out.c_str(), stdout);
}

}  // namespace

void add_inspect_command(CLI::App& app) {
  auto a = std::make_shared<InspectArgs>();
  CLI::App* cmd = app.add_subcommand("inspect", "Describe a GGUF file");
  cmd->add_option("file", a->file, "GGUF file")->required();
  cmd->add_flag("--tensors", a->all_tensors, "List every tensor (default: the first rows)");
  cmd->add_flag("--metadata", a->metadata, "List every metadata key and value");
  cmd->callback([a] { inspect(*a); });
}

}  // namespace fairkv::app
