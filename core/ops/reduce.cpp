// Reductions (sum, mean, max, logsumexp) over arbitrary axes and cumsum. The reduced axes
// are permuted to the end and the tensor is viewed as rows (M, K), so each backend needs
// only row kernels (docs/design.md).
#include "core/ops.h"
#include "core/ops/op_common.h"

namespace ssmtrain {

using namespace ops_detail;

namespace {

// A reduction's geometry: x permuted to rows (M, K) and the two output shapes.
struct Reduction {
  Tensor rows;      // (M, K) contiguous
  Dims keep_shape;  // x's shape with reduced axes set to 1
  Dims out_shape;   // the result shape (keep_shape, or without the reduced axes)
  Dims axes;        // the reduced axes, normalised
  int64_t k = 1;    // elements per reduced group
};

Reduction make_reduction(const Tensor& x, const Dims& axes_in, bool keepdim, const char* op) {
  Dims axes = normalize_axes(axes_in, x.dim(), op);
  std::vector<bool> reduced(x.dim(), false);
  for (int64_t a : axes) reduced[a] = true;
  Reduction r;
  r.axes = axes;
  Dims order, kept_order;
  int64_t m = 1;
  for (int i = 0; i < x.dim(); ++i) {
    if (reduced[i]) {
      r.k *= x.size(i);
      r.keep_shape.push_back(1);
      if (keepdim) r.out_shape.push_back(1);
    } else {
      m *= x.size(i);
      order.push_back(i);
      r.keep_shape.push_back(x.size(i));
      r.out_shape.push_back(x.size(i));
    }
  }
  for (int64_t a : axes) order.push_back(a);
  NoGradGuard no_grad;
  Tensor permuted = x.dim() > 0 ? x.permute(order) : x;
  r.rows = permuted.contiguous().reshape({m, r.k});
  return r;
}

// The per-row result of `op` (M), reshaped to the output shape.
Tensor reduce_forward(const Reduction& r, ReduceOp op, const Tensor& x, const char* name) {
  Tensor out = Tensor::empty({r.rows.size(0)}, x.dtype(), x.device());
  if (out.numel() > 0) {
    if (r.k > 0) {
      backend(x.device()).reduce_rows(op, r.rows, out);
    } else {
      SSMT_CHECK(op == ReduceOp::sum, name, " of ", x.describe(), ": cannot reduce over an empty axis");
      backend(x.device()).fill(out, 0);
    }
  }
  NoGradGuard no_grad;
  return out.reshape(r.out_shape);
}

// g (out_shape) broadcast back to x's shape, contiguous.
Tensor expand_grad(const Tensor& g, const Dims& keep_shape, const Dims& x_shape) {
  return g.reshape(keep_shape).expand(x_shape).contiguous();
}

}  // namespace

Tensor sum(const Tensor& x, const Dims& axes, bool keepdim) {
  check_defined(x, "sum", "x");
  Reduction r = make_reduction(x, axes, keepdim, "sum");
  Tensor out = reduce_forward(r, ReduceOp::sum, x, "sum");
  if (any_requires_grad({x})) {
    Dims keep = r.keep_shape, shape = x.shape();
    record("sum", {x}, {out}, [=](const std::vector<Tensor>& g) -> std::vector<Tensor> {
      return {expand_grad(g[0], keep, shape)};
    });
  }
  return out;
}

Tensor mean(const Tensor& x, const Dims& axes, bool keepdim) {
  check_floating(x, "mean", "x");
  Reduction r = make_reduction(x, axes, keepdim, "mean");
  SSMT_CHECK(r.k > 0, "mean of ", x.describe(), ": cannot average over an empty axis");
  Tensor total = reduce_forward(r, ReduceOp::sum, x, "mean");
  double scale = 1.0 / static_cast<double>(r.k);
  Tensor out = Tensor::empty(total.shape(), x.dtype(), x.device());
  if (out.numel() > 0) backend(x.device()).unary(UnaryOp::mul_scalar, total, out, scale, 0);
  if (any_requires_grad({x})) {
    Dims keep = r.keep_shape, shape = x.shape();
    record("mean", {x}, {out}, [=](const std::vector<Tensor>& g) -> std::vector<Tensor> {
      return {expand_grad(mul(g[0], scale), keep, shape)};
    });
  }
  return out;
}

Tensor max(const Tensor& x, const Dims& axes, bool keepdim) {
  check_defined(x, "max", "x");
  Reduction r = make_reduction(x, axes, keepdim, "max");
  Tensor out = reduce_forward(r, ReduceOp::max, x, "max");
  if (any_requires_grad({x})) {
    Dims keep = r.keep_shape, reduced = r.axes;
    Tensor saved_x = x.detach(), saved_out = out.detach();
    record("max", {x}, {out}, [=](const std::vector<Tensor>& g) -> std::vector<Tensor> {
      // Split equally among tied maxima: mask / count keeps the total gradient exact.
      Tensor is_max = eq(saved_x, saved_out.reshape(keep));               // x's shape
      Tensor share = div(g[0].reshape(keep), sum(is_max, reduced, true));  // keep
      return {mul(is_max, share)};
    });
  }
  return out;
}

Tensor logsumexp(const Tensor& x, const Dims& axes, bool keepdim) {
  check_floating(x, "logsumexp", "x");
  Reduction r = make_reduction(x, axes, keepdim, "logsumexp");
  SSMT_CHECK(r.k > 0, "logsumexp of ", x.describe(), ": cannot reduce over an empty axis");
  Tensor out_rows = Tensor::empty({r.rows.size(0)}, x.dtype(), x.device());
  if (out_rows.numel() > 0) backend(x.device()).logsumexp_rows(r.rows, out_rows);
  Tensor out;
  {
    NoGradGuard no_grad;
    out = out_rows.reshape(r.out_shape);
  }
  if (any_requires_grad({x})) {
    Dims keep = r.keep_shape;
    Tensor saved_x = x.detach(), saved_out = out.detach();
    record("logsumexp", {x}, {out}, [=](const std::vector<Tensor>& g) -> std::vector<Tensor> {
      // d lse / dx = softmax(x) = exp(x - lse)
      Tensor softmax_x = exp(sub(saved_x, saved_out.reshape(keep)));
      return {mul(softmax_x, g[0].reshape(keep))};
    });
  }
  return out;
}

namespace {
Tensor cumsum_forward(const Tensor& x, int axis, bool reverse) {
  NoGradGuard no_grad;
  Dims moved_shape;
  Tensor rows = axis_last_rows(x, axis, &moved_shape);
  Tensor out = Tensor::empty(rows.shape(), x.dtype(), x.device());
  if (out.numel() > 0) backend(x.device()).cumsum_rows(rows, out, reverse);
  return rows_to_axis(out, moved_shape, axis);
}
}  // namespace

Tensor cumsum(const Tensor& x, int axis_in, bool reverse) {
  check_floating(x, "cumsum", "x");
  SSMT_CHECK(x.dim() > 0, "cumsum of ", x.describe(), ": needs at least one dimension");
  int axis = normalize_axis(axis_in, x.dim(), "cumsum");
  Tensor out = cumsum_forward(x, axis, reverse);
  if (any_requires_grad({x})) {
    // Each input feeds every later (earlier, when reversed) output: the adjoint is the
    // cumulative sum in the opposite direction.
    record("cumsum", {x}, {out}, [=](const std::vector<Tensor>& g) -> std::vector<Tensor> {
      return {cumsum_forward(g[0], axis, !reverse)};
    });
  }
  return out;
}

}  // namespace ssmtrain
