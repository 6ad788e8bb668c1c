// Scalar formulas of the elementwise ops for the CUDA kernels. The activations (sigmoid,
// softplus, silu, gelu) and their derivatives are those of core/math.h, which the CPU backend
// runs too, so the two devices differ only by the last-bit rounding of their libm functions.
// A is the compute type: float (for f32 and bf16) or double.
#pragma once

#include "core/backend.h"
#include "core/cuda/kernel_utils.cuh"
#include "core/math.h"

namespace ssmtrain::cuda_detail {

// Every UnaryOp, for switch generation.
#define SSMT_CUDA_UNARY_OPS(X)                                                                       \
  X(neg) X(exp) X(log) X(log1p) X(sqrt) X(rsqrt) X(square) X(abs) X(sigmoid) X(softplus) X(silu) \
  X(gelu) X(tanh) X(relu) X(add_scalar) X(mul_scalar) X(rsub_scalar) X(rdiv_scalar) X(pow_scalar) X(clamp) \
  X(sin)

#define SSMT_CUDA_BINARY_OPS(X) X(add) X(sub) X(mul) X(div) X(maximum) X(minimum) X(eq) X(ne) X(lt) X(le) X(gt) X(ge)

template <UnaryOp OP, typename A>
__device__ __forceinline__ A unary_value(A x, A p0, A p1) {
  using U = UnaryOp;
  if constexpr (OP == U::neg) return -x;
  else if constexpr (OP == U::exp) return d_exp(x);
  else if constexpr (OP == U::log) return d_log(x);
  else if constexpr (OP == U::log1p) return d_log1p(x);
  else if constexpr (OP == U::sqrt) return d_sqrt(x);
  else if constexpr (OP == U::rsqrt) return A(1) / d_sqrt(x);
  else if constexpr (OP == U::square) return x * x;
  else if constexpr (OP == U::abs) return d_abs(x);
  else if constexpr (OP == U::sigmoid) return math::sigmoid(x);
  else if constexpr (OP == U::softplus) return math::softplus(x);
  else if constexpr (OP == U::silu) return math::silu(x);
  else if constexpr (OP == U::gelu) return math::gelu(x);
  else if constexpr (OP == U::tanh) return d_tanh(x);
  else if constexpr (OP == U::relu) return x > A(0) ? x : A(0);
  else if constexpr (OP == U::add_scalar) return x + p0;
  else if constexpr (OP == U::mul_scalar) return x * p0;
  else if constexpr (OP == U::rsub_scalar) return p0 - x;
  else if constexpr (OP == U::rdiv_scalar) return p0 / x;
  else if constexpr (OP == U::pow_scalar) return d_pow(x, p0);
  else if constexpr (OP == U::clamp) return x < p0 ? p0 : (x > p1 ? p1 : x);
  else if constexpr (OP == U::sin) return d_sin(x);
}

// gy * f'(x).
template <UnaryOp OP, typename A>
__device__ __forceinline__ A unary_grad(A x, A gy, A p0, A p1) {
  using U = UnaryOp;
  if constexpr (OP == U::neg) return -gy;
  else if constexpr (OP == U::exp) return gy * d_exp(x);
  else if constexpr (OP == U::log) return gy / x;
  else if constexpr (OP == U::log1p) return gy / (A(1) + x);
  else if constexpr (OP == U::sqrt) return gy * A(0.5) / d_sqrt(x);
  else if constexpr (OP == U::rsqrt) {
    A r = A(1) / d_sqrt(x);
    return gy * A(-0.5) * r * r * r;
  } else if constexpr (OP == U::square) return gy * A(2) * x;
  else if constexpr (OP == U::abs) return x > A(0) ? gy : (x < A(0) ? -gy : A(0));
  else if constexpr (OP == U::sigmoid) return gy * math::sigmoid_grad(x);
  else if constexpr (OP == U::softplus) return gy * math::softplus_grad(x);
  else if constexpr (OP == U::silu) return gy * math::silu_grad(x);
  else if constexpr (OP == U::gelu) return gy * math::gelu_grad(x);
  else if constexpr (OP == U::tanh) {
    A t = d_tanh(x);
    return gy * (A(1) - t * t);
  } else if constexpr (OP == U::relu) return x > A(0) ? gy : A(0);
  else if constexpr (OP == U::add_scalar) return gy;
  else if constexpr (OP == U::mul_scalar) return gy * p0;
  else if constexpr (OP == U::rsub_scalar) return -gy;
  else if constexpr (OP == U::rdiv_scalar) return -gy * p0 / (x * x);
  else if constexpr (OP == U::pow_scalar) return gy * p0 * d_pow(x, p0 - A(1));
  else if constexpr (OP == U::clamp) return (x >= p0 && x <= p1) ? gy : A(0);
  else if constexpr (OP == U::sin) return gy * d_cos(x);
}

// a op b in the compute type; comparisons give 1 or 0.
template <BinaryOp OP, typename A>
__device__ __forceinline__ A binary_value(A a, A b) {
  using B = BinaryOp;
  if constexpr (OP == B::add) return a + b;
  else if constexpr (OP == B::sub) return a - b;
  else if constexpr (OP == B::mul) return a * b;
  else if constexpr (OP == B::div) return a / b;
  else if constexpr (OP == B::maximum) return a < b ? b : a;
  else if constexpr (OP == B::minimum) return b < a ? b : a;
  else if constexpr (OP == B::eq) return a == b ? A(1) : A(0);
  else if constexpr (OP == B::ne) return a != b ? A(1) : A(0);
  else if constexpr (OP == B::lt) return a < b ? A(1) : A(0);
  else if constexpr (OP == B::le) return a <= b ? A(1) : A(0);
  else if constexpr (OP == B::gt) return a > b ? A(1) : A(0);
  else if constexpr (OP == B::ge) return a >= b ? A(1) : A(0);
}

}  // namespace ssmtrain::cuda_detail
