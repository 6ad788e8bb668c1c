// The linear scan h_t = a_t h_{t-1} + b_t on CUDA, forward and backward (linear_scan.h).
//
// A block of 32 x 8 threads owns 32 channels of one batch row and walks the sequence in
// tiles of 32 steps, carrying the state from tile to tile:
//  1. the tile's (a, b) are staged in shared memory [32 steps][33] with coalesced loads
//     (channels are the contiguous axis);
//  2. each warp scans 4 of the 32 channels, one after another: lane j takes step j, an
//     inclusive warp scan (5 shuffle levels) composes the pairs, (A1, B1) then (A2, B2) =
//     (A1 A2, A2 B1 + B2), and h = A_prefix * carry + B_prefix; the carry becomes lane 31's
//     state (the carries live in registers, indexed by unrolled loops only);
//  3. the states go back to shared memory and out with coalesced stores.
// The backward runs the same scan over the tiles in reverse, lanes in reverse time, on
// (a_{t+1}, dh_t) (a_L = 0), giving lambda_t; da_t = lambda_t h_{t-1}, db_t = lambda_t and
// dh0 = a_0 lambda_0 are written in the store phase. Compute type: f32 for f32 and bf16,
// f64 for f64; the chunk length of the CPU kernel does not apply (every tile carries
// exactly). Parallelism is B * ceil(C / 32) blocks; each is sequential over L / 32 tiles.
#include <cuda_runtime.h>

#include <algorithm>

#include "core/backend.h"
#include "core/cuda/cuda_check.cuh"
#include "core/cuda/device.cuh"
#include "core/dtype.h"
#include "ssm/kernels/linear_scan.h"

namespace ssmtrain {

namespace {

constexpr int kTile = 32;       // steps per tile = lanes of a warp
constexpr int kChannels = 32;   // channels per block
constexpr int kWarps = 8;       // warps per block
constexpr int kPerWarp = kChannels / kWarps;

struct ScanArgs {
  long long B, L, C;
  const void* a;
  long long a_bs, a_ss;
  const void* b;  // forward input b, backward input dh
  long long b_bs, b_ss;
  const void* h0;  // (B, C) or null
  void* h;         // (B, L, C): forward output, backward input
  void* da;        // (B, L, C) or null
  void* db;        // (B, L, C) or null
  void* dh0;       // (B, C) or null
};

template <typename T> __device__ __forceinline__ acc_t<T> ld(const void* p, long long i) {
  return static_cast<acc_t<T>>(static_cast<const T*>(p)[i]);
}
template <typename T> __device__ __forceinline__ void st(void* p, long long i, acc_t<T> v) {
  static_cast<T*>(p)[i] = T(v);
}

// Inclusive scan over the lanes of the pairs (A, Bv) in lane order; then the states from
// `carry` (the state before lane 0). Returns this lane's state; carry becomes lane 31's.
template <typename Acc>
__device__ __forceinline__ Acc warp_scan_step(Acc A, Acc Bv, Acc& carry) {
  const int lane = threadIdx.x;
#pragma unroll
  for (int off = 1; off < 32; off <<= 1) {
    const Acc A_up = __shfl_up_sync(0xffffffffu, A, off), B_up = __shfl_up_sync(0xffffffffu, Bv, off);
    if (lane >= off) {
      Bv = A * B_up + Bv;
      A = A * A_up;
    }
  }
  const Acc state = A * carry + Bv;
  carry = __shfl_sync(0xffffffffu, state, 31);
  return state;
}

// Block (32, 8); grid B * ceil(C / 32), block x -> (channel block, batch row).
template <typename T>
__global__ void __launch_bounds__(kChannels * kWarps) scan_fwd_kernel(ScanArgs p) {
  using Acc = acc_t<T>;
  __shared__ Acc sa[kTile][kChannels + 1], sb[kTile][kChannels + 1];
  const long long cblocks = (p.C + kChannels - 1) / kChannels;
  const long long b = blockIdx.x / cblocks, c0 = (blockIdx.x % cblocks) * kChannels;
  const int tx = threadIdx.x, ty = threadIdx.y;
  Acc carry[kPerWarp];
#pragma unroll
  for (int j = 0; j < kPerWarp; ++j) {
    const long long c = c0 + ty + kWarps * j;
    carry[j] = (p.h0 && c < p.C) ? ld<T>(p.h0, b * p.C + c) : Acc(0);
  }
  for (long long t0 = 0; t0 < p.L; t0 += kTile) {
    for (int i = ty; i < kTile; i += kWarps) {
      const long long t = t0 + i, c = c0 + tx;
      const bool ok = t < p.L && c < p.C;
      sa[i][tx] = ok ? ld<T>(p.a, b * p.a_bs + t * p.a_ss + c) : Acc(0);
      sb[i][tx] = ok ? ld<T>(p.b, b * p.b_bs + t * p.b_ss + c) : Acc(0);
    }
    __syncthreads();
#pragma unroll
    for (int j = 0; j < kPerWarp; ++j) {
      const int cl = ty + kWarps * j;
      sb[tx][cl] = warp_scan_step<Acc>(sa[tx][cl], sb[tx][cl], carry[j]);
    }
    __syncthreads();
    for (int i = ty; i < kTile; i += kWarps) {
      const long long t = t0 + i, c = c0 + tx;
      if (t < p.L && c < p.C) st<T>(p.h, (b * p.L + t) * p.C + c, sb[i][tx]);
    }
    __syncthreads();  // the next tile overwrites sa, sb
  }
}

template <typename T>
__global__ void __launch_bounds__(kChannels * kWarps) scan_bwd_kernel(ScanArgs p) {
  using Acc = acc_t<T>;
  __shared__ Acc sa[kTile][kChannels + 1], sb[kTile][kChannels + 1];
  const long long cblocks = (p.C + kChannels - 1) / kChannels;
  const long long b = blockIdx.x / cblocks, c0 = (blockIdx.x % cblocks) * kChannels;
  const int tx = threadIdx.x, ty = threadIdx.y;
  Acc carry[kPerWarp];  // lambda after the tile (0 after the last step)
#pragma unroll
  for (int j = 0; j < kPerWarp; ++j) carry[j] = Acc(0);
  const long long ntiles = (p.L + kTile - 1) / kTile;
  for (long long tile = ntiles - 1; tile >= 0; --tile) {
    const long long t0 = tile * kTile;
    for (int i = ty; i < kTile; i += kWarps) {
      const long long t = t0 + i, c = c0 + tx;
      const bool ok = t < p.L && c < p.C;
      sa[i][tx] = (ok && t + 1 < p.L) ? ld<T>(p.a, b * p.a_bs + (t + 1) * p.a_ss + c) : Acc(0);
      sb[i][tx] = ok ? ld<T>(p.b, b * p.b_bs + t * p.b_ss + c) : Acc(0);
    }
    __syncthreads();
    // Lane j takes step 31 - j: lane order is reverse time. Steps past L hold (0, 0) and come
    // first, so they leave the zero carry unchanged.
#pragma unroll
    for (int j = 0; j < kPerWarp; ++j) {
      const int cl = ty + kWarps * j, i = kTile - 1 - tx;
      sb[i][cl] = warp_scan_step<Acc>(sa[i][cl], sb[i][cl], carry[j]);
    }
    __syncthreads();
    for (int i = ty; i < kTile; i += kWarps) {
      const long long t = t0 + i, c = c0 + tx;
      if (t >= p.L || c >= p.C) continue;
      const Acc lam = sb[i][tx];
      const long long idx = (b * p.L + t) * p.C + c;
      if (p.db) st<T>(p.db, idx, lam);
      if (p.da) {
        const Acc h_prev = t > 0 ? ld<T>(p.h, idx - p.C) : (p.h0 ? ld<T>(p.h0, b * p.C + c) : Acc(0));
        st<T>(p.da, idx, lam * h_prev);
      }
      if (p.dh0 && t == 0) st<T>(p.dh0, b * p.C + c, ld<T>(p.a, b * p.a_bs + c) * lam);
    }
    __syncthreads();
  }
}

ScanArgs make_args(const LinearScanParams& p) {
  ScanArgs a{};
  a.B = p.B, a.L = p.L, a.C = p.C;
  a.a = p.a.data, a.a_bs = p.a.batch_stride, a.a_ss = p.a.seq_stride;
  a.h0 = p.h0;
  a.h = p.h;
  a.da = p.da, a.db = p.db, a.dh0 = p.dh0;
  return a;
}

unsigned grid_of(const LinearScanParams& p) {
  const long long blocks = p.B * ((p.C + kChannels - 1) / kChannels);
  SSMT_CHECK(blocks < (1LL << 31), "linear_scan: B * ceil(C / 32) = ", blocks, " blocks exceed the CUDA grid");
  return static_cast<unsigned>(blocks);
}

template <typename Fn>
void dispatch_float(DType dt, Fn&& fn) {
  switch (dt) {
    case DType::f32: fn(float{}); break;
    case DType::bf16: fn(bf16{}); break;
    case DType::f64: fn(double{}); break;
    default:
      throw UserError(
          detail::concat("linear_scan: expected a floating dtype (f32, bf16, f64), got ", dtype_name(dt)));
  }
}

}  // namespace

void linear_scan_fwd_cuda(const LinearScanParams& p, int device) {
  if (p.B == 0 || p.L == 0 || p.C == 0) return;
  cuda_detail::DeviceGuard guard(device);
  auto stream = static_cast<cudaStream_t>(cuda::compute_stream(device));
  ScanArgs a = make_args(p);
  a.b = p.b.data, a.b_bs = p.b.batch_stride, a.b_ss = p.b.seq_stride;
  const unsigned grid = grid_of(p);
  dispatch_float(p.dtype, [&](auto t) {
    scan_fwd_kernel<decltype(t)><<<grid, dim3(kChannels, kWarps), 0, stream>>>(a);
    CUDA_CHECK_LAUNCH();
  });
}

void linear_scan_bwd_cuda(const LinearScanParams& p, int device) {
  if (p.B == 0 || p.C == 0) return;
  cuda_detail::DeviceGuard guard(device);
  auto stream = static_cast<cudaStream_t>(cuda::compute_stream(device));
  if (p.L == 0) {  // an empty sequence does not depend on h0
    if (p.dh0) CUDA_CHECK(cudaMemsetAsync(p.dh0, 0, dtype_size(p.dtype) * p.B * p.C, stream));
    return;
  }
  ScanArgs a = make_args(p);
  a.b = p.dh.data, a.b_bs = p.dh.batch_stride, a.b_ss = p.dh.seq_stride;
  const unsigned grid = grid_of(p);
  dispatch_float(p.dtype, [&](auto t) {
    scan_bwd_kernel<decltype(t)><<<grid, dim3(kChannels, kWarps), 0, stream>>>(a);
    CUDA_CHECK_LAUNCH();
  });
}

}  // namespace ssmtrain
