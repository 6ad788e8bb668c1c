// MoE routing on CUDA (moe_routing.h): the same results as the CPU kernels, bit for bit for
// the routing (integer counts) and the dispatch (copies); combine and the backward
// accumulate in the compute dtype in a fixed order.
//
// Routing, in three kernels, no host read and no float atomics:
//  1. route_hist: grid (chunks of kChunk tokens, choice j). Each thread finds its token's
//     j-th best expert (a selection over the row, ties to the lower index; choices < j are
//     recomputed the same way, so every block agrees), writes it, and counts it into the
//     block's histogram (shared int atomics: the counts are exact whatever the order).
//  2. route_scan: one block, one thread per expert. It turns the histograms into exclusive
//     offsets in place, in the routing order (choice-major, then chunk), and finishes the
//     first-choice counts and the usage accumulator (thread 0 sums the drops in expert order).
//  3. route_slot: grid as in 1. Each assignment's position = its chunk's offset for its
//     expert + the number of earlier assignments of the same expert in the chunk (a count
//     over the chunk's experts in shared memory); kept below the capacity.
// Dispatch and combine: one block per token (or per assignment), threads over channels.
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>

#include "core/backend.h"
#include "core/cuda/device.cuh"
#include "core/dtype.h"
#include "ssm/kernels/moe_routing.h"

namespace ssmtrain {

namespace {

#define MOE_CUDA_CHECK(expr)                                                                                   \
  do {                                                                                                         \
    cudaError_t e_ = (expr);                                                                                   \
    if (e_ != cudaSuccess)                                                                                     \
      throw InternalError(detail::concat(__FILE__, ":", __LINE__, ": ", #expr, ": ", cudaGetErrorString(e_))); \
  } while (0)

constexpr int kChunk = 256;    // tokens per routing block
constexpr int kThreads = 256;  // threads of the dispatch and combine blocks

// The j-th best expert of a row (ties: lower index), as the CPU's selection.
template <typename P>
__device__ int select_expert(const P* row, int E, int j) {
  int chosen[8];  // j < 8 (checked by the launcher)
  int best = -1;
  for (int i = 0; i <= j; ++i) {
    best = -1;
    for (int e = 0; e < E; ++e) {
      bool taken = false;
      for (int q = 0; q < i; ++q) taken = taken || chosen[q] == e;
      if (!taken && (best < 0 || row[e] > row[best])) best = e;
    }
    chosen[i] = best;
  }
  return best;
}

template <typename P>
__global__ void route_hist_kernel(const P* probs, int T, int E, int K, long long* expert, int* hist, int chunks) {
  extern __shared__ int counts[];  // (E)
  const int c = blockIdx.x, j = blockIdx.y;
  for (int e = threadIdx.x; e < E; e += blockDim.x) counts[e] = 0;
  __syncthreads();
  const int t = c * kChunk + threadIdx.x;
  if (t < T) {
    const int e = select_expert(probs + static_cast<long long>(t) * E, E, j);
    expert[static_cast<long long>(t) * K + j] = e;
    atomicAdd(&counts[e], 1);
  }
  __syncthreads();
  int* out = hist + (static_cast<long long>(j) * chunks + c) * E;
  for (int e = threadIdx.x; e < E; e += blockDim.x) out[e] = counts[e];
}

// hist (K, chunks, E) -> exclusive offsets in place; first_counts, counts, usage.
__global__ void route_scan_kernel(int* hist, int T, int E, int K, int chunks, long long capacity,
                                  long long* first_counts, long long* counts, double* usage) {
  extern __shared__ long long dropped[];  // (E)
  for (int e = threadIdx.x; e < E; e += blockDim.x) {
    long long running = 0;
    for (int j = 0; j < K; ++j) {
      for (int c = 0; c < chunks; ++c) {
        int* h = hist + (static_cast<long long>(j) * chunks + c) * E + e;
        const int n = *h;
        *h = static_cast<int>(running);
        running += n;
      }
      if (j == 0) first_counts[e] = running;
    }
    counts[e] = running;
    dropped[e] = running > capacity ? running - capacity : 0;
    if (usage) usage[e] += static_cast<double>(first_counts[e]);
  }
  __syncthreads();
  if (usage && threadIdx.x == 0) {
    long long total = 0;
    for (int e = 0; e < E; ++e) total += dropped[e];
    usage[E] += static_cast<double>(total);
    usage[E + 1] += static_cast<double>(static_cast<long long>(T) * K);
  }
}

__global__ void route_slot_kernel(const long long* expert, const int* offsets, int T, int E, int K, int chunks,
                                  long long capacity, long long* slot) {
  __shared__ int experts[kChunk];
  const int c = blockIdx.x, j = blockIdx.y;
  const int t = c * kChunk + threadIdx.x;
  const int e = t < T ? static_cast<int>(expert[static_cast<long long>(t) * K + j]) : -1;
  experts[threadIdx.x] = e;
  __syncthreads();
  if (t >= T) return;
  int rank = 0;
  for (int i = 0; i < static_cast<int>(threadIdx.x); ++i) rank += experts[i] == e ? 1 : 0;
  const long long pos = offsets[(static_cast<long long>(j) * chunks + c) * E + e] + rank;
  slot[static_cast<long long>(t) * K + j] = pos < capacity ? e * capacity + pos : -1;
}

// xd[slot[a]] = x[a / K] for the kept assignments a; W: the word copied (16 bytes when rows
// are aligned, else one element).
template <typename W>
__global__ void dispatch_fwd_kernel(const W* x, const long long* slot, W* xd, long long words_per_row, int K) {
  const long long a = blockIdx.x;
  const long long s = slot[a];
  if (s < 0) return;
  const W* src = x + (a / K) * words_per_row;
  W* dst = xd + s * words_per_row;
  for (long long i = threadIdx.x; i < words_per_row; i += blockDim.x) dst[i] = src[i];
}

template <typename T>
__global__ void dispatch_bwd_kernel(const T* dxd, const long long* slot, T* dx, int D, int K) {
  using Acc = acc_t<T>;
  const long long t = blockIdx.x;
  for (int d = threadIdx.x; d < D; d += blockDim.x) {
    Acc acc = 0;
    for (int j = 0; j < K; ++j) {
      const long long s = slot[t * K + j];
      if (s >= 0) acc += static_cast<Acc>(dxd[s * D + d]);
    }
    dx[t * D + d] = T(acc);
  }
}

template <typename T>
__global__ void combine_fwd_kernel(const T* yd, const long long* slot, const acc_t<T>* gate, T* y, int D, int K) {
  using Acc = acc_t<T>;
  const long long t = blockIdx.x;
  for (int d = threadIdx.x; d < D; d += blockDim.x) {
    Acc acc = 0;
    for (int j = 0; j < K; ++j) {
      const long long s = slot[t * K + j];
      if (s >= 0) acc += gate[t * K + j] * static_cast<Acc>(yd[s * D + d]);
    }
    y[t * D + d] = T(acc);
  }
}

// Sum over the block in a fixed tree (the same order on every run).
template <typename Acc>
__device__ Acc block_sum(Acc v, Acc* scratch) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_down_sync(0xffffffffu, v, o);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, warps = blockDim.x / 32;
  __syncthreads();  // scratch may still be read by the previous call
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  Acc total = 0;
  if (threadIdx.x == 0)
    for (int w = 0; w < warps; ++w) total += scratch[w];
  return total;  // valid in thread 0
}

// One block per assignment a = (t, j): dyd[slot] = gate * dy[t]; dgate = <dy[t], yd[slot]>.
template <typename T>
__global__ void combine_bwd_kernel(const T* yd, const long long* slot, const acc_t<T>* gate, const T* dy, T* dyd,
                                   acc_t<T>* dgate, int D, int K) {
  using Acc = acc_t<T>;
  __shared__ Acc scratch[kThreads / 32];
  const long long a = blockIdx.x;
  const long long s = slot[a];
  if (s < 0) {
    if (dgate && threadIdx.x == 0) dgate[a] = 0;
    return;
  }
  const long long t = a / K;
  const Acc g = gate[a];
  Acc dot = 0;
  for (int d = threadIdx.x; d < D; d += blockDim.x) {
    const Acc v = static_cast<Acc>(dy[t * D + d]);
    if (dgate) dot += v * static_cast<Acc>(yd[s * D + d]);
    if (dyd) dyd[s * D + d] = T(g * v);
  }
  if (dgate) {
    const Acc total = block_sum(dot, scratch);
    if (threadIdx.x == 0) dgate[a] = total;
  }
}

// The expert weights stacked with a cast, up to kStackChunk experts per launch (their
// pointers travel in the kernel's parameters, so nothing is copied to the device first).
constexpr int kStackChunk = 64;
struct StackPointers {
  const void* src[kStackChunk];
  void* dst[kStackChunk];
};

// gather: dst[0] is (experts, numel) and src[e] per expert; else the reverse. blockIdx.y
// is the expert within the chunk; each block converts a grid-stride range of its elements.
template <typename S, typename D>
__global__ void stack_kernel(StackPointers ptr, long long numel, bool gather) {
  const int e = blockIdx.y;
  const S* from = static_cast<const S*>(gather ? ptr.src[e] : ptr.src[0]) + (gather ? 0 : e * numel);
  D* to = gather ? static_cast<D*>(ptr.dst[0]) + e * numel : static_cast<D*>(ptr.dst[e]);
  if (!to) return;
  for (long long i = blockIdx.x * static_cast<long long>(blockDim.x) + threadIdx.x; i < numel;
       i += static_cast<long long>(gridDim.x) * blockDim.x)
    to[i] = D(static_cast<acc_t<S>>(from[i]));
}

cudaStream_t stream_of(int device) { return static_cast<cudaStream_t>(cuda::compute_stream(device)); }

template <typename P>
void route(const MoeRouteParams& p, int device) {
  cuda_detail::DeviceGuard guard(device);
  cudaStream_t stream = stream_of(device);
  const int T = static_cast<int>(p.T), E = static_cast<int>(p.E), K = static_cast<int>(p.K);
  const int chunks = std::max(1, (T + kChunk - 1) / kChunk);
  Tensor hist = Tensor::empty({static_cast<int64_t>(K) * chunks * E}, DType::i32, Device::cuda(device));
  const dim3 grid(static_cast<unsigned>(chunks), static_cast<unsigned>(K));
  const size_t hist_shared = sizeof(int) * static_cast<size_t>(E);
  route_hist_kernel<P><<<grid, kChunk, hist_shared, stream>>>(
      static_cast<const P*>(p.probs), T, E, K, reinterpret_cast<long long*>(p.expert), hist.data<int32_t>(), chunks);
  MOE_CUDA_CHECK(cudaGetLastError());
  const int scan_threads = std::min(1024, ((E + 31) / 32) * 32);
  route_scan_kernel<<<1, scan_threads, sizeof(long long) * static_cast<size_t>(E), stream>>>(
      hist.data<int32_t>(), T, E, K, chunks, p.capacity, reinterpret_cast<long long*>(p.first_counts),
      reinterpret_cast<long long*>(p.counts), p.usage);
  MOE_CUDA_CHECK(cudaGetLastError());
  if (T == 0) return;
  route_slot_kernel<<<grid, kChunk, 0, stream>>>(reinterpret_cast<const long long*>(p.expert), hist.data<int32_t>(), T,
                                                 E, K, chunks, p.capacity, reinterpret_cast<long long*>(p.slot));
  MOE_CUDA_CHECK(cudaGetLastError());
}

}  // namespace

void moe_route_cuda(const MoeRouteParams& p, int device) {
  SSMT_CHECK(p.K <= 8, "moe_route: k = ", p.K, " experts per token: the CUDA kernel takes at most 8");
  SSMT_CHECK(p.T < (int64_t{1} << 31) / std::max<int64_t>(p.K, 1) && p.E < (int64_t{1} << 20), "moe_route: ", p.T,
             " tokens x ", p.E, " experts: too large for the CUDA kernel");
  // hist_shared is E ints: E <= 12288 fits the 48 KiB default (and the scan's E i64 too).
  SSMT_CHECK(p.E <= 6144, "moe_route: ", p.E, " experts: the CUDA kernel takes at most 6144");
  if (p.dtype == DType::f64)
    route<double>(p, device);
  else
    route<float>(p, device);
}

namespace {
void launch_stack(const MoeStackParams& p, int device, bool gather) {
  if (p.E == 0 || p.numel == 0) return;
  cuda_detail::DeviceGuard guard(device);
  cudaStream_t stream = stream_of(device);
  const DType from = gather ? p.src_dtype : p.dst_dtype, to = gather ? p.dst_dtype : p.src_dtype;
  const unsigned blocks = static_cast<unsigned>(std::min<int64_t>((p.numel + kThreads - 1) / kThreads, 1024));
  for (int64_t e0 = 0; e0 < p.E; e0 += kStackChunk) {
    const int64_t n = std::min<int64_t>(kStackChunk, p.E - e0);
    StackPointers ptr{};
    for (int64_t i = 0; i < n; ++i) {
      if (gather) {
        ptr.src[i] = p.w[e0 + i];
      } else {
        ptr.dst[i] = p.dw[e0 + i];
      }
    }
    const size_t elem = dtype_size(p.dst_dtype);  // the stacked side, either way
    if (gather)
      ptr.dst[0] = static_cast<char*>(p.out) + elem * static_cast<size_t>(e0 * p.numel);
    else
      ptr.src[0] = static_cast<const char*>(p.dout) + elem * static_cast<size_t>(e0 * p.numel);
    SSMT_DISPATCH_FLOAT(from, "moe_stack_weights", [&] {
      using S = scalar_t;
      SSMT_DISPATCH_FLOAT(to, "moe_stack_weights", [&] {
        stack_kernel<S, scalar_t>
            <<<dim3(blocks, static_cast<unsigned>(n)), kThreads, 0, stream>>>(ptr, p.numel, gather);
      });
    });
    MOE_CUDA_CHECK(cudaGetLastError());
  }
}
}  // namespace

void moe_stack_fwd_cuda(const MoeStackParams& p, int device) { launch_stack(p, device, true); }
void moe_stack_bwd_cuda(const MoeStackParams& p, int device) { launch_stack(p, device, false); }

void moe_dispatch_fwd_cuda(const MoeDispatchParams& p, int device) {
  cuda_detail::DeviceGuard guard(device);
  cudaStream_t stream = stream_of(device);
  const size_t elem = dtype_size(p.dtype);
  MOE_CUDA_CHECK(cudaMemsetAsync(p.xd, 0, elem * static_cast<size_t>(p.rows * p.D), stream));
  const long long assignments = p.T * p.K;
  if (assignments == 0 || p.D == 0) return;
  const size_t row_bytes = elem * static_cast<size_t>(p.D);
  const bool aligned =
      row_bytes % 16 == 0 && reinterpret_cast<uintptr_t>(p.x) % 16 == 0 && reinterpret_cast<uintptr_t>(p.xd) % 16 == 0;
  const auto* slot = reinterpret_cast<const long long*>(p.slot);
  if (aligned) {
    dispatch_fwd_kernel<uint4><<<static_cast<unsigned>(assignments), kThreads, 0, stream>>>(
        static_cast<const uint4*>(p.x), slot, static_cast<uint4*>(p.xd), static_cast<long long>(row_bytes / 16),
        static_cast<int>(p.K));
  } else {
    SSMT_DISPATCH_FLOAT(p.dtype, "moe_dispatch", [&] {
      dispatch_fwd_kernel<scalar_t><<<static_cast<unsigned>(assignments), kThreads, 0, stream>>>(
          static_cast<const scalar_t*>(p.x), slot, static_cast<scalar_t*>(p.xd), static_cast<long long>(p.D),
          static_cast<int>(p.K));
    });
  }
  MOE_CUDA_CHECK(cudaGetLastError());
}

void moe_dispatch_bwd_cuda(const MoeDispatchParams& p, int device) {
  if (!p.dx || p.T == 0 || p.D == 0) return;
  cuda_detail::DeviceGuard guard(device);
  cudaStream_t stream = stream_of(device);
  SSMT_DISPATCH_FLOAT(p.dtype, "moe_dispatch", [&] {
    dispatch_bwd_kernel<scalar_t><<<static_cast<unsigned>(p.T), kThreads, 0, stream>>>(
        static_cast<const scalar_t*>(p.dxd), reinterpret_cast<const long long*>(p.slot), static_cast<scalar_t*>(p.dx),
        static_cast<int>(p.D), static_cast<int>(p.K));
  });
  MOE_CUDA_CHECK(cudaGetLastError());
}

void moe_combine_fwd_cuda(const MoeCombineParams& p, int device) {
  if (p.T == 0 || p.D == 0) return;
  cuda_detail::DeviceGuard guard(device);
  cudaStream_t stream = stream_of(device);
  SSMT_DISPATCH_FLOAT(p.dtype, "moe_combine", [&] {
    using Acc = acc_t<scalar_t>;
    combine_fwd_kernel<scalar_t><<<static_cast<unsigned>(p.T), kThreads, 0, stream>>>(
        static_cast<const scalar_t*>(p.yd), reinterpret_cast<const long long*>(p.slot), static_cast<const Acc*>(p.gate),
        static_cast<scalar_t*>(p.y), static_cast<int>(p.D), static_cast<int>(p.K));
  });
  MOE_CUDA_CHECK(cudaGetLastError());
}

void moe_combine_bwd_cuda(const MoeCombineParams& p, int device) {
  cuda_detail::DeviceGuard guard(device);
  cudaStream_t stream = stream_of(device);
  const size_t elem = dtype_size(p.dtype);
  if (p.dyd) MOE_CUDA_CHECK(cudaMemsetAsync(p.dyd, 0, elem * static_cast<size_t>(p.rows * p.D), stream));
  if (p.T * p.K == 0) return;
  if (p.D == 0) {
    if (p.dgate)
      MOE_CUDA_CHECK(cudaMemsetAsync(
          p.dgate, 0, dtype_size(p.dtype == DType::f64 ? DType::f64 : DType::f32) * static_cast<size_t>(p.T * p.K),
          stream));
    return;
  }
  SSMT_CHECK(p.T * p.K < (int64_t{1} << 31) && p.K < 65536, "moe_combine: ", p.T, " x ", p.K,
             " assignments: too many for the CUDA kernel");
  SSMT_DISPATCH_FLOAT(p.dtype, "moe_combine", [&] {
    using Acc = acc_t<scalar_t>;
    combine_bwd_kernel<scalar_t><<<static_cast<unsigned>(p.T * p.K), kThreads, 0, stream>>>(
        static_cast<const scalar_t*>(p.yd), reinterpret_cast<const long long*>(p.slot), static_cast<const Acc*>(p.gate),
        static_cast<const scalar_t*>(p.dy), static_cast<scalar_t*>(p.dyd), static_cast<Acc*>(p.dgate),
        static_cast<int>(p.D), static_cast<int>(p.K));
  });
  MOE_CUDA_CHECK(cudaGetLastError());
}

}  // namespace ssmtrain
