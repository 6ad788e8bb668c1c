// What every data source hands the trainer: host-side integer batches, and the cursor that
// pins down where in its stream a source stands.
//
// The data layer knows nothing of tensors; the trainer copies `inputs`/`targets` into i32
// tensors on its device. A Dataset is an endless, deterministic stream: the same seed and
// cursor always give bitwise identical batches, so a checkpoint that stores cursor() and
// calls restore() on resume continues exactly where the run stopped. docs/data.md describes
// every source, its cursor and the synthetic task layouts.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace ssmtrain {

// Target value for positions that carry no loss (the cross-entropy ignore index).
inline constexpr int32_t kIgnoreIndex = -100;

struct Batch {
  int64_t batch = 0, seq_len = 0;
  std::vector<int32_t> inputs;   // (B, L) row-major token ids in [0, vocab)
  std::vector<int32_t> targets;  // (B, L) token ids in [0, vocab), or kIgnoreIndex
  // Bytes of text the non-ignored targets stand for, so bits per byte = summed NLL in nats /
  // (ln 2 * num_target_bytes). Equals the target count for byte-level data (one token = one
  // byte) and is 0 where the bytes per token are unknown (BPE shards, synthetic tasks).
  int64_t num_target_bytes = 0;

  int64_t num_targets() const;  // positions whose target is not kIgnoreIndex
};

inline int64_t Batch::num_targets() const {
  int64_t n = 0;
  for (int32_t t : targets) n += t != kIgnoreIndex;
  return n;
}

// A dataset's position. `kind` names the dataset type that wrote it and is checked on
// restore; `values` is a handful of integers whose meaning depends on the kind (docs/data.md).
// The trainer stores both in its checkpoint (TrainerState::data_kind / data_cursor).
struct DataCursor {
  std::string kind;
  std::vector<int64_t> values;
};

class Dataset {
 public:
  virtual ~Dataset() = default;

  // The next batch of this rank: `batch` rows of `seq_len` tokens. Under data parallelism
  // every rank must call with the same arguments; each call advances the shared global
  // position by batch * world_size samples, of which this rank gets its own share.
  virtual Batch next(int64_t batch, int64_t seq_len) = 0;

  virtual int64_t vocab_size() const = 0;
  // True when one token is one byte of text, so bits per byte can be reported.
  virtual bool byte_level() const { return false; }
  // The data's own end-of-text token, the one that begins each document (data.pack_documents,
  // data/packing.h); -1 = none known.
  virtual int64_t eot_token() const { return -1; }

  virtual DataCursor cursor() const = 0;
  // UserError when the cursor was written by another kind of dataset or over other data.
  virtual void restore(const DataCursor& cursor) = 0;
  // Back to the very first batch; evaluation rewinds before each pass so every pass sees the
  // same samples. Also forgets the sequence length of language-model data.
  virtual void rewind() = 0;

  // One line for logs: what the data is, its size, order and rank share.
  virtual std::string describe() const = 0;
};

}  // namespace ssmtrain
