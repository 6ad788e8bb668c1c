// RMSNorm and LayerNorm modules on top of the fused norm ops.
#include "nn/norm.h"

#include "core/ops.h"

namespace ssmtrain {

namespace {
void check_last_axis(const Tensor& x, const Tensor& w, const char* layer, const std::string& path) {
  SSMT_CHECK(x.dim() >= 1 && x.size(-1) == w.size(0), layer, " '", path, "': input ", x.describe(),
             " must end in ", w.size(0), " features");
}
}  // namespace

RMSNorm::RMSNorm(int64_t dim, double eps) : eps_(eps) {
  SSMT_CHECK(dim > 0, "RMSNorm: dim must be positive, got ", dim);
  SSMT_CHECK(eps > 0, "RMSNorm: eps must be positive, got ", eps);
  weight_ = register_parameter("weight", Tensor::ones({dim}), {param_tag::no_decay});
}

Tensor RMSNorm::forward(const Tensor& x) const {
  check_last_axis(x, weight_, "RMSNorm", path());
  return rms_norm(x, weight_, eps_);
}

LayerNorm::LayerNorm(int64_t dim, double eps, bool bias) : eps_(eps) {
  SSMT_CHECK(dim > 0, "LayerNorm: dim must be positive, got ", dim);
  SSMT_CHECK(eps > 0, "LayerNorm: eps must be positive, got ", eps);
  weight_ = register_parameter("weight", Tensor::ones({dim}), {param_tag::no_decay});
  if (bias) bias_ = register_parameter("bias", Tensor::zeros({dim}), {param_tag::no_decay});
}

Tensor LayerNorm::forward(const Tensor& x) const {
  check_last_axis(x, weight_, "LayerNorm", path());
  return layer_norm(x, weight_, bias_, eps_);
}

}  // namespace ssmtrain
