// Token shards: the llm.c format round trip, header checks, shard datasets (windows, cursor,
// rank sharding, hold-out) and the shard listing rules.
#include <doctest/doctest.h>
#include <unistd.h>

#include <filesystem>
#include <functional>
#include <fstream>
#include <set>

#include "core/error.h"
#include "core/random.h"
#include "data/dataset.h"
#include "data/token_shards.h"
#include "temp_dir.h"
#include "user_error.h"

using namespace ssmtrain;
using testing::contains;
using testing::user_error_of;
namespace fs = std::filesystem;

namespace {

struct ShardTempDir : testing::TempDir {
  ShardTempDir() : TempDir("shards") {}
};

std::vector<int32_t> random_tokens(int64_t n, int64_t vocab, uint64_t seed) {
  Generator gen(seed);
  std::vector<int32_t> t(n);
  for (auto& x : t) x = static_cast<int32_t>(gen.below(static_cast<uint32_t>(vocab)));
  return t;
}

}  // namespace

TEST_CASE("token shard round trip in both widths") {
  ShardTempDir dir;
  for (int64_t vocab : {int64_t{50257}, int64_t{100000}}) {
    CAPTURE(vocab);
    std::string path = dir.file("shard_" + std::to_string(vocab) + ".bin");
    std::vector<int32_t> tokens = random_tokens(5000, vocab, 7);
    tokens[0] = static_cast<int32_t>(vocab - 1);  // the largest id survives the width
    write_token_shard(path, tokens, vocab);
    CHECK_FALSE(fs::exists(path + ".tmp"));
    int width = vocab <= 65536 ? 2 : 4;
    CHECK(fs::file_size(path) == static_cast<uintmax_t>(kShardHeaderBytes + 5000 * width));
    TokenShard shard(path);
    CHECK(shard.token_bytes() == width);
    CHECK(shard.num_tokens() == 5000);
    CHECK(shard.vocab_size() == vocab);
    CHECK_FALSE(shard.byte_level());
    CHECK(read_token_shard(path) == tokens);
    // The header is llm.c's: magic and version in words 0 and 1.
    std::ifstream in(path, std::ios::binary);
    int32_t header[3];
    in.read(reinterpret_cast<char*>(header), sizeof(header));
    CHECK(header[0] == (width == 2 ? 20240520 : 20240801));
    CHECK(header[1] == (width == 2 ? 1 : 7));
    CHECK(header[2] == 5000);
  }
}

TEST_CASE("token shard header checked against the file size") {
  ShardTempDir dir;
  std::string path = dir.file("bad.bin");
  write_token_shard(path, random_tokens(100, 256, 1), 256);
  SUBCASE("extra bytes") {
    std::ofstream(path, std::ios::binary | std::ios::app) << "xyz";
    std::string msg = user_error_of([&] { TokenShard s(path); });
    CHECK(contains(msg, path));
    CHECK(contains(msg, "promises 100 tokens"));
  }
  SUBCASE("truncated") {
    fs::resize_file(path, kShardHeaderBytes + 150);
    std::string msg = user_error_of([&] { TokenShard s(path); });
    CHECK(contains(msg, path));
    CHECK(contains(msg, "1174 bytes"));
  }
  SUBCASE("shorter than the header") {
    fs::resize_file(path, 10);
    CHECK(contains(user_error_of([&] { TokenShard s(path); }), path));
  }
  SUBCASE("wrong magic") {
    std::fstream f(path, std::ios::binary | std::ios::in | std::ios::out);
    int32_t magic = 12345;
    f.write(reinterpret_cast<const char*>(&magic), 4);
    f.close();
    std::string msg = user_error_of([&] { TokenShard s(path); });
    CHECK(contains(msg, path));
    CHECK(contains(msg, "magic"));
  }
  SUBCASE("missing") { CHECK(contains(user_error_of([&] { TokenShard s(dir.file("none.bin")); }), "none.bin")); }
}

TEST_CASE("shard dataset windows are the shard tokens") {
  ShardTempDir dir;
  std::vector<int32_t> a = random_tokens(1000, 300, 2), b = random_tokens(501, 300, 3);
  write_token_shard(dir.file("a_train.bin"), a, 300);
  write_token_shard(dir.file("b_train.bin"), b, 300);
  const int64_t L = 100;
  TokenShardDataset ds({dir.file("a_train.bin"), dir.file("b_train.bin")}, 0, WindowOrder::sequential, 0, 0, 1);
  CHECK(ds.vocab_size() == 300);
  CHECK_FALSE(ds.byte_level());
  // Shard a holds floor(999 / 100) = 9 windows, b floor(500 / 100) = 5: 14 per epoch.
  Batch batch = ds.next(14, L);
  for (int64_t j = 0; j < 14; ++j) {
    const std::vector<int32_t>& src = j < 9 ? a : b;
    int64_t start = (j < 9 ? j : j - 9) * L;
    for (int64_t i = 0; i < L; ++i) {
      REQUIRE(batch.inputs[j * L + i] == src[start + i]);
      REQUIRE(batch.targets[j * L + i] == src[start + i + 1]);
    }
  }
  CHECK(batch.num_target_bytes == 0);
  // The next epoch starts over in sequential order.
  CHECK(ds.next(1, L).inputs == std::vector<int32_t>(a.begin(), a.begin() + L));
  // A too-small model vocabulary is refused, naming the key.
  CHECK(contains(user_error_of([&] {
                   TokenShardDataset d({dir.file("a_train.bin")}, 100, WindowOrder::sequential, 0, 0, 1);
                 }),
                 "model.vocab_size"));
}

TEST_CASE("shard dataset cursor restores exactly") {
  ShardTempDir dir;
  write_token_shard(dir.file("s.bin"), random_tokens(20000, 1000, 4), 1000);
  auto make = [&] { return TokenShardDataset({dir.file("s.bin")}, 0, WindowOrder::shuffled, 42, 0, 1); };
  TokenShardDataset first = make();
  for (int k = 0; k < 7; ++k) first.next(8, 64);  // 56 of 312 windows; crosses no epoch yet
  DataCursor saved = first.cursor();
  CHECK(saved.kind == "shards");
  std::vector<Batch> rest;
  for (int k = 0; k < 40; ++k) rest.push_back(first.next(8, 64));  // runs into later epochs
  TokenShardDataset resumed = make();
  resumed.restore(saved);
  for (int k = 0; k < 40; ++k) {
    Batch b = resumed.next(8, 64);
    REQUIRE(b.inputs == rest[k].inputs);
    REQUIRE(b.targets == rest[k].targets);
  }
  // Another seed gives another order.
  TokenShardDataset other({dir.file("s.bin")}, 0, WindowOrder::shuffled, 43, 0, 1);
  TokenShardDataset again = make();
  CHECK(other.next(8, 64).inputs != again.next(8, 64).inputs);
  // A cursor over other data is refused.
  write_token_shard(dir.file("small.bin"), random_tokens(5000, 1000, 5), 1000);
  TokenShardDataset small({dir.file("small.bin")}, 0, WindowOrder::shuffled, 42, 0, 1);
  CHECK(contains(user_error_of([&] { small.restore(saved); }), "changed since the checkpoint"));
  CHECK(contains(user_error_of([&] { small.restore(DataCursor{"text", saved.values}); }), "'text'"));
}

TEST_CASE("shard dataset ranks read disjoint windows and together one big batch") {
  ShardTempDir dir;
  write_token_shard(dir.file("s.bin"), random_tokens(40000, 5000, 6), 5000);
  const int64_t B = 4, L = 50;
  TokenShardDataset whole({dir.file("s.bin")}, 0, WindowOrder::shuffled, 9, 0, 1);
  TokenShardDataset r0({dir.file("s.bin")}, 0, WindowOrder::shuffled, 9, 0, 2);
  TokenShardDataset r1({dir.file("s.bin")}, 0, WindowOrder::shuffled, 9, 1, 2);
  std::set<std::vector<int32_t>> seen;
  for (int step = 0; step < 30; ++step) {  // 30 * 8 = 240 of 799 windows: one epoch
    Batch big = whole.next(2 * B, L), a = r0.next(B, L), b = r1.next(B, L);
    for (int64_t j = 0; j < B; ++j) {
      std::vector<int32_t> ra(a.inputs.begin() + j * L, a.inputs.begin() + (j + 1) * L);
      std::vector<int32_t> rb(b.inputs.begin() + j * L, b.inputs.begin() + (j + 1) * L);
      REQUIRE(ra == std::vector<int32_t>(big.inputs.begin() + (2 * j) * L, big.inputs.begin() + (2 * j + 1) * L));
      REQUIRE(rb == std::vector<int32_t>(big.inputs.begin() + (2 * j + 1) * L, big.inputs.begin() + (2 * j + 2) * L));
      seen.insert(ra);
      seen.insert(rb);
    }
  }
  // Within an epoch no window is read twice, by the same rank or by the other one (random
  // windows of 50 tokens from 5000 ids never coincide by chance).
  CHECK(seen.size() == 30 * 2 * B);
  CHECK(r0.cursor().values == whole.cursor().values);
}

TEST_CASE("shard hold-out splits every shard into disjoint head and tail") {
  ShardTempDir dir;
  std::vector<int32_t> tokens(1000);
  for (int i = 0; i < 1000; ++i) tokens[i] = i;  // every token names its position
  write_token_shard(dir.file("x_train.bin"), tokens, 1000);
  DataSpec spec;
  spec.kind = "shards";
  spec.path = {dir.file("*_train.bin")};  // a glob: no val shards beside it
  spec.val_fraction = 0.1;                // the last ceil(100) = 100 tokens
  CHECK(has_validation(spec));
  auto train = make_dataset(spec, "train"), val = make_dataset(spec, "val");
  std::set<int32_t> train_seen, val_seen;
  for (int k = 0; k < 10; ++k) {
    Batch b = train->next(10, 9);  // 899 / 9 = 99 windows of the head [0, 900)
    for (int64_t i = 0; i < 90; ++i) train_seen.insert(b.inputs[i]), train_seen.insert(b.targets[i]);
  }
  Batch v = val->next(11, 9);  // 99 / 9 = 11 windows of the tail [900, 1000)
  for (int64_t i = 0; i < 99; ++i) val_seen.insert(v.inputs[i]), val_seen.insert(v.targets[i]);
  CHECK(*train_seen.rbegin() == 891);  // the last full window of the head ends at 891
  CHECK(*val_seen.begin() == 900);
  CHECK(*val_seen.rbegin() == 999);
  CHECK(v.inputs[0] == 900);
  // Without val_fraction there is nothing to validate on.
  spec.val_fraction = 0;
  CHECK_FALSE(has_validation(spec));
  CHECK(contains(user_error_of([&] { make_dataset(spec, "val"); }), "data.val_path"));
}

TEST_CASE("shard listing takes the split as a word") {
  ShardTempDir dir;
  for (const char* name : {"fineweb_train_000001.bin", "fineweb_val_000000.bin", "interval_train.bin", "notes.txt"})
    write_token_shard(dir.file(name), {1, 2, 3}, 10);
  std::vector<std::string> train = list_token_shards(dir.path.string(), "train", "data.path");
  REQUIRE(train.size() == 2);
  CHECK(contains(train[0], "fineweb_train_000001.bin"));
  CHECK(contains(train[1], "interval_train.bin"));
  std::vector<std::string> val = shards_in_directory(dir.path.string(), "val");
  REQUIRE(val.size() == 1);
  CHECK(contains(val[0], "fineweb_val_000000.bin"));
  CHECK(contains(user_error_of([&] { list_token_shards(dir.file("missing"), "train", "data.path"); }), "data.path"));
  CHECK(contains(user_error_of([&] { list_token_shards(dir.file("*.none"), "train", "data.path"); }), "matches no file"));
}
