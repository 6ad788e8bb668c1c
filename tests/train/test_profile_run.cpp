// Profiling a training run (train.profile_steps, --profile): which steps are recorded,
// profile.json with the phase spans, the table in train.log.
#include <doctest/doctest.h>

#include <filesystem>
#include <fstream>
#include <set>
#include <sstream>

#include "core/dtype.h"
#include "json_scan.h"
#include "temp_dir.h"
#include "train/config.h"
#include "train/trainer.h"

using namespace ssmtrain;
using testing::Json;
namespace fs = std::filesystem;

namespace {

Config tiny_config(const std::vector<std::string>& overrides) {
  const std::string yaml = R"(
model: {mixer: mamba, d_model: 16, n_layer: 2, d_state: 4, vocab_size: 16}
data: {kind: synthetic, task: selective_copy, task_vocab: 16, task_tokens: 4}
optim: {lr: 0.01}
budget: {steps: 6}
train: {batch_size: 2, seq_len: 16, log_every: 1, eval_every: 0, eval_batches: 1, keep_last: 0}
)";
  return parse_config(yaml, "tiny.yaml", overrides);
}

TrainOptions options(const testing::TempDir& dir, int64_t profile_steps = -1) {
  TrainOptions o;
  o.run_dir = dir.str();
  o.quiet = true;
  o.profile_steps = profile_steps;
  return o;
}

std::string read_text(const std::string& path) {
  std::ifstream in(path);
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

// The trace's complete events on the host track, by category and name.
struct TraceSummary {
  std::multiset<std::string> phases, ops;
  std::set<int64_t> steps;  // from the "step N" markers
  int64_t device_spans = 0;
  int64_t launches = 0;  // over the steps' counter events
};

TraceSummary read_trace(const std::string& path) {
  Json trace;
  std::string error;
  REQUIRE(fs::exists(path));
  REQUIRE_MESSAGE(testing::JsonReader().parse(read_text(path), trace, error), error);
  TraceSummary t;
  for (const Json& e : trace["traceEvents"].array) {
    if (e["ph"].string == "i") t.steps.insert(static_cast<int64_t>(e["args"]["step"].number));
    if (e["ph"].string == "C") t.launches += static_cast<int64_t>(e["args"]["launches"].number);
    if (e["ph"].string == "X" && e["pid"].number == 2) ++t.device_spans;
    if (e["ph"].string != "X" || e["pid"].number != 1) continue;
    if (e["cat"].string == "phase") t.phases.insert(e["name"].string);
    if (e["cat"].string == "op") t.ops.insert(e["name"].string);
  }
  return t;
}

}  // namespace

TEST_CASE("train.profile_steps records steps after the warm-up into profile.json and the log") {
  testing::TempDir dir("profile_run");
  CHECK(run_training(tiny_config({"train.profile_steps=2"}), options(dir)) == 0);
  const TraceSummary t = read_trace(dir.file("profile.json"));
  CHECK(t.steps == std::set<int64_t>{3, 4});  // steps 1 and 2 are the warm-up
  CHECK(t.phases.count("step") == 2);
  CHECK(t.phases.count("forward") == 2);
  CHECK(t.phases.count("backward") == 2);
  CHECK(t.phases.count("optimizer") == 2);
  CHECK(t.ops.count("embedding") == 2);
  CHECK(t.ops.count("embedding_backward") == 2);
  CHECK_FALSE(fs::exists(dir.file("profile.json.tmp")));
  const std::string log = read_text(dir.file("train.log"));
  CHECK(log.find("profile: 2 step(s) on cpu") != std::string::npos);
  CHECK(log.find("device ms per step (sum of op spans)") != std::string::npos);
  CHECK(log.find("profile.json") != std::string::npos);
}

TEST_CASE("--profile overrides the config and a short run shortens the warm-up") {
  SUBCASE("off by default") {
    testing::TempDir dir("profile_run");
    CHECK(run_training(tiny_config({}), options(dir)) == 0);
    CHECK_FALSE(fs::exists(dir.file("profile.json")));
  }
  SUBCASE("--profile 0 switches the config's profile off") {
    testing::TempDir dir("profile_run");
    CHECK(run_training(tiny_config({"train.profile_steps=3"}), options(dir, 0)) == 0);
    CHECK_FALSE(fs::exists(dir.file("profile.json")));
  }
  SUBCASE("more steps asked for than the run has: every step is recorded") {
    testing::TempDir dir("profile_run");
    CHECK(run_training(tiny_config({"budget.steps=3"}), options(dir, 5)) == 0);
    CHECK(read_trace(dir.file("profile.json")).steps == std::set<int64_t>{1, 2, 3});
  }
  SUBCASE("one step of warm-up left") {
    testing::TempDir dir("profile_run");
    CHECK(run_training(tiny_config({"budget.steps=4"}), options(dir, 3)) == 0);
    CHECK(read_trace(dir.file("profile.json")).steps == std::set<int64_t>{2, 3, 4});
  }
}

TEST_CASE("train.profile_steps must not be negative") {
  CHECK_THROWS_AS(tiny_config({"train.profile_steps=-1"}), UserError);
}

TEST_CASE("a profiled CUDA run has device spans and counts kernel launches") {
  if (!cuda_available()) {
    MESSAGE("CUDA tests skipped: no GPU");
    return;
  }
  testing::TempDir dir("profile_run");
  CHECK(run_training(tiny_config({"train.device=cuda"}), options(dir, 2)) == 0);
  const TraceSummary t = read_trace(dir.file("profile.json"));
  CHECK(t.steps == std::set<int64_t>{3, 4});
  CHECK(t.phases.count("forward") == 2);
  CHECK(t.device_spans > 0);
  CHECK(t.launches > 0);
  const std::string log = read_text(dir.file("train.log"));
  CHECK(log.find("profile: 2 step(s) on cuda:0; device times from CUDA events") != std::string::npos);
}
