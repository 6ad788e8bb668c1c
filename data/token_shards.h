// Token shards in llm.c's format, so data prepared for llm.c trains here unchanged.
//
// A shard is a 1024-byte header of 256 little-endian int32 followed by the tokens:
//   word 0  magic: 20240520 (uint16 tokens) or 20240801 (uint32 tokens)
//   word 1  version: 1 with magic 20240520, 7 with magic 20240801
//   word 2  number of tokens
//   word 3  vocabulary size, 0 = not recorded (our extension; llm.c writes 0 and never reads it)
//   word 4  1 when each token is one byte of text (our extension, written by `ssmtrain prepare`)
//   word 5  the end-of-text token that begins each document, plus one; 0 = not recorded (our
//           extension, written by `ssmtrain prepare --eot`; llm.c writes 0)
// and the file size must be exactly 1024 + tokens * width. Readers map the file (POSIX mmap)
// so a run touches only the windows it samples; writers go through a temporary name and
// rename, so a shard on disk is either complete or absent.
#pragma once

#include <cstdint>
#include <cstdio>
#include <memory>
#include <string>
#include <vector>

#include "data/batch.h"
#include "data/sampler.h"

namespace ssmtrain {

inline constexpr int32_t kShardMagicU16 = 20240520, kShardVersionU16 = 1;
inline constexpr int32_t kShardMagicU32 = 20240801, kShardVersionU32 = 7;
inline constexpr int64_t kShardHeaderBytes = 256 * 4;
// GPT-2's <|endoftext|>, which llm.c's GPT-2 shards put before every document: the end-of-text
// token of shards whose header records none, unless they are byte-level.
inline constexpr int32_t kGpt2EndOfText = 50256;

// A validated, read-only mapping of one shard. Every check failure is a UserError naming
// the file and what is wrong with it.
class TokenShard {
 public:
  explicit TokenShard(const std::string& path);
  ~TokenShard();
  TokenShard(const TokenShard&) = delete;
  TokenShard& operator=(const TokenShard&) = delete;

  const std::string& path() const { return path_; }
  int64_t num_tokens() const { return num_tokens_; }
  int token_bytes() const { return token_bytes_; }  // 2 or 4
  int64_t vocab_size() const { return vocab_size_; }  // header word 3; 0 = not recorded
  bool byte_level() const { return byte_level_; }
  int64_t eot_token() const { return eot_token_; }  // header word 5 - 1; -1 = not recorded

  uint32_t token(int64_t index) const;
  // Copies tokens [start, start + count) into out, as int32.
  void copy_tokens(int64_t start, int64_t count, int32_t* out) const;  // out: (count)

 private:
  void release();  // unmaps; the constructor calls it before throwing

  std::string path_;
  void* map_ = nullptr;
  int64_t map_bytes_ = 0;
  const unsigned char* tokens_ = nullptr;
  int64_t num_tokens_ = 0;
  int token_bytes_ = 2;
  int64_t vocab_size_ = 0;
  bool byte_level_ = false;
  int64_t eot_token_ = -1;
};

// All tokens of a shard (for tests and tools; training maps shards instead).
std::vector<int32_t> read_token_shard(const std::string& path);

// Streams tokens into `path` + ".tmp"; commit() completes the header, fsyncs and renames to
// `path`. Tokens are uint16 when vocab_size <= 65536, else uint32. Dropping a writer that
// was not committed removes the temporary file. eot_token >= 0 is recorded in header word 5
// (the writer does not place it: the caller appends it before each document).
class TokenShardWriter {
 public:
  TokenShardWriter(std::string path, int64_t vocab_size, bool byte_level = false, int64_t eot_token = -1);
  ~TokenShardWriter();
  TokenShardWriter(const TokenShardWriter&) = delete;
  TokenShardWriter& operator=(const TokenShardWriter&) = delete;

  // Each token must lie in [0, vocab_size).
  void append(const int32_t* tokens, int64_t count);        // tokens: (count)
  void append_bytes(const unsigned char* bytes, int64_t count);  // bytes: (count), as tokens 0..255
  int64_t num_tokens() const { return num_tokens_; }
  const std::string& path() const { return path_; }

  // Writes the header and fsyncs the temporary file; after this the shard is complete but
  // still under its temporary name (prepare renames all its shards only at the very end).
  void close();
  void commit();  // close() if needed, then rename to the final name

 private:
  template <typename Source>
  void append_any(const Source* tokens, int64_t count);
  void write_raw(const void* data, size_t bytes);

  std::string path_, temp_path_;
  int64_t vocab_size_;
  bool byte_level_;
  int64_t eot_token_;
  int token_bytes_;
  std::FILE* file_ = nullptr;
  int64_t num_tokens_ = 0;
  bool closed_ = false, committed_ = false;
};

// The whole shard in one call.
void write_token_shard(const std::string& path, const std::vector<int32_t>& tokens, int64_t vocab_size,
                       bool byte_level = false, int64_t eot_token = -1);

// Shard files named by `spec`, sorted by path: a glob pattern (any of * ? [), a single file,
// or a directory, of which the *.bin files with the word `split` ("train" or "val") in their
// name are taken (see shards_in_directory). `what` names the config key in errors (e.g.
// "data.path"). UserError when nothing matches.
std::vector<std::string> list_token_shards(const std::string& spec, const std::string& split, const std::string& what);

// The *.bin files directly inside `dir` whose name holds `split` as a word (delimited by the
// ends or by characters other than letters and digits: "fineweb_val_000000.bin" and
// "val_000000.bin" are val shards, "interval_train.bin" is not), sorted; empty when none.
std::vector<std::string> shards_in_directory(const std::string& dir, const std::string& split);

// Language-model batches from shards: windows of L + 1 tokens (data/sampler.h), inputs =
// window[:-1], targets = window[1:]. Each shard is one segment, so windows never cross
// shards. Every token read is checked against the vocabulary. With a hold-out, each shard
// contributes only its head (training) or its tail (validation) part.
class TokenShardDataset : public Dataset {
 public:
  // vocab_size 0 takes the largest size recorded in the shard headers (UserError if none
  // records one: llm.c's shards leave it 0).
  TokenShardDataset(const std::vector<std::string>& files, int64_t vocab_size, WindowOrder order, uint64_t seed,
                    int rank, int world_size, HoldOut holdout = {});

  Batch next(int64_t batch, int64_t seq_len) override;
  int64_t vocab_size() const override { return vocab_size_; }
  bool byte_level() const override { return byte_level_; }
  // The token recorded in the headers (UserError at construction when two shards record
  // different ones), else none for byte-level shards and kGpt2EndOfText for the others.
  int64_t eot_token() const override { return eot_token_; }
  DataCursor cursor() const override;
  void restore(const DataCursor& cursor) override;
  void rewind() override { sampler_.rewind(); }
  std::string describe() const override;

  int64_t num_shards() const { return static_cast<int64_t>(shards_.size()); }
  int64_t total_tokens() const { return sampler_.total_tokens(); }

 private:
  std::vector<std::unique_ptr<TokenShard>> shards_;
  HoldOut holdout_;
  std::vector<int64_t> first_token_;  // (num_shards) where each shard's part begins
  int64_t vocab_size_ = 0;
  bool byte_level_ = true;
  int64_t eot_token_ = -1;
  WindowSampler sampler_;
  std::string what_;  // names the data in errors
};

}  // namespace ssmtrain
