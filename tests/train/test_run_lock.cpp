// One process per run directory: the lock, its message, and that a rejected resume leaves
// the run's files as they were.
#include <doctest/doctest.h>

#include <sys/wait.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>

#include "core/error.h"
#include "temp_dir.h"
#include "train/config.h"
#include "train/metrics.h"
#include "train/run_lock.h"
#include "train/trainer.h"
#include "user_error.h"

using namespace ssmtrain;
using testing::contains;
using testing::user_error_of;
namespace fs = std::filesystem;

namespace {

std::string read_file(const std::string& path) {
  std::ifstream in(path);
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

Config tiny(const std::vector<std::string>& overrides = {}) {
  const std::string yaml = R"(
model: {mixer: mamba, d_model: 16, n_layer: 2, d_state: 4, vocab_size: 16}
data: {kind: synthetic, task: selective_copy, task_vocab: 16, task_tokens: 4}
budget: {steps: 4}
train: {batch_size: 2, seq_len: 24, log_every: 1, eval_every: 0, eval_batches: 1, checkpoint_every: 2}
)";
  return parse_config(yaml, "tiny.yaml", overrides);
}

TrainOptions options(const std::string& dir, const std::string& resume = "") {
  TrainOptions o;
  o.run_dir = dir;
  o.resume = resume;
  o.quiet = true;
  return o;
}

}  // namespace

TEST_CASE("a second lock on a run directory fails naming the directory and the holder's pid") {
  testing::TempDir dir("lock");
  const std::string run = dir.str() + "/run";
  {
    RunDirLock first(run);  // creates the directory
    CHECK(fs::exists(run + "/.lock"));
    // flock excludes across open file descriptions, so a second lock in this process is
    // refused exactly as one in another process would be.
    const std::string msg = user_error_of([&] { RunDirLock second(run); });
    CHECK(contains(msg, run));
    CHECK(contains(msg, "pid " + std::to_string(getpid())));
  }
  // Released with the holder: the directory can be locked again.
  CHECK_NOTHROW(RunDirLock again(run));
}

TEST_CASE("a run directory lock held by another process is released when that process dies") {
  testing::TempDir dir("lock_fork");
  const std::string run = dir.str() + "/run";
  int ready[2], go[2];
  REQUIRE(pipe(ready) == 0);
  REQUIRE(pipe(go) == 0);
  const pid_t child = fork();
  REQUIRE(child >= 0);
  if (child == 0) {
    RunDirLock held(run);
    char c = 1;
    [[maybe_unused]] ssize_t w = write(ready[1], &c, 1);
    [[maybe_unused]] ssize_t r = read(go[0], &c, 1);  // hold until the parent has tried
    _exit(0);  // no destructor: the kernel releases the lock, as after kill -9
  }
  char c = 0;
  REQUIRE(read(ready[0], &c, 1) == 1);
  const std::string msg = user_error_of([&] { RunDirLock second(run); });
  CHECK(contains(msg, "pid " + std::to_string(child)));
  REQUIRE(write(go[1], &c, 1) == 1);
  int status = 0;
  REQUIRE(waitpid(child, &status, 0) == child);
  CHECK_NOTHROW(RunDirLock after(run));
  for (int fd : {ready[0], ready[1], go[0], go[1]}) close(fd);
}

TEST_CASE("training into a run directory another run holds exits with a UserError and writes nothing") {
  testing::TempDir dir("lock_train");
  const std::string run = dir.str() + "/run";
  RunDirLock held(run);
  const std::string msg = user_error_of([&] { run_training(tiny(), options(run)); });
  CHECK(contains(msg, "in use by another ssmtrain process"));
  CHECK_FALSE(fs::exists(run + "/config.yaml"));
  CHECK_FALSE(fs::exists(run + "/metrics.jsonl"));
}

TEST_CASE("a rejected resume leaves config.yaml and metrics.jsonl as they were") {
  testing::TempDir dir("lock_resume");
  const std::string run = dir.str() + "/run";
  REQUIRE(run_training(tiny(), options(run)) == 0);
  const std::string config_before = read_file(run + "/config.yaml");
  const std::string metrics_before = read_file(run + "/metrics.jsonl");
  REQUIRE_FALSE(config_before.empty());
  // Another width cannot load the checkpoint's weights: the resume is refused...
  const std::string msg = user_error_of([&] { run_training(tiny({"model.d_model=32"}), options(run, "auto")); });
  CHECK_FALSE(msg.empty());
  // ...and the run directory still describes the run that wrote it, so a correct resume works.
  CHECK(read_file(run + "/config.yaml") == config_before);
  CHECK(read_file(run + "/metrics.jsonl") == metrics_before);
  CHECK(run_training(tiny({"budget.steps=6"}), options(run, "auto")) == 0);
}

TEST_CASE("the run directory's config.yaml resumes the run, overrides included") {
  testing::TempDir dir("resume_yaml");
  const std::string run = dir.str() + "/run";
  TrainOptions first = options(run);
  first.max_steps = 2;
  // An override that the config file would not repeat: the stop hint points at config.yaml.
  REQUIRE(run_training(tiny({"optim.lr=0.003"}), first) == 0);
  Config resolved = load_config(run + "/config.yaml");
  CHECK(resolved.optim.lr == doctest::Approx(0.003));
  CHECK(run_training(resolved, options(run, "auto")) == 0);
  CHECK(read_file(run + "/train.log").find("done: 4 steps") != std::string::npos);
}

TEST_CASE("a metrics file on a full device is reported and the run still saves its checkpoints") {
  if (!fs::exists("/dev/full")) {
    MESSAGE("skipped: no /dev/full on this system");
    return;
  }
  testing::TempDir dir("full_metrics");
  const std::string run = dir.str() + "/run";
  fs::create_directories(run);
  fs::create_symlink("/dev/full", run + "/metrics.jsonl");  // every write fails with ENOSPC
  {
    RunLog log(run, /*quiet=*/true);
    JsonLine j;
    j.add("step", int64_t{1});
    log.metrics(j);
    CHECK(log.metrics_failed());
    CHECK_FALSE(log.log_failed());
  }
  CHECK(run_training(tiny(), options(run)) == 0);
  CHECK(fs::exists(run + "/checkpoints/ckpt_00000004.h5"));
}
