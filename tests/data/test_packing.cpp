// Packed documents on the data side: the document index of every position (data/packing.h),
// the end-of-text token a dataset knows of its own (shard header word 5, GPT-2's default),
// and `ssmtrain prepare --eot`, which puts that token before every document.
#include <doctest/doctest.h>

#include <filesystem>
#include <fstream>

#include "data/dataset.h"
#include "data/packing.h"
#include "data/prepare.h"
#include "data/text.h"
#include "data/token_shards.h"
#include "temp_dir.h"
#include "user_error.h"

using namespace ssmtrain;
using testing::user_error_of;

namespace {

bool contains(const std::string& s, const std::string& part) { return s.find(part) != std::string::npos; }

struct PackingTempDir : testing::TempDir {
  PackingTempDir() : TempDir("packing") {}
};

std::vector<int32_t> as_tokens(const std::string& s) {
  std::vector<int32_t> t;
  for (char c : s) t.push_back(static_cast<unsigned char>(c));
  return t;
}

}  // namespace

TEST_CASE("document_index counts the separators after the first position") {
  const int32_t E = 9;
  // Row 0: a document cut off at the start, then two more; row 1: begins with its separator
  // (still document 0) and has two separators in a row (an empty document between them).
  std::vector<int32_t> inputs = {1, 2, E, 3, 4, E, 5, 6,  //
                                 E, 1, 2, 3, E, E, 4, 5};
  std::vector<int32_t> want = {0, 0, 1, 1, 1, 2, 2, 2,  //
                               0, 0, 0, 0, 1, 2, 2, 2};
  CHECK(document_index(inputs, 2, 8, E) == want);

  Batch b;
  b.batch = 2, b.seq_len = 8, b.inputs = inputs, b.targets.assign(16, 0);
  CHECK(document_index(b, E) == want);

  // No separator: every row is one document. A token that never occurs changes nothing.
  CHECK(document_index(inputs, 2, 8, 7) == std::vector<int32_t>(16, 0));
  // The rule, position by position: seq_idx[t] = #{s in [1, t] : inputs[s] == eot}.
  for (int64_t r = 0; r < 2; ++r)
    for (int64_t t = 0; t < 8; ++t) {
      int32_t n = 0;
      for (int64_t s = 1; s <= t; ++s) n += inputs[r * 8 + s] == E;
      CHECK(want[r * 8 + t] == n);
    }
  CHECK(document_index({}, 0, 8, E).empty());
}

TEST_CASE("datasets know their own end-of-text token") {
  PackingTempDir dir;
  // Shards record it in header word 5 (token + 1); without a record, GPT-2's <|endoftext|>
  // for token shards, none for byte-level ones; text has none.
  std::vector<int32_t> tokens(100);
  for (size_t i = 0; i < tokens.size(); ++i) tokens[i] = static_cast<int32_t>(i % 50);
  write_token_shard(dir.file("gpt2_train.bin"), tokens, 50257);
  write_token_shard(dir.file("rec_train.bin"), tokens, 64, false, 7);
  write_token_shard(dir.file("zero_train.bin"), tokens, 64, false, 0);
  write_token_shard(dir.file("bytes_train.bin"), tokens, 256, true);
  CHECK(TokenShard(dir.file("gpt2_train.bin")).eot_token() == -1);
  CHECK(TokenShard(dir.file("rec_train.bin")).eot_token() == 7);
  CHECK(TokenShard(dir.file("zero_train.bin")).eot_token() == 0);
  auto open = [&](std::vector<std::string> files) {
    return TokenShardDataset(files, 0, WindowOrder::sequential, 0, 0, 1);
  };
  CHECK(open({dir.file("gpt2_train.bin")}).eot_token() == kGpt2EndOfText);
  CHECK(open({dir.file("rec_train.bin")}).eot_token() == 7);
  CHECK(open({dir.file("zero_train.bin")}).eot_token() == 0);
  CHECK(open({dir.file("bytes_train.bin")}).eot_token() == -1);
  CHECK(open({dir.file("rec_train.bin"), dir.file("gpt2_train.bin")}).eot_token() == 7);
  std::string msg = user_error_of([&] { open({dir.file("rec_train.bin"), dir.file("zero_train.bin")}); });
  CHECK(contains(msg, "different end-of-text tokens"));
  CHECK(contains(msg, "zero_train.bin"));

  CHECK(contains(user_error_of([&] { TokenShardWriter(dir.file("x.bin"), 64, false, 64); }), "end-of-text token 64"));

  std::ofstream(dir.file("t.txt")) << "some text for a window or two";
  CHECK(TextDataset({dir.file("t.txt")}, WindowOrder::sequential, 0, 0, 1).eot_token() == -1);
}

TEST_CASE("prepare --eot puts the byte before every document and records it") {
  PackingTempDir dir;
  const std::string a = "first document, long enough to hold out a tail", b = "second one";
  std::ofstream(dir.file("a.txt"), std::ios::binary) << a;
  std::ofstream(dir.file("b.txt"), std::ios::binary) << b;
  const std::string out = dir.file("shards");
  const char E = '\0';
  PrepareSummary s = prepare_text_shards({dir.file("a.txt"), dir.file("b.txt")}, out, 0.1, 1000, 0);
  // a: 46 bytes, tail ceil(4.6) = 5; b: 10 bytes, tail 1. Each part is preceded by the byte.
  const std::string want_train = E + a.substr(0, 41) + E + b.substr(0, 9);
  const std::string want_val = E + a.substr(41) + E + b.substr(9);
  REQUIRE(s.train_files.size() == 1);
  REQUIRE(s.val_files.size() == 1);
  CHECK(read_token_shard(s.train_files[0]) == as_tokens(want_train));
  CHECK(read_token_shard(s.val_files[0]) == as_tokens(want_val));
  CHECK(s.train_tokens == static_cast<int64_t>(want_train.size()));
  CHECK(TokenShard(s.train_files[0]).eot_token() == 0);
  CHECK(TokenShard(s.val_files[0]).eot_token() == 0);
  CHECK(contains(s.describe(), "preceded by byte 0"));

  // The shards read back with their token; the documents are where the byte is.
  DataSpec spec;
  spec.kind = "shards";
  spec.path = {out};
  auto train = make_dataset(spec, "train");
  CHECK(train->eot_token() == 0);
  CHECK(train->byte_level());

  // Without --eot nothing is added and nothing recorded (the output is as before).
  PrepareSummary plain = prepare_text_shards({dir.file("a.txt"), dir.file("b.txt")}, dir.file("plain"), 0.1, 1000);
  CHECK(read_token_shard(plain.train_files[0]) == as_tokens(a.substr(0, 41) + b.substr(0, 9)));
  CHECK(TokenShard(plain.train_files[0]).eot_token() == -1);
  CHECK_FALSE(contains(plain.describe(), "preceded"));

  // The byte must not occur in the text, and must be a byte.
  std::string msg = user_error_of([&] { prepare_text_shards({dir.file("a.txt")}, dir.file("o"), 0.1, 1000, 'o'); });
  CHECK(contains(msg, "--eot"));
  CHECK(contains(msg, "a.txt"));
  CHECK(contains(user_error_of([&] { prepare_text_shards({dir.file("a.txt")}, dir.file("o"), 0.1, 1000, 256); }),
                 "--eot"));
}
