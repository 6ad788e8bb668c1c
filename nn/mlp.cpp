// MLP and GatedMLP.
#include "nn/mlp.h"

#include "core/ops.h"

namespace ssmtrain {

Tensor apply_activation(Activation act, const Tensor& x) {
  switch (act) {
    case Activation::gelu: return gelu(x);
    case Activation::silu: return silu(x);
    case Activation::relu: return relu(x);
  }
  throw InternalError("apply_activation: unknown activation");
}

Activation activation_from_name(const std::string& name) {
  if (name == "gelu") return Activation::gelu;
  if (name == "silu" || name == "swish") return Activation::silu;
  if (name == "relu") return Activation::relu;
  throw UserError("unknown activation '" + name + "' (expected gelu, silu or relu)");
}

namespace {
LinearOptions projection(const MLPOptions& o) {
  LinearOptions l;
  l.bias = o.bias;
  return l;
}
}  // namespace

MLP::MLP(int64_t in_features, int64_t hidden_features, Generator& gen, MLPOptions options)
    : activation_(options.activation) {
  int64_t out = options.out_features > 0 ? options.out_features : in_features;
  fc1_ = register_module("fc1", std::make_shared<Linear>(in_features, hidden_features, gen, projection(options)));
  fc2_ = register_module("fc2", std::make_shared<Linear>(hidden_features, out, gen, projection(options)));
}

Tensor MLP::forward(const Tensor& x) const { return fc2_->forward(apply_activation(activation_, fc1_->forward(x))); }

int64_t gated_mlp_hidden(int64_t in_features, int64_t multiple_of) {
  SSMT_CHECK(multiple_of > 0, "gated_mlp_hidden: multiple_of must be positive, got ", multiple_of);
  int64_t h = 8 * in_features / 3;
  return (h + multiple_of - 1) / multiple_of * multiple_of;
}

GatedMLP::GatedMLP(int64_t in_features, int64_t hidden_features, Generator& gen, MLPOptions options)
    : hidden_(hidden_features), activation_(options.activation) {
  int64_t out = options.out_features > 0 ? options.out_features : in_features;
  fc1_ = register_module("fc1", std::make_shared<Linear>(in_features, 2 * hidden_features, gen, projection(options)));
  fc2_ = register_module("fc2", std::make_shared<Linear>(hidden_features, out, gen, projection(options)));
}

Tensor GatedMLP::forward(const Tensor& x) const {
  std::vector<Tensor> value_gate = fc1_->forward(x).split({hidden_, hidden_}, -1);
  return fc2_->forward(mul(value_gate[0], apply_activation(activation_, value_gate[1])));
}

}  // namespace ssmtrain
