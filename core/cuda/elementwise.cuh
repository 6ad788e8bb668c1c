// The elementwise engine of the CUDA backend: out[i] = f(in0[i], in1[i], ...) over tensors
// of one shape with arbitrary strides (broadcast stride-0 views, transposes, narrowed
// slices), used by copy, fill, unary, binary and where.
//
// The host first merges dimensions that are contiguous for every operand and drops size-1
// dimensions. When all operands are then flat, contiguous and 16-byte aligned, a vectorised
// grid-stride kernel moves 16 bytes per access, with several accesses in flight per
// thread. Otherwise a strided kernel maps each linear index to per-operand offsets with
// precomputed magic-number division (32-bit indices when the element count allows).
#pragma once

#include <array>
#include <cstdint>
#include <utility>

#include "core/cuda/cuda_check.cuh"
#include "core/cuda/device.cuh"
#include "core/cuda/kernel_utils.cuh"
#include "core/tensor.h"

namespace ssmtrain::cuda_detail {

// n / d and n % d for a fixed 32-bit divisor d, by multiply-high and shift (Granlund and
// Montgomery); valid for n < 2^31 and 1 <= d < 2^31.
struct IntDivider {
  uint32_t divisor = 1, magic = 0, shift = 0;
  IntDivider() = default;
  explicit IntDivider(uint32_t d) : divisor(d) {
    for (shift = 0; shift < 31; ++shift)
      if ((1u << shift) >= d) break;
    uint64_t one = 1;
    magic = static_cast<uint32_t>(((one << 32) * ((one << shift) - d)) / d + 1);
  }
  __device__ __forceinline__ uint32_t div(uint32_t n) const { return (__umulhi(n, magic) + n) >> shift; }
};

// Operand offsets (in elements) of a linear index, innermost dimension first.
template <int NARGS, bool kWide>
struct OffsetCalculator {
  int rank = 0;
  IntDivider div[kMaxDims];      // used when !kWide
  int64_t sizes[kMaxDims] = {};  // used when kWide
  int64_t strides[kMaxDims][NARGS] = {};

  __device__ __forceinline__ void get(int64_t linear, int64_t (&off)[NARGS]) const {
#pragma unroll
    for (int a = 0; a < NARGS; ++a) off[a] = 0;
    if constexpr (kWide) {
      int64_t rest = linear;
#pragma unroll
      for (int d = 0; d < kMaxDims; ++d) {
        if (d == rank) break;
        int64_t q = rest / sizes[d], r = rest - q * sizes[d];
        rest = q;
#pragma unroll
        for (int a = 0; a < NARGS; ++a) off[a] += r * strides[d][a];
      }
    } else {
      uint32_t rest = static_cast<uint32_t>(linear);
#pragma unroll
      for (int d = 0; d < kMaxDims; ++d) {
        if (d == rank) break;
        uint32_t q = div[d].div(rest), r = rest - q * div[d].divisor;
        rest = q;
#pragma unroll
        for (int a = 0; a < NARGS; ++a) off[a] += static_cast<int64_t>(r) * strides[d][a];
      }
    }
  }
};

// The iteration space of NARGS operands of one shape after merging dimensions.
template <int NARGS>
struct Geometry {
  int rank = 0;
  int64_t sizes[kMaxDims] = {};           // innermost first
  int64_t strides[kMaxDims][NARGS] = {};  // innermost first

  bool contiguous() const {
    if (rank == 0) return true;
    if (rank > 1) return false;
    for (int a = 0; a < NARGS; ++a)
      if (strides[0][a] != 1) return false;
    return true;
  }
};

template <int NARGS>
Geometry<NARGS> make_geometry(const Dims& shape, const std::array<const Tensor*, NARGS>& operands) {
  Geometry<NARGS> g;
  for (int d = shape.size() - 1; d >= 0; --d) {  // innermost first
    if (shape[d] == 1) continue;
    bool merge = g.rank > 0;
    for (int a = 0; a < NARGS && merge; ++a) {
      int64_t inner = g.strides[g.rank - 1][a] * g.sizes[g.rank - 1];
      merge = operands[a]->strides()[d] == inner;
    }
    if (merge) {
      g.sizes[g.rank - 1] *= shape[d];
    } else {
      g.sizes[g.rank] = shape[d];
      for (int a = 0; a < NARGS; ++a) g.strides[g.rank][a] = operands[a]->strides()[d];
      ++g.rank;
    }
  }
  return g;
}

template <int NARGS, bool kWide>
OffsetCalculator<NARGS, kWide> make_offset_calculator(const Geometry<NARGS>& g) {
  OffsetCalculator<NARGS, kWide> c;
  c.rank = g.rank;
  for (int d = 0; d < g.rank; ++d) {
    if constexpr (kWide) {
      c.sizes[d] = g.sizes[d];
    } else {
      c.div[d] = IntDivider(static_cast<uint32_t>(g.sizes[d]));
    }
    for (int a = 0; a < NARGS; ++a) c.strides[d][a] = g.strides[d][a];
  }
  return c;
}

// ---- kernels ----

constexpr int kElementwiseThreads = 256;
constexpr int kUnroll = 4;  // independent accesses in flight per thread and operand

template <typename T, int VEC>
struct Chunk {
  Vec<T, VEC> v[kUnroll];
};

template <int VEC, typename T>
__device__ __forceinline__ Chunk<T, VEC> load_chunk(const T* __restrict__ p, int64_t first, int64_t step,
                                                    int64_t nvec) {
  Chunk<T, VEC> c;
#pragma unroll
  for (int u = 0; u < kUnroll; ++u) {
    int64_t i = first + u * step;
    if (i < nvec) c.v[u] = reinterpret_cast<const Vec<T, VEC>*>(p)[i];
  }
  return c;
}

template <int VEC, typename F, typename Out, typename... Chunks>
__device__ __forceinline__ void apply_chunks(const F& f, Out* __restrict__ out, int64_t first, int64_t step,
                                             int64_t nvec, const Chunks&... in) {
#pragma unroll
  for (int u = 0; u < kUnroll; ++u) {
    int64_t i = first + u * step;
    if (i < nvec) {
      Vec<Out, VEC> o;
#pragma unroll
      for (int j = 0; j < VEC; ++j) o.v[j] = f(in.v[u].v[j]...);
      reinterpret_cast<Vec<Out, VEC>*>(out)[i] = o;
    }
  }
}

// Flat contiguous operands, VEC elements per access (pointers aligned to VEC elements).
template <int VEC, typename F, typename Out, typename... In>
__global__ void __launch_bounds__(kElementwiseThreads)
    elementwise_flat_kernel(F f, int64_t n, Out* __restrict__ out, const In* __restrict__... in) {
  const int64_t nvec = n / VEC;
  const int64_t step = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t first = static_cast<int64_t>(blockIdx.x) * blockDim.x * kUnroll + threadIdx.x; first < nvec;
       first += step * kUnroll) {
    // All loads of the kUnroll accesses are issued before the first store.
    apply_chunks<VEC>(f, out, first, blockDim.x, nvec, load_chunk<VEC>(in, first, blockDim.x, nvec)...);
  }
  // The tail (< VEC elements), done by the first threads.
  const int64_t tail = nvec * VEC + static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (tail < n) out[tail] = f(in[tail]...);
}

template <typename F, typename Out, typename... In, size_t... I, int NARGS>
__device__ __forceinline__ void apply_strided(const F& f, Out* __restrict__ out, const int64_t (&off)[NARGS],
                                              std::index_sequence<I...>, const In* __restrict__... in) {
  out[off[0]] = f(in[off[I + 1]]...);
}

template <typename Calc, typename F, typename Out, typename... In>
__global__ void __launch_bounds__(kElementwiseThreads)
    elementwise_strided_kernel(F f, Calc calc, int64_t n, Out* __restrict__ out, const In* __restrict__... in) {
  constexpr int NARGS = 1 + sizeof...(In);
  const int64_t step = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += step) {
    int64_t off[NARGS];
    calc.get(i, off);
    apply_strided(f, out, off, std::index_sequence_for<In...>{}, in...);
  }
}

// Enough blocks to fill every multiprocessor several times over; the loops stride the rest.
inline int elementwise_grid(int64_t work_items, int sm_count) {
  int64_t blocks = ceil_div(work_items, kElementwiseThreads);
  int64_t cap = static_cast<int64_t>(sm_count) * (2048 / kElementwiseThreads) * 4;
  return static_cast<int>(blocks < 1 ? 1 : (blocks < cap ? blocks : cap));
}

// out = f(ins...) elementwise. Out and In... are the element types of the tensors; every
// tensor has out's shape (inputs may be broadcast views). Launches on the compute stream.
template <typename Out, typename... In, typename F, typename... Tensors>
void launch_elementwise(const F& f, const Tensor& out, const Tensors&... ins) {
  static_assert(sizeof...(In) == sizeof...(Tensors), "one element type per input tensor");
  constexpr int NARGS = 1 + sizeof...(In);
  const int64_t n = out.numel();
  if (n == 0) return;
  const DeviceContext& ctx = device_context(out.device().index);
  cudaStream_t stream = ctx.stream.get();
  Geometry<NARGS> g = make_geometry<NARGS>(out.shape(), {&out, &ins...});
  Out* out_ptr = static_cast<Out*>(out.data_ptr());
  constexpr int VEC = vec_width<Out, In...>();
  bool aligned = aligned_to(out_ptr, sizeof(Out) * VEC) && (aligned_to(ins.data_ptr(), sizeof(In) * VEC) && ...);
  if (g.contiguous() && aligned) {
    int grid = elementwise_grid(ceil_div(n / VEC, kUnroll), ctx.sm_count);
    elementwise_flat_kernel<VEC><<<grid, kElementwiseThreads, 0, stream>>>(
        f, n, out_ptr, static_cast<const In*>(ins.data_ptr())...);
    CUDA_CHECK_LAUNCH();
    return;
  }
  int grid = elementwise_grid(n, ctx.sm_count);
  if (n < (int64_t{1} << 31)) {
    auto calc = make_offset_calculator<NARGS, false>(g);
    elementwise_strided_kernel<<<grid, kElementwiseThreads, 0, stream>>>(
        f, calc, n, out_ptr, static_cast<const In*>(ins.data_ptr())...);
  } else {
    auto calc = make_offset_calculator<NARGS, true>(g);
    elementwise_strided_kernel<<<grid, kElementwiseThreads, 0, stream>>>(
        f, calc, n, out_ptr, static_cast<const In*>(ins.data_ptr())...);
  }
  CUDA_CHECK_LAUNCH();
}

}  // namespace ssmtrain::cuda_detail
