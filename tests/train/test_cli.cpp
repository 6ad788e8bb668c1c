// The command table of train/cli.cpp: usage lines that say what each command accepts.
#include <doctest/doctest.h>

#include <unistd.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <regex>
#include <set>

#include "core/error.h"
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

// prepare's inputs: a directory is every regular file below it in path order, @LIST names
// one input per line; both give the same shards as the files named one by one, and an
// unreadable list or an empty directory exits 2 naming it.
TEST_CASE("prepare takes a directory or an @list as its inputs") {
  namespace fs = std::filesystem;
  auto run = [](std::vector<std::string> words) {
    words.insert(words.begin(), "ssmtrain");
    std::vector<char*> argv;
    for (auto& w : words) argv.push_back(w.data());
    return run_cli(static_cast<int>(argv.size()), argv.data());
  };
  const fs::path dir = fs::temp_directory_path() / ("ssmtrain_prepare_inputs_" + std::to_string(::getpid()));
  fs::remove_all(dir);
  fs::create_directories(dir / "tree" / "sub");
  fs::create_directories(dir / "empty");
  std::ofstream(dir / "tree" / "b.txt") << "the second document, a little longer than the first\n";
  std::ofstream(dir / "tree" / "sub" / "c.c") << "int third(void) { return 3; }\n";
  std::ofstream(dir / "tree" / "a.txt") << "the first document\n";
  std::ofstream(dir / "list") << (dir / "tree" / "a.txt").string() << "\n"
                              << (dir / "tree" / "b.txt").string() << "\n\n"
                              << (dir / "tree" / "sub").string() << "\n";
  auto shard = [&](const std::string& out) {
    std::ifstream in(dir / out / "train_000000.bin", std::ios::binary);
    return std::string((std::istreambuf_iterator<char>(in)), {});
  };
  CHECK(run({"prepare", "--input", (dir / "tree" / "a.txt").string(), (dir / "tree" / "b.txt").string(),
             (dir / "tree" / "sub" / "c.c").string(), "--output", (dir / "files").string(), "--val-fraction", "0.1",
             "--eot", "0"}) == 0);
  CHECK(run({"prepare", "--input", (dir / "tree").string(), "--output", (dir / "dir").string(), "--val-fraction",
             "0.1", "--eot", "0"}) == 0);
  CHECK(run({"prepare", "--input", "@" + (dir / "list").string(), "--output", (dir / "list_out").string(),
             "--val-fraction", "0.1", "--eot", "0"}) == 0);
  CHECK(shard("files").size() > 1024);  // the llm.c header and the tokens
  CHECK(shard("dir") == shard("files"));
  CHECK(shard("list_out") == shard("files"));
  CHECK_THROWS_WITH_AS(run({"prepare", "--input", "@" + (dir / "nolist").string(), "--output", (dir / "x").string()}),
                       doctest::Contains("nolist"), UserError);
  CHECK_THROWS_WITH_AS(run({"prepare", "--input", (dir / "empty").string(), "--output", (dir / "x").string()}),
                       doctest::Contains("holds no files"), UserError);
  fs::remove_all(dir);
}
