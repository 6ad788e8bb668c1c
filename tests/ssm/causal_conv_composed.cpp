// The causal conv written with tensor ops (tests/ssm_reference.h).
#include "core/ops.h"
#include "ssm_reference.h"

namespace ssmtrain {

Tensor causal_conv1d_composed(const Tensor& x, const Tensor& weight, const Tensor& bias, bool silu_activation) {
  SSMT_CHECK(x.dim() == 3, "causal_conv1d: x ", x.describe(), ": expected (B, L, C)");
  SSMT_CHECK(weight.dim() == 2 && weight.size(0) == x.size(2), "causal_conv1d: weight ", weight.describe(),
             ": expected (C, K) with C = ", x.size(2));
  const int64_t L = x.size(1), K = weight.size(1);
  Tensor xp = pad(x, 1, K - 1, 0);  // (B, L + K - 1, C)
  Tensor out;
  for (int64_t k = 0; k < K; ++k) {
    Tensor term = xp.narrow(1, k, L) * weight.select(1, k);  // weight[:, k] broadcasts over (B, L)
    out = out.defined() ? out + term : term;
  }
  if (bias.defined()) out = out + bias;
  return silu_activation ? silu(out) : out;
}

}  // namespace ssmtrain
