// Binary elementwise ops (arithmetic, extrema, comparisons) and where() on CUDA, for every
// dtype. Broadcast operands arrive as stride-0 views; the elementwise engine merges their
// dimensions so a bias-like broadcast costs one division per element.
#include "core/cuda/backend_cuda.cuh"
#include "core/cuda/elementwise.cuh"
#include "core/cuda/math.cuh"

namespace ssmtrain::cuda_detail {
namespace {

template <BinaryOp OP, typename T>
struct BinaryFn {
  __device__ __forceinline__ T operator()(T a, T b) const {
    return convert<T>(binary_value<OP>(arith(a), arith(b)));
  }
};

template <typename C, typename T>
struct WhereFn {
  __device__ __forceinline__ T operator()(C c, T a, T b) const { return arith(c) != 0 ? a : b; }
};

template <typename T>
void binary_typed(BinaryOp op, const Tensor& a, const Tensor& b, const Tensor& out) {
  switch (op) {
#define SSMT_CASE(name)                                                                    \
  case BinaryOp::name:                                                                     \
    return launch_elementwise<T, T, T>(BinaryFn<BinaryOp::name, T>{}, out, a, b);
    SSMT_CUDA_BINARY_OPS(SSMT_CASE)
#undef SSMT_CASE
  }
  SSMT_ASSERT(false, "unknown binary op ", static_cast<int>(op));
}

}  // namespace

void CudaBackend::binary(BinaryOp op, const Tensor& a, const Tensor& b, const Tensor& out) {
  DeviceGuard guard(device_);
  SSMT_ASSERT(a.shape() == out.shape() && b.shape() == out.shape() && a.dtype() == out.dtype() &&
                  b.dtype() == out.dtype(),
              binary_op_name(op), ": ", a.describe(), ", ", b.describe(), " -> ", out.describe());
  SSMT_DISPATCH_ALL(out.dtype(), binary_op_name(op), [&] { binary_typed<scalar_t>(op, a, b, out); });
}

void CudaBackend::where(const Tensor& cond, const Tensor& a, const Tensor& b, const Tensor& out) {
  DeviceGuard guard(device_);
  SSMT_ASSERT(cond.shape() == out.shape() && a.shape() == out.shape() && b.shape() == out.shape() &&
                  a.dtype() == out.dtype() && b.dtype() == out.dtype(),
              "where: ", cond.describe(), ", ", a.describe(), ", ", b.describe(), " -> ", out.describe());
  SSMT_DISPATCH_ALL(out.dtype(), "where", [&] {
    using T = scalar_t;
    SSMT_DISPATCH_ALL(cond.dtype(), "where", [&] {
      using C = scalar_t;
      launch_elementwise<T, C, T, T>(WhereFn<C, T>{}, out, cond, a, b);
    });
  });
}

}  // namespace ssmtrain::cuda_detail
