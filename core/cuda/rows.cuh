// Shared pieces of the row kernels of core/cuda (rows.cu, loss.cu, norm.cu): contiguous
// inputs, the launch geometry of "one warp or one block per row", a row walk with 16-byte
// loads where the row allows them, the online (max, sum-exp) state of logsumexp, and
// element access to small per-row or per-feature vectors whose dtype is chosen at run time.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>
#include <limits>

#include "core/cuda/backend_cuda.cuh"
#include "core/cuda/cuda_check.cuh"
#include "core/cuda/kernel_utils.cuh"

namespace ssmtrain::cuda_detail {

// t itself when contiguous, else a contiguous copy on t's device (queued on its stream).
inline Tensor contiguous_input(const Tensor& t) {
  if (!t.defined() || t.is_contiguous()) return t;
  Tensor c = Tensor::empty(t.shape(), t.dtype(), t.device());
  cuda::cuda_backend(t.device().index).copy(t, c);
  return c;
}

// True when every row of a contiguous (M, K) matrix at p starts 16-byte aligned and holds
// whole 16-byte vectors, so a row walk can use vector loads throughout.
template <typename T>
inline bool rows_vectorizable(const void* p, int64_t k) {
  return aligned_to(p, 16) && (k * static_cast<int64_t>(sizeof(T))) % 16 == 0;
}

// ---- column sums of partial rows ----

// The weight gradients of the norms are summed in two steps: blocks of rows leave one partial
// row each, then these column sums add the (count, width) partials, deterministically.
// A block covers kPartialCols columns with kPartialSlices threads each: thread (x, y) adds
// rows y, y + kPartialSlices, ... in order, then thread y = 0 adds the slices in y order.
// (One thread per column, adding `count` rows in a chain of dependent loads, took about
// 60 us for 512 rows of 768: a latency-bound tail of every norm backward.)
constexpr int kPartialCols = 32, kPartialSlices = 32;

inline dim3 partial_sum_grid(int64_t width) { return dim3(static_cast<unsigned>(ceil_div(width, kPartialCols))); }
inline dim3 partial_sum_block() { return dim3(kPartialCols, kPartialSlices); }

// store(c, sum of column c) for the block's columns; launch with partial_sum_grid/_block.
template <typename A, typename Store>
__device__ void sum_partial_rows(const A* __restrict__ partial, int64_t count, int64_t width, Store store) {
  __shared__ A red[kPartialSlices][kPartialCols + 1];
  const int64_t c = static_cast<int64_t>(blockIdx.x) * kPartialCols + threadIdx.x;
  A s = A(0);
  if (c < width)
    for (int64_t r = threadIdx.y; r < count; r += kPartialSlices) s += partial[r * width + c];
  red[threadIdx.y][threadIdx.x] = s;
  __syncthreads();
  if (threadIdx.y == 0 && c < width) {
    A t = red[0][threadIdx.x];
#pragma unroll
    for (int k = 1; k < kPartialSlices; ++k) t += red[k][threadIdx.x];
    store(c, t);
  }
}

// ---- launch geometry ----

struct RowLaunch {
  bool warp;  // one warp per row (else one block per row)
  int grid;
  int block;
};

// Rows of at most kWarpRowLimit elements: kWarpRowsPerBlock warps per block, one row each;
// longer rows: a block of kRowBlockThreads per row. The kernels loop over rows with a
// grid stride, so the grid is capped at a few waves.
inline RowLaunch row_launch(int64_t m, int64_t k, const DeviceContext& ctx) {
  const int64_t waves = static_cast<int64_t>(ctx.sm_count) * 16;
  if (k <= kWarpRowLimit) {
    int64_t g = ceil_div(m, kWarpRowsPerBlock);
    return {true, static_cast<int>(g < 1 ? 1 : (g < waves ? g : waves)), kWarp * kWarpRowsPerBlock};
  }
  int64_t g = m < waves ? m : waves;
  return {false, static_cast<int>(g < 1 ? 1 : g), kRowBlockThreads};
}

// Launches kernel<true, T> or kernel<false, T> (warp or block per row) with the row geometry.
#define SSMT_ROW_LAUNCH(L, ctx, kernel, T, ...)                                                       \
  do {                                                                                                \
    if ((L).warp)                                                                                     \
      kernel<true, T><<<(L).grid, (L).block, 0, (ctx).stream.get()>>>(__VA_ARGS__);                    \
    else                                                                                              \
      kernel<false, T><<<(L).grid, (L).block, 0, (ctx).stream.get()>>>(__VA_ARGS__);                   \
    CUDA_CHECK_LAUNCH();                                                                              \
  } while (0)

// ---- row walk ----

// f(i, v) for the elements of row[0, k) given to thread t of a group of g threads. With
// `vec` (rows_vectorizable), thread t takes whole 16-byte vectors t, t + g, ...; else single
// elements t, t + g, ... Every element is visited by exactly one thread, in a fixed order.
template <typename T, typename F>
__device__ __forceinline__ void for_row(const T* __restrict__ row, int64_t k, int t, int g, bool vec, F&& f) {
  constexpr int VEC = 16 / sizeof(T);
  if (vec) {
    const Vec<T, VEC>* rv = reinterpret_cast<const Vec<T, VEC>*>(row);
    const int64_t nv = k / VEC;
#pragma unroll 2
    for (int64_t i = t; i < nv; i += g) {
      Vec<T, VEC> v = rv[i];
#pragma unroll
      for (int j = 0; j < VEC; ++j) f(i * VEC + j, v.v[j]);
    }
  } else {
    for (int64_t i = t; i < k; i += g) f(i, row[i]);
  }
}

// out[i] = f(i) for i in [0, k) of a row, with 16-byte stores under the same conditions.
template <typename T, typename F>
__device__ __forceinline__ void write_row(T* __restrict__ row, int64_t k, int t, int g, bool vec, F&& f) {
  constexpr int VEC = 16 / sizeof(T);
  if (vec) {
    Vec<T, VEC>* rv = reinterpret_cast<Vec<T, VEC>*>(row);
    const int64_t nv = k / VEC;
    for (int64_t i = t; i < nv; i += g) {
      Vec<T, VEC> v;
#pragma unroll
      for (int j = 0; j < VEC; ++j) v.v[j] = f(i * VEC + j);
      rv[i] = v;
    }
  } else {
    for (int64_t i = t; i < k; i += g) row[i] = f(i);
  }
}

// ---- NaN-propagating extrema (the CPU's max_nan / min_nan) ----
template <typename A>
__host__ __device__ __forceinline__ A max_nan(A a, A b) {
  return (b > a || b != b) ? b : a;
}
template <typename A>
__host__ __device__ __forceinline__ A min_nan(A a, A b) {
  return (b < a || b != b) ? b : a;
}

// ---- online logsumexp ----

// The running max m and sum s of exp(x - m) over the elements seen so far. NaN propagates;
// a row holding +inf ends with m = +inf (the logsumexp is then m itself); an empty row or
// one of -inf ends with m = -inf and s = 0.
template <typename A>
struct LseState {
  A m, s;
};

template <typename A>
__device__ __forceinline__ LseState<A> lse_init() {
  return {neg_infinity<A>(), A(0)};
}

template <typename A>
__device__ __forceinline__ void lse_add(LseState<A>& st, A x) {
  if (x > st.m || x != x) {  // one exp per element: rescale only when the max moves
    st.s = st.s * d_exp(st.m - x) + A(1);
    st.m = x;
  } else if (st.m != neg_infinity<A>()) {  // x = m = -inf adds exp(-inf) = 0, not exp(NaN)
    st.s += d_exp(x - st.m);
  }
}

template <typename A>
__device__ __forceinline__ LseState<A> lse_merge(LseState<A> a, LseState<A> b) {
  A m = max_nan(a.m, b.m);
  if (m == neg_infinity<A>()) return {m, A(0)};
  A sa = a.m == m ? a.s : a.s * d_exp(a.m - m);
  A sb = b.m == m ? b.s : b.s * d_exp(b.m - m);
  return {m, sa + sb};
}

// The logsumexp of a final state (-inf for an empty row, +inf for a row holding +inf).
template <typename A>
__device__ __forceinline__ A lse_value(LseState<A> st) {
  if (st.m == -neg_infinity<A>() || st.m == neg_infinity<A>()) return st.m;
  return st.m + d_log(st.s);
}

// Every thread of the group gets the merge of the group's states (lse_merge is symmetric,
// so all lanes agree bitwise). smem: 32 entries, used by block groups only.
template <bool kWarpGroup, typename A>
__device__ __forceinline__ LseState<A> group_lse(LseState<A> st, LseState<A>* smem) {
#pragma unroll
  for (int offset = kWarp / 2; offset > 0; offset >>= 1) {
    LseState<A> o{shfl_xor(st.m, offset), shfl_xor(st.s, offset)};
    st = lse_merge(st, o);
  }
  if constexpr (!kWarpGroup) {
    const int warp = threadIdx.x / kWarp, lane = threadIdx.x % kWarp, nwarps = blockDim.x / kWarp;
    __syncthreads();
    if (lane == 0) smem[warp] = st;
    __syncthreads();
    st = smem[0];
    for (int w = 1; w < nwarps; ++w) st = lse_merge(st, smem[w]);
  }
  return st;
}

// ---- small vectors of a run-time float dtype (statistics, norm parameters) ----

// A contiguous f32, bf16 or f64 vector; loads and stores convert to and from A.
struct AnyFloat {
  void* p = nullptr;
  DType dt = DType::f32;

  template <typename A>
  __device__ __forceinline__ A load(int64_t i) const {
    switch (dt) {
      case DType::bf16: return static_cast<A>(static_cast<float>(static_cast<const bf16*>(p)[i]));
      case DType::f64: return static_cast<A>(static_cast<const double*>(p)[i]);
      default: return static_cast<A>(static_cast<const float*>(p)[i]);
    }
  }
  template <typename A>
  __device__ __forceinline__ void store(int64_t i, A v) const {
    switch (dt) {
      case DType::bf16: static_cast<bf16*>(p)[i] = bf16(static_cast<float>(v)); return;
      case DType::f64: static_cast<double*>(p)[i] = static_cast<double>(v); return;
      default: static_cast<float*>(p)[i] = static_cast<float>(v); return;
    }
  }
};

// t (contiguous, floating) as an AnyFloat; a null pointer when t is undefined.
inline AnyFloat any_float(const Tensor& t) {
  if (!t.defined()) return {};
  SSMT_ASSERT(is_floating(t.dtype()) && t.is_contiguous(), "expected a contiguous float vector, got ",
              t.describe());
  return {t.data_ptr(), t.dtype()};
}

}  // namespace ssmtrain::cuda_detail
