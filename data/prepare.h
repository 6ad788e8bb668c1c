// `ssmtrain prepare`: text files (plain or gzip) to token shards in llm.c's format, with a
// train/val split, so large corpora are decompressed (and tokenized) once and then mapped.
// Tokens are the bytes of the text (prepare_text_shards) or the ids of a byte-level BPE
// tokenizer (prepare_tokenized_shards, data/bpe_tokenizer.h).
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
//
// With a tokenizer, each file is encoded whole and the hold-out rule splits its tokens (so
// `kind: shards` with the same fraction would split alike); the shards record the
// tokenizer's vocabulary size (uint16 up to 65536 ids, else uint32) and are not byte-level.
// The end-of-text token before every part is eot_token, by default the tokenizer's
// <|endoftext|> (none when it has none); text that contains "<|endoftext|>" literally
// encodes it as that token, as Hugging Face does, and so starts a document there.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace ssmtrain {

class BpeTokenizer;

struct PrepareSummary {
  int64_t input_files = 0;
  int64_t input_bytes = 0;                          // decompressed bytes read
  std::vector<std::string> train_files, val_files;  // shards written, in order
  int64_t train_tokens = 0, val_tokens = 0;
  std::vector<std::string> removed_files;  // stale shards of an earlier run
  int64_t eot_token = -1;                  // the token (byte) before every document; -1 = none
  std::string tokenizer;                   // the tokenizer's describe(); "" = byte-level

  // A few lines for the CLI: what was read, what was written.
  std::string describe() const;
};

// UserError naming the option (--input, --output, --val-fraction, --shard-tokens, --eot) and
// the file on a missing, unreadable, corrupt or empty input or an unwritable output.
PrepareSummary prepare_text_shards(const std::vector<std::string>& inputs, const std::string& output_dir,
                                   double val_fraction = 0.01, int64_t shard_tokens = 100'000'000,
                                   int64_t eot_byte = -1);

// The same with a tokenizer; eot_token -1 takes the tokenizer's <|endoftext|>. Files are
// encoded on `threads` threads (0: one per hardware thread).
PrepareSummary prepare_tokenized_shards(const std::vector<std::string>& inputs, const std::string& output_dir,
                                        const BpeTokenizer& tokenizer, double val_fraction = 0.01,
                                        int64_t shard_tokens = 100'000'000, int64_t eot_token = -1, int threads = 0);

}  // namespace ssmtrain
