// Dropout: an inverted-dropout mask drawn from a counter-based generator, so CPU and CUDA
// drop the same elements for the same generator state and a resumed run continues the
// same stream.
#include "core/ops.h"
#include "core/ops/op_common.h"

namespace ssmtrain {

using namespace ops_detail;

Tensor dropout(const Tensor& x, double p, Generator& gen, bool training) {
  check_floating(x, "dropout", "x");
  SSMT_CHECK(p >= 0 && p <= 1, "dropout of ", x.describe(), ": probability ", p, " is outside [0, 1]");
  if (!training || p == 0) return x;
  Tensor mask, out;  // mask (S): 0 or 1/(1-p), in x's dtype
  {
    NoGradGuard no_grad;
    // Drawn in f32 (f64 for f64) so the keep test is not quantised by bf16.
    DType draw = stat_dtype(x.dtype());
    Tensor u = Tensor::rand(x.shape(), gen, draw, x.device());
    Tensor keep = ge(u, Tensor::full({}, p, draw, x.device()));
    mask = mul(keep, p < 1 ? 1.0 / (1.0 - p) : 0.0).to(x.dtype());
    out = Tensor::empty(x.shape(), x.dtype(), x.device());
    if (out.numel() > 0) backend(x.device()).binary(BinaryOp::mul, x, mask, out);
  }
  if (any_requires_grad({x})) {
    Tensor saved_mask = mask.detach();
    record("dropout", {x}, {out}, [=](const std::vector<Tensor>& g) -> std::vector<Tensor> {
      return {mul(g[0], saved_mask)};
    });
  }
  return out;
}

}  // namespace ssmtrain
