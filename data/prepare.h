// `ssmtrain prepare`: text files (plain or gzip) to byte-level token shards in llm.c's
// format, with a train/val split, so large corpora are decompressed once and then mapped.
//
// Each input's bytes are split like the text source splits them (data/sampler.h HoldOut):
// its last ceil(val_fraction * n) bytes go to validation, the rest to training. The parts are
// concatenated in input order into <output>/train_000000.bin, train_000001.bin, ... and
// val_000000.bin, ..., each holding at most shard_tokens tokens (uint16, vocabulary 256,
// byte-level flag set). Every shard is written to a temporary name and renamed when
// complete; shards of an earlier run with the same names that this run did not write again
// (a run with more shards) are removed afterwards, so the directory holds exactly this run.
//
// Documents (data.pack_documents, data/packing.h): each input file is one document. With
// eot_byte in [0, 255], every part of a file (its training head, its validation tail) is
// preceded by that byte, llm.c's convention (<|endoftext|> before every document) in a
// byte-level vocabulary, and the shard headers record it (word 5), so data.eot_token = -1
// finds it. The byte must not occur in the text (UserError naming --eot and the file). With
// eot_byte = -1 (the default) the parts follow one another with nothing between them.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace ssmtrain {

struct PrepareSummary {
  int64_t input_files = 0;
  int64_t input_bytes = 0;                   // decompressed bytes read
  std::vector<std::string> train_files, val_files;  // shards written, in order
  int64_t train_tokens = 0, val_tokens = 0;
  std::vector<std::string> removed_files;    // stale shards of an earlier run
  int64_t eot_byte = -1;                     // the byte before every document; -1 = none

  // A few lines for the CLI: what was read, what was written.
  std::string describe() const;
};

// UserError naming the option (--input, --output, --val-fraction, --shard-tokens, --eot) and
// the file on a missing, unreadable, corrupt or empty input or an unwritable output.
PrepareSummary prepare_text_shards(const std::vector<std::string>& inputs, const std::string& output_dir,
                                   double val_fraction = 0.01, int64_t shard_tokens = 100'000'000,
                                   int64_t eot_byte = -1);

}  // namespace ssmtrain
