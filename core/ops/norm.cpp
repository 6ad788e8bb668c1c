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

AddRmsNorm add_rms_norm(const Tensor& h, const Tensor& y, const Tensor& w, double eps, DType out_dtype) {
  const char* op = "add_rms_norm";
  int64_t d = check_norm_args(h, w, op, "w");
  SSMT_CHECK(w.defined(), op, ": the weight w is required");
  SSMT_CHECK(eps >= 0, op, ": eps must be non-negative, got ", eps);
  SSMT_CHECK(is_floating(out_dtype), op, ": out_dtype must be floating, got ", dtype_name(out_dtype));
  if (y.defined()) {
    check_floating(y, op, "y");
    check_compatible(h, y, op, /*same_dtype=*/false);
    SSMT_CHECK(y.shape() == h.shape(), op, ": y ", y.describe(), " and h ", h.describe(), ": expected one shape");
  }
  const DType stat = stat_dtype(h.dtype());
  const int64_t m = Dims(h.shape().begin(), h.shape().end() - 1).numel();
  Tensor s, n, rstd;
  {
    NoGradGuard no_grad;
    Tensor s_rows = Tensor::empty({m, d}, h.dtype(), h.device());
    Tensor n_rows = Tensor::empty({m, d}, out_dtype, h.device());
    rstd = Tensor::empty({m}, stat, h.device());
    if (s_rows.numel() > 0)
      backend(h.device()).add_rms_norm_forward(h.reshape({m, d}), y.defined() ? y.reshape({m, d}) : y, w, eps, s_rows,
                                               n_rows, rstd);
    s = s_rows.reshape(h.shape());
    n = n_rows.reshape(h.shape());
  }
  if (any_requires_grad({h, y, w})) {
    const bool need_y = y.defined() && y.requires_grad(), need_w = w.requires_grad();
    const bool need_h = h.requires_grad();
    const DType y_dtype = y.defined() ? y.dtype() : h.dtype();
    Tensor saved_s = s.detach().reshape({m, d}), saved_w = w.detach(), saved_rstd = rstd.detach();
    const Dims shape = h.shape();
    record(op, {h, y, w}, {s, n}, [=](const std::vector<Tensor>& g) -> std::vector<Tensor> {
      // g[0]: the gradient of the stream s (zeros when nothing downstream used it), g[1]: of n.
      const Device dev = saved_s.device();
      Tensor gh = need_h ? Tensor::empty({m, d}, saved_s.dtype(), dev) : Tensor();
      Tensor gy = need_y ? Tensor::empty({m, d}, y_dtype, dev) : Tensor();
      Tensor gw = need_w ? Tensor::empty({d}, stat, dev) : Tensor();
      if (m > 0) {
        backend(dev).add_rms_norm_backward(saved_s, saved_w, saved_rstd, g[1].reshape({m, d}).contiguous(),
                                           g[0].reshape({m, d}).contiguous(), gh, gy, gw);
      } else if (gw.defined() && d > 0) {
        backend(dev).fill(gw, 0);
      }
      return {need_h ? gh.reshape(shape) : Tensor(), need_y ? gy.reshape(shape) : Tensor(),
              need_w ? to_param_dtype(gw, saved_w) : Tensor()};
    });
  }
  return {s, n};
}

}  // namespace ssmtrain
