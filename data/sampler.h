// The window sampler of language-model data (token shards, byte text), and the key
// derivation every data stream uses.
//
// A token stream made of segments (one per shard or per text file) is cut into windows of
// L + 1 tokens at stride L, never crossing a segment boundary: window w of a segment covers
// tokens [w L, w L + L + 1), so consecutive windows share one token and every token except a
// segment's first is a target exactly once per epoch. Segment s holds floor((n_s - 1) / L)
// windows; its leftover tail (fewer than L tokens) is never read.
//
// Windows are numbered globally (segment by segment) and visited epoch after epoch. In a
// shuffled walk, epoch e visits them in a Fisher-Yates permutation drawn from a Philox
// generator keyed by (seed, e); a sequential walk (validation) visits them in order. The
// walk is one global stream of window slots, position p of epoch e being slot e N + p, and a
// batch of B rows on rank r of W takes the slots p + j W + r (j < B) and moves p by B W, so
// ranks read disjoint windows and together read exactly what one process with batch B W
// would. The cursor stores the global position, not the rank's, so a run may also resume
// with another world size as long as B W stays the same.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace ssmtrain {

// A 64-bit Philox key for the stream `tag` of seed `seed` (splitmix64 finalizer over both),
// so streams that share a seed (train and val, epoch 3 and epoch 4) are unrelated.
uint64_t derive_key(uint64_t seed, uint64_t tag);

enum class WindowOrder { shuffled, sequential };

// Validation held out of the training data itself: the last tail_tokens(n) tokens of each
// segment of n tokens are validation, the rest training. tail_tokens(n) = min(n,
// max(ceil(fraction n), min_tokens)), so a positive fraction always holds out at least one
// token, and min_tokens (e.g. one evaluation window) keeps short files usable for validation.
struct HoldOut {
  enum class Part { whole, head, tail };
  Part part = Part::whole;  // whole: no hold-out; head: the training part; tail: validation
  double fraction = 0;      // share of each segment held out, in [0, 1)
  int64_t min_tokens = 0;   // the held-out tail is at least this long (capped at the segment)

  int64_t tail_tokens(int64_t n) const;
  int64_t begin(int64_t n) const;  // first token of this part in a segment of n tokens
  int64_t size(int64_t n) const;   // tokens of this part
  std::string describe() const;    // "", "training part" or "validation part" with the rule
};

struct WindowRef {
  int64_t segment = 0;
  int64_t start = 0;  // first token of the window within its segment
};

class WindowSampler {
 public:
  // segment_tokens: token count of each segment, in order.
  WindowSampler(std::vector<int64_t> segment_tokens, WindowOrder order, uint64_t seed, int rank, int world_size);

  // Windows of the next batch of this rank (each seq_len + 1 tokens). The first call after
  // construction or rewind() lays the windows for seq_len; later calls must keep it.
  // `what` names the data in errors (e.g. "data.path 'corpus.txt'").
  std::vector<WindowRef> next_batch(int64_t batch, int64_t seq_len, const std::string& what);

  // {epoch, position, seq_len, num_windows}; all 0 before the first batch.
  std::vector<int64_t> cursor_values() const;
  void restore(const std::vector<int64_t>& values, const std::string& what);
  void rewind();

  int64_t seq_len() const { return seq_len_; }
  int64_t num_windows() const { return num_windows_; }
  int64_t total_tokens() const { return total_tokens_; }
  WindowOrder order() const { return order_; }
  int rank() const { return rank_; }
  int world_size() const { return world_size_; }

 private:
  void lay_windows(int64_t seq_len, const std::string& what);
  WindowRef window(int64_t index) const;
  int64_t window_at_slot(int64_t epoch, int64_t position);  // which window slot (epoch, position) visits
  void shuffle_for_epoch(int64_t epoch);

  std::vector<int64_t> segment_tokens_;
  WindowOrder order_;
  uint64_t seed_;
  int rank_, world_size_;
  int64_t total_tokens_ = 0;

  int64_t seq_len_ = 0;                   // 0: not laid yet
  int64_t num_windows_ = 0;
  std::vector<int64_t> first_window_;     // (num_segments + 1) prefix sums of windows per segment
  int64_t epoch_ = 0, position_ = 0;      // next global slot
  int64_t permutation_epoch_ = -1;        // epoch whose permutation is in permutation_
  std::vector<uint32_t> permutation_;     // (num_windows) shuffled order of that epoch
};

}  // namespace ssmtrain
