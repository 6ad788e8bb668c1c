// Fused RMSNorm and LayerNorm over the last axis: one tape node each. The forward keeps the
// per-row statistics (f32, or f64 for f64 input) so the backward needs one pass over x.
#include "core/ops.h"
#include "core/ops/op_common.h"

namespace ssmtrain {

using namespace ops_detail;

namespace {

// Checks x (.., D) and an optional per-feature parameter (D); returns D.
int64_t check_norm_args(const Tensor& x, const Tensor& param, const char* op, const char* param_name) {
  check_floating(x, op, "x");
  SSMT_CHECK(x.dim() >= 1, op, ": x ", x.describe(), ": expected (.., D)");
  int64_t d = x.size(-1);
  if (param.defined()) {
    check_floating(param, op, param_name);
    check_compatible(x, param, op, /*same_dtype=*/false);
    SSMT_CHECK(param.dim() == 1 && param.size(0) == d, op, ": ", param_name, " ", param.describe(), " and x ",
               x.describe(), ": expected ", param_name, " of shape (", d, ",)");
    SSMT_CHECK(param.dtype() == x.dtype() || param.dtype() == stat_dtype(x.dtype()), op, ": ", param_name, " ",
               param.describe(), " and x ", x.describe(), ": expected ", param_name, " in ", dtype_name(x.dtype()),
               " or ", dtype_name(stat_dtype(x.dtype())));
  }
  return d;
}

// A parameter gradient from the kernels' stat dtype to the parameter's own dtype.
Tensor to_param_dtype(const Tensor& g, const Tensor& param) {
  return g.dtype() == param.dtype() ? g : g.to(param.dtype());
}

}  // namespace

Tensor rms_norm(const Tensor& x, const Tensor& w, double eps) {
  int64_t d = check_norm_args(x, w, "rms_norm", "w");
  SSMT_CHECK(eps >= 0, "rms_norm: eps must be non-negative, got ", eps);
  DType stat = stat_dtype(x.dtype());
  Tensor x_rows, y, rstd;
  {
    NoGradGuard no_grad;
    int64_t m = Dims(x.shape().begin(), x.shape().end() - 1).numel();
    x_rows = x.reshape({m, d});
    Tensor y_rows = Tensor::empty({m, d}, x.dtype(), x.device());
    rstd = Tensor::empty({m}, stat, x.device());
    if (y_rows.numel() > 0) backend(x.device()).rms_norm_forward(x_rows, w, eps, y_rows, rstd);
    y = y_rows.reshape(x.shape());
  }
  if (any_requires_grad({x, w})) {
    bool need_w = w.defined() && w.requires_grad();
    Tensor saved_x = x_rows.detach(), saved_w = w.defined() ? w.detach() : Tensor(), saved_rstd = rstd.detach();
    Dims shape = x.shape();
    record("rms_norm", {x, w}, {y}, [=](const std::vector<Tensor>& g) -> std::vector<Tensor> {
      Tensor gy = g[0].reshape(saved_x.shape());
      Tensor gx = Tensor::empty(saved_x.shape(), saved_x.dtype(), saved_x.device());
      Tensor gw = saved_w.defined() ? Tensor::empty({saved_x.size(1)}, stat, saved_x.device()) : Tensor();
      if (gx.numel() > 0) {
        backend(gx.device()).rms_norm_backward(saved_x, saved_w, saved_rstd, gy.contiguous(), gx, gw);
      } else if (gw.defined() && gw.numel() > 0) {  // no rows: the parameter gradient is 0
        backend(gw.device()).fill(gw, 0);
      }
      return {gx.reshape(shape), need_w ? to_param_dtype(gw, saved_w) : Tensor()};
    });
  }
  return y;
}

Tensor layer_norm(const Tensor& x, const Tensor& w, const Tensor& b, double eps) {
  int64_t d = check_norm_args(x, w, "layer_norm", "w");
  check_norm_args(x, b, "layer_norm", "b");
  SSMT_CHECK(eps >= 0, "layer_norm: eps must be non-negative, got ", eps);
  DType stat = stat_dtype(x.dtype());
  Tensor x_rows, y, mean_rows, rstd;
  {
    NoGradGuard no_grad;
    int64_t m = Dims(x.shape().begin(), x.shape().end() - 1).numel();
    x_rows = x.reshape({m, d});
    Tensor y_rows = Tensor::empty({m, d}, x.dtype(), x.device());
    mean_rows = Tensor::empty({m}, stat, x.device());
    rstd = Tensor::empty({m}, stat, x.device());
    if (y_rows.numel() > 0) backend(x.device()).layer_norm_forward(x_rows, w, b, eps, y_rows, mean_rows, rstd);
    y = y_rows.reshape(x.shape());
  }
  if (any_requires_grad({x, w, b})) {
    bool need_w = w.defined() && w.requires_grad(), need_b = b.defined() && b.requires_grad();
    Tensor saved_x = x_rows.detach(), saved_w = w.defined() ? w.detach() : Tensor();
    Tensor saved_b = b.defined() ? b.detach() : Tensor();
    Tensor saved_mean = mean_rows.detach(), saved_rstd = rstd.detach();
    Dims shape = x.shape();
    record("layer_norm", {x, w, b}, {y}, [=](const std::vector<Tensor>& g) -> std::vector<Tensor> {
      Tensor gy = g[0].reshape(saved_x.shape());
      Device dev = saved_x.device();
      Tensor gx = Tensor::empty(saved_x.shape(), saved_x.dtype(), dev);
      Tensor gw = saved_w.defined() ? Tensor::empty({saved_x.size(1)}, stat, dev) : Tensor();
      Tensor gb = saved_b.defined() ? Tensor::empty({saved_x.size(1)}, stat, dev) : Tensor();
      if (gx.numel() > 0) {
        backend(dev).layer_norm_backward(saved_x, saved_w, saved_mean, saved_rstd, gy.contiguous(), gx, gw, gb);
      } else {  // no rows: the parameter gradients are 0
        if (gw.defined() && gw.numel() > 0) backend(dev).fill(gw, 0);
        if (gb.defined() && gb.numel() > 0) backend(dev).fill(gb, 0);
      }
      return {gx.reshape(shape), need_w ? to_param_dtype(gw, saved_w) : Tensor(),
              need_b ? to_param_dtype(gb, saved_b) : Tensor()};
    });
  }
  return y;
}

}  // namespace ssmtrain
