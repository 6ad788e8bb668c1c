// `ssmtrain prepare`: text to byte-level shards, read back through the shard dataset.
#include <doctest/doctest.h>
#include <unistd.h>
#include <zlib.h>

#include <filesystem>
#include <fstream>
#include <functional>

#include "core/error.h"
#include "core/random.h"
#include "data/dataset.h"
#include "data/prepare.h"
#include "data/text.h"
#include "data/token_shards.h"
#include "temp_dir.h"
#include "user_error.h"

using namespace ssmtrain;
using testing::contains;
using testing::user_error_of;
namespace fs = std::filesystem;

namespace {

struct PrepareTempDir : testing::TempDir {
  PrepareTempDir() : TempDir("prepare") {}
};

std::string random_bytes(int64_t n, uint64_t seed) {
  Generator gen(seed);
  std::string s(n, ' ');
  for (auto& c : s) c = static_cast<char>(gen.below(256));
  return s;
}

std::vector<int32_t> as_tokens(const std::string& s) {
  std::vector<int32_t> t;
  for (char c : s) t.push_back(static_cast<unsigned char>(c));
  return t;
}

std::vector<int32_t> read_all(const std::vector<std::string>& files) {
  std::vector<int32_t> all;
  for (const auto& f : files) {
    std::vector<int32_t> t = read_token_shard(f);
    all.insert(all.end(), t.begin(), t.end());
  }
  return all;
}

}  // namespace

TEST_CASE("prepare writes byte-level shards with a train/val split") {
  PrepareTempDir dir;
  std::string a = random_bytes(10000, 1), b = random_bytes(3001, 2);
  std::ofstream(dir.file("a.txt"), std::ios::binary) << a;
  gzFile gz = gzopen(dir.file("b.gz").c_str(), "wb");
  REQUIRE(gzwrite(gz, b.data(), static_cast<unsigned>(b.size())) == static_cast<int>(b.size()));
  gzclose(gz);
  std::string out = dir.file("shards");

  PrepareSummary s = prepare_text_shards({dir.file("a.txt"), dir.file("b.gz")}, out, 0.1, 4000);
  // a: 9000 train + 1000 val; b: ceil(300.1) = 301 val, 2700 train.
  CHECK(s.input_files == 2);
  CHECK(s.input_bytes == 13001);
  CHECK(s.train_tokens == 11700);
  CHECK(s.val_tokens == 1301);
  REQUIRE(s.train_files.size() == 3);  // 4000 + 4000 + 3700
  REQUIRE(s.val_files.size() == 1);
  CHECK(s.train_files[0] == (fs::path(out) / "train_000000.bin").string());
  CHECK(s.val_files[0] == (fs::path(out) / "val_000000.bin").string());
  CHECK(contains(s.describe(), "11700 tokens in 3 shard(s)"));
  CHECK(read_all(s.train_files) == as_tokens(a.substr(0, 9000) + b.substr(0, 2700)));
  CHECK(read_all(s.val_files) == as_tokens(a.substr(9000) + b.substr(2700)));
  TokenShard first(s.train_files[0]);
  CHECK(first.token_bytes() == 2);
  CHECK(first.vocab_size() == 256);
  CHECK(first.byte_level());
  for (const auto& entry : fs::directory_iterator(out)) CHECK(entry.path().extension() == ".bin");  // no .tmp left

  // The directory reads back as shards: training from train_*, validation from val_*.
  DataSpec spec;
  spec.kind = "shards";
  spec.path = {out};
  CHECK(has_validation(spec));
  auto val = make_dataset(spec, "val");
  CHECK(val->byte_level());
  CHECK(val->vocab_size() == 256);
  Batch v = val->next(1, 1000);
  CHECK(v.inputs == as_tokens(a.substr(9000, 1000)));
  CHECK(v.num_target_bytes == 1000);
  auto train = make_dataset(spec, "train");
  CHECK(train->describe().find("3 shard(s), 11700 tokens") != std::string::npos);
  // Its windows equal a text dataset's over the same bytes: the first window of shard 0.
  std::ofstream(dir.file("head.txt"), std::ios::binary) << a.substr(0, 4000);
  TextDataset text({dir.file("head.txt")}, WindowOrder::sequential, 0, 0, 1);
  TokenShardDataset shard0({s.train_files[0]}, 0, WindowOrder::sequential, 0, 0, 1);
  for (int k = 0; k < 3; ++k) {
    Batch x = text.next(2, 512), y = shard0.next(2, 512);
    CHECK(x.inputs == y.inputs);
    CHECK(x.targets == y.targets);
  }

  // A second run with larger shards replaces the first entirely.
  PrepareSummary again = prepare_text_shards({dir.file("a.txt"), dir.file("b.gz")}, out, 0.1, 100000);
  CHECK(again.train_files.size() == 1);
  CHECK(again.removed_files.size() == 2);  // train_000001.bin, train_000002.bin
  CHECK(read_all(again.train_files) == as_tokens(a.substr(0, 9000) + b.substr(0, 2700)));
  CHECK(shards_in_directory(out, "train").size() == 1);

  // Without validation only train shards are written.
  PrepareSummary none = prepare_text_shards({dir.file("a.txt")}, dir.file("all"), 0, 100000);
  CHECK(none.val_files.empty());
  CHECK(none.train_tokens == 10000);
}

TEST_CASE("prepare errors name the option and the file") {
  PrepareTempDir dir;
  std::string msg = user_error_of([&] { prepare_text_shards({dir.file("missing.txt")}, dir.file("o"), 0.1, 1000); });
  CHECK(contains(msg, "--input"));
  CHECK(contains(msg, "missing.txt"));
  CHECK(contains(user_error_of([&] { prepare_text_shards({}, dir.file("o"), 0.1, 1000); }), "--input"));
  std::ofstream(dir.file("t.txt")) << "some text";
  CHECK(contains(user_error_of([&] { prepare_text_shards({dir.file("t.txt")}, dir.file("o"), 1.0, 1000); }),
                 "--val-fraction"));
  CHECK(contains(user_error_of([&] { prepare_text_shards({dir.file("t.txt")}, dir.file("o"), 0.1, 0); }),
                 "--shard-tokens"));
  std::ofstream(dir.file("plainfile")) << "x";
  CHECK(contains(user_error_of([&] { prepare_text_shards({dir.file("t.txt")}, dir.file("plainfile"), 0.1, 10); }),
                 "--output"));
}
