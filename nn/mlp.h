// Position-wise feed-forward layers: MLP (fc1 -> act -> fc2) and GatedMLP (SwiGLU style).
//
// GatedMLP follows Mamba's reference: fc1 projects to 2*hidden, the first half is the
// value and the second the gate, y = fc2(value * act(gate)). Both layers name their output
// projection "fc2" so the residual rescale (nn/init.h) finds it. Biases are off by
// default, as in the Mamba family and MoE-Mamba's experts.
#pragma once

#include <memory>

#include "core/random.h"
#include "nn/linear.h"

namespace ssmtrain {

enum class Activation { gelu, silu, relu };
Tensor apply_activation(Activation act, const Tensor& x);
Activation activation_from_name(const std::string& name);  // "gelu", "silu", "relu"

struct MLPOptions {
  int64_t out_features = 0;  // 0: same as in_features
  bool bias = false;
  Activation activation = Activation::gelu;
};

class MLP : public Module {
 public:
  MLP(int64_t in_features, int64_t hidden_features, Generator& gen, MLPOptions options = {});
  // x (.., in) -> (.., out)
  Tensor forward(const Tensor& x) const;

  const std::shared_ptr<Linear>& fc1() const { return fc1_; }
  const std::shared_ptr<Linear>& fc2() const { return fc2_; }

 private:
  Activation activation_;
  std::shared_ptr<Linear> fc1_, fc2_;
};

// Mamba's default hidden size for a gated MLP: 8/3 * d rounded up to a multiple.
int64_t gated_mlp_hidden(int64_t in_features, int64_t multiple_of = 128);

class GatedMLP : public Module {
 public:
  // Default options: no bias, silu gate (SwiGLU).
  GatedMLP(int64_t in_features, int64_t hidden_features, Generator& gen, MLPOptions options = swiglu());
  // x (.., in) -> (.., out)
  Tensor forward(const Tensor& x) const;

  int64_t hidden_features() const { return hidden_; }
  const std::shared_ptr<Linear>& fc1() const { return fc1_; }  // in -> 2 * hidden
  const std::shared_ptr<Linear>& fc2() const { return fc2_; }  // hidden -> out

  static MLPOptions swiglu() {
    MLPOptions o;
    o.activation = Activation::silu;
    return o;
  }

 private:
  int64_t hidden_;
  Activation activation_;
  std::shared_ptr<Linear> fc1_, fc2_;
};

}  // namespace ssmtrain
