// The synthetic capability tasks of the Mamba and Zoology papers (SPECS section 7), generated
// on the fly from the seed.
//
// Sample i of a stream is a pure function of (seed, task, split, i, seq_len): a Philox
// generator keyed by derive_key(stream key, i) draws it, so the stream needs no storage and
// its cursor is just the sample position. Targets are kIgnoreIndex except at the answer
// positions, so the loss and the accuracy count only the answers. Layouts (docs/data.md has
// examples), with T = seq_len and V = task_vocab:
//
//  selective_copy (M = task_tokens): ids 0 = noise, 1..V-3 data, V-2 = marker (V-1 unused, so
//    the default V = 16 gives the paper's ids). Positions [0, T-M) are noise with M data
//    tokens at random sorted positions; positions [T-M, T) hold the marker, and the target at
//    the k-th marker is the k-th data token. Needs T >= 2M.
//  induction: ids 0..V-2 ordinary, V-1 = trigger. Tokens 0..T-2 are random ordinary tokens
//    except one trigger at a random position p <= T-3; the last input is the trigger and its
//    target is the token after the first trigger (input p+1). Needs T >= 3.
//  mqar (K = task_tokens pairs): keys from [1, V/2), values from [V/2, V), 0 = filler. Inputs
//    [0, 2K) are k1 v1 .. kK vK (distinct keys, distinct values); the rest holds, at K random
//    even offsets from 2K, each key once more (in random order) followed by its value, and 0
//    elsewhere. The target at a queried key is its value. Needs T >= 4K, K <= V/2 - 1.
#pragma once

#include <cstdint>
#include <string>

#include "data/batch.h"

namespace ssmtrain {

enum class SyntheticTask { selective_copy, induction, mqar };

// "selective_copy", "induction" or "mqar"; UserError naming `key` otherwise.
SyntheticTask parse_synthetic_task(const std::string& name, const std::string& key = "data.task");
const char* synthetic_task_name(SyntheticTask task);

// UserError (naming data.task_vocab / data.task_tokens) when the task cannot be laid out with
// this vocabulary and token count; seq_len 0 skips the length check.
void check_synthetic_task(SyntheticTask task, int64_t vocab, int64_t task_tokens, int64_t seq_len);

// One sample from the Philox key `key` (layouts above).
void generate_synthetic_sample(SyntheticTask task, uint64_t key, int64_t seq_len, int64_t vocab, int64_t task_tokens,
                               int32_t* inputs, int32_t* targets);  // inputs, targets: (seq_len)

class SyntheticDataset : public Dataset {
 public:
  // validation selects the evaluation stream, drawn from another key than training.
  SyntheticDataset(SyntheticTask task, int64_t vocab, int64_t task_tokens, uint64_t seed, bool validation, int rank,
                   int world_size);

  // Rank r of W takes the samples p + j W + r (j < batch) and moves p by batch W.
  Batch next(int64_t batch, int64_t seq_len) override;
  int64_t vocab_size() const override { return vocab_; }
  // {position, task, vocab, task_tokens}; restore checks that the task matches.
  DataCursor cursor() const override;
  void restore(const DataCursor& cursor) override;
  void rewind() override { position_ = 0; }
  std::string describe() const override;

  int64_t position() const { return position_; }
  // The key of sample `index` of this stream (for tests and tools).
  uint64_t sample_key(int64_t index) const;

 private:
  SyntheticTask task_;
  int64_t vocab_, task_tokens_;
  bool validation_;
  int rank_, world_size_;
  uint64_t stream_key_;
  int64_t position_ = 0;  // next global sample
};

}  // namespace ssmtrain
