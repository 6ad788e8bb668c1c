// Gated RMSNorm on CUDA (gated_norm.h). Two paths.
//
// Vector path (bf16 and f32 when D and group_size are multiples of V = 16 bytes / element,
// D / V <= 1024, and every row start 16-byte aligned; the shape Mamba2 runs):
//  - thread mapping: a row is tpr = D / V consecutive threads, thread j of a row owning the
//    V channels [j V, (j + 1) V) (one 16-byte vector of each operand); a block holds rpb rows
//    side by side (rpb = 256 / tpr for narrow rows, else 1), padded to whole warps. A group
//    of channels is then tpg = group_size / V consecutive threads, and the groups of all the
//    rows of a block tile its threads: group k is threads [k tpg, (k + 1) tpg).
//  - group sums (group_sum): a segmented shuffle reduction inside each warp (a warp may hold
//    several groups, or a piece of one), the head of each piece writes its sum to shared
//    memory, and every thread adds the pieces of its group in warp order. Fixed order: the
//    results are reproducible bit for bit.
//  - forward: one pass; y and z are read once (vector loads) and v = y silu(z) stays in
//    registers between the sum of squares and the output (vector stores).
//  - the sigmoid is core/math.h's branch-free form (one exponential, no divergence on the
//    sign of z), where the CPU kernels use the two-branch one: they differ by rounding only.
//  - backward: the grid (a full wave: SM count x resident blocks per SM) walks the rows,
//    rpb at a time per block, loading the next rows' y, z, dout and rstd while it works on
//    the current ones (blocks of up to 512 threads). Since a thread always owns the same
//    channels, it accumulates its share of the weight gradient in registers over all its
//    rows and writes one partial row per row slot of its block at the end (no atomics).
// Generic path (any D and group size, f64, unaligned rows): forward one block per row, one
// pass per group (sum of squares, then the output, v recomputed); backward kRowsPerBlock
// rows per block with the weight-gradient partial in shared memory (each channel owned by
// one thread).
// Both backward paths leave partial rows of the weight gradient that sum_partials_kernel
// adds over rows in a fixed order.
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <initializer_list>
#include <type_traits>

#include "core/backend.h"
#include "core/cuda/cuda_check.cuh"
#include "core/cuda/device.cuh"
#include "core/cuda/kernel_utils.cuh"
#include "core/dtype.h"
#include "core/error.h"
#include "core/math.h"
#include "core/tensor.h"
#include "ssm/kernels/gated_norm.h"

namespace ssmtrain {

namespace {

using cuda_detail::aligned_to;
using cuda_detail::Vec;

constexpr int kThreads = 256;
constexpr int kRowsPerBlock = 32;

// ---- generic path ----

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
__global__ void __launch_bounds__(kThreads)
    gated_norm_fwd_kernel(const T* __restrict__ y, int64_t y_stride, const T* __restrict__ z, int64_t z_stride,
                          const A* __restrict__ w, T* __restrict__ out, A* __restrict__ rstd, int64_t D, int64_t gs,
                          A eps) {
  __shared__ A scratch[kThreads / 32];
  const int64_t r = blockIdx.x, G = D / gs;
  for (int64_t g = 0; g < G; ++g) {
    const int64_t c0 = r * D + g * gs, y0 = r * y_stride + g * gs, z0 = r * z_stride + g * gs;
    A ss = 0;
    for (int64_t i = threadIdx.x; i < gs; i += kThreads) {
      const A zi = static_cast<A>(z[z0 + i]);
      const A v = static_cast<A>(y[y0 + i]) * zi * math::sigmoid(zi);
      ss += v * v;
    }
    ss = block_sum(ss, scratch);
    const A inv = A(1) / sqrt(ss / static_cast<A>(gs) + eps);
    if (threadIdx.x == 0) rstd[r * G + g] = inv;
    for (int64_t i = threadIdx.x; i < gs; i += kThreads) {
      const A zi = static_cast<A>(z[z0 + i]);
      const A v = static_cast<A>(y[y0 + i]) * zi * math::sigmoid(zi);
      out[c0 + i] = T(v * inv * (w ? w[g * gs + i] : A(1)));
    }
  }
}

template <typename T, typename A>
__global__ void __launch_bounds__(kThreads)
    gated_norm_bwd_kernel(const T* __restrict__ y, int64_t y_stride, const T* __restrict__ z, int64_t z_stride,
                          const A* __restrict__ w, const A* __restrict__ rstd, const T* __restrict__ dout,
                          T* __restrict__ dy, T* __restrict__ dz, A* __restrict__ dw_part, int64_t rows, int64_t D,
                          int64_t gs) {
  extern __shared__ __align__(16) unsigned char smem_raw[];
  A* dw_acc = reinterpret_cast<A*>(smem_raw);  // (D) when dw_part, else unused
  __shared__ A scratch[kThreads / 32];
  const int64_t G = D / gs;
  if (dw_part)
    for (int64_t i = threadIdx.x; i < D; i += kThreads) dw_acc[i] = 0;
  const int64_t r_end = min(rows, static_cast<int64_t>(blockIdx.x + 1) * kRowsPerBlock);
  for (int64_t r = static_cast<int64_t>(blockIdx.x) * kRowsPerBlock; r < r_end; ++r) {
    for (int64_t g = 0; g < G; ++g) {
      const int64_t c0 = r * D + g * gs, w0 = g * gs, y0 = r * y_stride + g * gs, z0 = r * z_stride + g * gs;
      const A inv = rstd[r * G + g];
      A dot = 0;
      for (int64_t i = threadIdx.x; i < gs; i += kThreads) {
        const A zi = static_cast<A>(z[z0 + i]);
        const A n = static_cast<A>(y[y0 + i]) * zi * math::sigmoid(zi) * inv;
        dot += static_cast<A>(dout[c0 + i]) * (w ? w[w0 + i] : A(1)) * n;
      }
      const A mean = block_sum(dot, scratch) / static_cast<A>(gs);
      for (int64_t i = threadIdx.x; i < gs; i += kThreads) {
        const A zi = static_cast<A>(z[z0 + i]), yi = static_cast<A>(y[y0 + i]), s = math::sigmoid(zi);
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

// ---- vector path ----

// The geometry of a vector-path launch (see the header comment).
struct VecShape {
  int tpr = 0;         // threads per row (D / V)
  int tpg = 0;         // threads per group (group_size / V)
  int rpb = 0;         // rows per block
  int threads = 0;     // block size: rpb * tpr rounded up to whole warps
  int G = 0;           // groups per row
  int64_t gs = 0;      // group size in channels
};

constexpr int kVecRowThreads = 256;  // the block size aimed at when several rows share a block

// The sum of v over the calling thread's group (threads [k tpg, (k + 1) tpg) of the block),
// on every thread of the group, in a fixed order. Every thread of the block calls it (it
// shuffles over full warps and synchronises the block); part holds blockDim.x floats and
// may be reused by the next call.
__device__ __forceinline__ float group_sum(float v, float* part, int tpg) {
  const int t = threadIdx.x;
  const int first = t / tpg * tpg;                             // the group's first thread
  const int left = min(first + tpg, (t | 31) + 1) - t;         // lanes from t to the end of its piece
  // Segmented suffix sums: after the step of offset o, v is the sum of the lanes
  // [t, min(t + 2o, end of t's piece)); the head of a piece ends with the piece's sum.
#pragma unroll
  for (int o = 1; o < 32; o <<= 1) {
    const float u = __shfl_down_sync(0xffffffffu, v, o);
    if (o < left) v += u;
  }
  __syncthreads();  // part may still be read by the previous call
  // The heads: the group's first thread, and lane 0 of each further warp the group covers.
  if (t == first || (t & 31) == 0) part[t] = v;
  __syncthreads();
  const int last = min(first + tpg, static_cast<int>(blockDim.x)) - 1;
  float s = part[first];
  for (int wp = (first >> 5) + 1; wp <= (last >> 5); ++wp) s += part[wp << 5];
  return s;
}

// V weights from w[c] (16-byte aligned), or ones without a weight.
template <int V>
__device__ __forceinline__ void load_weights(const float* __restrict__ w, int c, float (&wk)[V]) {
  if (!w) {
#pragma unroll
    for (int k = 0; k < V; ++k) wk[k] = 1.0f;
    return;
  }
#pragma unroll
  for (int q = 0; q < V; q += 4) {
    const Vec<float, 4> a = *reinterpret_cast<const Vec<float, 4>*>(w + c + q);
#pragma unroll
    for (int k = 0; k < 4; ++k) wk[q + k] = a.v[k];
  }
}

// x rounded to T and stored as one 16-byte vector at dst. bf16 rounds to nearest even by the
// hardware's paired conversion: the value of bf16(float) for every non-NaN input (a NaN
// stays a NaN, with the canonical payload).
template <typename T, int V>
__device__ __forceinline__ void store_vec(T* dst, const float (&x)[V]) {
  if constexpr (std::is_same_v<T, bf16>) {
    Vec<uint32_t, V / 2> o;
#pragma unroll
    for (int k = 0; k < V; k += 2) {
      const __nv_bfloat162 h = __floats2bfloat162_rn(x[k], x[k + 1]);  // x[k] in the low half: the lower address
      o.v[k / 2] = static_cast<uint32_t>(__bfloat16_as_ushort(h.x)) |
                   (static_cast<uint32_t>(__bfloat16_as_ushort(h.y)) << 16);
    }
    *reinterpret_cast<Vec<uint32_t, V / 2>*>(dst) = o;
  } else {
    Vec<T, V> o;
#pragma unroll
    for (int k = 0; k < V; ++k) o.v[k] = x[k];
    *reinterpret_cast<Vec<T, V>*>(dst) = o;
  }
}

template <typename T, int kMaxThreads>
__global__ void __launch_bounds__(kMaxThreads)
    gated_norm_fwd_vec_kernel(const T* __restrict__ y, int64_t y_stride, const T* __restrict__ z, int64_t z_stride,
                              const float* __restrict__ w, T* __restrict__ out, float* __restrict__ rstd, int64_t rows,
                              VecShape s, float eps) {
  constexpr int V = 16 / sizeof(T);
  using VT = Vec<T, V>;
  __shared__ float part[kMaxThreads];
  const int t = threadIdx.x, slot = t / s.tpr, j = t - slot * s.tpr;
  const int64_t r = static_cast<int64_t>(blockIdx.x) * s.rpb + slot;
  const bool on = slot < s.rpb && r < rows;
  float v[V];
  float ss = 0;
  if (on) {
    const VT yv = *reinterpret_cast<const VT*>(y + r * y_stride + j * V);
    const VT zv = *reinterpret_cast<const VT*>(z + r * z_stride + j * V);
#pragma unroll
    for (int k = 0; k < V; ++k) {
      const float zk = static_cast<float>(zv.v[k]);
      v[k] = static_cast<float>(yv.v[k]) * zk * math::sigmoid_fast(zk);
      ss += v[k] * v[k];
    }
  } else {
#pragma unroll
    for (int k = 0; k < V; ++k) v[k] = 0.0f;
  }
  const float total = group_sum(ss, part, s.tpg);
  if (!on) return;  // past the last barrier
  const float inv = 1.0f / sqrtf(total / static_cast<float>(s.gs) + eps);
  if (j % s.tpg == 0) rstd[r * s.G + j / s.tpg] = inv;
  float wk[V];
  load_weights<V>(w, j * V, wk);
#pragma unroll
  for (int k = 0; k < V; ++k) v[k] = v[k] * inv * wk[k];
  store_vec<T, V>(out + r * (static_cast<int64_t>(s.tpr) * V) + j * V, v);
}

// The operands of one row slot of the backward: the thread's vectors of y, z, dout and its
// group's rstd.
template <typename T, int V>
struct BwdRow {
  Vec<T, V> y, z, g;
  float inv;
};

// Three variants by block size: up to 256 threads held to 80 registers, so that 4 blocks of
// Mamba2's 192 threads (bf16, D = 1536) fit an SM; up to 512; up to 1024 (64 registers a
// thread). The first two load the next rows while working on the current ones; the
// 1024-thread one does not, to limit its spills (bf16 rows of 4096 < D <= 8192 only).
template <typename T, int kMaxThreads, int kMinBlocks>
__global__ void __launch_bounds__(kMaxThreads, kMinBlocks)
    gated_norm_bwd_vec_kernel(const T* __restrict__ y, int64_t y_stride, const T* __restrict__ z, int64_t z_stride,
                              const float* __restrict__ w, const float* __restrict__ rstd, const T* __restrict__ dout,
                              T* __restrict__ dy, T* __restrict__ dz, float* __restrict__ dw_part, int64_t rows,
                              VecShape s) {
  constexpr int V = 16 / sizeof(T);
  constexpr bool kPrefetch = kMaxThreads <= 512;
  using VT = Vec<T, V>;
  __shared__ float part[kMaxThreads];
  const int t = threadIdx.x, slot = t / s.tpr, j = t - slot * s.tpr;
  const bool has_slot = slot < s.rpb;  // the padding threads past the last slot only join the reductions
  const int c = j * V, g = j / s.tpg;
  const int64_t D = static_cast<int64_t>(s.tpr) * V;
  float dw_acc[V];
#pragma unroll
  for (int k = 0; k < V; ++k) dw_acc[k] = 0.0f;

  auto load = [&](int64_t r, BwdRow<T, V>& b) {
    b.y = *reinterpret_cast<const VT*>(y + r * y_stride + c);
    b.z = *reinterpret_cast<const VT*>(z + r * z_stride + c);
    b.g = *reinterpret_cast<const VT*>(dout + r * D + c);
    b.inv = rstd[r * s.G + g];
  };
  const int64_t step = static_cast<int64_t>(gridDim.x) * s.rpb;
  int64_t base = static_cast<int64_t>(blockIdx.x) * s.rpb;  // the same on every thread: the loop is block-uniform
  BwdRow<T, V> cur{};
  if (kPrefetch && has_slot && base + slot < rows) load(base + slot, cur);
  for (; base < rows; base += step) {
    const int64_t r = base + slot;
    const bool on = has_slot && r < rows;
    BwdRow<T, V> next{};
    if constexpr (kPrefetch) {
      if (has_slot && r + step < rows) load(r + step, next);  // in flight during this row's work
    } else {
      if (on) load(r, cur);
    }
    // With n = v rstd, gn = dout o w: dv = rstd (gn - n mean(gn o n)), dy = dv silu(z),
    // dz = dv y silu'(z), dw += dout o n, as the CPU kernel. Kept across the group sum: n, gn,
    // silu(z) and y silu'(z). The weights are read again per row (from L1) rather than held
    // in registers.
    float n[V], gn[V], silu[V], ydsilu[V];
    load_weights<V>(w, c, gn);
    float dot = 0;
#pragma unroll
    for (int k = 0; k < V; ++k) {
      const float zk = static_cast<float>(cur.z.v[k]), yk = static_cast<float>(cur.y.v[k]);
      const float sk = math::sigmoid_fast(zk), go = static_cast<float>(cur.g.v[k]);
      n[k] = yk * zk * sk * cur.inv;
      if (on) dw_acc[k] += go * n[k];
      gn[k] *= go;
      dot += gn[k] * n[k];
      silu[k] = zk * sk;
      ydsilu[k] = yk * math::silu_grad(zk, sk);
    }
    const float mean = group_sum(on ? dot : 0.0f, part, s.tpg) / static_cast<float>(s.gs);
    if (on) {
#pragma unroll
      for (int k = 0; k < V; ++k) {
        const float dv = cur.inv * (gn[k] - n[k] * mean);
        silu[k] *= dv;    // dy
        ydsilu[k] *= dv;  // dz
      }
      if (dy) store_vec<T, V>(dy + r * D + c, silu);
      if (dz) store_vec<T, V>(dz + r * D + c, ydsilu);
    }
    if constexpr (kPrefetch) cur = next;
  }
  if (dw_part && has_slot) {
    float* dst = dw_part + (static_cast<int64_t>(blockIdx.x) * s.rpb + slot) * D + c;
#pragma unroll
    for (int q = 0; q < V; q += 4) {
      Vec<float, 4> a;
#pragma unroll
      for (int k = 0; k < 4; ++k) a.v[k] = dw_acc[q + k];
      *reinterpret_cast<Vec<float, 4>*>(dst + q) = a;
    }
  }
}

// ---- the weight gradient: partial rows summed in a fixed order ----

// out[i] = sum over b of part[b, i]. A block takes kSumCols channels; its kSumLanes thread
// rows sum the partial rows b = l, l + kSumLanes, ... in order, then the kSumLanes sums are
// added in lane order. The order depends on nparts only: reproducible bit for bit.
constexpr int kSumCols = 32, kSumLanes = 16;

template <typename A>
__global__ void __launch_bounds__(kSumCols* kSumLanes)
    sum_partials_kernel(const A* __restrict__ part, A* __restrict__ out, int64_t nparts, int64_t D) {
  __shared__ A acc[kSumLanes][kSumCols + 1];
  const int col = threadIdx.x % kSumCols, lane = threadIdx.x / kSumCols;
  const int64_t i = static_cast<int64_t>(blockIdx.x) * kSumCols + col;
  A s = 0;
  if (i < D) {
#pragma unroll 8
    for (int64_t b = lane; b < nparts; b += kSumLanes) s += part[b * D + i];
  }
  acc[lane][col] = s;
  __syncthreads();
  if (lane == 0 && i < D) {
    A total = acc[0][col];
    for (int l = 1; l < kSumLanes; ++l) total += acc[l][col];
    out[i] = total;
  }
}

template <typename A>
void sum_partials(const A* part, A* out, int64_t nparts, int64_t D, cudaStream_t stream) {
  const int64_t blocks = (D + kSumCols - 1) / kSumCols;
  SSMT_CHECK(blocks <= 0x7fffffff, "gated_rms_norm (CUDA): ", D, " channels are too many");
  sum_partials_kernel<A><<<static_cast<unsigned>(blocks), kSumCols * kSumLanes, 0, stream>>>(part, out, nparts, D);
  CUDA_CHECK_LAUNCH();
}

// ---- dispatch ----

template <typename F>
void with_types(DType dtype, F&& f) {
  switch (dtype) {
    case DType::bf16: f(bf16{}, float{}); break;
    case DType::f32: f(float{}, float{}); break;
    case DType::f64: f(double{}, double{}); break;
    default: SSMT_CHECK(false, "gated_rms_norm (CUDA): unsupported dtype ", dtype_name(dtype));
  }
}

// The vector path's geometry for p, or tpr = 0 when p needs the generic path. `ptrs`: the
// operands accessed as 16-byte vectors (nulls are skipped).
template <typename T>
VecShape vec_shape(const GatedNormParams& p, std::initializer_list<const void*> ptrs) {
  VecShape s;
  if constexpr (std::is_same_v<T, double>) {
    return s;
  } else {
    constexpr int V = 16 / sizeof(T);
    if (p.D % V != 0 || p.group_size % V != 0 || p.D / V > 1024) return s;
    if (p.y_stride % V != 0 || p.z_stride % V != 0) return s;
    for (const void* q : ptrs)
      if (q && !aligned_to(q, 16)) return s;
    s.tpr = static_cast<int>(p.D / V);
    s.tpg = static_cast<int>(p.group_size / V);
    s.rpb = std::max(1, kVecRowThreads / s.tpr);
    s.threads = (s.rpb * s.tpr + 31) / 32 * 32;
    s.G = static_cast<int>(p.D / p.group_size);
    s.gs = p.group_size;
    return s;
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
    const VecShape s = vec_shape<T>(p, {p.y, p.z, p.w, p.out});
    if constexpr (!std::is_same_v<T, double>) {
      if (s.tpr > 0) {
        const unsigned blocks = static_cast<unsigned>((p.rows + s.rpb - 1) / s.rpb);
        auto launch = [&](auto kernel) {
          kernel<<<blocks, s.threads, 0, stream>>>(static_cast<const T*>(p.y), p.y_stride,
                                                   static_cast<const T*>(p.z), p.z_stride,
                                                   static_cast<const float*>(p.w), static_cast<T*>(p.out),
                                                   static_cast<float*>(p.rstd), p.rows, s, static_cast<float>(p.eps));
        };
        if (s.threads <= 512)
          launch(gated_norm_fwd_vec_kernel<T, 512>);
        else
          launch(gated_norm_fwd_vec_kernel<T, 1024>);
        CUDA_CHECK_LAUNCH();
        return;
      }
    }
    gated_norm_fwd_kernel<T, A><<<static_cast<unsigned>(p.rows), kThreads, 0, stream>>>(
        static_cast<const T*>(p.y), p.y_stride, static_cast<const T*>(p.z), p.z_stride, static_cast<const A*>(p.w),
        static_cast<T*>(p.out), static_cast<A*>(p.rstd), p.D, p.group_size, static_cast<A>(p.eps));
    CUDA_CHECK_LAUNCH();
  });
}

void gated_norm_bwd_cuda(const GatedNormParams& p, int device) {
  if (p.D == 0) return;
  cuda_detail::DeviceGuard guard(device);
  auto stream = static_cast<cudaStream_t>(cuda::compute_stream(device));
  with_types(p.dtype, [&](auto t, auto a) {
    using T = decltype(t);
    using A = decltype(a);
    if (p.rows == 0) {  // no rows: the weight gradient is an empty sum
      if (p.dw) CUDA_CHECK(cudaMemsetAsync(p.dw, 0, sizeof(A) * static_cast<size_t>(p.D), stream));
      return;
    }
    const VecShape s = vec_shape<T>(p, {p.y, p.z, p.w, p.dout, p.dy, p.dz});
    if constexpr (!std::is_same_v<T, double>) {
      if (s.tpr > 0) {
        auto launch = [&](auto kernel) {
          int per_sm = 0;
          CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, s.threads, 0));
          const int64_t wave = static_cast<int64_t>(cuda_detail::device_context(device).sm_count) * std::max(per_sm, 1);
          const int64_t blocks = std::min<int64_t>(wave, (p.rows + s.rpb - 1) / s.rpb);
          const int64_t nparts = blocks * s.rpb;
          Tensor part = p.dw ? Tensor::empty({nparts, p.D}, DType::f32, Device::cuda(device)) : Tensor();
          kernel<<<static_cast<unsigned>(blocks), s.threads, 0, stream>>>(
              static_cast<const T*>(p.y), p.y_stride, static_cast<const T*>(p.z), p.z_stride,
              static_cast<const float*>(p.w), static_cast<const float*>(p.rstd), static_cast<const T*>(p.dout),
              static_cast<T*>(p.dy), static_cast<T*>(p.dz), p.dw ? part.data<float>() : nullptr, p.rows, s);
          CUDA_CHECK_LAUNCH();
          if (p.dw) sum_partials<float>(part.data<float>(), static_cast<float*>(p.dw), nparts, p.D, stream);
        };
        if (s.threads <= 256)
          launch(gated_norm_bwd_vec_kernel<T, 256, 3>);
        else if (s.threads <= 512)
          launch(gated_norm_bwd_vec_kernel<T, 512, 1>);
        else
          launch(gated_norm_bwd_vec_kernel<T, 1024, 1>);
        return;
      }
    }
    const int64_t nblk = (p.rows + kRowsPerBlock - 1) / kRowsPerBlock;
    SSMT_CHECK(nblk <= 0x7fffffff, "gated_rms_norm (CUDA): too many rows (", p.rows, ")");
    const size_t smem = p.dw ? sizeof(A) * static_cast<size_t>(p.D) : 0;
    SSMT_CHECK(smem <= 160 * 1024, "gated_rms_norm (CUDA): ", p.D, " channels are too many for the weight gradient");
    auto kernel = gated_norm_bwd_kernel<T, A>;
    CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem)));
    Tensor part = p.dw ? Tensor::empty({nblk, p.D}, dtype_of<A>::value, Device::cuda(device)) : Tensor();
    kernel<<<static_cast<unsigned>(nblk), kThreads, smem, stream>>>(
        static_cast<const T*>(p.y), p.y_stride, static_cast<const T*>(p.z), p.z_stride, static_cast<const A*>(p.w),
        static_cast<const A*>(p.rstd), static_cast<const T*>(p.dout), static_cast<T*>(p.dy), static_cast<T*>(p.dz),
        p.dw ? part.data<A>() : nullptr, p.rows, p.D, p.group_size);
    CUDA_CHECK_LAUNCH();
    if (p.dw) sum_partials<A>(part.data<A>(), static_cast<A*>(p.dw), nblk, p.D, stream);
  });
}

}  // namespace ssmtrain
