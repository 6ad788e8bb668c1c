// Synthetic tasks: the answers are recomputed from the inputs alone and compared with the
// targets; the streams are deterministic, restorable, split and rank-sharded.
#include <doctest/doctest.h>

#include <functional>
#include <map>
#include <set>

#include "core/error.h"
#include "data/dataset.h"
#include "data/synthetic.h"
#include "user_error.h"

using namespace ssmtrain;
using testing::contains;
using testing::user_error_of;

namespace {

// Checks one selective-copying row: the answers are the non-noise tokens of the first T - M
// inputs, in order, and they are asked for at the M trailing markers.
void check_selective_copy(const int32_t* in, const int32_t* tgt, int64_t T, int64_t V, int64_t M) {
  std::vector<int32_t> data;
  for (int64_t i = 0; i < T - M; ++i) {
    REQUIRE(in[i] >= 0);
    REQUIRE(in[i] <= V - 3);
    REQUIRE(tgt[i] == kIgnoreIndex);
    if (in[i] != 0) data.push_back(in[i]);
  }
  REQUIRE(static_cast<int64_t>(data.size()) == M);
  for (int64_t k = 0; k < M; ++k) {
    REQUIRE(in[T - M + k] == V - 2);
    REQUIRE(tgt[T - M + k] == data[k]);
  }
}

// One induction row: the answer is whatever follows the first trigger.
void check_induction(const int32_t* in, const int32_t* tgt, int64_t T, int64_t V) {
  int64_t triggers = 0, first = -1;
  for (int64_t i = 0; i < T - 1; ++i) {
    REQUIRE(in[i] >= 0);
    REQUIRE(in[i] < V);
    if (in[i] == V - 1) {
      ++triggers;
      if (first < 0) first = i;
    }
    REQUIRE(tgt[i] == kIgnoreIndex);
  }
  REQUIRE(triggers == 1);
  REQUIRE(first <= T - 3);
  REQUIRE(in[T - 1] == V - 1);
  REQUIRE(tgt[T - 1] == in[first + 1]);
}

// One MQAR row: the pairs of the first 2K inputs define the map; every later key is a query
// whose target is its value, and each key is queried exactly once.
void check_mqar(const int32_t* in, const int32_t* tgt, int64_t T, int64_t V, int64_t K) {
  std::map<int32_t, int32_t> value_of;
  std::set<int32_t> values;
  for (int64_t k = 0; k < K; ++k) {
    int32_t key = in[2 * k], value = in[2 * k + 1];
    REQUIRE(key >= 1);
    REQUIRE(key < V / 2);
    REQUIRE(value >= V / 2);
    REQUIRE(value < V);
    REQUIRE(value_of.count(key) == 0);
    value_of[key] = value;
    values.insert(value);
    REQUIRE(tgt[2 * k] == kIgnoreIndex);
    REQUIRE(tgt[2 * k + 1] == kIgnoreIndex);
  }
  REQUIRE(static_cast<int64_t>(values.size()) == K);
  std::set<int32_t> queried;
  for (int64_t i = 2 * K; i < T; ++i) {
    if (value_of.count(in[i])) {
      REQUIRE(queried.insert(in[i]).second);
      REQUIRE(tgt[i] == value_of[in[i]]);
    } else {
      REQUIRE(tgt[i] == kIgnoreIndex);
      REQUIRE((in[i] == 0 || values.count(in[i])));  // filler or the value after a query
    }
  }
  REQUIRE(static_cast<int64_t>(queried.size()) == K);
}

struct TaskCase {
  const char* name;
  int64_t vocab, tokens, seq_len;
  int64_t answers;       // answer positions per row
  int64_t min_distinct;  // distinct rows expected among 320 draws
};

}  // namespace

TEST_CASE("synthetic task labels are correct by construction") {
  const TaskCase cases[] = {
      // The tiny cases have few layouts: selective_copy (V 6, M 3, T 7) has 4 * 3^3 = 108, and
      // induction (V 4, T 3) only 3 (trigger first, then one of 3 ids); every one shows up.
      {"selective_copy", 16, 16, 64, 16, 300}, {"selective_copy", 16, 16, 32, 16, 300},
      {"selective_copy", 6, 3, 7, 3, 50},      {"induction", 16, 16, 64, 1, 300},
      {"induction", 4, 1, 3, 1, 3},            {"mqar", 8192, 4, 64, 4, 300},
      {"mqar", 8192, 16, 256, 16, 300},        {"mqar", 10, 4, 17, 4, 50},
  };
  for (const TaskCase& c : cases) {
    std::string task = c.name;
    CAPTURE(task);
    CAPTURE(c.seq_len);
    DataSpec spec;
    spec.kind = "synthetic";
    spec.task = c.name;
    spec.task_vocab = c.vocab;
    spec.task_tokens = c.tokens;
    spec.seed = 3;
    auto ds = make_dataset(spec, "train");
    CHECK(ds->vocab_size() == c.vocab);
    CHECK_FALSE(ds->byte_level());
    std::set<std::vector<int32_t>> distinct;
    for (int step = 0; step < 20; ++step) {
      Batch b = ds->next(16, c.seq_len);
      REQUIRE(b.num_targets() == 16 * c.answers);
      CHECK(b.num_target_bytes == 0);
      for (int64_t j = 0; j < 16; ++j) {
        const int32_t* in = b.inputs.data() + j * c.seq_len;
        const int32_t* tgt = b.targets.data() + j * c.seq_len;
        if (task == "selective_copy") check_selective_copy(in, tgt, c.seq_len, c.vocab, c.tokens);
        if (task == "induction") check_induction(in, tgt, c.seq_len, c.vocab);
        if (task == "mqar") check_mqar(in, tgt, c.seq_len, c.vocab, c.tokens);
        distinct.insert(std::vector<int32_t>(in, in + c.seq_len));
      }
    }
    // Samples are random, not one sample repeated.
    CHECK(static_cast<int64_t>(distinct.size()) >= c.min_distinct);
  }
}

TEST_CASE("synthetic answer positions and tokens are spread out") {
  // Induction: the first trigger lands on every allowed position and the answer takes every
  // ordinary id, so no position or id is favoured by a bug in the draws.
  SyntheticDataset ds(SyntheticTask::induction, 6, 1, 1, false, 0, 1);
  const int64_t T = 10;
  std::set<int64_t> positions;
  std::set<int32_t> answers;
  Batch b = ds.next(2000, T);
  for (int64_t j = 0; j < 2000; ++j) {
    for (int64_t i = 0; i < T - 1; ++i)
      if (b.inputs[j * T + i] == 5) positions.insert(i);
    answers.insert(b.targets[j * T + T - 1]);
  }
  CHECK(positions.size() == T - 2);
  CHECK(answers == std::set<int32_t>{0, 1, 2, 3, 4});
}

TEST_CASE("synthetic streams are deterministic and restore from the position") {
  for (SyntheticTask task : {SyntheticTask::selective_copy, SyntheticTask::induction, SyntheticTask::mqar}) {
    CAPTURE(synthetic_task_name(task));
    int64_t vocab = task == SyntheticTask::mqar ? 64 : 16, tokens = 8;
    SyntheticDataset a(task, vocab, tokens, 7, false, 0, 1), b(task, vocab, tokens, 7, false, 0, 1);
    SyntheticDataset other_seed(task, vocab, tokens, 8, false, 0, 1), val(task, vocab, tokens, 7, true, 0, 1);
    Batch ba = a.next(4, 48), bb = b.next(4, 48);
    CHECK(ba.inputs == bb.inputs);
    CHECK(ba.targets == bb.targets);
    CHECK(other_seed.next(4, 48).inputs != ba.inputs);
    CHECK(val.next(4, 48).inputs != ba.inputs);  // validation draws from its own key
    for (int k = 0; k < 3; ++k) a.next(4, 48);
    DataCursor saved = a.cursor();
    CHECK(saved.kind == "synthetic");
    CHECK(saved.values[0] == 16);
    Batch expected = a.next(4, 48);
    SyntheticDataset resumed(task, vocab, tokens, 7, false, 0, 1);
    resumed.restore(saved);
    CHECK(resumed.next(4, 48).inputs == expected.inputs);
    resumed.rewind();
    CHECK(resumed.next(4, 48).inputs == ba.inputs);
    // Sample i is the same whatever batches it was requested in.
    SyntheticDataset single(task, vocab, tokens, 7, false, 0, 1);
    for (int i = 0; i < 3; ++i) single.next(1, 48);
    Batch fourth = single.next(1, 48);
    CHECK(std::vector<int32_t>(ba.inputs.begin() + 3 * 48, ba.inputs.end()) == fourth.inputs);
    // Another task's cursor is refused.
    SyntheticDataset wrong(task, vocab, tokens + 1, 7, false, 0, 1);
    CHECK(contains(user_error_of([&] { wrong.restore(saved); }), "task_tokens"));
  }
}

TEST_CASE("synthetic ranks take interleaved samples") {
  SyntheticDataset whole(SyntheticTask::mqar, 128, 4, 5, false, 0, 1);
  SyntheticDataset r0(SyntheticTask::mqar, 128, 4, 5, false, 0, 2), r1(SyntheticTask::mqar, 128, 4, 5, false, 1, 2);
  const int64_t B = 3, T = 32;
  for (int step = 0; step < 4; ++step) {
    Batch big = whole.next(2 * B, T), a = r0.next(B, T), b = r1.next(B, T);
    for (int64_t j = 0; j < B; ++j) {
      CHECK(std::vector<int32_t>(a.inputs.begin() + j * T, a.inputs.begin() + (j + 1) * T) ==
            std::vector<int32_t>(big.inputs.begin() + 2 * j * T, big.inputs.begin() + (2 * j + 1) * T));
      CHECK(std::vector<int32_t>(b.targets.begin() + j * T, b.targets.begin() + (j + 1) * T) ==
            std::vector<int32_t>(big.targets.begin() + (2 * j + 1) * T, big.targets.begin() + (2 * j + 2) * T));
    }
  }
  CHECK(r1.cursor().values == whole.cursor().values);
}

TEST_CASE("synthetic task errors name the key") {
  DataSpec spec;
  spec.kind = "synthetic";
  spec.task = "copying";
  CHECK(contains(user_error_of([&] { make_dataset(spec, "train"); }), "data.task"));
  spec.task = "mqar";
  spec.task_vocab = 16;
  spec.task_tokens = 8;  // keys come from [1, 8): only 7
  CHECK(contains(user_error_of([&] { make_dataset(spec, "train"); }), "data.task_tokens"));
  spec.task_tokens = 4;
  auto ds = make_dataset(spec, "val");
  std::string msg = user_error_of([&] { ds->next(1, 15); });
  CHECK(contains(msg, "seq_len 15"));
  CHECK(contains(msg, "data.task_tokens"));
  spec.task = "selective_copy";
  spec.task_vocab = 3;
  CHECK(contains(user_error_of([&] { make_dataset(spec, "train"); }), "data.task_vocab"));
}
