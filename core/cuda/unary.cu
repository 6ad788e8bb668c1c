// Unary elementwise ops and their backward on CUDA (formulas in math.cuh). Each op is a
// template parameter, so every kernel is a straight-line loop with no per-element switch.
#include "core/cuda/backend_cuda.cuh"
#include "core/cuda/elementwise.cuh"
#include "core/cuda/math.cuh"

namespace ssmtrain::cuda_detail {
namespace {

template <UnaryOp OP, typename T>
struct UnaryFn {
  using A = compute_t<T>;
  A p0, p1;
  __device__ __forceinline__ T operator()(T x) const {
    // bf16 results take the fast gelu (math::gelu_fast: far below bf16's rounding).
    if constexpr (OP == UnaryOp::gelu && std::is_same_v<T, bf16>) return convert<T>(math::gelu_fast(arith(x)));
    else return convert<T>(unary_value<OP>(arith(x), p0, p1));
  }
};

template <UnaryOp OP, typename T>
struct UnaryGradFn {
  using A = compute_t<T>;
  A p0, p1;
  __device__ __forceinline__ T operator()(T x, T gy) const {
    return convert<T>(unary_grad<OP>(arith(x), arith(gy), p0, p1));
  }
};

template <typename T>
void unary_typed(UnaryOp op, const Tensor& x, const Tensor& out, double p0, double p1) {
  using A = compute_t<T>;
  const A a0 = static_cast<A>(p0), a1 = static_cast<A>(p1);
  switch (op) {
#define SSMT_CASE(name)                                                                    \
  case UnaryOp::name:                                                                      \
    return launch_elementwise<T, T>(UnaryFn<UnaryOp::name, T>{a0, a1}, out, x);
    SSMT_CUDA_UNARY_OPS(SSMT_CASE)
#undef SSMT_CASE
  }
  SSMT_ASSERT(false, "unknown unary op ", static_cast<int>(op));
}

template <typename T>
void unary_backward_typed(UnaryOp op, const Tensor& x, const Tensor& gy, const Tensor& gx, double p0, double p1) {
  using A = compute_t<T>;
  const A a0 = static_cast<A>(p0), a1 = static_cast<A>(p1);
  switch (op) {
#define SSMT_CASE(name)                                                                    \
  case UnaryOp::name:                                                                      \
    return launch_elementwise<T, T, T>(UnaryGradFn<UnaryOp::name, T>{a0, a1}, gx, x, gy);
    SSMT_CUDA_UNARY_OPS(SSMT_CASE)
#undef SSMT_CASE
  }
  SSMT_ASSERT(false, "unknown unary op ", static_cast<int>(op));
}

}  // namespace

void CudaBackend::unary(UnaryOp op, const Tensor& x, const Tensor& out, double p0, double p1) {
  DeviceGuard guard(device_);
  SSMT_ASSERT(x.shape() == out.shape() && x.dtype() == out.dtype(), unary_op_name(op), ": ", x.describe(), " -> ",
              out.describe());
  SSMT_DISPATCH_FLOAT(x.dtype(), unary_op_name(op), [&] { unary_typed<scalar_t>(op, x, out, p0, p1); });
}

void CudaBackend::unary_backward(UnaryOp op, const Tensor& x, const Tensor& gy, const Tensor& gx, double p0,
                                 double p1) {
  DeviceGuard guard(device_);
  SSMT_ASSERT(x.shape() == gy.shape() && x.shape() == gx.shape() && x.dtype() == gy.dtype() &&
                  x.dtype() == gx.dtype(),
              unary_op_name(op), " backward: ", x.describe(), ", ", gy.describe(), " -> ", gx.describe());
  SSMT_DISPATCH_FLOAT(x.dtype(), unary_op_name(op),
                      [&] { unary_backward_typed<scalar_t>(op, x, gy, gx, p0, p1); });
}

}  // namespace ssmtrain::cuda_detail
