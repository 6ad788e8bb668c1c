// Text generation with the recurrent step (constant time and memory per token) and the
// sampling rules users expect: temperature, top-k, top-p (nucleus), greedy at T = 0.
#pragma once

#include <cstdint>
#include <vector>

#include "core/random.h"
#include "ssm/model.h"

namespace ssmtrain {

// The most tokens one `ssmtrain sample` generates (the output is held in memory).
constexpr int64_t kMaxSampleTokens = int64_t{1} << 24;

struct SampleOptions {
  int64_t tokens = 64;
  double temperature = 1.0;  // 0: greedy
  int64_t top_k = 0;         // 0: off
  double top_p = 1.0;        // 1: off
};

// Feeds `prompt` (at least one token) through the model's step function, then samples
// `tokens` more. Ids index the unpadded vocabulary [0, vocab_size): the padded rows of the
// head are never sampled. Returns the sampled tokens only. The model is put in eval mode.
std::vector<int32_t> generate(LanguageModel& model, const std::vector<int32_t>& prompt, int64_t vocab_size,
                              const SampleOptions& options, Generator& gen);

// Picks one id from a row of logits by the options (exposed for tests).
int32_t sample_from_logits(const std::vector<float>& logits, const SampleOptions& options, Generator& gen);

// Bytes as printable text: printable ASCII and newlines/tabs kept, other bytes as \xNN.
std::string printable_bytes(const std::vector<int32_t>& bytes);

}  // namespace ssmtrain
