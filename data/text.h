// Raw text as byte-level tokens: one token per byte, vocabulary 256, no tokenizer.
//
// Files are read whole into memory at open, plain or gzip-compressed (detected by the magic
// bytes 1f 8b, not by the name; multi-member and dictzip files included), so the stream is
// random-access and sampling costs a memcpy per window. Each file is one segment of the
// window sampler (data/sampler.h): windows never cross a file boundary.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "data/batch.h"
#include "data/sampler.h"

namespace ssmtrain {

// True when the bytes start with the gzip magic (1f 8b).
bool is_gzip(const unsigned char* bytes, int64_t size);

// The whole content of a text file, decompressed when it is gzip. `key` names the config key
// or option in errors ("data.path", "--input"); errors also name the file.
std::vector<unsigned char> read_text_file(const std::string& path, const std::string& key);

class TextDataset : public Dataset {
 public:
  // files: plain or .gz text; UserError (naming `key` and the file) when one is missing,
  // unreadable, corrupt or empty. With a hold-out, each file contributes only its head
  // (training) or tail (validation) part.
  TextDataset(const std::vector<std::string>& files, WindowOrder order, uint64_t seed, int rank, int world_size,
              HoldOut holdout = {}, const std::string& key = "data.path");

  Batch next(int64_t batch, int64_t seq_len) override;
  int64_t vocab_size() const override { return 256; }
  bool byte_level() const override { return true; }
  DataCursor cursor() const override;
  void restore(const DataCursor& cursor) override;
  void rewind() override { sampler_.rewind(); }
  std::string describe() const override;

  int64_t num_files() const { return static_cast<int64_t>(texts_.size()); }
  int64_t total_tokens() const { return sampler_.total_tokens(); }  // bytes of this split's parts

 private:
  std::vector<std::string> files_;
  std::vector<std::vector<unsigned char>> texts_;  // decompressed content of each file
  HoldOut holdout_;
  std::vector<int64_t> first_byte_;  // (num_files) where each file's part begins
  WindowSampler sampler_;
  std::string what_;  // names the data in errors
};

}  // namespace ssmtrain
