// The trainer end to end on tiny synthetic runs: exact resume, gradient accumulation,
// the non-finite guard, stop requests, corrupt checkpoints, and the sampling rules.
#include <doctest/doctest.h>

#include <unistd.h>

#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <set>
#include <sstream>
#include <vector>

#include "train/checkpoint.h"
#include "train/config.h"
#include "train/generate.h"
#include "train/signals.h"
#include "train/trainer.h"
#include "temp_dir.h"

using namespace ssmtrain;
namespace fs = std::filesystem;

namespace {

struct RunDir : testing::TempDir {
  RunDir() : TempDir("trainer") {}
  std::string checkpoint(int64_t step) const { return checkpoint_path(str() + "/checkpoints", step); }
};

// A Mamba LM on the selective-copying task: small enough for a few steps per second.
Config tiny_config(const std::vector<std::string>& overrides = {}) {
  const std::string yaml = R"(
model: {mixer: mamba, d_model: 16, n_layer: 2, d_state: 4, vocab_size: 16}
data: {kind: synthetic, task: selective_copy, task_vocab: 16, task_tokens: 4}
optim: {lr: 0.01}
schedule: {kind: cosine, warmup_steps: 2, min_lr: 0.001}
budget: {steps: 8}
train: {batch_size: 4, seq_len: 24, log_every: 1, eval_every: 4, eval_batches: 1, checkpoint_every: 4, keep_last: 0}
)";
  return parse_config(yaml, "tiny.yaml", overrides);
}

TrainOptions options(const RunDir& dir, const std::string& resume = "", int64_t max_steps = 0) {
  TrainOptions o;
  o.run_dir = dir.str();
  o.resume = resume;
  o.max_steps = max_steps;
  o.quiet = true;
  return o;
}

// (step, loss) text of every training record of a run's metrics.jsonl.
std::vector<std::string> training_losses(const RunDir& dir) {
  std::ifstream in(dir.str() + "/metrics.jsonl");
  std::vector<std::string> out;
  for (std::string line; std::getline(in, line);) {
    if (line.find("\"split\"") != std::string::npos) continue;
    auto s = line.find("\"step\":"), l = line.find("\"loss\":"), e = line.find(',', l);
    REQUIRE(s != std::string::npos);
    REQUIRE(l != std::string::npos);
    out.push_back(line.substr(s, line.find(',', s) - s) + " " + line.substr(l, e - l));
  }
  return out;
}

std::vector<std::pair<std::string, std::vector<uint8_t>>> checkpoint_arrays(const std::string& path,
                                                                        const std::string& group) {
  CheckpointReader r(path);
  std::vector<std::pair<std::string, std::vector<uint8_t>>> out;
  for (const auto& name : r.list(group)) {
    HostArray a = r.read_array(group + "/" + name);
    out.emplace_back(name, a.bytes);
  }
  return out;
}

}  // namespace

TEST_CASE("a run stopped and resumed matches the straight run bitwise") {
  RunDir straight, split;
  CHECK(run_training(tiny_config(), options(straight)) == 0);
  CHECK(run_training(tiny_config(), options(split, "", 3)) == 0);  // stops after step 3
  CHECK(fs::exists(split.checkpoint(3)));
  CHECK_FALSE(fs::exists(split.checkpoint(8)));
  CHECK(run_training(tiny_config(), options(split, "auto")) == 0);
  auto a = training_losses(straight), b = training_losses(split);
  CHECK(a.size() == 8);
  CHECK(a == b);
  for (const char* group : {"model", "optim/exp_avg", "optim/exp_avg_sq", "optim/step"}) {
    INFO("group " << group);
    auto x = checkpoint_arrays(straight.checkpoint(8), group), y = checkpoint_arrays(split.checkpoint(8), group);
    CHECK(!x.empty());
    CHECK(x == y);
  }
  // And training did something: the loss fell from the first step.
  CheckpointReader r(split.checkpoint(8));
  CHECK(r.attr_int("/", "step") == 8);
}

TEST_CASE("a run stopped and resumed on CUDA matches the straight run bitwise") {
  if (!cuda_available()) {
    MESSAGE("CUDA tests skipped: no GPU");
    return;
  }
  RunDir straight, split;
  CHECK(run_training(tiny_config({"train.device=cuda"}), options(straight)) == 0);
  CHECK(run_training(tiny_config({"train.device=cuda"}), options(split, "", 3)) == 0);
  CHECK(run_training(tiny_config({"train.device=cuda"}), options(split, "auto")) == 0);
  auto a = training_losses(straight), b = training_losses(split);
  CHECK(a.size() == 8);
  CHECK(a == b);
  for (const char* group : {"model", "optim/exp_avg", "optim/exp_avg_sq"}) {
    INFO("group " << group);
    CHECK(checkpoint_arrays(straight.checkpoint(8), group) == checkpoint_arrays(split.checkpoint(8), group));
  }
}

TEST_CASE("a fresh run refuses a run directory that holds checkpoints") {
  RunDir dir;
  CHECK(run_training(tiny_config(), options(dir, "", 4)) == 0);
  CHECK_THROWS_WITH_AS(run_training(tiny_config(), options(dir)), doctest::Contains("--resume auto"), UserError);
  CHECK(fs::exists(dir.checkpoint(4)));
}

TEST_CASE("resume auto skips a truncated newest checkpoint and names it") {
  RunDir dir;
  CHECK(run_training(tiny_config(), options(dir, "", 8)) == 0);
  const std::string newest = dir.checkpoint(8);
  fs::resize_file(newest, fs::file_size(newest) / 3);
  CHECK_THROWS_AS(CheckpointReader(newest).verify(), UserError);
  // The run goes on from step 4 and rewrites step 8 identically to a straight run.
  CHECK(run_training(tiny_config(), options(dir, "auto")) == 0);
  RunDir straight;
  CHECK(run_training(tiny_config(), options(straight)) == 0);
  CHECK(checkpoint_arrays(newest, "model") == checkpoint_arrays(straight.checkpoint(8), "model"));
  // An explicit --resume of a corrupt file is an error naming it.
  fs::resize_file(newest, fs::file_size(newest) / 2);
  CHECK_THROWS_WITH_AS(run_training(tiny_config(), options(dir, newest)), doctest::Contains("ckpt_00000008.h5"),
                       UserError);
}

TEST_CASE("two accumulated micro-batches train like one batch of twice the size") {
  // The first step's loss and update see the same 8 samples either way (the data stream
  // hands out samples in order), so the runs agree to f32 rounding of the summation order.
  RunDir whole, accumulated;
  CHECK(run_training(tiny_config({"train.batch_size=8", "budget.steps=2"}), options(whole)) == 0);
  CHECK(run_training(tiny_config({"train.batch_size=4", "train.grad_accum=2", "budget.steps=2"}),
                     options(accumulated)) == 0);
  auto a = checkpoint_arrays(whole.checkpoint(2), "model"), b = checkpoint_arrays(accumulated.checkpoint(2), "model");
  REQUIRE(a.size() == b.size());
  double worst = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    REQUIRE(a[i].first == b[i].first);
    const float* x = reinterpret_cast<const float*>(a[i].second.data());
    const float* y = reinterpret_cast<const float*>(b[i].second.data());
    for (size_t j = 0; j < a[i].second.size() / 4; ++j) worst = std::max(worst, std::fabs(double(x[j]) - y[j]));
  }
  // Two AdamW steps of lr <= 0.01 move a weight by at most ~0.02; the gradients differ only
  // by summation order (relative ~1e-6), which after Adam's normalisation is far below 1e-4
  // except where v ~ eps; a wrong accumulation (e.g. a missing 1/2) changes the first moment
  // by 2x and moves weights by ~0.01.
  CHECK(worst < 1e-4);
}

TEST_CASE("the non-finite guard skips updates and stops with the last good checkpoint") {
  RunDir dir;
  // lr 1e30 overflows the weights at the first update; every later loss is non-finite.
  Config c = tiny_config({"optim.lr=1e30", "schedule.min_lr=0", "schedule.warmup_steps=0", "train.max_nonfinite=2",
                          "train.checkpoint_every=1"});
  CHECK(run_training(c, options(dir)) == 1);
  CHECK(fs::exists(dir.checkpoint(1)));
  std::ifstream in(dir.str() + "/metrics.jsonl");
  std::string all((std::istreambuf_iterator<char>(in)), {});
  CHECK(all.find("\"nonfinite_total\": 2") != std::string::npos);
}

TEST_CASE("the non-finite guard stops after max_nonfinite steps read one step late") {
  // No checkpoint or evaluation before the end: every step is read while the next one is
  // already launched. Steps 2 and 3 are non-finite; the run stops having logged steps 1-3
  // (not the launched step 4) and saved nothing.
  std::vector<std::string> devices{"cpu"};
  if (cuda_available()) devices.push_back("cuda");
  else MESSAGE("CUDA tests skipped: no GPU");
  for (const std::string& device : devices) {
    INFO("device " << device);
    RunDir dir;
    Config c = tiny_config({"optim.lr=1e30", "schedule.min_lr=0", "schedule.warmup_steps=0", "train.max_nonfinite=2",
                            "train.checkpoint_every=0", "train.eval_every=0", "train.device=" + device});
    CHECK(run_training(c, options(dir)) == 1);
    CHECK(list_checkpoints(dir.str() + "/checkpoints").empty());
    std::vector<std::string> losses = training_losses(dir);
    REQUIRE(losses.size() == 3);
    CHECK(losses[2].rfind("\"step\": 3", 0) == 0);
    std::ifstream in(dir.str() + "/metrics.jsonl");
    std::string all((std::istreambuf_iterator<char>(in)), {});
    CHECK(all.find("\"nonfinite_total\": 2") != std::string::npos);
  }
}

TEST_CASE("a stop request finishes the step, saves and exits 0") {
  RunDir dir;
  request_stop();
  const int rc = run_training(tiny_config(), options(dir));
  clear_stop_request();
  CHECK(rc == 0);
  CHECK(fs::exists(dir.checkpoint(1)));
  CHECK_FALSE(fs::exists(dir.checkpoint(2)));
}

TEST_CASE("sampling rules: greedy top-k and top-p keep only the allowed tokens") {
  std::vector<float> logits = {0.0f, 3.0f, 1.0f, 2.0f, -1.0f};
  Generator gen(7);
  SampleOptions greedy;
  greedy.temperature = 0;
  CHECK(sample_from_logits(logits, greedy, gen) == 1);
  SampleOptions top2;
  top2.top_k = 2;
  std::set<int32_t> seen;
  for (int i = 0; i < 400; ++i) seen.insert(sample_from_logits(logits, top2, gen));
  CHECK(seen == std::set<int32_t>{1, 3});
  // Probabilities at T=1: softmax(3,2,1,0,-1) = .636 .234 .086 .032 .012; top_p 0.8 keeps {1, 3}.
  SampleOptions nucleus;
  nucleus.top_p = 0.8;
  seen.clear();
  for (int i = 0; i < 400; ++i) seen.insert(sample_from_logits(logits, nucleus, gen));
  CHECK(seen == std::set<int32_t>{1, 3});
  // With everything allowed, frequencies follow the softmax (400 draws: 3 sigma ~ 0.07).
  SampleOptions full;
  int ones = 0;
  for (int i = 0; i < 400; ++i) ones += sample_from_logits(logits, full, gen) == 1;
  CHECK(std::fabs(ones / 400.0 - 0.636) < 0.08);
}

TEST_CASE("MoE usage reaches metrics.jsonl on logged steps, read with the step's scalars") {
  // Switch layers with drops (capacity 0.5) and a dropless top-2 run: every logged training
  // record carries the balancing loss and the usage since the previous logged step.
  std::vector<std::string> devices{"cpu"};
  if (cuda_available()) devices.push_back("cuda");
  else MESSAGE("CUDA tests skipped: no GPU");
  for (const std::string& device : devices) {
    for (const bool dropless : {false, true}) {
      INFO("device " << device << (dropless ? ", dropless top-2" : ", capacity 0.5"));
      RunDir dir;
      std::vector<std::string> overrides{"model.moe.every=2", "model.moe.experts=4", "train.log_every=2",
                                         "train.eval_every=0", "train.checkpoint_every=0", "budget.steps=5",
                                         "train.device=" + device};
      if (dropless) {
        overrides.push_back("model.moe.capacity_factor=0");
        overrides.push_back("model.moe.top_k=2");
      } else {
        overrides.push_back("model.moe.capacity_factor=0.5");
      }
      CHECK(run_training(tiny_config(overrides), options(dir)) == 0);
      std::ifstream in(dir.str() + "/metrics.jsonl");
      std::vector<int64_t> steps;
      for (std::string line; std::getline(in, line);) {
        if (line.find("\"split\"") != std::string::npos) continue;
        auto number = [&](const std::string& key) {
          const auto at = line.find("\"" + key + "\": ");
          REQUIRE_MESSAGE(at != std::string::npos, key, " missing in ", line);
          return std::strtod(line.c_str() + at + key.size() + 4, nullptr);
        };
        steps.push_back(static_cast<int64_t>(number("step")));
        const double dropped = number("moe_dropped"), max_load = number("moe_max_load");
        CHECK(number("aux_loss") > 0);
        CHECK(max_load >= 1.0);  // the busiest expert takes at least the mean load
        CHECK(max_load <= 4.0);  // at most every token (4 experts)
        if (dropless) {
          CHECK(dropped == 0);
        } else {
          // Capacity 0.5 keeps at most E * floor(0.5 * T / E) <= T / 2 tokens per layer.
          CHECK(dropped >= 0.5);
          CHECK(dropped < 1);
        }
      }
      CHECK(steps == std::vector<int64_t>{1, 2, 4, 5});
    }
  }
}
