// Elementwise ops: unary math, scalar arithmetic, broadcasting binary ops, comparisons,
// where/masked_fill. Each records one tape node whose backward uses the backend's
// unary_backward (unary ops) or other ops run under no-grad (binary ops).
#include <cmath>

#include "core/ops.h"
#include "core/ops/op_common.h"

namespace ssmtrain {

using namespace ops_detail;

namespace {

// ---- unary ----

Tensor unary_forward(UnaryOp op, const Tensor& x, double p0, double p1) {
  Tensor out = Tensor::empty(x.shape(), x.dtype(), x.device());
  if (out.numel() > 0) backend(x.device()).unary(op, x, out, p0, p1);
  return out;
}

// Ops whose derivative depends on x: the backward keeps x and asks the backend.
Tensor unary_op(UnaryOp op, const Tensor& x, double p0 = 0, double p1 = 0) {
  const char* name = unary_op_name(op);
  check_floating(x, name, "x");
  Tensor out = unary_forward(op, x, p0, p1);
  if (any_requires_grad({x})) {
    Tensor saved = x.detach();
    record(name, {x}, {out}, [op, saved, p0, p1](const std::vector<Tensor>& g) -> std::vector<Tensor> {
      Tensor gx = Tensor::empty(saved.shape(), saved.dtype(), saved.device());
      if (gx.numel() > 0) backend(saved.device()).unary_backward(op, saved, g[0], gx, p0, p1);
      return {gx};
    });
  }
  return out;
}

// Affine ops (x * scale + shift): the gradient is g * scale, so x is not kept alive.
Tensor affine_op(UnaryOp op, const Tensor& x, double p0, double grad_scale) {
  const char* name = unary_op_name(op);
  check_floating(x, name, "x");
  Tensor out = unary_forward(op, x, p0, 0);
  if (any_requires_grad({x})) {
    record(name, {x}, {out}, [grad_scale](const std::vector<Tensor>& g) -> std::vector<Tensor> {
      if (grad_scale == 1) return {g[0].contiguous()};
      return {unary_forward(UnaryOp::mul_scalar, g[0], grad_scale, 0)};
    });
  }
  return out;
}

// ---- binary ----

// out (broadcast shape) = a op b, no autodiff.
Tensor binary_forward(BinaryOp op, const Tensor& a, const Tensor& b) {
  const char* name = binary_op_name(op);
  check_defined(a, name, "a");
  check_defined(b, name, "b");
  check_compatible(a, b, name);
  Dims shape = broadcast_shapes(a.shape(), b.shape(), name);
  Tensor out = Tensor::empty(shape, a.dtype(), a.device());
  if (out.numel() > 0) {
    NoGradGuard no_grad;  // the broadcast views are not tape nodes
    backend(a.device()).binary(op, a.expand(shape), b.expand(shape), out);
  }
  return out;
}

Tensor zero_like_scalar(const Tensor& t) { return Tensor::zeros({}, t.dtype(), t.device()); }

Tensor where_forward(const Tensor& cond, const Tensor& a, const Tensor& b) {
  check_defined(cond, "where", "cond");
  check_defined(a, "where", "a");
  check_defined(b, "where", "b");
  check_compatible(a, b, "where");
  check_compatible(cond, a, "where", /*same_dtype=*/false);
  Dims shape = broadcast_shapes(broadcast_shapes(cond.shape(), a.shape(), "where"), b.shape(), "where");
  Tensor out = Tensor::empty(shape, a.dtype(), a.device());
  if (out.numel() > 0) {
    NoGradGuard no_grad;
    backend(a.device()).where(cond.expand(shape), a.expand(shape), b.expand(shape), out);
  }
  return out;
}

}  // namespace

// ---- unary ops ----

Tensor neg(const Tensor& x) { return affine_op(UnaryOp::neg, x, 0, -1); }
Tensor add(const Tensor& a, double s) { return affine_op(UnaryOp::add_scalar, a, s, 1); }
Tensor mul(const Tensor& a, double s) { return affine_op(UnaryOp::mul_scalar, a, s, s); }
Tensor rsub(const Tensor& a, double s) { return affine_op(UnaryOp::rsub_scalar, a, s, -1); }
Tensor rdiv(const Tensor& a, double s) { return unary_op(UnaryOp::rdiv_scalar, a, s); }
Tensor exp(const Tensor& x) { return unary_op(UnaryOp::exp, x); }
Tensor log(const Tensor& x) { return unary_op(UnaryOp::log, x); }
Tensor log1p(const Tensor& x) { return unary_op(UnaryOp::log1p, x); }
Tensor sqrt(const Tensor& x) { return unary_op(UnaryOp::sqrt, x); }
Tensor rsqrt(const Tensor& x) { return unary_op(UnaryOp::rsqrt, x); }
Tensor square(const Tensor& x) { return unary_op(UnaryOp::square, x); }
Tensor pow(const Tensor& x, double p) { return unary_op(UnaryOp::pow_scalar, x, p); }
Tensor abs(const Tensor& x) { return unary_op(UnaryOp::abs, x); }
Tensor sigmoid(const Tensor& x) { return unary_op(UnaryOp::sigmoid, x); }
Tensor softplus(const Tensor& x) { return unary_op(UnaryOp::softplus, x); }
Tensor silu(const Tensor& x) { return unary_op(UnaryOp::silu, x); }
Tensor gelu(const Tensor& x) { return unary_op(UnaryOp::gelu, x); }
Tensor tanh(const Tensor& x) { return unary_op(UnaryOp::tanh, x); }
Tensor relu(const Tensor& x) { return unary_op(UnaryOp::relu, x); }
Tensor sin(const Tensor& x) { return unary_op(UnaryOp::sin, x); }

Tensor clamp(const Tensor& x, double lo, double hi) {
  SSMT_CHECK(lo <= hi, "clamp of ", x.describe(), ": lower bound ", lo, " exceeds upper bound ", hi);
  return unary_op(UnaryOp::clamp, x, lo, hi);
}

// ---- binary ops ----

Tensor add(const Tensor& a, const Tensor& b) {
  Tensor out = binary_forward(BinaryOp::add, a, b);
  if (any_requires_grad({a, b})) {
    Dims sa = a.shape(), sb = b.shape();
    bool ga = a.requires_grad(), gb = b.requires_grad();
    record("add", {a, b}, {out}, [=](const std::vector<Tensor>& g) -> std::vector<Tensor> {
      return {ga ? reduce_grad(g[0], sa) : Tensor(), gb ? reduce_grad(g[0], sb) : Tensor()};
    });
  }
  return out;
}

Tensor sub(const Tensor& a, const Tensor& b) {
  Tensor out = binary_forward(BinaryOp::sub, a, b);
  if (any_requires_grad({a, b})) {
    Dims sa = a.shape(), sb = b.shape();
    bool ga = a.requires_grad(), gb = b.requires_grad();
    record("sub", {a, b}, {out}, [=](const std::vector<Tensor>& g) -> std::vector<Tensor> {
      return {ga ? reduce_grad(g[0], sa) : Tensor(), gb ? neg(reduce_grad(g[0], sb)) : Tensor()};
    });
  }
  return out;
}

Tensor mul(const Tensor& a, const Tensor& b) {
  Tensor out = binary_forward(BinaryOp::mul, a, b);
  if (any_requires_grad({a, b})) {
    bool ga = a.requires_grad(), gb = b.requires_grad();
    Dims sa = a.shape(), sb = b.shape();
    // Each gradient needs only the other operand.
    Tensor saved_a = gb ? a.detach() : Tensor(), saved_b = ga ? b.detach() : Tensor();
    record("mul", {a, b}, {out}, [=](const std::vector<Tensor>& g) -> std::vector<Tensor> {
      return {ga ? reduce_grad(mul(g[0], saved_b), sa) : Tensor(),
              gb ? reduce_grad(mul(g[0], saved_a), sb) : Tensor()};
    });
  }
  return out;
}

Tensor div(const Tensor& a, const Tensor& b) {
  Tensor out = binary_forward(BinaryOp::div, a, b);
  if (any_requires_grad({a, b})) {
    bool ga = a.requires_grad(), gb = b.requires_grad();
    Dims sa = a.shape(), sb = b.shape();
    Tensor saved_b = b.detach(), saved_out = gb ? out.detach() : Tensor();
    record("div", {a, b}, {out}, [=](const std::vector<Tensor>& g) -> std::vector<Tensor> {
      Tensor g_over_b = div(g[0], saved_b);
      // d(a/b)/db = -(a/b)/b = -out/b
      return {ga ? reduce_grad(g_over_b, sa) : Tensor(),
              gb ? reduce_grad(neg(mul(g_over_b, saved_out)), sb) : Tensor()};
    });
  }
  return out;
}

namespace {
// maximum/minimum: the gradient goes to a where `a_wins` (a >= b, or a <= b), else to b,
// so a tie sends it to a only and the total is conserved.
Tensor extremum(BinaryOp op, const Tensor& a, const Tensor& b) {
  Tensor out = binary_forward(op, a, b);
  if (any_requires_grad({a, b})) {
    bool ga = a.requires_grad(), gb = b.requires_grad();
    Dims sa = a.shape(), sb = b.shape();
    Tensor saved_a = a.detach(), saved_b = b.detach();
    BinaryOp test = op == BinaryOp::maximum ? BinaryOp::ge : BinaryOp::le;
    record(binary_op_name(op), {a, b}, {out}, [=](const std::vector<Tensor>& g) -> std::vector<Tensor> {
      Tensor a_wins = binary_forward(test, saved_a, saved_b);
      Tensor zero = zero_like_scalar(g[0]);
      return {ga ? reduce_grad(where_forward(a_wins, g[0], zero), sa) : Tensor(),
              gb ? reduce_grad(where_forward(a_wins, zero, g[0]), sb) : Tensor()};
    });
  }
  return out;
}
}  // namespace

Tensor maximum(const Tensor& a, const Tensor& b) { return extremum(BinaryOp::maximum, a, b); }
Tensor minimum(const Tensor& a, const Tensor& b) { return extremum(BinaryOp::minimum, a, b); }

Tensor eq(const Tensor& a, const Tensor& b) { return binary_forward(BinaryOp::eq, a, b); }
Tensor ne(const Tensor& a, const Tensor& b) { return binary_forward(BinaryOp::ne, a, b); }
Tensor lt(const Tensor& a, const Tensor& b) { return binary_forward(BinaryOp::lt, a, b); }
Tensor le(const Tensor& a, const Tensor& b) { return binary_forward(BinaryOp::le, a, b); }
Tensor gt(const Tensor& a, const Tensor& b) { return binary_forward(BinaryOp::gt, a, b); }
Tensor ge(const Tensor& a, const Tensor& b) { return binary_forward(BinaryOp::ge, a, b); }

Tensor where(const Tensor& cond, const Tensor& a, const Tensor& b) {
  Tensor out = where_forward(cond, a, b);
  if (any_requires_grad({a, b})) {
    bool ga = a.requires_grad(), gb = b.requires_grad();
    Dims sa = a.shape(), sb = b.shape();
    Tensor saved_cond = cond.detach();
    record("where", {cond, a, b}, {out}, [=](const std::vector<Tensor>& g) -> std::vector<Tensor> {
      Tensor zero = zero_like_scalar(g[0]);
      return {Tensor(), ga ? reduce_grad(where_forward(saved_cond, g[0], zero), sa) : Tensor(),
              gb ? reduce_grad(where_forward(saved_cond, zero, g[0]), sb) : Tensor()};
    });
  }
  return out;
}

Tensor masked_fill(const Tensor& x, const Tensor& mask, double value) {
  check_defined(x, "masked_fill", "x");
  check_defined(mask, "masked_fill", "mask");
  SSMT_CHECK(broadcast_shapes(x.shape(), mask.shape(), "masked_fill") == x.shape(), "masked_fill: mask ",
             mask.describe(), " does not broadcast to x ", x.describe());
  return where(mask, Tensor::full({}, value, x.dtype(), x.device()), x);
}

}  // namespace ssmtrain
