// Device-side building blocks shared by the kernels of core/cuda: typed vectors for
// 16-byte loads, dtype conversion with the rounding of core/dtype.h, libm wrappers that
// pick the float or double function, warp and block reductions with a fixed combination
// order (results are bitwise reproducible), and launch-geometry helpers.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>
#include <limits>
#include <string>
#include <type_traits>

#include "core/dtype.h"
#include "core/error.h"

namespace ssmtrain::cuda_detail {

constexpr int kWarp = 32;

// N elements of T moved as one aligned access (16 bytes when N * sizeof(T) == 16).
template <typename T, int N>
struct alignas(sizeof(T) * N) Vec {
  T v[N];
};

// Elements per 16-byte access for the widest of the given types.
template <typename... Ts>
constexpr int vec_width() {
  size_t widest = 1;
  ((widest = sizeof(Ts) > widest ? sizeof(Ts) : widest), ...);
  return static_cast<int>(16 / widest);
}

inline bool aligned_to(const void* p, size_t bytes) { return reinterpret_cast<uintptr_t>(p) % bytes == 0; }

// The arithmetic value of a stored element: bf16 computes as float, the rest as themselves.
template <typename T>
__host__ __device__ __forceinline__ auto arith(T x) {
  if constexpr (std::is_same_v<T, bf16>) {
    return static_cast<float>(x);
  } else {
    return x;
  }
}

// The compute type of a stored type (float for bf16), as in core/dtype.h's acc_t.
template <typename T> using compute_t = decltype(arith(std::declval<T>()));

// Conversion between any two element types: through float into bf16 (round to nearest
// even), static_cast otherwise, the same chain as the CPU backend.
template <typename To, typename From>
__host__ __device__ __forceinline__ To convert(From x) {
  if constexpr (std::is_same_v<To, From>) {
    return x;
  } else if constexpr (std::is_same_v<To, bf16>) {
    return bf16(static_cast<float>(arith(x)));
  } else {
    return static_cast<To>(arith(x));
  }
}

// ---- libm by type (no fast-math: these are the accurate float/double functions) ----
__device__ __forceinline__ float d_exp(float x) { return expf(x); }
__device__ __forceinline__ double d_exp(double x) { return exp(x); }
__device__ __forceinline__ float d_log(float x) { return logf(x); }
__device__ __forceinline__ double d_log(double x) { return log(x); }
__device__ __forceinline__ float d_log1p(float x) { return log1pf(x); }
__device__ __forceinline__ double d_log1p(double x) { return log1p(x); }
__device__ __forceinline__ float d_sqrt(float x) { return sqrtf(x); }
__device__ __forceinline__ double d_sqrt(double x) { return sqrt(x); }
__device__ __forceinline__ float d_tanh(float x) { return tanhf(x); }
__device__ __forceinline__ double d_tanh(double x) { return tanh(x); }
__device__ __forceinline__ float d_sin(float x) { return sinf(x); }
__device__ __forceinline__ double d_sin(double x) { return sin(x); }
__device__ __forceinline__ float d_cos(float x) { return cosf(x); }
__device__ __forceinline__ double d_cos(double x) { return cos(x); }
__device__ __forceinline__ float d_pow(float x, float p) { return powf(x, p); }
__device__ __forceinline__ double d_pow(double x, double p) { return pow(x, p); }
__device__ __forceinline__ float d_abs(float x) { return fabsf(x); }
__device__ __forceinline__ double d_abs(double x) { return fabs(x); }

template <typename A>
__host__ __device__ __forceinline__ A neg_infinity() {
  return -std::numeric_limits<A>::infinity();
}

// ---- warp and block reductions (every thread gets the result) ----
template <typename T>
__device__ __forceinline__ T shfl_xor(T v, int mask) {
  return __shfl_xor_sync(0xffffffffu, v, mask);
}

// Butterfly reduction: every lane ends with the same value, combined in the same order.
template <typename S, typename Combine>
__device__ __forceinline__ S warp_allreduce(S v, Combine combine) {
#pragma unroll
  for (int offset = kWarp / 2; offset > 0; offset >>= 1) v = combine(v, shfl_xor(v, offset));
  return v;
}

// All threads of the block (a multiple of 32, at most 1024) get the reduction of their
// values; `smem` holds 32 entries. Safe to call repeatedly with the same smem.
template <typename S, typename Combine>
__device__ __forceinline__ S block_allreduce(S v, Combine combine, S* smem) {
  v = warp_allreduce(v, combine);
  const int warp = threadIdx.x / kWarp, lane = threadIdx.x % kWarp, nwarps = blockDim.x / kWarp;
  __syncthreads();  // smem may still be read by a previous call
  if (lane == 0) smem[warp] = v;
  __syncthreads();
  S r = smem[0];
  for (int w = 1; w < nwarps; ++w) r = combine(r, smem[w]);
  return r;
}

// A reduction over one row by a "group": a warp (rows with few elements, several rows per
// block) or the whole block (long rows).
template <bool kWarpGroup, typename S, typename Combine>
__device__ __forceinline__ S group_allreduce(S v, Combine combine, S* smem) {
  if constexpr (kWarpGroup) {
    return warp_allreduce(v, combine);
  } else {
    return block_allreduce(v, combine, smem);
  }
}

// Geometry of the row groups of a launch: group index, its thread index and size.
template <bool kWarpGroup>
struct RowGroup {
  __device__ static int64_t index() {
    return kWarpGroup ? static_cast<int64_t>(blockIdx.x) * (blockDim.x / kWarp) + threadIdx.x / kWarp : blockIdx.x;
  }
  __device__ static int64_t count() {
    return kWarpGroup ? static_cast<int64_t>(gridDim.x) * (blockDim.x / kWarp) : gridDim.x;
  }
  __device__ static int thread() { return kWarpGroup ? threadIdx.x % kWarp : threadIdx.x; }
  __device__ static int size() { return kWarpGroup ? kWarp : blockDim.x; }
};

// Rows of at most this many elements are handled by one warp; longer rows by a block.
constexpr int64_t kWarpRowLimit = 1024;
constexpr int kRowBlockThreads = 256;  // threads of a block-per-row launch
constexpr int kWarpRowsPerBlock = 8;   // warps (rows in flight) of a warp-per-row launch

inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// Calls fn(T{}) with T = bf16, float or double for `dtype`; a UserError naming `op` for any
// other dtype. The host-side switch of kernels templated on their element type.
template <typename Fn>
void with_float_type(DType dtype, const char* op, Fn&& fn) {
  switch (dtype) {
    case DType::bf16:
      fn(bf16{});
      return;
    case DType::f32:
      fn(float{});
      return;
    case DType::f64:
      fn(double{});
      return;
    default:
      throw UserError(std::string(op) + " (CUDA): unsupported dtype " + dtype_name(dtype));
  }
}

}  // namespace ssmtrain::cuda_detail
