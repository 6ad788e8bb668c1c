// Linear and Embedding: parameter creation, init and forward.
#include "nn/linear.h"

#include <cmath>

#include "core/ops.h"
#include "nn/init.h"

namespace ssmtrain {

Linear::Linear(int64_t in_features, int64_t out_features, Generator& gen, LinearOptions options)
    : in_features_(in_features), out_features_(out_features) {
  SSMT_CHECK(in_features > 0 && out_features > 0, "Linear: in_features and out_features must be positive, got ",
             in_features, " and ", out_features);
  weight_ = register_parameter("weight", Tensor::empty({out_features, in_features}));
  if (options.init == LinearInit::kaiming_uniform)
    init::kaiming_uniform_(weight_, gen);
  else
    init::normal_(weight_, gen, 0.0, options.std);
  if (options.bias) {
    bias_ = register_parameter("bias", Tensor::empty({out_features}));
    if (options.init == LinearInit::kaiming_uniform) {
      double bound = 1.0 / std::sqrt(static_cast<double>(in_features));
      init::uniform_(bias_, gen, -bound, bound);
    } else {
      init::zeros_(bias_);
    }
  }
}

Tensor Linear::forward(const Tensor& x) const {
  SSMT_CHECK(x.dim() >= 1 && x.size(-1) == in_features_, "Linear '", path(), "': input ", x.describe(),
             " must end in ", in_features_, " features");
  // Mixed precision: bf16 activations with f32 master weights go to linear as they are (a
  // bf16 GEMM with fp32 accumulation whose weight and bias gradients arrive in f32); other
  // dtype pairs take part through a differentiable cast.
  if (x.dtype() != weight_.dtype() && !(x.dtype() == DType::bf16 && weight_.dtype() == DType::f32)) {
    Tensor w = cast(weight_, x.dtype());
    return linear(x, w, bias_.defined() ? cast(bias_, x.dtype()) : bias_);
  }
  return linear(x, weight_, bias_);
}

Embedding::Embedding(int64_t num_embeddings, int64_t dim, Generator& gen, double std) {
  SSMT_CHECK(num_embeddings > 0 && dim > 0, "Embedding: num_embeddings and dim must be positive, got ",
             num_embeddings, " and ", dim);
  weight_ = register_parameter("weight", Tensor::empty({num_embeddings, dim}), {param_tag::embedding});
  init::normal_(weight_, gen, 0.0, std);
}

Tensor Embedding::forward(const Tensor& ids) const { return embedding(weight_, ids); }

}  // namespace ssmtrain
