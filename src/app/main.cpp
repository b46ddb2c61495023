// fairkv: the command-line entry point. Subcommands live in cmd_*.cpp.
#include <cstdio>
#include <cstring>
#include <exception>
#include <new>
#include <string>
#include <utility>
#include <vector>

#include "app/commands.h"

namespace fairkv::app {

namespace {
std::string g_activity;
}

void set_activity(std::string what) {
  g_activity = std::move(what);
}

}  // namespace fairkv::app

int main(int argc, char** argv) {
  CLI::App app{
      "fairkv: Llama-family inference with per-head compressed KV caches, balanced "
      "across devices"};
  app.require_subcommand(1);
  app.set_version_flag("--version", "fairkv 0.1");
  // One line per subcommand.
  fairkv::app::add_run_command(app);
  fairkv::app::add_inspect_command(app);
  fairkv::app::add_synth_command(app);
  fairkv::app::add_plan_command(app);
  fairkv::app::add_eval_command(app);
  fairkv::app::add_profile_command(app);
  fairkv::app::add_bench_command(app);
  fairkv::app::add_importance_command(app);
  fairkv::app::add_perplexity_command(app);
  fairkv::app::add_batch_command(app);
  fairkv::app::add_serve_command(app);
  fairkv::app::add_bench_model_command(app);
  fairkv::app::add_bench_serve_command(app);
  // llama.cpp's `-cnv`, `-ctk` and `-ctv` are many-letter names behind one dash, which CLI11
  // refuses to declare: they are spelt as their long forms before parsing.
  static char conversation[] = "--conversation";
  static char cache_type_k[] = "--cache-type-k";
  static char cache_type_v[] = "--cache-type-v";
  std::vector<char*> args(argv, argv + argc);
  fairkv::app::command_line().assign(argv, argv + argc);
  for (char*& arg : args)
    if (std::strcmp(arg, "-cnv") == 0)
      arg = conversation;
    else if (std::strcmp(arg, "-ctk") == 0)
      arg = cache_type_k;
    else if (std::strcmp(arg, "-ctv") == 0)
      arg = cache_type_v;
  try {
    app.parse(int(args.size()), args.data());
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  } catch (const std::bad_alloc&) {
    // The allocator's exception says nothing of what the memory was for: the command does.
    const auto cmds = app.get_subcommands();
    const std::string& doing = fairkv::app::g_activity;
    std::fprintf(stderr, "fairkv: error: %s: out of memory%s%s (std::bad_alloc)\n",
                 cmds.empty() ? "fairkv" : cmds[0]->get_name().c_str(),
                 doing.empty() ? "" : " while ", doing.c_str());
    return 1;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "fairkv: error: %s\n", e.what());
    return 1;
  }
  return 0;
}
