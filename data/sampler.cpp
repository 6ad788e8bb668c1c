#include "data/sampler.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <utility>

#include "core/error.h"
#include "core/random.h"

namespace ssmtrain {

namespace {

uint64_t splitmix64(uint64_t x) {
  x += 0x9E3779B97F4A7C15ull;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
  return x ^ (x >> 31);
}

// Distinguishes the permutation streams from every other use of derive_key.
constexpr uint64_t kShuffleTag = 0x53485546464C4531ull;  // "SHUFFLE1"

}  // namespace

uint64_t derive_key(uint64_t seed, uint64_t tag) { return splitmix64(splitmix64(seed) ^ tag); }

int64_t HoldOut::tail_tokens(int64_t n) const {
  if (part == Part::whole) return 0;
  auto tail = static_cast<int64_t>(std::ceil(fraction * static_cast<double>(n)));
  return std::min(n, std::max(tail, min_tokens));
}

int64_t HoldOut::begin(int64_t n) const { return part == Part::tail ? n - tail_tokens(n) : 0; }

int64_t HoldOut::size(int64_t n) const {
  switch (part) {
    case Part::whole: return n;
    case Part::head: return n - tail_tokens(n);
    case Part::tail: return tail_tokens(n);
  }
  return n;
}

std::string HoldOut::describe() const {
  if (part == Part::whole) return "";
  std::string rule = detail::concat("last ", fraction * 100, "% of each file");
  if (min_tokens > 0) rule += detail::concat(", at least ", min_tokens, " tokens");
  return (part == Part::head ? "training part (all but the " : "validation part (the ") + rule + ")";
}

WindowSampler::WindowSampler(std::vector<int64_t> segment_tokens, WindowOrder order, uint64_t seed, int rank,
                             int world_size)
    : segment_tokens_(std::move(segment_tokens)), order_(order), seed_(seed), rank_(rank), world_size_(world_size) {
  SSMT_CHECK(world_size >= 1 && rank >= 0 && rank < world_size, "data: rank ", rank, " of world_size ", world_size,
             " is not a valid rank (expected 0 <= rank < world_size)");
  for (int64_t n : segment_tokens_) {
    SSMT_ASSERT(n >= 0);
    total_tokens_ += n;
  }
}

void WindowSampler::lay_windows(int64_t seq_len, const std::string& what) {
  SSMT_CHECK(seq_len >= 1, what, ": seq_len must be at least 1, got ", seq_len);
  first_window_.assign(1, 0);
  for (int64_t n : segment_tokens_) first_window_.push_back(first_window_.back() + (n > 0 ? (n - 1) / seq_len : 0));
  num_windows_ = first_window_.back();
  SSMT_CHECK(num_windows_ > 0, what, ": its ", total_tokens_, " tokens in ", segment_tokens_.size(),
             " segment(s) hold no window of seq_len + 1 = ", seq_len + 1, " tokens");
  SSMT_CHECK(order_ == WindowOrder::sequential || num_windows_ <= std::numeric_limits<uint32_t>::max(), what, ": ",
             num_windows_, " windows are more than a shuffled walk supports (2^32 - 1); use a longer seq_len");
  seq_len_ = seq_len;
  permutation_epoch_ = -1;
  permutation_.clear();
}

WindowRef WindowSampler::window(int64_t index) const {
  // The segment is the last one whose first window is <= index.
  auto it = std::upper_bound(first_window_.begin(), first_window_.end(), index);
  int64_t segment = (it - first_window_.begin()) - 1;
  return WindowRef{segment, (index - first_window_[segment]) * seq_len_};
}

void WindowSampler::shuffle_for_epoch(int64_t epoch) {
  permutation_.resize(num_windows_);
  for (int64_t i = 0; i < num_windows_; ++i) permutation_[i] = static_cast<uint32_t>(i);
  Generator gen(derive_key(derive_key(seed_, kShuffleTag), static_cast<uint64_t>(epoch)));
  for (int64_t i = num_windows_ - 1; i > 0; --i) {
    int64_t j = gen.below(static_cast<uint32_t>(i + 1));
    std::swap(permutation_[i], permutation_[j]);
  }
  permutation_epoch_ = epoch;
}

int64_t WindowSampler::window_at_slot(int64_t epoch, int64_t position) {
  if (order_ == WindowOrder::sequential) return position;
  if (permutation_epoch_ != epoch) shuffle_for_epoch(epoch);
  return permutation_[position];
}

std::vector<WindowRef> WindowSampler::next_batch(int64_t batch, int64_t seq_len, const std::string& what) {
  SSMT_CHECK(batch >= 1, what, ": batch size must be at least 1, got ", batch);
  if (seq_len_ == 0) lay_windows(seq_len, what);
  SSMT_CHECK(seq_len == seq_len_, what, ": asked for seq_len ", seq_len, " but this stream's windows are laid for seq_len ",
             seq_len_, " (rewind() before changing it)");
  std::vector<WindowRef> refs;
  refs.reserve(batch);
  for (int64_t j = 0; j < batch; ++j) {
    int64_t slot = position_ + j * world_size_ + rank_;  // may run into later epochs
    refs.push_back(window(window_at_slot(epoch_ + slot / num_windows_, slot % num_windows_)));
  }
  int64_t advanced = position_ + batch * world_size_;
  epoch_ += advanced / num_windows_;
  position_ = advanced % num_windows_;
  return refs;
}

std::vector<int64_t> WindowSampler::cursor_values() const { return {epoch_, position_, seq_len_, num_windows_}; }

void WindowSampler::restore(const std::vector<int64_t>& values, const std::string& what) {
  SSMT_CHECK(values.size() == 4, what, ": the data cursor holds ", values.size(),
             " values, expected 4 (epoch, position, seq_len, num_windows)");
  int64_t epoch = values[0], position = values[1], seq_len = values[2], num_windows = values[3];
  if (seq_len == 0) {  // saved before the first batch
    rewind();
    return;
  }
  lay_windows(seq_len, what);
  SSMT_CHECK(num_windows == num_windows_, what, ": the data cursor was taken over ", num_windows,
             " windows of seq_len ", seq_len, ", but the data now holds ", num_windows_,
             "; the data changed since the checkpoint was written");
  SSMT_CHECK(epoch >= 0 && position >= 0 && position < num_windows_, what, ": the data cursor (epoch ", epoch,
             ", position ", position, ") is out of range for ", num_windows_, " windows");
  epoch_ = epoch;
  position_ = position;
}

void WindowSampler::rewind() {
  seq_len_ = 0;
  num_windows_ = 0;
  first_window_.clear();
  epoch_ = position_ = 0;
  permutation_epoch_ = -1;
  permutation_.clear();
}

}  // namespace ssmtrain
