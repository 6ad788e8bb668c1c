// Normalisation layers over the last axis: RMSNorm (the Mamba default) and LayerNorm.
//
// Both call the fused ops of core/ops.h (fp32 statistics, one tape node). Their weights
// (and LayerNorm's bias) are tagged "no_decay": weight decay would pull the gains to zero.
#pragma once

#include "nn/module.h"

namespace ssmtrain {

class RMSNorm : public Module {
 public:
  // weight (dim) = 1
  explicit RMSNorm(int64_t dim, double eps = 1e-5);
  // x (.., dim) -> (.., dim)
  Tensor forward(const Tensor& x) const;

  double eps() const { return eps_; }
  const Tensor& weight() const { return weight_; }

 private:
  double eps_;
  Tensor weight_;
};

class LayerNorm : public Module {
 public:
  // weight (dim) = 1, bias (dim) = 0 when `bias`
  explicit LayerNorm(int64_t dim, double eps = 1e-5, bool bias = true);
  // x (.., dim) -> (.., dim)
  Tensor forward(const Tensor& x) const;

  double eps() const { return eps_; }
  const Tensor& weight() const { return weight_; }
  const Tensor& bias() const { return bias_; }

 private:
  double eps_;
  Tensor weight_, bias_;
};

}  // namespace ssmtrain
