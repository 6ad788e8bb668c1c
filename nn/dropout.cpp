// Dropout module around the dropout op.
#include "nn/dropout.h"

#include "core/ops.h"

namespace ssmtrain {

namespace {
double checked_probability(double p) {
  SSMT_CHECK(p >= 0.0 && p < 1.0, "Dropout: p must be in [0, 1), got ", p);
  return p;
}
}  // namespace

Dropout::Dropout(double p, uint64_t seed)
    : p_(checked_probability(p)), owned_(std::make_unique<Generator>(seed)), gen_(owned_.get()) {}

Dropout::Dropout(double p, Generator& shared) : p_(checked_probability(p)), gen_(&shared) {}

Tensor Dropout::forward(const Tensor& x) {
  if (!is_training() || p_ == 0.0) return x;
  return dropout(x, p_, *gen_, true);
}

}  // namespace ssmtrain
