// Gated RMSNorm on CUDA (gated_norm.h). Forward: one block per row, one pass per group
// (sum of squares, then the output; v = y silu(z) is recomputed rather than kept). Backward:
// a block walks kRowsPerBlock rows, keeps its weight-gradient partial per channel in shared
// memory (each channel owned by one thread: no atomics), and a second kernel sums the
// partials over blocks in order.
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <algorithm>

#include "core/backend.h"
#include "core/cuda/cuda_check.cuh"
#include "core/cuda/device.cuh"
#include "core/dtype.h"
#include "core/error.h"
#include "core/math.h"
#include "core/tensor.h"
#include "ssm/kernels/gated_norm.h"

namespace ssmtrain {

namespace {

constexpr int kThreads = 256;
constexpr int kRowsPerBlock = 32;

// The block's sum of v, the same on every thread, in a fixed order.
template <typename A>
__device__ __forceinline__ A block_sum(A v, A* scratch) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  __syncthreads();  // scratch may still be read from the previous call
  if ((threadIdx.x & 31) == 0) scratch[threadIdx.x >> 5] = v;
  __syncthreads();
  A s = 0;
  for (int i = 0; i < kThreads / 32; ++i) s += scratch[i];
  return s;
}

template <typename T, typename A>
__global__ void __launch_bounds__(kThreads) gated_norm_fwd_kernel(const T* __restrict__ y, const T* __restrict__ z,
                                                                  const A* __restrict__ w, T* __restrict__ out,
                                                                  A* __restrict__ rstd, int64_t D, int64_t gs,
                                                                  A eps) {
  __shared__ A scratch[kThreads / 32];
  const int64_t r = blockIdx.x, G = D / gs;
  for (int64_t g = 0; g < G; ++g) {
    const int64_t c0 = r * D + g * gs;
    A ss = 0;
    for (int64_t i = threadIdx.x; i < gs; i += kThreads) {
      const A zi = static_cast<A>(z[c0 + i]);
      const A v = static_cast<A>(y[c0 + i]) * zi * math::sigmoid(zi);
      ss += v * v;
    }
    ss = block_sum(ss, scratch);
    const A inv = A(1) / sqrt(ss / static_cast<A>(gs) + eps);
    if (threadIdx.x == 0) rstd[r * G + g] = inv;
    for (int64_t i = threadIdx.x; i < gs; i += kThreads) {
      const A zi = static_cast<A>(z[c0 + i]);
      const A v = static_cast<A>(y[c0 + i]) * zi * math::sigmoid(zi);
      out[c0 + i] = T(v * inv * (w ? w[g * gs + i] : A(1)));
    }
  }
}

template <typename T, typename A>
__global__ void __launch_bounds__(kThreads) gated_norm_bwd_kernel(const T* __restrict__ y, const T* __restrict__ z,
                                                                  const A* __restrict__ w, const A* __restrict__ rstd,
                                                                  const T* __restrict__ dout, T* __restrict__ dy,
                                                                  T* __restrict__ dz, A* __restrict__ dw_part,
                                                                  int64_t rows, int64_t D, int64_t gs) {
  extern __shared__ __align__(16) unsigned char smem_raw[];
  A* dw_acc = reinterpret_cast<A*>(smem_raw);  // (D) when dw_part, else unused
  __shared__ A scratch[kThreads / 32];
  const int64_t G = D / gs;
  if (dw_part)
    for (int64_t i = threadIdx.x; i < D; i += kThreads) dw_acc[i] = 0;
  const int64_t r_end = min(rows, static_cast<int64_t>(blockIdx.x + 1) * kRowsPerBlock);
  for (int64_t r = static_cast<int64_t>(blockIdx.x) * kRowsPerBlock; r < r_end; ++r) {
    for (int64_t g = 0; g < G; ++g) {
      const int64_t c0 = r * D + g * gs, w0 = g * gs;
      const A inv = rstd[r * G + g];
      A dot = 0;
      for (int64_t i = threadIdx.x; i < gs; i += kThreads) {
        const A zi = static_cast<A>(z[c0 + i]);
        const A n = static_cast<A>(y[c0 + i]) * zi * math::sigmoid(zi) * inv;
        dot += static_cast<A>(dout[c0 + i]) * (w ? w[w0 + i] : A(1)) * n;
      }
      const A mean = block_sum(dot, scratch) / static_cast<A>(gs);
      for (int64_t i = threadIdx.x; i < gs; i += kThreads) {
        const A zi = static_cast<A>(z[c0 + i]), yi = static_cast<A>(y[c0 + i]), s = math::sigmoid(zi);
        const A n = yi * zi * s * inv, go = static_cast<A>(dout[c0 + i]);
        const A dv = inv * (go * (w ? w[w0 + i] : A(1)) - n * mean);
        if (dy) dy[c0 + i] = T(dv * zi * s);
        if (dz) dz[c0 + i] = T(dv * yi * s * (A(1) + zi * (A(1) - s)));
        if (dw_part) dw_acc[w0 + i] += go * n;  // channel w0 + i is always this thread's
      }
    }
  }
  if (dw_part) {
    __syncthreads();
    for (int64_t i = threadIdx.x; i < D; i += kThreads) dw_part[blockIdx.x * D + i] = dw_acc[i];
  }
}

template <typename A>
__global__ void sum_partials_kernel(const A* __restrict__ part, A* __restrict__ out, int nblk, int64_t D) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < D;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    A s = 0;
    for (int b = 0; b < nblk; ++b) s += part[b * D + i];
    out[i] = s;
  }
}

template <typename F>
void with_types(DType dtype, F&& f) {
  switch (dtype) {
    case DType::bf16: f(bf16{}, float{}); break;
    case DType::f32: f(float{}, float{}); break;
    case DType::f64: f(double{}, double{}); break;
    default: SSMT_CHECK(false, "gated_rms_norm (CUDA): unsupported dtype ", dtype_name(dtype));
  }
}

}  // namespace

void gated_norm_fwd_cuda(const GatedNormParams& p, int device) {
  if (p.rows == 0 || p.D == 0) return;
  cuda_detail::DeviceGuard guard(device);
  auto stream = static_cast<cudaStream_t>(cuda::compute_stream(device));
  SSMT_CHECK(p.rows <= 0x7fffffff, "gated_rms_norm (CUDA): too many rows (", p.rows, ")");
  with_types(p.dtype, [&](auto t, auto a) {
    using T = decltype(t);
    using A = decltype(a);
    gated_norm_fwd_kernel<T, A><<<static_cast<unsigned>(p.rows), kThreads, 0, stream>>>(
        static_cast<const T*>(p.y), static_cast<const T*>(p.z), static_cast<const A*>(p.w), static_cast<T*>(p.out),
        static_cast<A*>(p.rstd), p.D, p.group_size, static_cast<A>(p.eps));
  });
  CUDA_CHECK_LAUNCH();
}

void gated_norm_bwd_cuda(const GatedNormParams& p, int device) {
  if (p.D == 0) return;
  cuda_detail::DeviceGuard guard(device);
  auto stream = static_cast<cudaStream_t>(cuda::compute_stream(device));
  const int nblk = static_cast<int>((p.rows + kRowsPerBlock - 1) / kRowsPerBlock);
  with_types(p.dtype, [&](auto t, auto a) {
    using T = decltype(t);
    using A = decltype(a);
    if (p.rows == 0) {  // no rows: the weight gradient is an empty sum
      if (p.dw) CUDA_CHECK(cudaMemsetAsync(p.dw, 0, sizeof(A) * static_cast<size_t>(p.D), stream));
      return;
    }
    const size_t smem = p.dw ? sizeof(A) * static_cast<size_t>(p.D) : 0;
    SSMT_CHECK(smem <= 160 * 1024, "gated_rms_norm (CUDA): ", p.D, " channels are too many for the weight gradient");
    auto kernel = gated_norm_bwd_kernel<T, A>;
    CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem)));
    Tensor part = p.dw ? Tensor::empty({nblk, p.D}, dtype_of<A>::value, Device::cuda(device)) : Tensor();
    kernel<<<nblk, kThreads, smem, stream>>>(static_cast<const T*>(p.y), static_cast<const T*>(p.z),
                                             static_cast<const A*>(p.w), static_cast<const A*>(p.rstd),
                                             static_cast<const T*>(p.dout), static_cast<T*>(p.dy),
                                             static_cast<T*>(p.dz), p.dw ? part.data<A>() : nullptr, p.rows, p.D,
                                             p.group_size);
    CUDA_CHECK_LAUNCH();
    if (p.dw) {
      const int blocks = static_cast<int>(std::min<int64_t>((p.D + 255) / 256, 1024));
      sum_partials_kernel<A><<<blocks, 256, 0, stream>>>(part.data<A>(), static_cast<A*>(p.dw), nblk, p.D);
      CUDA_CHECK_LAUNCH();
    }
  });
}

}  // namespace ssmtrain
