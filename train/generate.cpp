#include "train/generate.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <numeric>

#include "core/autograd.h"
#include "core/ops.h"

namespace ssmtrain {

int32_t sample_from_logits(const std::vector<float>& logits, const SampleOptions& options, Generator& gen) {
  SSMT_ASSERT(!logits.empty(), "sample_from_logits: empty logits");
  const int64_t V = static_cast<int64_t>(logits.size());
  if (options.temperature <= 0) return static_cast<int32_t>(std::max_element(logits.begin(), logits.end()) - logits.begin());
  // Candidates sorted by logit, largest first (ties by id, so the result is deterministic).
  std::vector<int32_t> order(static_cast<size_t>(V));
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](int32_t a, int32_t b) { return logits[a] > logits[b]; });
  int64_t keep = V;
  if (options.top_k > 0) keep = std::min(keep, options.top_k);
  std::vector<double> p(static_cast<size_t>(keep));
  const double top = logits[order[0]];
  double total = 0;
  for (int64_t i = 0; i < keep; ++i) total += p[i] = std::exp((logits[order[i]] - top) / options.temperature);
  if (options.top_p < 1.0) {
    // The smallest prefix whose probability reaches top_p.
    double mass = 0;
    int64_t n = 0;
    while (n < keep) {
      mass += p[n++] / total;
      if (mass >= options.top_p) break;
    }
    keep = n;
    total = std::accumulate(p.begin(), p.begin() + keep, 0.0);
  }
  double u = static_cast<double>(gen.uniform()) * total;
  for (int64_t i = 0; i < keep; ++i) {
    u -= p[i];
    if (u < 0) return order[i];
  }
  return order[keep - 1];
}

std::vector<int32_t> generate(LanguageModel& model, const std::vector<int32_t>& prompt, int64_t vocab_size,
                              const SampleOptions& options, Generator& gen) {
  SSMT_CHECK(!prompt.empty(), "generate: the prompt must hold at least one token");
  for (int32_t t : prompt)
    SSMT_CHECK(t >= 0 && t < vocab_size, "generate: prompt token ", t, " is outside the vocabulary [0, ", vocab_size, ")");
  NoGradGuard no_grad;
  const bool was_training = model.is_training();
  model.eval();
  const Device device = model.embedding()->weight().device();
  auto states = model.init_states(1, device);
  Tensor logits;
  for (int32_t t : prompt) logits = model.step(Tensor::from_vector<int64_t>({t}, {1}, device), states);
  std::vector<int32_t> out;
  out.reserve(static_cast<size_t>(options.tokens));
  for (int64_t i = 0; i < options.tokens; ++i) {
    std::vector<float> row = logits.to(Device::cpu()).to(DType::f32).to_vector<float>();
    row.resize(static_cast<size_t>(vocab_size));  // drop the padded rows
    int32_t next = sample_from_logits(row, options, gen);
    out.push_back(next);
    if (i + 1 < options.tokens) logits = model.step(Tensor::from_vector<int64_t>({next}, {1}, device), states);
  }
  model.train(was_training);
  return out;
}

std::string printable_bytes(const std::vector<int32_t>& bytes) {
  std::string s;
  for (int32_t b : bytes) {
    if ((b >= 32 && b < 127) || b == '\n' || b == '\t') {
      s.push_back(static_cast<char>(b));
    } else {
      char buf[8];
      std::snprintf(buf, sizeof buf, "\\x%02x", b & 0xff);
      s += buf;
    }
  }
  return s;
}

}  // namespace ssmtrain
