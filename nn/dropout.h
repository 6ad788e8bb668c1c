// Dropout with a counter-based generator, so masks are reproducible and resumable.
//
// The module owns its Generator unless one is shared in (several layers drawing from one
// stream, as the trainer may prefer); either way generator() exposes the (seed, offset)
// state for checkpoints. Identity in eval mode or when p == 0 (the Mamba recipe).
#pragma once

#include <memory>

#include "core/random.h"
#include "nn/module.h"

namespace ssmtrain {

class Dropout : public Module {
 public:
  Dropout(double p, uint64_t seed);
  // `shared` must outlive the module.
  Dropout(double p, Generator& shared);
  // x (any shape) -> same shape; advances the generator by numel in training mode.
  Tensor forward(const Tensor& x);

  double p() const { return p_; }
  Generator& generator() { return *gen_; }

 private:
  double p_;
  std::unique_ptr<Generator> owned_;
  Generator* gen_;
};

}  // namespace ssmtrain
