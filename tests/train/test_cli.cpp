// The command table of train/cli.cpp: usage lines that say what each command accepts.
#include <doctest/doctest.h>

#include <algorithm>
#include <regex>
#include <set>

#include "train/cli.h"

using namespace ssmtrain;

TEST_CASE("every command's usage line names exactly the options it accepts") {
  const auto commands = command_options();
  REQUIRE(commands.size() >= 11);
  static const std::regex option("--[a-z][a-z-]*");
  for (const auto& c : commands) {
    CAPTURE(c.name);
    std::set<std::string> in_usage;
    for (auto it = std::sregex_iterator(c.usage.begin(), c.usage.end(), option); it != std::sregex_iterator(); ++it)
      in_usage.insert(it->str());
    const std::set<std::string> accepted(c.options.begin(), c.options.end());
    for (const auto& o : accepted) CHECK_MESSAGE(in_usage.count(o), o, " is accepted but missing from: ", c.usage);
    for (const auto& o : in_usage) CHECK_MESSAGE(accepted.count(o), o, " is in the usage but not accepted");
  }
}

TEST_CASE("the CLI: --help exits 0, an unknown command or option exits 2") {
  auto run = [](std::vector<std::string> words) {
    words.insert(words.begin(), "ssmtrain");
    std::vector<char*> argv;
    for (auto& w : words) argv.push_back(w.data());
    try {
      return run_cli(static_cast<int>(argv.size()), argv.data());
    } catch (const std::exception&) {
      return 2;  // as main() turns a UserError into exit 2
    }
  };
  CHECK(run({"prepare", "--help"}) == 0);
  CHECK(run({"no-such-command"}) == 2);
  CHECK(run({"prepare", "--no-such-option", "x"}) == 2);
  CHECK(run({"prepare", "--input"}) == 2);  // a list option with no value
}
