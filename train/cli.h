// The `ssmtrain` command line: subcommands train, eval, sample, info, prepare, config, sweep,
// export, import, logits, plot.
// Exit codes: 0 success, 2 usage/config/data error (a UserError), 1 failure during a run.
#pragma once

#include <map>
#include <string>
#include <vector>

namespace ssmtrain {

// Parsed arguments of one subcommand: --flags with values, bare --switches, positionals
// (key=value overrides are positionals containing '=').
struct Args {
  std::string command;
  std::vector<std::string> positionals;
  std::map<std::string, std::string> flags;
  bool has(const std::string& f) const { return flags.count(f) > 0; }
  std::string get(const std::string& f, const std::string& def = "") const;
  double get_double(const std::string& f, double def) const;
  int64_t get_int(const std::string& f, int64_t def) const;
};

int run_cli(int argc, char** argv);

// Each command's usage line and every option it accepts, so a test can hold the two together.
struct CommandOptions {
  std::string name, usage;
  std::vector<std::string> options;
};
std::vector<CommandOptions> command_options();

// Subcommands (train/commands.cpp).
int cmd_train(const Args& args);
int cmd_eval(const Args& args);
int cmd_sample(const Args& args);
int cmd_info(const Args& args);
int cmd_prepare(const Args& args);
int cmd_config(const Args& args);
int cmd_sweep(const Args& args);
// Weights in and out, logits for comparisons, pictures of runs (train/interop_commands.cpp).
int cmd_export(const Args& args);
int cmd_import(const Args& args);
int cmd_logits(const Args& args);
int cmd_plot(const Args& args);

}  // namespace ssmtrain
