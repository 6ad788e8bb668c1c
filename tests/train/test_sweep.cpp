// Sweeps: grid parsing, every combination trained into its own run directory, the
// (N, D, loss) records, and a repeated sweep skipping finished runs.
#include <doctest/doctest.h>

#include <filesystem>
#include <fstream>
#include <sstream>

#include "core/error.h"
#include "temp_dir.h"
#include "train/signals.h"
#include "train/sweep.h"

using namespace ssmtrain;

namespace {

// A tiny Mamba on selective copying, written into dir as tiny.yaml (plus `extra` YAML lines).
std::string tiny_sweep_config(const testing::TempDir& dir, const std::string& extra = "") {
  const std::string cfg = dir.file("tiny.yaml");
  std::ofstream(cfg) << "model: {mixer: mamba, d_model: 8, n_layer: 1, d_state: 4, vocab_size: 16}\n"
                        "data: {kind: synthetic, task: selective_copy, task_vocab: 16, task_tokens: 4}\n"
                        "schedule: {warmup_steps: 1}\n"
                        "train: {batch_size: 2, seq_len: 16, eval_every: 0, eval_batches: 1, threads: 1}\n"
                     << extra;
  return cfg;
}

}  // namespace

TEST_CASE("sweep grids parse into axes and bad grids are named") {
  auto axes = parse_sweep_grid("model.d_model=8,16; budget.steps=4,8,12");
  REQUIRE(axes.size() == 2);
  CHECK(axes[0].key == "model.d_model");
  CHECK(axes[0].values == std::vector<std::string>{"8", "16"});
  CHECK(axes[1].values.size() == 3);
  CHECK_THROWS_WITH_AS(parse_sweep_grid("model.d_model"), doctest::Contains("'model.d_model'"), UserError);
  CHECK_THROWS_WITH_AS(parse_sweep_grid("a.b=1,,2"), doctest::Contains("empty value"), UserError);
  CHECK_THROWS_WITH_AS(parse_sweep_grid(" ; "), doctest::Contains("--grid"), UserError);
}

TEST_CASE("a sweep trains every combination once and records N D and the final loss") {
  testing::TempDir dir("sweep");
  const std::string cfg = tiny_sweep_config(dir);
  SweepOptions o;
  o.config_path = cfg;
  o.grid = parse_sweep_grid("model.d_model=8,16;budget.steps=2,4");
  o.dir = dir.file("sweep");
  std::vector<SweepRun> runs = run_sweep(o);
  REQUIRE(runs.size() == 4);
  CHECK(runs[0].name == "model.d_model-8__budget.steps-2");
  CHECK(runs[3].overrides == std::vector<std::string>{"model.d_model=16", "budget.steps=4"});
  // N grows with the width, D is steps x batch x seq_len, losses are real numbers.
  CHECK(runs[2].params > runs[0].params);
  CHECK(runs[0].params == runs[1].params);
  CHECK(runs[0].tokens == 2 * 2 * 16);
  CHECK(runs[1].tokens == 4 * 2 * 16);
  for (const auto& r : runs) CHECK((r.val_loss > 0 && r.val_loss < 10));
  for (const auto& r : runs) CHECK(std::filesystem::exists(o.dir + "/" + r.name + "/metrics.jsonl"));
  std::ifstream in(o.dir + "/sweep.jsonl");
  std::stringstream first;
  first << in.rdbuf();
  int lines = 0;
  for (char c : first.str()) lines += c == '\n';
  CHECK(lines == 4);
  // Repeating the sweep resumes finished runs (nothing retrains) and writes the same records.
  std::vector<SweepRun> again = run_sweep(o);
  REQUIRE(again.size() == 4);
  for (size_t i = 0; i < 4; ++i) CHECK(again[i].val_loss == runs[i].val_loss);
  std::ifstream in2(o.dir + "/sweep.jsonl");
  std::stringstream second;
  second << in2.rdbuf();
  CHECK(second.str() == first.str());
  // Other overrides on the same sweep directory do not reuse those runs: exit 2 naming the key.
  SweepOptions other = o;
  other.overrides = {"optim.lr=0.0123"};
  CHECK_THROWS_WITH_AS(run_sweep(other), doctest::Contains("optim.lr"), UserError);
}

TEST_CASE("a stop request ends a sweep after the run in flight; the same command then finishes it") {
  testing::TempDir dir("sweep_stop");
  const std::string cfg = tiny_sweep_config(dir, "budget: {steps: 3}\n");
  SweepOptions o;
  o.config_path = cfg;
  o.grid = parse_sweep_grid("model.d_model=8,16");
  o.dir = dir.file("sweep");
  request_stop();  // as Ctrl-C would: the first run stops after its first step, with a checkpoint
  std::vector<SweepRun> stopped = run_sweep(o);
  clear_stop_request();
  CHECK(stopped.empty());
  CHECK_FALSE(std::filesystem::exists(o.dir + "/sweep.jsonl"));
  std::vector<SweepRun> done = run_sweep(o);
  REQUIRE(done.size() == 2);
  CHECK(done[0].tokens == 3 * 2 * 16);  // the stopped run resumed to its full budget
  CHECK(std::filesystem::exists(o.dir + "/sweep.jsonl"));
}
