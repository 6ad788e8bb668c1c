// A model learning one fixed batch: the test that a new mixer trains at all.
#pragma once

#include <cstdint>
#include <utility>
#include <vector>

#include "core/autograd.h"
#include "nn/lm.h"
#include "optim/optimizer.h"

namespace ssmtrain::testing {

// The loss of the first and of the 20th of 20 optimizer steps on one fixed (2, 16) batch of
// token ids below 7 (targets: the next id, cyclically).
inline std::pair<double, double> fit_fixed_batch(LanguageModel& model, Optimizer& optimizer) {
  model.train();
  std::vector<int64_t> ids(32), targets(32);
  for (size_t i = 0; i < ids.size(); ++i)
    ids[i] = static_cast<int64_t>(i % 7), targets[i] = static_cast<int64_t>((i + 1) % 7);
  const Tensor x = Tensor::from_vector(ids, {2, 16}), y = Tensor::from_vector(targets, {2, 16});
  double first = 0, last = 0;
  for (int step = 0; step < 20; ++step) {
    optimizer.zero_grad();
    LMLoss out = model.forward_loss(x, y);
    backward(out.loss);
    optimizer.step();
    (step == 0 ? first : last) = out.loss.item<double>();
  }
  return {first, last};
}

}  // namespace ssmtrain::testing
