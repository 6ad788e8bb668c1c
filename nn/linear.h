// Linear and Embedding layers.
//
// Linear keeps its weight as (out, in), like PyTorch, so checkpoints map one to one and the
// residual rescale (nn/init.h) finds "fc2.weight" / "out_proj.weight" by name. Both layers
// are created and initialised on the CPU in f32; move a whole model with Module::to.
#pragma once

#include "core/random.h"
#include "nn/module.h"

namespace ssmtrain {

enum class LinearInit {
  kaiming_uniform,  // PyTorch's nn.Linear default: weight and bias U(+-1/sqrt(in))
  normal,           // weight N(0, std), bias zeros (GPT-2 style)
};

struct LinearOptions {
  bool bias = true;
  LinearInit init = LinearInit::kaiming_uniform;
  double std = 0.02;  // for LinearInit::normal
};

class Linear : public Module {
 public:
  Linear(int64_t in_features, int64_t out_features, Generator& gen, LinearOptions options = {});
  // x (.., in) -> (.., out)
  // x (.., in) -> (.., out), computed in x's dtype (weights cast when they differ).
  Tensor forward(const Tensor& x) const;

  int64_t in_features() const { return in_features_; }
  int64_t out_features() const { return out_features_; }
  const Tensor& weight() const { return weight_; }  // (out, in)
  const Tensor& bias() const { return bias_; }      // (out) or undefined

 private:
  int64_t in_features_, out_features_;
  Tensor weight_, bias_;
};

class Embedding : public Module {
 public:
  // weight (num_embeddings, dim) ~ N(0, std); tagged "embedding".
  Embedding(int64_t num_embeddings, int64_t dim, Generator& gen, double std = 0.02);
  // ids (..) i64 -> (.., dim)
  Tensor forward(const Tensor& ids) const;

  int64_t num_embeddings() const { return weight_.size(0); }
  int64_t dim() const { return weight_.size(1); }
  const Tensor& weight() const { return weight_; }  // (num_embeddings, dim)

 private:
  Tensor weight_;
};

}  // namespace ssmtrain
