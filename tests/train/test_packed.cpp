// data.pack_documents in the trainer: the config's checks (data.eot_token, mixers that cannot
// restart their state), the end-of-text token a run resolves, the seq_idx each micro-batch
// carries, and short runs on text with packing on, in training and evaluation.
#include <doctest/doctest.h>

#include <cmath>
#include <filesystem>
#include <fstream>

#include "core/random.h"
#include "data/packing.h"
#include "data/text.h"
#include "data/token_shards.h"
#include "train/config.h"
#include "train/setup.h"
#include "train/trainer.h"
#include "temp_dir.h"
#include "user_error.h"

using namespace ssmtrain;
using testing::user_error_of;
namespace fs = std::filesystem;

namespace {

bool contains(const std::string& s, const std::string& part) { return s.find(part) != std::string::npos; }

struct PackedDir : testing::TempDir {
  PackedDir() : TempDir("packed") {}
};

// Lines of 5 to 30 random lowercase letters: documents separated by newlines (token 10).
std::string lines_text(int64_t lines, uint64_t seed) {
  Generator gen(seed);
  std::string s;
  for (int64_t i = 0; i < lines; ++i) {
    const int64_t n = 5 + static_cast<int64_t>(gen.below(26));
    for (int64_t k = 0; k < n; ++k) s += static_cast<char>('a' + gen.below(26));
    s += '\n';
  }
  return s;
}

Config text_config(const std::string& path, const std::vector<std::string>& overrides = {}) {
  const std::string yaml = "model: {mixer: mamba, d_model: 16, n_layer: 2, d_state: 4, vocab_size: 256}\n"
                           "data: {kind: text, path: '" + path + "', val_fraction: 0.1}\n"
                           "budget: {steps: 4}\n"
                           "train: {batch_size: 2, seq_len: 32, log_every: 1, eval_every: 2, eval_batches: 2, "
                           "sample_tokens: 0}\n";
  return parse_config(yaml, "packed.yaml", overrides);
}

TrainOptions quiet_options(const PackedDir& dir, const std::string& name) {
  TrainOptions o;
  o.run_dir = dir.file(name);
  o.quiet = true;
  return o;
}

// The "loss" values of a run's metrics.jsonl: training records, then evaluation records.
std::pair<std::vector<double>, std::vector<double>> run_losses(const std::string& run_dir) {
  std::ifstream in(run_dir + "/metrics.jsonl");
  std::vector<double> train, val;
  for (std::string line; std::getline(in, line);) {
    const auto at = line.find("\"loss\":");
    REQUIRE(at != std::string::npos);
    const double loss = std::stod(line.substr(at + 7));
    (contains(line, "\"split\"") ? val : train).push_back(loss);
  }
  return {train, val};
}

}  // namespace

TEST_CASE("data.pack_documents: config checks name data.eot_token") {
  PackedDir dir;
  std::ofstream(dir.file("t.txt")) << lines_text(50, 1);
  CHECK_FALSE(text_config(dir.file("t.txt")).data.pack_documents);
  CHECK(text_config(dir.file("t.txt")).data.eot_token == -1);
  // Text and synthetic data have no end-of-text token of their own.
  std::string msg = user_error_of([&] { text_config(dir.file("t.txt"), {"data.pack_documents=true"}); });
  CHECK(contains(msg, "data.eot_token"));
  CHECK(contains(msg, "data.pack_documents"));
  msg = user_error_of([&] {
    parse_config("data: {kind: synthetic, pack_documents: true}\nmodel: {vocab_size: 16}\n", "s.yaml");
  });
  CHECK(contains(msg, "data.eot_token"));
  // The token must be in the vocabulary.
  msg = user_error_of(
      [&] { text_config(dir.file("t.txt"), {"data.pack_documents=true", "data.eot_token=256"}); });
  CHECK(contains(msg, "data.eot_token"));
  CHECK(contains(msg, "model.vocab_size"));
  CHECK(contains(user_error_of([&] { text_config(dir.file("t.txt"), {"data.eot_token=-2"}); }), "data.eot_token"));
  // Shards may leave it at -1 (the data's own), checked when the data is open.
  Config shards = text_config(dir.file("t.txt"), {"data.kind=shards", "data.pack_documents=true"});
  CHECK(shards.data.pack_documents);
  // Off, the token is not read.
  CHECK(text_config(dir.file("t.txt"), {"data.eot_token=300"}).data.eot_token == 300);
  // The keys round-trip through the dumped config (checkpoints keep them).
  Config on = text_config(dir.file("t.txt"), {"data.pack_documents=true", "data.eot_token=10"});
  CHECK(parse_config(to_yaml(on), "dump.yaml") == on);
  CHECK(config_differences(on, text_config(dir.file("t.txt"))).size() == 2);
}

TEST_CASE("data.pack_documents: the run's end-of-text token") {
  PackedDir dir;
  std::ofstream(dir.file("t.txt")) << lines_text(50, 2);
  TextDataset text({dir.file("t.txt")}, WindowOrder::sequential, 0, 0, 1);
  CHECK(resolved_eot_token(text_config(dir.file("t.txt")), text) == -1);  // off
  CHECK(resolved_eot_token(text_config(dir.file("t.txt"), {"data.pack_documents=true", "data.eot_token=10"}), text) ==
        10);

  std::vector<int32_t> tokens(200, 3);
  write_token_shard(dir.file("bytes_train.bin"), tokens, 256, /*byte_level=*/true);
  write_token_shard(dir.file("marked_train.bin"), tokens, 256, /*byte_level=*/true, /*eot_token=*/0);
  write_token_shard(dir.file("gpt2_train.bin"), tokens, 50257);
  auto shard_config = [&](const std::string& file, int64_t vocab) {
    return text_config(dir.file("t.txt"), {"data.kind=shards", "data.path=" + dir.file(file), "data.pack_documents=true",
                                           "model.vocab_size=" + std::to_string(vocab)});
  };
  auto open = [&](const std::string& file) {
    return TokenShardDataset({dir.file(file)}, 0, WindowOrder::sequential, 0, 0, 1);
  };
  // Recorded by prepare --eot.
  CHECK(resolved_eot_token(shard_config("marked_train.bin", 256), open("marked_train.bin")) == 0);
  // GPT-2 shards: <|endoftext|>, 50256.
  CHECK(resolved_eot_token(shard_config("gpt2_train.bin", 50257), open("gpt2_train.bin")) == 50256);
  // Byte-level shards without a record have none.
  std::string msg =
      user_error_of([&] { resolved_eot_token(shard_config("bytes_train.bin", 256), open("bytes_train.bin")); });
  CHECK(contains(msg, "data.eot_token"));
  CHECK(contains(msg, "--eot"));
  // 50256 outside a smaller model vocabulary.
  Config small = shard_config("gpt2_train.bin", 50257);
  small.model.vocab_size = 1000;
  msg = user_error_of([&] { resolved_eot_token(small, open("gpt2_train.bin")); });
  CHECK(contains(msg, "data.eot_token"));
  CHECK(contains(msg, "50256"));
  CHECK(contains(msg, "model.vocab_size"));
}

TEST_CASE("data.pack_documents: layers that cannot restart their state fail the run with exit 2") {
  PackedDir dir;
  std::ofstream(dir.file("t.txt")) << lines_text(100, 3);
  Config c = text_config(dir.file("t.txt"), {"data.pack_documents=true", "data.eot_token=10", "model.n_layer=3",
                                             "model.layers=[mamba,s4d,mlp]"});
  std::string msg = user_error_of([&] { run_training(c, quiet_options(dir, "run")); });
  CHECK(contains(msg, "data.pack_documents"));
  CHECK(contains(msg, "layer 1"));
  CHECK(contains(msg, "s4d"));
  CHECK_FALSE(fs::exists(dir.file("run") + "/metrics.jsonl"));  // refused before writing anything
  c.model.layers = {"mamba", "s4", "mlp"};
  CHECK(contains(user_error_of([&] { run_training(c, quiet_options(dir, "run2")); }), "s4"));
  // Without packing the same model trains.
  c.data.pack_documents = false;
  CHECK(run_training(c, quiet_options(dir, "run3")) == 0);
}

TEST_CASE("data.pack_documents: every micro-batch carries the documents of its inputs") {
  Batch b;
  b.batch = 2, b.seq_len = 4;
  b.inputs = {10, 1, 10, 2, 3, 10, 10, 4};
  b.targets = {1, 10, 2, 3, 10, 10, 4, 5};
  MicroBatch off = micro_batch(b, Device::cpu(), -1);
  CHECK_FALSE(off.seq_idx.defined());
  CHECK(off.ids.to_vector<int64_t>() == std::vector<int64_t>{10, 1, 10, 2, 3, 10, 10, 4});
  MicroBatch on = micro_batch(b, Device::cpu(), 10);
  REQUIRE(on.seq_idx.defined());
  CHECK(on.seq_idx.dtype() == DType::i32);
  CHECK(on.seq_idx.shape() == Dims{2, 4});
  CHECK(on.seq_idx.to_vector<int32_t>() == std::vector<int32_t>{0, 0, 1, 1, 0, 1, 2, 2});
  CHECK(on.seq_idx.to_vector<int32_t>() == document_index(b, 10));
  CHECK(on.targets.to_vector<int64_t>() == off.targets.to_vector<int64_t>());
}

TEST_CASE("data.pack_documents: a run on text trains and evaluates with packed documents") {
  PackedDir dir;
  std::ofstream(dir.file("t.txt")) << lines_text(400, 4);
  const std::vector<std::string> on = {"data.pack_documents=true", "data.eot_token=10", "train.grad_accum=2"};
  REQUIRE(run_training(text_config(dir.file("t.txt"), on), quiet_options(dir, "packed")) == 0);
  REQUIRE(run_training(text_config(dir.file("t.txt"), {"train.grad_accum=2"}), quiet_options(dir, "plain")) == 0);
  auto [train, val] = run_losses(dir.file("packed"));
  auto [train_plain, val_plain] = run_losses(dir.file("plain"));
  REQUIRE(train.size() == 4);
  REQUIRE(val.size() == 2);
  for (double l : train) CHECK(std::isfinite(l));
  for (double l : val) CHECK(std::isfinite(l));
  // The same batches, so the first loss (the initial model) differs only through seq_idx.
  CHECK(train[0] != train_plain[0]);
  CHECK(val[0] != val_plain[0]);
  // Resumed from its checkpoint, the run goes on with the option.
  Config more = text_config(dir.file("t.txt"), on);
  more.budget.steps = 6;
  TrainOptions resume = quiet_options(dir, "packed");
  resume.resume = "auto";
  CHECK(run_training(more, resume) == 0);
  CHECK(run_losses(dir.file("packed")).first.size() == 6);
}
