// Elementwise kernels: unary math and its derivative, binary arithmetic and comparisons,
// where. Every operand may be any view of the output's shape (strides, broadcasts).
//
// The activations (sigmoid, softplus, silu, gelu) and their derivatives are the formulas of
// core/math.h, which the CUDA kernels share.
#include <cmath>
#include <limits>

#include "core/cpu/backend_cpu.h"
#include "core/cpu/kernel_util.h"
#include "core/cpu/row_reduce.h"  // max_nan, min_nan
#include "core/math.h"

namespace ssmtrain::cpu {

namespace {

template <typename T>
void unary_typed(UnaryOp op, const Tensor& x, const Tensor& out, acc_t<T> p0, acc_t<T> p1) {
  using A = acc_t<T>;
  auto run = [&](auto f) { map_elements<T, T>(out, {&x}, f); };
  switch (op) {
    case UnaryOp::neg: return run([](A v) { return -v; });
    case UnaryOp::exp: return run([](A v) { return std::exp(v); });
    case UnaryOp::log: return run([](A v) { return std::log(v); });
    case UnaryOp::log1p: return run([](A v) { return std::log1p(v); });
    case UnaryOp::sqrt: return run([](A v) { return std::sqrt(v); });
    case UnaryOp::rsqrt: return run([](A v) { return A(1) / std::sqrt(v); });
    case UnaryOp::square: return run([](A v) { return v * v; });
    case UnaryOp::abs: return run([](A v) { return std::abs(v); });
    case UnaryOp::sigmoid: return run([](A v) { return math::sigmoid(v); });
    case UnaryOp::softplus: return run([](A v) { return math::softplus(v); });
    case UnaryOp::silu: return run([](A v) { return math::silu(v); });
    case UnaryOp::gelu: return run([](A v) { return math::gelu(v); });
    case UnaryOp::tanh: return run([](A v) { return std::tanh(v); });
    case UnaryOp::relu: return run([](A v) { return v < A(0) ? A(0) : v; });  // NaN passes through
    case UnaryOp::add_scalar: return run([=](A v) { return v + p0; });
    case UnaryOp::mul_scalar: return run([=](A v) { return v * p0; });
    case UnaryOp::rsub_scalar: return run([=](A v) { return p0 - v; });
    case UnaryOp::rdiv_scalar: return run([=](A v) { return p0 / v; });
    case UnaryOp::pow_scalar: return run([=](A v) { return std::pow(v, p0); });
    case UnaryOp::clamp: return run([=](A v) { return std::min(std::max(v, p0), p1); });
    case UnaryOp::sin: return run([](A v) { return std::sin(v); });
  }
  SSMT_ASSERT(false, "unary: unknown op ", static_cast<int>(op));
}

// gx = gy * f'(x).
template <typename T>
void unary_backward_typed(UnaryOp op, const Tensor& x, const Tensor& gy, const Tensor& gx, acc_t<T> p0,
                          acc_t<T> p1) {
  using A = acc_t<T>;
  auto run = [&](auto dfdx) { map_elements<T, T, T>(gx, {&x, &gy}, [=](A v, A g) { return g * dfdx(v); }); };
  switch (op) {
    case UnaryOp::neg: return run([](A) { return A(-1); });
    case UnaryOp::exp: return run([](A v) { return std::exp(v); });
    case UnaryOp::log: return run([](A v) { return A(1) / v; });
    case UnaryOp::log1p: return run([](A v) { return A(1) / (A(1) + v); });
    case UnaryOp::sqrt: return run([](A v) { return A(0.5) / std::sqrt(v); });
    case UnaryOp::rsqrt: return run([](A v) { return A(-0.5) / (v * std::sqrt(v)); });
    case UnaryOp::square: return run([](A v) { return A(2) * v; });
    case UnaryOp::abs: return run([](A v) { return v > A(0) ? A(1) : (v < A(0) ? A(-1) : A(0)); });
    case UnaryOp::sigmoid: return run([](A v) { return math::sigmoid_grad(v); });
    case UnaryOp::softplus: return run([](A v) { return math::softplus_grad(v); });
    case UnaryOp::silu: return run([](A v) { return math::silu_grad(v); });
    case UnaryOp::gelu: return run([](A v) { return math::gelu_grad(v); });
    case UnaryOp::tanh:
      return run([](A v) {
        A t = std::tanh(v);
        return A(1) - t * t;
      });
    case UnaryOp::relu: return run([](A v) { return v > A(0) ? A(1) : A(0); });
    case UnaryOp::add_scalar: return run([](A) { return A(1); });
    case UnaryOp::mul_scalar: return run([=](A) { return p0; });
    case UnaryOp::rsub_scalar: return run([](A) { return A(-1); });
    case UnaryOp::rdiv_scalar: return run([=](A v) { return -p0 / (v * v); });
    case UnaryOp::pow_scalar: return run([=](A v) { return p0 * std::pow(v, p0 - A(1)); });
    case UnaryOp::clamp: return run([=](A v) { return v >= p0 && v <= p1 ? A(1) : A(0); });
    case UnaryOp::sin: return run([](A v) { return std::cos(v); });
  }
  SSMT_ASSERT(false, "unary_backward: unknown op ", static_cast<int>(op));
}

template <typename T>
void binary_typed(BinaryOp op, const Tensor& a, const Tensor& b, const Tensor& out) {
  using A = acc_t<T>;
  auto run = [&](auto f) { map_elements<T, T, T>(out, {&a, &b}, f); };
  switch (op) {
    case BinaryOp::add: return run([](A x, A y) { return x + y; });
    case BinaryOp::sub: return run([](A x, A y) { return x - y; });
    case BinaryOp::mul: return run([](A x, A y) { return x * y; });
    case BinaryOp::div:
      if constexpr (std::is_integral_v<A>) {
        // Truncating division; x / 0 gives 0 instead of trapping the process.
        return run([](A x, A y) { return y == 0 ? A(0) : x / y; });
      } else {
        return run([](A x, A y) { return x / y; });
      }
    case BinaryOp::maximum: return run([](A x, A y) { return max_nan(x, y); });
    case BinaryOp::minimum: return run([](A x, A y) { return min_nan(x, y); });
    case BinaryOp::eq: return run([](A x, A y) { return A(x == y ? 1 : 0); });
    case BinaryOp::ne: return run([](A x, A y) { return A(x != y ? 1 : 0); });
    case BinaryOp::lt: return run([](A x, A y) { return A(x < y ? 1 : 0); });
    case BinaryOp::le: return run([](A x, A y) { return A(x <= y ? 1 : 0); });
    case BinaryOp::gt: return run([](A x, A y) { return A(x > y ? 1 : 0); });
    case BinaryOp::ge: return run([](A x, A y) { return A(x >= y ? 1 : 0); });
  }
  SSMT_ASSERT(false, "binary: unknown op ", static_cast<int>(op));
}

}  // namespace

void CpuBackend::unary(UnaryOp op, const Tensor& x, const Tensor& out, double p0, double p1) {
  SSMT_ASSERT(x.shape() == out.shape() && x.dtype() == out.dtype(), "unary ", unary_op_name(op), ": ",
              x.describe(), " -> ", out.describe());
  SSMT_DISPATCH_FLOAT(x.dtype(), unary_op_name(op), [&] {
    using A = acc_t<scalar_t>;
    unary_typed<scalar_t>(op, x, out, static_cast<A>(p0), static_cast<A>(p1));
  });
}

void CpuBackend::unary_backward(UnaryOp op, const Tensor& x, const Tensor& gy, const Tensor& gx, double p0,
                                double p1) {
  SSMT_ASSERT(x.shape() == gx.shape() && gy.shape() == gx.shape() && x.dtype() == gx.dtype() &&
                  gy.dtype() == gx.dtype(),
              "unary_backward ", unary_op_name(op), ": ", x.describe(), ", ", gy.describe(), " -> ", gx.describe());
  SSMT_DISPATCH_FLOAT(x.dtype(), unary_op_name(op), [&] {
    using A = acc_t<scalar_t>;
    unary_backward_typed<scalar_t>(op, x, gy, gx, static_cast<A>(p0), static_cast<A>(p1));
  });
}

void CpuBackend::binary(BinaryOp op, const Tensor& a, const Tensor& b, const Tensor& out) {
  SSMT_ASSERT(a.shape() == out.shape() && b.shape() == out.shape() && a.dtype() == out.dtype() &&
                  b.dtype() == out.dtype(),
              "binary ", binary_op_name(op), ": ", a.describe(), ", ", b.describe(), " -> ", out.describe());
  SSMT_DISPATCH_ALL(out.dtype(), binary_op_name(op), [&] { binary_typed<scalar_t>(op, a, b, out); });
}

void CpuBackend::where(const Tensor& cond, const Tensor& a, const Tensor& b, const Tensor& out) {
  SSMT_ASSERT(cond.shape() == out.shape() && a.shape() == out.shape() && b.shape() == out.shape() &&
                  a.dtype() == out.dtype() && b.dtype() == out.dtype(),
              "where: ", cond.describe(), ", ", a.describe(), ", ", b.describe(), " -> ", out.describe());
  SSMT_DISPATCH_ALL(out.dtype(), "where", [&] {
    using T = scalar_t;
    SSMT_DISPATCH_ALL(cond.dtype(), "where", [&] {
      using C = scalar_t;
      map_elements<T, C, T, T>(out, {&cond, &a, &b},
                               [](acc_t<C> c, acc_t<T> x, acc_t<T> y) { return c != acc_t<C>(0) ? x : y; });
    });
  });
}

}  // namespace ssmtrain::cpu
