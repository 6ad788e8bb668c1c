#include "data/synthetic.h"

#include <algorithm>
#include <numeric>
#include <sstream>
#include <vector>

#include "core/error.h"
#include "core/random.h"
#include "data/sampler.h"

namespace ssmtrain {

namespace {

// Stream tags: one per task, and one per split, so no two streams share a key.
constexpr uint64_t kTaskTag[3] = {0x53454C434F505931ull /*SELCOPY1*/, 0x494E445543543031ull /*INDUCT01*/,
                                  0x4D51415252303031ull /*MQARR001*/};
constexpr uint64_t kTrainTag = 0x545241494E303031ull;  // "TRAIN001"
constexpr uint64_t kValTag = 0x56414C4944303031ull;    // "VALID001"

uint32_t draw_below(Generator& gen, int64_t n) { return gen.below(static_cast<uint32_t>(n)); }

// Marks `count` of the positions [0, n) in increasing order (selection sampling: position i
// is taken with probability still-needed / still-left, which makes every subset equally likely).
std::vector<int64_t> sorted_subset(Generator& gen, int64_t n, int64_t count) {
  std::vector<int64_t> picked;
  picked.reserve(count);
  for (int64_t i = 0; i < n && static_cast<int64_t>(picked.size()) < count; ++i)
    if (draw_below(gen, n - i) < static_cast<uint32_t>(count - static_cast<int64_t>(picked.size())))
      picked.push_back(i);
  return picked;
}

// `count` distinct values of [lo, hi) in random order (a partial Fisher-Yates shuffle).
std::vector<int32_t> distinct_values(Generator& gen, int64_t lo, int64_t hi, int64_t count) {
  std::vector<int32_t> pool(hi - lo);
  std::iota(pool.begin(), pool.end(), static_cast<int32_t>(lo));
  for (int64_t i = 0; i < count; ++i) std::swap(pool[i], pool[i + draw_below(gen, hi - lo - i)]);
  pool.resize(count);
  return pool;
}

void selective_copy(Generator& gen, int64_t T, int64_t V, int64_t M, int32_t* in, int32_t* tgt) {
  int64_t noise = T - M;
  int32_t marker = static_cast<int32_t>(V - 2);
  std::fill(in, in + noise, 0);
  std::fill(tgt, tgt + T, kIgnoreIndex);
  std::vector<int64_t> where = sorted_subset(gen, noise, M);
  for (int64_t k = 0; k < M; ++k) {
    int32_t token = 1 + static_cast<int32_t>(draw_below(gen, V - 3));
    in[where[k]] = token;
    in[noise + k] = marker;
    tgt[noise + k] = token;
  }
}

void induction(Generator& gen, int64_t T, int64_t V, int32_t* in, int32_t* tgt) {
  int32_t trigger = static_cast<int32_t>(V - 1);
  for (int64_t i = 0; i < T - 1; ++i) in[i] = static_cast<int32_t>(draw_below(gen, V - 1));
  int64_t p = draw_below(gen, T - 2);
  in[p] = trigger;
  in[T - 1] = trigger;
  std::fill(tgt, tgt + T, kIgnoreIndex);
  tgt[T - 1] = in[p + 1];
}

void mqar(Generator& gen, int64_t T, int64_t V, int64_t K, int32_t* in, int32_t* tgt) {
  std::vector<int32_t> keys = distinct_values(gen, 1, V / 2, K);
  std::vector<int32_t> values = distinct_values(gen, V / 2, V, K);
  std::fill(in, in + T, 0);
  std::fill(tgt, tgt + T, kIgnoreIndex);
  for (int64_t k = 0; k < K; ++k) in[2 * k] = keys[k], in[2 * k + 1] = values[k];
  std::vector<int64_t> slots = sorted_subset(gen, (T - 2 * K) / 2, K);
  std::vector<int32_t> order = distinct_values(gen, 0, K, K);  // which pair each query asks for
  for (int64_t q = 0; q < K; ++q) {
    int64_t pos = 2 * K + 2 * slots[q];
    in[pos] = keys[order[q]];
    in[pos + 1] = values[order[q]];
    tgt[pos] = values[order[q]];
  }
}

}  // namespace

SyntheticTask parse_synthetic_task(const std::string& name, const std::string& key) {
  if (name == "selective_copy") return SyntheticTask::selective_copy;
  if (name == "induction") return SyntheticTask::induction;
  if (name == "mqar") return SyntheticTask::mqar;
  throw UserError(key + ": unknown synthetic task '" + name + "'; expected selective_copy, induction or mqar");
}

const char* synthetic_task_name(SyntheticTask task) {
  switch (task) {
    case SyntheticTask::selective_copy: return "selective_copy";
    case SyntheticTask::induction: return "induction";
    case SyntheticTask::mqar: return "mqar";
  }
  return "?";
}

void check_synthetic_task(SyntheticTask task, int64_t vocab, int64_t task_tokens, int64_t seq_len) {
  const char* name = synthetic_task_name(task);
  SSMT_CHECK(vocab <= (int64_t{1} << 31) - 1, "data.task_vocab: ", vocab, " does not fit a 32-bit token id");
  switch (task) {
    case SyntheticTask::selective_copy:
      SSMT_CHECK(vocab >= 4, "data.task_vocab: ", name, " needs at least 4 ids (noise, data, marker, unused), got ",
                 vocab);
      SSMT_CHECK(task_tokens >= 1, "data.task_tokens: ", name, " needs at least one token to copy, got ", task_tokens);
      SSMT_CHECK(seq_len == 0 || seq_len >= 2 * task_tokens, "seq_len ", seq_len, " is too short for ", name,
                 " with data.task_tokens = ", task_tokens, ": it needs at least 2 * task_tokens = ", 2 * task_tokens,
                 " (noise slots for the data, then one marker per token)");
      break;
    case SyntheticTask::induction:
      SSMT_CHECK(vocab >= 3, "data.task_vocab: ", name, " needs at least 3 ids (two ordinary, one trigger), got ",
                 vocab);
      SSMT_CHECK(seq_len == 0 || seq_len >= 3, "seq_len ", seq_len, " is too short for ", name,
                 ": it needs at least 3 (trigger, answer, final trigger)");
      break;
    case SyntheticTask::mqar:
      SSMT_CHECK(task_tokens >= 1, "data.task_tokens: ", name, " needs at least one key-value pair, got ",
                 task_tokens);
      SSMT_CHECK(task_tokens <= vocab / 2 - 1, "data.task_tokens: ", name, " with ", task_tokens,
                 " distinct keys needs data.task_vocab >= ", 2 * (task_tokens + 1), " (keys come from [1, V/2)), got ",
                 vocab);
      SSMT_CHECK(seq_len == 0 || seq_len >= 4 * task_tokens, "seq_len ", seq_len, " is too short for ", name,
                 " with data.task_tokens = ", task_tokens, " pairs: it needs at least 4 * task_tokens = ",
                 4 * task_tokens, " (the pairs, then each key queried with its value)");
      break;
  }
}

void generate_synthetic_sample(SyntheticTask task, uint64_t key, int64_t seq_len, int64_t vocab, int64_t task_tokens,
                               int32_t* inputs, int32_t* targets) {
  check_synthetic_task(task, vocab, task_tokens, seq_len);
  SSMT_CHECK(seq_len <= int64_t{0xFFFFFFFF}, "seq_len ", seq_len, " is too long for a synthetic task (at most 2^32 - 1)");
  Generator gen(key);
  switch (task) {
    case SyntheticTask::selective_copy: selective_copy(gen, seq_len, vocab, task_tokens, inputs, targets); break;
    case SyntheticTask::induction: induction(gen, seq_len, vocab, inputs, targets); break;
    case SyntheticTask::mqar: mqar(gen, seq_len, vocab, task_tokens, inputs, targets); break;
  }
}

SyntheticDataset::SyntheticDataset(SyntheticTask task, int64_t vocab, int64_t task_tokens, uint64_t seed,
                                   bool validation, int rank, int world_size)
    : task_(task),
      vocab_(vocab),
      task_tokens_(task_tokens),
      validation_(validation),
      rank_(rank),
      world_size_(world_size),
      stream_key_(derive_key(derive_key(seed, kTaskTag[static_cast<int>(task)]), validation ? kValTag : kTrainTag)) {
  SSMT_CHECK(world_size >= 1 && rank >= 0 && rank < world_size, "data: rank ", rank, " of world_size ", world_size,
             " is not a valid rank (expected 0 <= rank < world_size)");
  check_synthetic_task(task, vocab, task_tokens, 0);
}

uint64_t SyntheticDataset::sample_key(int64_t index) const {
  return derive_key(stream_key_, static_cast<uint64_t>(index));
}

Batch SyntheticDataset::next(int64_t batch, int64_t seq_len) {
  SSMT_CHECK(batch >= 1, "synthetic ", synthetic_task_name(task_), ": batch size must be at least 1, got ", batch);
  check_synthetic_task(task_, vocab_, task_tokens_, seq_len);
  Batch b;
  b.batch = batch, b.seq_len = seq_len;
  b.inputs.resize(batch * seq_len);
  b.targets.resize(batch * seq_len);
  for (int64_t j = 0; j < batch; ++j)
    generate_synthetic_sample(task_, sample_key(position_ + j * world_size_ + rank_), seq_len, vocab_, task_tokens_,
                              b.inputs.data() + j * seq_len, b.targets.data() + j * seq_len);
  position_ += batch * world_size_;
  b.num_target_bytes = 0;
  return b;
}

DataCursor SyntheticDataset::cursor() const {
  return DataCursor{"synthetic", {position_, static_cast<int64_t>(task_), vocab_, task_tokens_}};
}

void SyntheticDataset::restore(const DataCursor& cursor) {
  const char* name = synthetic_task_name(task_);
  SSMT_CHECK(cursor.kind == "synthetic", "synthetic ", name, ": the data cursor was written by a '", cursor.kind,
             "' dataset, not by a synthetic task");
  SSMT_CHECK(cursor.values.size() == 4, "synthetic ", name, ": the data cursor holds ", cursor.values.size(),
             " values, expected 4 (position, task, task_vocab, task_tokens)");
  const auto& v = cursor.values;
  SSMT_CHECK(v[1] == static_cast<int64_t>(task_) && v[2] == vocab_ && v[3] == task_tokens_, "synthetic ", name,
             ": the data cursor was taken for task ", (v[1] >= 0 && v[1] <= 2 ? synthetic_task_name(SyntheticTask(v[1])) : "?"),
             " with task_vocab ", v[2], " and task_tokens ", v[3], ", but the data is now ", name, " with task_vocab ",
             vocab_, " and task_tokens ", task_tokens_);
  SSMT_CHECK(v[0] >= 0, "synthetic ", name, ": the data cursor's position ", v[0], " is negative");
  position_ = v[0];
}

std::string SyntheticDataset::describe() const {
  std::ostringstream os;
  os << "synthetic " << synthetic_task_name(task_) << " (" << (validation_ ? "validation" : "training")
     << " stream): vocab " << vocab_;
  if (task_ != SyntheticTask::induction) os << ", " << task_tokens_ << (task_ == SyntheticTask::mqar ? " pairs" : " tokens");
  os << ", generated from the seed";
  if (world_size_ > 1) os << ", rank " << rank_ << " of " << world_size_;
  return os.str();
}

}  // namespace ssmtrain
