// Causal attention and rotary embeddings on CUDA (attention.h). Two attention paths.
//
// Tensor-core path (bf16, head dim D = 64 or 128, 16-byte aligned rows): FlashAttention-2.
//  - forward: a block of 4 warps owns 64 query rows of one (batch, head), each warp 16
//    rows. It loads its Q tile once (kept in registers as mma A fragments), then walks the
//    key tiles of 64 that its rows can see: S = Q K^T with mma.sync m16n8k16 (bf16
//    operands, fp32 accumulation), scaled into the exp2 domain and masked, online softmax
//    (running max and sum per row, the quad of 4 threads holding a row reduced by
//    shuffles), P rounded to bf16 and O += P V on tensor cores, with O rescaled whenever the
//    running max grows. O is divided by the row sum at the end and the log-sum-exp stored;
//    no L x L tile ever reaches global memory.
//  - backward, deterministic (no atomics): a small kernel computes Dsum = rowsum(dO o O);
//    the dK/dV kernel gives a block 64 keys of one (batch, kv head), walks the query tiles
//    of 32 that see them for every query head of the group (in order), recomputes
//    S^T = K Q^T and P^T = exp(S^T - lse) and accumulates dV += P^T dO and
//    dK += (P^T o (V dO^T - Dsum)) Q in registers; the dQ kernel gives a block 64 queries,
//    walks their key tiles of 32 and accumulates dQ += (P o (dO V^T - Dsum)) K. The scores
//    are recomputed twice (once per kernel): the price of writing every gradient element
//    from one thread, once.
//  - operand fragments are read from shared memory with 32-bit loads (row stride D + 8
//    elements: conflict-free for the quad layout); B operands that are needed
//    k-major (V in O += P V, dO and Q in the dK/dV products, K in dQ) are gathered from two
//    16-bit loads per register.
// Generic path (f32, f64, bf16 with other head dims or unaligned rows; D <= 256): the same
// tiling of keys (or queries) through shared memory, one warp per row, scalar arithmetic in
// the accumulation dtype (f64 for f64), dot products by warp shuffles in a fixed order.
// Both paths are reproducible bit for bit.
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <type_traits>

#include "core/backend.h"
#include "core/cuda/cuda_check.cuh"
#include "core/cuda/device.cuh"
#include "core/cuda/kernel_utils.cuh"
#include "core/dtype.h"
#include "core/error.h"
#include "core/tensor.h"
#include "ssm/kernels/attention.h"

namespace ssmtrain {

namespace {

using cuda_detail::aligned_to;
using cuda_detail::arith;
using cuda_detail::compute_t;

constexpr float kLog2e = 1.4426950408889634f;
constexpr float kLn2 = 0.6931471805599453f;

// Element (b, 0, head, 0) of a (B, L, heads, D) operand.
template <typename T>
__device__ __forceinline__ const T* head_base(const SeqView& s, int64_t b, int64_t head, int64_t D) {
  return static_cast<const T*>(s.data) + b * s.batch_stride + head * D;
}

__device__ __forceinline__ int64_t imin(int64_t a, int64_t b) { return a < b ? a : b; }
__device__ __forceinline__ int64_t imax(int64_t a, int64_t b) { return a > b ? a : b; }

template <typename A>
__device__ __forceinline__ A warp_sum(A v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

// ---------------------------------------------------------------------------------------
// rotary embedding: one thread per rotated pair (b, t, h, i), angles in double.

template <typename T, bool kBackward>
__global__ void rotary_kernel(RotaryParams p) {
  using A = compute_t<T>;
  const int64_t half = p.D / 2, n = p.B * p.L * p.H * half;
  for (int64_t idx = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; idx < n;
       idx += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t i = idx % half;
    int64_t r = idx / half;
    const int64_t h = r % p.H;
    r /= p.H;
    const int64_t t = r % p.L, b = r / p.L;
    const double a =
        static_cast<double>(p.offset + t) * pow(p.base, -2.0 * static_cast<double>(i) / static_cast<double>(p.D));
    double sd, cd;
    sincos(a, &sd, &cd);
    const A c = static_cast<A>(cd), s = kBackward ? -static_cast<A>(sd) : static_cast<A>(sd);
    const int64_t row = ((b * p.L + t) * p.H + h) * p.D;
    const T* in = kBackward ? static_cast<const T*>(p.dy) + row : head_base<T>(p.x, b, h, p.D) + t * p.x.seq_stride;
    T* out = static_cast<T*>(kBackward ? p.dx : p.y) + row;
    const A x1 = arith(in[i]), x2 = arith(in[i + half]);
    out[i] = T(x1 * c - x2 * s);
    out[i + half] = T(x2 * c + x1 * s);
  }
}

template <bool kBackward>
void rotary_launch(const RotaryParams& p, int device) {
  const int64_t n = p.B * p.L * p.H * (p.D / 2);
  if (n == 0) return;
  cuda_detail::DeviceGuard guard(device);
  auto stream = static_cast<cudaStream_t>(cuda::compute_stream(device));
  const int threads = 256;
  const int64_t wave = static_cast<int64_t>(cuda_detail::device_context(device).sm_count) * 8;
  const unsigned blocks = static_cast<unsigned>(std::min<int64_t>((n + threads - 1) / threads, wave));
  auto run = [&](auto tag) {
    using T = decltype(tag);
    rotary_kernel<T, kBackward><<<blocks, threads, 0, stream>>>(p);
    CUDA_CHECK_LAUNCH();
  };
  cuda_detail::with_float_type(p.dtype, "rotary_embedding", run);
}

// ---------------------------------------------------------------------------------------
// Dsum[b, h, i] = <dout_i, o_i> over the head's D channels: one warp per row.

template <typename T, typename A>
__global__ void dsum_kernel(const T* __restrict__ dout, const T* __restrict__ o, A* __restrict__ dsum, int64_t rows,
                            int64_t Lq, int64_t H, int64_t D) {
  const int64_t r = (static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) / 32;
  const int lane = threadIdx.x & 31;
  if (r >= rows) return;  // whole warps leave together
  A s = 0;
  for (int64_t d = lane; d < D; d += 32)
    s += static_cast<A>(arith(dout[r * D + d])) * static_cast<A>(arith(o[r * D + d]));
  s = warp_sum(s);
  // r = (b Lq + i) H + h in the (B, Lq, H, D) layout; Dsum is (B, H, Lq).
  const int64_t h = r % H, i = (r / H) % Lq, b = r / (H * Lq);
  if (lane == 0) dsum[(b * H + h) * Lq + i] = s;
}

// ---------------------------------------------------------------------------------------
// Generic path: a warp per row, lane l holding channels l, l + 32, ... (NPL = ceil(D / 32)).

constexpr int kGenWarps = 8;  // rows per block
constexpr int kGenTile = 32;  // rows of the other side staged in shared memory per step

template <typename T, int NPL>
__global__ void __launch_bounds__(kGenWarps * 32) attn_fwd_generic(AttentionParams p) {
  using A = compute_t<T>;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  T* sK = reinterpret_cast<T*>(smem_raw);
  T* sV = sK + kGenTile * p.D;
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int64_t b = blockIdx.z, h = blockIdx.y, i0 = static_cast<int64_t>(blockIdx.x) * kGenWarps;
  const int64_t i = i0 + warp, D = p.D, off = p.Lk - p.Lq, kh = h / (p.H / p.Hkv);
  const bool row_ok = i < p.Lq;
  const int32_t* doc = p.seq_idx ? p.seq_idx + b * p.Lk : nullptr;  // packed documents, or null
  const int32_t row_doc = doc && row_ok ? doc[i + off] : 0;
  const T* qrow = head_base<T>(p.q, b, h, D) + i * p.q.seq_stride;
  const T* kb = head_base<T>(p.k, b, kh, D);
  const T* vb = head_base<T>(p.v, b, kh, D);
  A q[NPL], acc[NPL];
#pragma unroll
  for (int c = 0; c < NPL; ++c) {
    const int64_t d = lane + 32 * c;
    q[c] = row_ok && d < D ? static_cast<A>(arith(qrow[d])) : A(0);
    acc[c] = 0;
  }
  const A scale = static_cast<A>(p.scale);
  A m = cuda_detail::neg_infinity<A>(), l = 0;
  const int64_t n_end = imin(p.Lk, i0 + kGenWarps + off);  // keys seen by the block's last row
  for (int64_t j0 = 0; j0 < n_end; j0 += kGenTile) {
    __syncthreads();
    for (int64_t e = threadIdx.x; e < kGenTile * D; e += blockDim.x) {
      const int64_t j = j0 + e / D, d = e % D;
      sK[e] = j < p.Lk ? kb[j * p.k.seq_stride + d] : T(0);
      sV[e] = j < p.Lk ? vb[j * p.v.seq_stride + d] : T(0);
    }
    __syncthreads();
    const int64_t jn = imin(kGenTile, n_end - j0);
    for (int64_t jj = 0; jj < jn; ++jj) {
      A s = 0;
#pragma unroll
      for (int c = 0; c < NPL; ++c)
        if (lane + 32 * c < D) s += q[c] * static_cast<A>(arith(sK[jj * D + lane + 32 * c]));
      s = warp_sum(s) * scale;
      if (!row_ok || j0 + jj > i + off || (doc && doc[j0 + jj] != row_doc)) continue;  // uniform over the warp
      const A m_new = m > s ? m : s, corr = cuda_detail::d_exp(m - m_new), e = cuda_detail::d_exp(s - m_new);
      l = l * corr + e;
#pragma unroll
      for (int c = 0; c < NPL; ++c)
        if (lane + 32 * c < D) acc[c] = acc[c] * corr + e * static_cast<A>(arith(sV[jj * D + lane + 32 * c]));
      m = m_new;
    }
  }
  if (!row_ok) return;
  T* orow = static_cast<T*>(p.o) + ((b * p.Lq + i) * p.H + h) * D;
#pragma unroll
  for (int c = 0; c < NPL; ++c)
    if (lane + 32 * c < D) orow[lane + 32 * c] = T(acc[c] / l);
  if (lane == 0) static_cast<A*>(p.lse)[(b * p.H + h) * p.Lq + i] = m + cuda_detail::d_log(l);
}

// dQ: a warp per query row, key tiles through shared memory.
template <typename T, int NPL>
__global__ void __launch_bounds__(kGenWarps * 32) attn_bwd_dq_generic(AttentionParams p, const compute_t<T>* dsum) {
  using A = compute_t<T>;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  T* sK = reinterpret_cast<T*>(smem_raw);
  T* sV = sK + kGenTile * p.D;
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int64_t b = blockIdx.z, h = blockIdx.y, i0 = static_cast<int64_t>(blockIdx.x) * kGenWarps;
  const int64_t i = i0 + warp, D = p.D, off = p.Lk - p.Lq, kh = h / (p.H / p.Hkv);
  const bool row_ok = i < p.Lq;
  const int32_t* doc = p.seq_idx ? p.seq_idx + b * p.Lk : nullptr;
  const int32_t row_doc = doc && row_ok ? doc[i + off] : 0;
  const T* qrow = head_base<T>(p.q, b, h, D) + i * p.q.seq_stride;
  const T* grow = static_cast<const T*>(p.dout) + ((b * p.Lq + i) * p.H + h) * D;
  const T* kb = head_base<T>(p.k, b, kh, D);
  const T* vb = head_base<T>(p.v, b, kh, D);
  A q[NPL], g[NPL], acc[NPL];
#pragma unroll
  for (int c = 0; c < NPL; ++c) {
    const int64_t d = lane + 32 * c;
    q[c] = row_ok && d < D ? static_cast<A>(arith(qrow[d])) : A(0);
    g[c] = row_ok && d < D ? static_cast<A>(arith(grow[d])) : A(0);
    acc[c] = 0;
  }
  const A scale = static_cast<A>(p.scale);
  const A lse = row_ok ? static_cast<const A*>(p.lse)[(b * p.H + h) * p.Lq + i] : A(0);
  const A ds_sum = row_ok ? dsum[(b * p.H + h) * p.Lq + i] : A(0);
  const int64_t n_end = imin(p.Lk, i0 + kGenWarps + off);
  for (int64_t j0 = 0; j0 < n_end; j0 += kGenTile) {
    __syncthreads();
    for (int64_t e = threadIdx.x; e < kGenTile * D; e += blockDim.x) {
      const int64_t j = j0 + e / D, d = e % D;
      sK[e] = j < p.Lk ? kb[j * p.k.seq_stride + d] : T(0);
      sV[e] = j < p.Lk ? vb[j * p.v.seq_stride + d] : T(0);
    }
    __syncthreads();
    const int64_t jn = imin(kGenTile, n_end - j0);
    for (int64_t jj = 0; jj < jn; ++jj) {
      A s = 0, dp = 0;
#pragma unroll
      for (int c = 0; c < NPL; ++c)
        if (lane + 32 * c < D) {
          s += q[c] * static_cast<A>(arith(sK[jj * D + lane + 32 * c]));
          dp += g[c] * static_cast<A>(arith(sV[jj * D + lane + 32 * c]));
        }
      s = warp_sum(s), dp = warp_sum(dp);
      if (!row_ok || j0 + jj > i + off || (doc && doc[j0 + jj] != row_doc)) continue;
      const A ds = cuda_detail::d_exp(s * scale - lse) * (dp - ds_sum);
#pragma unroll
      for (int c = 0; c < NPL; ++c)
        if (lane + 32 * c < D) acc[c] += ds * static_cast<A>(arith(sK[jj * D + lane + 32 * c]));
    }
  }
  if (!row_ok) return;
  T* out = static_cast<T*>(p.dq) + ((b * p.Lq + i) * p.H + h) * D;
#pragma unroll
  for (int c = 0; c < NPL; ++c)
    if (lane + 32 * c < D) out[lane + 32 * c] = T(scale * acc[c]);
}

// dK, dV: a warp per key row; for every query head of the group in order, query tiles
// (with their lse and Dsum) through shared memory.
template <typename T, int NPL>
__global__ void __launch_bounds__(kGenWarps * 32) attn_bwd_dkv_generic(AttentionParams p, const compute_t<T>* dsum) {
  using A = compute_t<T>;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  A* sL = reinterpret_cast<A*>(smem_raw);
  A* sD = sL + kGenTile;
  T* sQ = reinterpret_cast<T*>(sD + kGenTile);
  T* sG = sQ + kGenTile * p.D;
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int64_t b = blockIdx.z, kh = blockIdx.y, j0 = static_cast<int64_t>(blockIdx.x) * kGenWarps;
  const int64_t j = j0 + warp, D = p.D, off = p.Lk - p.Lq, group = p.H / p.Hkv;
  const bool row_ok = j < p.Lk;
  const int32_t* doc = p.seq_idx ? p.seq_idx + b * p.Lk : nullptr;
  const int32_t key_doc = doc && row_ok ? doc[j] : 0;
  const T* krow = head_base<T>(p.k, b, kh, D) + j * p.k.seq_stride;
  const T* vrow = head_base<T>(p.v, b, kh, D) + j * p.v.seq_stride;
  A k[NPL], v[NPL], dk[NPL], dv[NPL];
#pragma unroll
  for (int c = 0; c < NPL; ++c) {
    const int64_t d = lane + 32 * c;
    k[c] = row_ok && d < D ? static_cast<A>(arith(krow[d])) : A(0);
    v[c] = row_ok && d < D ? static_cast<A>(arith(vrow[d])) : A(0);
    dk[c] = dv[c] = 0;
  }
  const A scale = static_cast<A>(p.scale);
  const int64_t i_first = imax(0, j0 - off);  // the first query that sees the block's first key
  for (int64_t h = kh * group; h < (kh + 1) * group; ++h) {
    const T* qb = head_base<T>(p.q, b, h, D);
    const T* gb = static_cast<const T*>(p.dout) + (b * p.Lq * p.H + h) * D;
    for (int64_t i0 = i_first; i0 < p.Lq; i0 += kGenTile) {
      __syncthreads();
      for (int64_t e = threadIdx.x; e < kGenTile * D; e += blockDim.x) {
        const int64_t i = i0 + e / D, d = e % D;
        sQ[e] = i < p.Lq ? qb[i * p.q.seq_stride + d] : T(0);
        sG[e] = i < p.Lq ? gb[i * p.H * D + d] : T(0);
      }
      for (int64_t e = threadIdx.x; e < kGenTile; e += blockDim.x) {
        const int64_t i = i0 + e;
        sL[e] = i < p.Lq ? static_cast<const A*>(p.lse)[(b * p.H + h) * p.Lq + i] : A(0);
        sD[e] = i < p.Lq ? dsum[(b * p.H + h) * p.Lq + i] : A(0);
      }
      __syncthreads();
      const int64_t in = imin(kGenTile, p.Lq - i0);
      for (int64_t ii = 0; ii < in; ++ii) {
        A s = 0, dp = 0;
#pragma unroll
        for (int c = 0; c < NPL; ++c)
          if (lane + 32 * c < D) {
            s += k[c] * static_cast<A>(arith(sQ[ii * D + lane + 32 * c]));
            dp += v[c] * static_cast<A>(arith(sG[ii * D + lane + 32 * c]));
          }
        s = warp_sum(s), dp = warp_sum(dp);
        if (!row_ok || j > i0 + ii + off || (doc && doc[i0 + ii + off] != key_doc)) continue;
        const A pr = cuda_detail::d_exp(s * scale - sL[ii]), ds = pr * (dp - sD[ii]);
#pragma unroll
        for (int c = 0; c < NPL; ++c)
          if (lane + 32 * c < D) {
            dv[c] += pr * static_cast<A>(arith(sG[ii * D + lane + 32 * c]));
            dk[c] += ds * static_cast<A>(arith(sQ[ii * D + lane + 32 * c]));
          }
      }
    }
  }
  if (!row_ok) return;
  const int64_t row = ((b * p.Lk + j) * p.Hkv + kh) * D;
#pragma unroll
  for (int c = 0; c < NPL; ++c)
    if (lane + 32 * c < D) {
      if (p.dk) static_cast<T*>(p.dk)[row + lane + 32 * c] = T(scale * dk[c]);
      if (p.dv) static_cast<T*>(p.dv)[row + lane + 32 * c] = T(dv[c]);
    }
}

// ---------------------------------------------------------------------------------------
// Tensor-core path (bf16, D = 64 or 128).
//
// mma.sync.m16n8k16 fragments (g = lane / 4, t = lane % 4; a 32-bit register holds two
// bf16, the lower index in the low half):
//   A (16 x 16, row-major): a0 = (g, 2t..2t+1), a1 = (g+8, 2t..), a2 = (g, 2t+8..), a3 = (g+8, 2t+8..)
//   B (16 x 8, k x n):      b0 = (k 2t..2t+1, n g), b1 = (k 2t+8..2t+9, n g)
//   C (16 x 8, fp32):       c0, c1 = (g, 2t), (g, 2t+1); c2, c3 = (g+8, 2t), (g+8, 2t+1)
// Two C tiles side by side (n = 16) are exactly the registers of one A fragment, so scores
// become the A operand of the next product without leaving registers.

namespace tc {

constexpr int kWarps = 4, kThreads = kWarps * 32;

__device__ __forceinline__ void mma(float (&c)[4], const uint32_t (&a)[4], const uint32_t (&b)[2]) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
      "{%0, %1, %2, %3};\n"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
}

__device__ __forceinline__ uint32_t pack(float lo, float hi) {
  const __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);  // .x (lo) at the lower address
  return *reinterpret_cast<const uint32_t*>(&v);
}
__device__ __forceinline__ uint32_t pack_bits(uint16_t lo, uint16_t hi) {
  return static_cast<uint32_t>(lo) | (static_cast<uint32_t>(hi) << 16);
}
__device__ __forceinline__ uint32_t lds32(const uint16_t* p) { return *reinterpret_cast<const uint32_t*>(p); }

// The A fragment at (r0, k0) of a row-major M[r][k] in shared memory, row stride ld.
__device__ __forceinline__ void load_a(uint32_t (&a)[4], const uint16_t* M, int ld, int r0, int k0) {
  const int lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
  const uint16_t* q = M + (r0 + g) * ld + k0 + 2 * t;
  a[0] = lds32(q), a[1] = lds32(q + 8 * ld), a[2] = lds32(q + 8), a[3] = lds32(q + 8 * ld + 8);
}
// The B fragment at (k0, n0) of an operand stored n-major, Mt[n][k] (k contiguous).
__device__ __forceinline__ void load_b(uint32_t (&b)[2], const uint16_t* Mt, int ld, int n0, int k0) {
  const int lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
  const uint16_t* q = Mt + (n0 + g) * ld + k0 + 2 * t;
  b[0] = lds32(q), b[1] = lds32(q + 8);
}
// The B fragment at (k0, n0) of an operand stored k-major, M[k][n] (n contiguous).
__device__ __forceinline__ void load_b_kmajor(uint32_t (&b)[2], const uint16_t* M, int ld, int k0, int n0) {
  const int lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
  const uint16_t* q = M + (k0 + 2 * t) * ld + n0 + g;
  b[0] = pack_bits(q[0], q[ld]), b[1] = pack_bits(q[8 * ld], q[9 * ld]);
}

// Rows [row0, row0 + R) of one head of a (B, L, heads, D) bf16 operand (base = element
// (b, 0, head, 0)) into shared memory with row stride D + 8; rows past L are zeros.
template <int R, int D>
__device__ __forceinline__ void load_tile(uint16_t* s, const bf16* base, int64_t seq_stride, int64_t row0, int64_t L) {
  constexpr int kVec = D / 8;  // 16-byte vectors per row
  for (int e = threadIdx.x; e < R * kVec; e += kThreads) {
    const int r = e / kVec, c = (e % kVec) * 8;
    uint4 v = make_uint4(0, 0, 0, 0);
    if (row0 + r < L) v = *reinterpret_cast<const uint4*>(base + (row0 + r) * seq_stride + c);
    *reinterpret_cast<uint4*>(s + r * (D + 8) + c) = v;
  }
}

// Stores the thread's two rows (r = 0: row g, r = 1: row g + 8) of a 16 x D fp32
// accumulator times `mul`, as bf16, at dst_row[r] (null: out of range).
template <int D>
__device__ __forceinline__ void store_rows(const float (&acc)[D / 8][4], bf16* dst_a, bf16* dst_b, float mul_a,
                                           float mul_b) {
  const int t = threadIdx.x & 3;
#pragma unroll
  for (int dn = 0; dn < D / 8; ++dn) {
    if (dst_a) *reinterpret_cast<uint32_t*>(dst_a + dn * 8 + 2 * t) = pack(acc[dn][0] * mul_a, acc[dn][1] * mul_a);
    if (dst_b) *reinterpret_cast<uint32_t*>(dst_b + dn * 8 + 2 * t) = pack(acc[dn][2] * mul_b, acc[dn][3] * mul_b);
  }
}

template <int D>
constexpr int smem_bytes() {
  return (2 * 64 + 2 * 32) * (D + 8) * 2 + 3 * 64 * 4;  // the largest of the three kernels
}

// The first key tile (of Bc) that can hold a key visible to position `pos` and later ones:
// 0, or with packed documents the tile of the first position of pos's document (documents
// are non-decreasing, so earlier keys belong to earlier documents). Uniform over the block.
template <int Bc>
__device__ __forceinline__ int64_t tile_start(const int32_t* doc, int64_t pos) {
  if (!doc) return 0;
  int64_t lo = 0, hi = pos;  // the first j with doc[j] == doc[pos], by bisection
  while (lo < hi) {
    const int64_t mid = (lo + hi) / 2;
    if (doc[mid] < doc[pos])
      lo = mid + 1;
    else
      hi = mid;
  }
  return lo / Bc * Bc;
}

// One past the last position of the document of position `key` (<= L).
__device__ __forceinline__ int64_t query_stop(const int32_t* doc, int64_t key, int64_t L) {
  int64_t lo = key + 1, hi = L;  // the first j > key with doc[j] > doc[key]
  while (lo < hi) {
    const int64_t mid = (lo + hi) / 2;
    if (doc[mid] <= doc[key])
      lo = mid + 1;
    else
      hi = mid;
  }
  return lo;
}

template <int D>
__global__ void __launch_bounds__(kThreads) fwd_kernel(AttentionParams p) {
  constexpr int Br = 64, Bc = 64, LD = D + 8, KT = D / 16, DT = D / 8, NT = Bc / 8;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  uint16_t* sQ = reinterpret_cast<uint16_t*>(smem_raw);
  uint16_t* sK = sQ + Br * LD;
  uint16_t* sV = sK + Bc * LD;
  int32_t* sDoc = reinterpret_cast<int32_t*>(sV + Bc * LD);  // (Bc) documents of the key tile
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
  const int64_t b = blockIdx.z, h = blockIdx.y, i0 = static_cast<int64_t>(blockIdx.x) * Br;
  const int64_t kh = h / (p.H / p.Hkv), off = p.Lk - p.Lq;
  const bf16* kb = head_base<bf16>(p.k, b, kh, D);
  const bf16* vb = head_base<bf16>(p.v, b, kh, D);
  const int32_t* doc = p.seq_idx ? p.seq_idx + b * p.Lk : nullptr;  // packed documents, or null
  load_tile<Br, D>(sQ, head_base<bf16>(p.q, b, h, D), p.q.seq_stride, i0, p.Lq);
  __syncthreads();
  uint32_t qf[KT][4];
#pragma unroll
  for (int kk = 0; kk < KT; ++kk) load_a(qf[kk], sQ, LD, warp * 16, kk * 16);
  float o[DT][4];
#pragma unroll
  for (int dn = 0; dn < DT; ++dn) o[dn][0] = o[dn][1] = o[dn][2] = o[dn][3] = 0.f;
  float m[2] = {-INFINITY, -INFINITY}, l[2] = {0.f, 0.f};
  const float sl2 = static_cast<float>(p.scale) * kLog2e;  // scores in the exp2 domain
  const int64_t row[2] = {i0 + warp * 16 + g, i0 + warp * 16 + g + 8};
  int32_t row_doc[2];
#pragma unroll
  for (int r = 0; r < 2; ++r) row_doc[r] = doc && row[r] < p.Lq ? doc[row[r] + off] : -1;
  const int64_t n_end = imin(p.Lk, i0 + Br + off);        // keys seen by the block's last row
  const int64_t unmasked_end = imin(p.Lk, i0 + off + 1);  // keys seen by every row of the block
  for (int64_t j0 = tile_start<Bc>(doc, i0 + off); j0 < n_end; j0 += Bc) {
    __syncthreads();  // the previous tiles are consumed
    load_tile<Bc, D>(sK, kb, p.k.seq_stride, j0, p.Lk);
    load_tile<Bc, D>(sV, vb, p.v.seq_stride, j0, p.Lk);
    if (doc)
      for (int e = threadIdx.x; e < Bc; e += kThreads) sDoc[e] = j0 + e < p.Lk ? doc[j0 + e] : -2;
    __syncthreads();
    float s[NT][4];
#pragma unroll
    for (int nt = 0; nt < NT; ++nt) {
      s[nt][0] = s[nt][1] = s[nt][2] = s[nt][3] = 0.f;
#pragma unroll
      for (int kk = 0; kk < KT; ++kk) {
        uint32_t bf[2];
        load_b(bf, sK, LD, nt * 8, kk * 16);
        mma(s[nt], qf[kk], bf);
      }
    }
    const bool masked = doc || j0 + Bc > unmasked_end;
#pragma unroll
    for (int nt = 0; nt < NT; ++nt)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        s[nt][e] *= sl2;
        if (masked) {
          const int jj = nt * 8 + 2 * t + (e & 1);
          const int64_t j = j0 + jj;
          if (j >= p.Lk || j > row[e >> 1] + off || (doc && sDoc[jj] != row_doc[e >> 1])) s[nt][e] = -INFINITY;
        }
      }
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      float mx = -INFINITY;
#pragma unroll
      for (int nt = 0; nt < NT; ++nt) mx = fmaxf(mx, fmaxf(s[nt][2 * r], s[nt][2 * r + 1]));
      mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
      mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
      const float m_new = fmaxf(m[r], mx);
      const float m_use = m_new == -INFINITY ? 0.f : m_new;  // a row with no visible key yet
      const float corr = exp2f(m[r] - m_use);
      m[r] = m_new;
      float rs = 0.f;
#pragma unroll
      for (int nt = 0; nt < NT; ++nt) {
        s[nt][2 * r] = exp2f(s[nt][2 * r] - m_use);
        s[nt][2 * r + 1] = exp2f(s[nt][2 * r + 1] - m_use);
        rs += s[nt][2 * r] + s[nt][2 * r + 1];
      }
      l[r] = l[r] * corr + rs;  // this thread's share of the row; the quad is summed at the end
#pragma unroll
      for (int dn = 0; dn < DT; ++dn) o[dn][2 * r] *= corr, o[dn][2 * r + 1] *= corr;
    }
#pragma unroll
    for (int kk = 0; kk < Bc / 16; ++kk) {
      const uint32_t a[4] = {pack(s[2 * kk][0], s[2 * kk][1]), pack(s[2 * kk][2], s[2 * kk][3]),
                             pack(s[2 * kk + 1][0], s[2 * kk + 1][1]), pack(s[2 * kk + 1][2], s[2 * kk + 1][3])};
#pragma unroll
      for (int dn = 0; dn < DT; ++dn) {
        uint32_t bf[2];
        load_b_kmajor(bf, sV, LD, kk * 16, dn * 8);
        mma(o[dn], a, bf);
      }
    }
  }
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    l[r] += __shfl_xor_sync(0xffffffffu, l[r], 1);
    l[r] += __shfl_xor_sync(0xffffffffu, l[r], 2);
  }
  bf16* out = static_cast<bf16*>(p.o);
  bf16* dst[2];
#pragma unroll
  for (int r = 0; r < 2; ++r) dst[r] = row[r] < p.Lq ? out + ((b * p.Lq + row[r]) * p.H + h) * D : nullptr;
  store_rows<D>(o, dst[0], dst[1], 1.f / l[0], 1.f / l[1]);
  if (t == 0) {
    float* lse = static_cast<float*>(p.lse);
#pragma unroll
    for (int r = 0; r < 2; ++r)
      if (row[r] < p.Lq) lse[(b * p.H + h) * p.Lq + row[r]] = (m[r] + log2f(l[r])) * kLn2;
  }
}

// dQ = scale (P o (dO V^T - Dsum)) K for 64 query rows of one (batch, head), key tiles of 32.
template <int D>
__global__ void __launch_bounds__(kThreads) bwd_dq_kernel(AttentionParams p, const float* __restrict__ dsum) {
  constexpr int Br = 64, Bc = 32, LD = D + 8, KT = D / 16, DT = D / 8, NT = Bc / 8;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  uint16_t* sQ = reinterpret_cast<uint16_t*>(smem_raw);
  uint16_t* sG = sQ + Br * LD;
  uint16_t* sK = sG + Br * LD;
  uint16_t* sV = sK + Bc * LD;
  int32_t* sDoc = reinterpret_cast<int32_t*>(sV + Bc * LD);  // (Bc) documents of the key tile
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
  const int64_t b = blockIdx.z, h = blockIdx.y, i0 = static_cast<int64_t>(blockIdx.x) * Br;
  const int64_t kh = h / (p.H / p.Hkv), off = p.Lk - p.Lq;
  const bf16* kb = head_base<bf16>(p.k, b, kh, D);
  const bf16* vb = head_base<bf16>(p.v, b, kh, D);
  const int32_t* doc = p.seq_idx ? p.seq_idx + b * p.Lk : nullptr;
  load_tile<Br, D>(sQ, head_base<bf16>(p.q, b, h, D), p.q.seq_stride, i0, p.Lq);
  load_tile<Br, D>(sG, static_cast<const bf16*>(p.dout) + (b * p.Lq * p.H + h) * D, p.H * D, i0, p.Lq);
  __syncthreads();
  uint32_t qf[KT][4], gf[KT][4];
#pragma unroll
  for (int kk = 0; kk < KT; ++kk)
    load_a(qf[kk], sQ, LD, warp * 16, kk * 16), load_a(gf[kk], sG, LD, warp * 16, kk * 16);
  const int64_t row[2] = {i0 + warp * 16 + g, i0 + warp * 16 + g + 8};
  float lse2[2], dsr[2];
  int32_t row_doc[2];
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    const bool ok = row[r] < p.Lq;
    row_doc[r] = doc && ok ? doc[row[r] + off] : -1;
    lse2[r] = ok ? static_cast<const float*>(p.lse)[(b * p.H + h) * p.Lq + row[r]] * kLog2e : INFINITY;
    dsr[r] = ok ? dsum[(b * p.H + h) * p.Lq + row[r]] : 0.f;
  }
  float dq[DT][4];
#pragma unroll
  for (int dn = 0; dn < DT; ++dn) dq[dn][0] = dq[dn][1] = dq[dn][2] = dq[dn][3] = 0.f;
  const float sl2 = static_cast<float>(p.scale) * kLog2e;
  const int64_t n_end = imin(p.Lk, i0 + Br + off);
  for (int64_t j0 = tile_start<Bc>(doc, i0 + off); j0 < n_end; j0 += Bc) {
    __syncthreads();
    load_tile<Bc, D>(sK, kb, p.k.seq_stride, j0, p.Lk);
    load_tile<Bc, D>(sV, vb, p.v.seq_stride, j0, p.Lk);
    if (doc)
      for (int e = threadIdx.x; e < Bc; e += kThreads) sDoc[e] = j0 + e < p.Lk ? doc[j0 + e] : -2;
    __syncthreads();
    float s[NT][4], dp[NT][4];
#pragma unroll
    for (int nt = 0; nt < NT; ++nt) {
      s[nt][0] = s[nt][1] = s[nt][2] = s[nt][3] = 0.f;
      dp[nt][0] = dp[nt][1] = dp[nt][2] = dp[nt][3] = 0.f;
#pragma unroll
      for (int kk = 0; kk < KT; ++kk) {
        uint32_t bf[2];
        load_b(bf, sK, LD, nt * 8, kk * 16);
        mma(s[nt], qf[kk], bf);
        load_b(bf, sV, LD, nt * 8, kk * 16);
        mma(dp[nt], gf[kk], bf);
      }
    }
#pragma unroll
    for (int nt = 0; nt < NT; ++nt)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int jj = nt * 8 + 2 * t + (e & 1);
        const int64_t j = j0 + jj;
        const int r = e >> 1;
        float pr = exp2f(s[nt][e] * sl2 - lse2[r]);
        if (j >= p.Lk || j > row[r] + off || (doc && sDoc[jj] != row_doc[r])) pr = 0.f;
        s[nt][e] = pr * (dp[nt][e] - dsr[r]);  // dS
      }
#pragma unroll
    for (int kk = 0; kk < Bc / 16; ++kk) {
      const uint32_t a[4] = {pack(s[2 * kk][0], s[2 * kk][1]), pack(s[2 * kk][2], s[2 * kk][3]),
                             pack(s[2 * kk + 1][0], s[2 * kk + 1][1]), pack(s[2 * kk + 1][2], s[2 * kk + 1][3])};
#pragma unroll
      for (int dn = 0; dn < DT; ++dn) {
        uint32_t bf[2];
        load_b_kmajor(bf, sK, LD, kk * 16, dn * 8);
        mma(dq[dn], a, bf);
      }
    }
  }
  bf16* out = static_cast<bf16*>(p.dq);
  bf16* dst[2];
#pragma unroll
  for (int r = 0; r < 2; ++r) dst[r] = row[r] < p.Lq ? out + ((b * p.Lq + row[r]) * p.H + h) * D : nullptr;
  const float sc = static_cast<float>(p.scale);
  store_rows<D>(dq, dst[0], dst[1], sc, sc);
}

// dK = scale dS^T Q and dV = P^T dO for 64 keys of one (batch, kv head), summed over the
// group's query heads and the query tiles of 32 that see the keys. Warp w owns keys
// [16 w, 16 w + 16) of the block and computes the transposed scores S^T = K Q^T directly.
template <int D>
__global__ void __launch_bounds__(kThreads) bwd_dkv_kernel(AttentionParams p, const float* __restrict__ dsum) {
  constexpr int Bc = 64, Br = 32, LD = D + 8, KT = D / 16, DT = D / 8, NT = Br / 8;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  uint16_t* sK = reinterpret_cast<uint16_t*>(smem_raw);
  uint16_t* sV = sK + Bc * LD;
  uint16_t* sQ = sV + Bc * LD;
  uint16_t* sG = sQ + Br * LD;
  float* sL = reinterpret_cast<float*>(sG + Br * LD);
  float* sD = sL + Br;
  int32_t* sDoc = reinterpret_cast<int32_t*>(sD + Br);  // (Br) documents of the query tile
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
  const int64_t b = blockIdx.z, kh = blockIdx.y, j0 = static_cast<int64_t>(blockIdx.x) * Bc;
  const int64_t off = p.Lk - p.Lq, group = p.H / p.Hkv;
  load_tile<Bc, D>(sK, head_base<bf16>(p.k, b, kh, D), p.k.seq_stride, j0, p.Lk);
  load_tile<Bc, D>(sV, head_base<bf16>(p.v, b, kh, D), p.v.seq_stride, j0, p.Lk);
  const int64_t key[2] = {j0 + warp * 16 + g, j0 + warp * 16 + g + 8};
  const int32_t* doc = p.seq_idx ? p.seq_idx + b * p.Lk : nullptr;
  int32_t key_doc[2];
#pragma unroll
  for (int r = 0; r < 2; ++r) key_doc[r] = doc && key[r] < p.Lk ? doc[key[r]] : -1;
  // With packed documents, no query past the last document of the block's keys sees them.
  const int64_t i_stop = doc ? query_stop(doc, imin(j0 + Bc, p.Lk) - 1, p.Lk) - off : p.Lq;
  float dk[DT][4], dv[DT][4];
#pragma unroll
  for (int dn = 0; dn < DT; ++dn)
#pragma unroll
    for (int e = 0; e < 4; ++e) dk[dn][e] = dv[dn][e] = 0.f;
  const float sl2 = static_cast<float>(p.scale) * kLog2e;
  const int64_t i_first = imax(0, j0 - off) / Br * Br;  // the first query tile that sees a key of the block
  for (int64_t h = kh * group; h < (kh + 1) * group; ++h) {
    const bf16* qb = head_base<bf16>(p.q, b, h, D);
    const bf16* gb = static_cast<const bf16*>(p.dout) + (b * p.Lq * p.H + h) * D;
    for (int64_t i0 = i_first; i0 < i_stop; i0 += Br) {
      __syncthreads();
      load_tile<Br, D>(sQ, qb, p.q.seq_stride, i0, p.Lq);
      load_tile<Br, D>(sG, gb, p.H * D, i0, p.Lq);
      for (int e = threadIdx.x; e < Br; e += kThreads) {
        const int64_t i = i0 + e;
        if (doc) sDoc[e] = i < p.Lq ? doc[i + off] : -2;
        // Queries past Lq get lse = +inf: their probabilities are exactly 0.
        sL[e] = i < p.Lq ? static_cast<const float*>(p.lse)[(b * p.H + h) * p.Lq + i] * kLog2e : INFINITY;
        sD[e] = i < p.Lq ? dsum[(b * p.H + h) * p.Lq + i] : 0.f;
      }
      __syncthreads();
      float s[NT][4], dp[NT][4];
#pragma unroll
      for (int nt = 0; nt < NT; ++nt)
#pragma unroll
        for (int e = 0; e < 4; ++e) s[nt][e] = dp[nt][e] = 0.f;
#pragma unroll
      for (int kk = 0; kk < KT; ++kk) {
        uint32_t ka[4], va[4];
        load_a(ka, sK, LD, warp * 16, kk * 16);
        load_a(va, sV, LD, warp * 16, kk * 16);
#pragma unroll
        for (int nt = 0; nt < NT; ++nt) {
          uint32_t bf[2];
          load_b(bf, sQ, LD, nt * 8, kk * 16);
          mma(s[nt], ka, bf);  // S^T = K Q^T
          load_b(bf, sG, LD, nt * 8, kk * 16);
          mma(dp[nt], va, bf);  // dP^T = V dO^T
        }
      }
#pragma unroll
      for (int nt = 0; nt < NT; ++nt)
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const int qi = nt * 8 + 2 * t + (e & 1);
          const int64_t j = key[e >> 1];
          float pr = exp2f(s[nt][e] * sl2 - sL[qi]);
          if (j >= p.Lk || j > i0 + qi + off || (doc && sDoc[qi] != key_doc[e >> 1])) pr = 0.f;
          s[nt][e] = pr;                          // P^T
          dp[nt][e] = pr * (dp[nt][e] - sD[qi]);  // dS^T
        }
#pragma unroll
      for (int kk = 0; kk < Br / 16; ++kk) {
        const uint32_t pa[4] = {pack(s[2 * kk][0], s[2 * kk][1]), pack(s[2 * kk][2], s[2 * kk][3]),
                                pack(s[2 * kk + 1][0], s[2 * kk + 1][1]), pack(s[2 * kk + 1][2], s[2 * kk + 1][3])};
        const uint32_t da[4] = {pack(dp[2 * kk][0], dp[2 * kk][1]), pack(dp[2 * kk][2], dp[2 * kk][3]),
                                pack(dp[2 * kk + 1][0], dp[2 * kk + 1][1]), pack(dp[2 * kk + 1][2], dp[2 * kk + 1][3])};
#pragma unroll
        for (int dn = 0; dn < DT; ++dn) {
          uint32_t bf[2];
          load_b_kmajor(bf, sG, LD, kk * 16, dn * 8);
          mma(dv[dn], pa, bf);
          load_b_kmajor(bf, sQ, LD, kk * 16, dn * 8);
          mma(dk[dn], da, bf);
        }
      }
    }
  }
  bf16* dst_k[2] = {nullptr, nullptr};
  bf16* dst_v[2] = {nullptr, nullptr};
#pragma unroll
  for (int r = 0; r < 2; ++r)
    if (key[r] < p.Lk) {
      const int64_t at = ((b * p.Lk + key[r]) * p.Hkv + kh) * D;
      if (p.dk) dst_k[r] = static_cast<bf16*>(p.dk) + at;
      if (p.dv) dst_v[r] = static_cast<bf16*>(p.dv) + at;
    }
  const float sc = static_cast<float>(p.scale);
  store_rows<D>(dk, dst_k[0], dst_k[1], sc, sc);
  store_rows<D>(dv, dst_v[0], dst_v[1], 1.f, 1.f);
}

}  // namespace tc

// ---------------------------------------------------------------------------------------
// dispatch

bool rows_aligned(const SeqView& s) {
  return aligned_to(s.data, 16) && s.batch_stride % 8 == 0 && s.seq_stride % 8 == 0;
}

// The tensor-core path takes p: bf16, D = 64 or 128, every operand's rows 16-byte aligned.
bool tensor_core_path(const AttentionParams& p, bool backward) {
  if (p.dtype != DType::bf16 || (p.D != 64 && p.D != 128)) return false;
  if (!rows_aligned(p.q) || !rows_aligned(p.k) || !rows_aligned(p.v) || !aligned_to(p.o, 16)) return false;
  if (backward)
    for (const void* q :
         {p.dout, static_cast<const void*>(p.dq), static_cast<const void*>(p.dk), static_cast<const void*>(p.dv)})
      if (q && !aligned_to(q, 16)) return false;
  return true;
}

void check_grid(const AttentionParams& p) {
  SSMT_CHECK(p.H <= 65535 && p.B <= 65535, "causal_attention (CUDA): at most 65535 heads and 65535 sequences, got ",
             p.H, " heads and ", p.B, " sequences");
}

template <typename Kernel>
void allow_smem(Kernel kernel, size_t bytes) {
  CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(bytes)));
}

// Calls f(T{}, std::integral_constant<int, NPL>{}) for the generic kernels of p.
template <typename F>
void with_generic(const AttentionParams& p, F&& f) {
  SSMT_CHECK(p.D <= 256, "causal_attention (CUDA): head dimension ", p.D,
             " is not supported (at most 256; bf16 with 64 or 128 runs on tensor cores)");
  auto by_width = [&](auto tag) {
    if (p.D <= 32)
      f(tag, std::integral_constant<int, 1>{});
    else if (p.D <= 64)
      f(tag, std::integral_constant<int, 2>{});
    else if (p.D <= 128)
      f(tag, std::integral_constant<int, 4>{});
    else
      f(tag, std::integral_constant<int, 8>{});
  };
  cuda_detail::with_float_type(p.dtype, "causal_attention", by_width);
}

unsigned tiles(int64_t n, int64_t tile) { return static_cast<unsigned>((n + tile - 1) / tile); }

}  // namespace

void attention_fwd_cuda(const AttentionParams& p, int device) {
  if (p.B == 0 || p.Lq == 0 || p.H == 0) return;
  check_grid(p);
  cuda_detail::DeviceGuard guard(device);
  auto stream = static_cast<cudaStream_t>(cuda::compute_stream(device));
  if (tensor_core_path(p, false)) {
    const dim3 grid(tiles(p.Lq, 64), static_cast<unsigned>(p.H), static_cast<unsigned>(p.B));
    auto launch = [&](auto kernel, size_t smem) {
      allow_smem(kernel, smem);
      kernel<<<grid, tc::kThreads, smem, stream>>>(p);
      CUDA_CHECK_LAUNCH();
    };
    if (p.D == 64)
      launch(tc::fwd_kernel<64>, tc::smem_bytes<64>());
    else
      launch(tc::fwd_kernel<128>, tc::smem_bytes<128>());
    return;
  }
  with_generic(p, [&](auto tag, auto npl) {
    using T = decltype(tag);
    auto kernel = attn_fwd_generic<T, decltype(npl)::value>;
    const size_t smem = 2 * kGenTile * static_cast<size_t>(p.D) * sizeof(T);
    allow_smem(kernel, smem);
    const dim3 grid(tiles(p.Lq, kGenWarps), static_cast<unsigned>(p.H), static_cast<unsigned>(p.B));
    kernel<<<grid, kGenWarps * 32, smem, stream>>>(p);
    CUDA_CHECK_LAUNCH();
  });
}

void attention_bwd_cuda(const AttentionParams& p, int device) {
  if (p.B == 0 || p.H == 0) return;
  check_grid(p);
  cuda_detail::DeviceGuard guard(device);
  auto stream = static_cast<cudaStream_t>(cuda::compute_stream(device));
  const bool tc_path = tensor_core_path(p, true);
  auto run = [&](auto tag) {
    using T = decltype(tag);
    using A = compute_t<T>;
    Tensor dsum = Tensor::empty({p.B, p.H, p.Lq}, dtype_of<A>::value, Device::cuda(device));
    const int64_t rows = p.B * p.Lq * p.H;
    if (rows > 0) {
      dsum_kernel<T, A><<<tiles(rows * 32, 256), 256, 0, stream>>>(
          static_cast<const T*>(p.dout), static_cast<const T*>(p.o), dsum.data<A>(), rows, p.Lq, p.H, p.D);
      CUDA_CHECK_LAUNCH();
    }
    const A* ds = dsum.data<A>();
    if constexpr (std::is_same_v<T, bf16>) {
      if (tc_path) {
        auto launch = [&](auto dq_kernel, auto dkv_kernel, size_t smem) {
          if (p.dq && p.Lq > 0) {
            allow_smem(dq_kernel, smem);
            const dim3 grid(tiles(p.Lq, 64), static_cast<unsigned>(p.H), static_cast<unsigned>(p.B));
            dq_kernel<<<grid, tc::kThreads, smem, stream>>>(p, ds);
            CUDA_CHECK_LAUNCH();
          }
          if ((p.dk || p.dv) && p.Lk > 0) {
            allow_smem(dkv_kernel, smem);
            const dim3 grid(tiles(p.Lk, 64), static_cast<unsigned>(p.Hkv), static_cast<unsigned>(p.B));
            dkv_kernel<<<grid, tc::kThreads, smem, stream>>>(p, ds);
            CUDA_CHECK_LAUNCH();
          }
        };
        if (p.D == 64)
          launch(tc::bwd_dq_kernel<64>, tc::bwd_dkv_kernel<64>, tc::smem_bytes<64>());
        else
          launch(tc::bwd_dq_kernel<128>, tc::bwd_dkv_kernel<128>, tc::smem_bytes<128>());
        return;
      }
    }
    with_generic(p, [&](auto, auto npl) {
      constexpr int NPL = decltype(npl)::value;
      if (p.dq && p.Lq > 0) {
        auto kernel = attn_bwd_dq_generic<T, NPL>;
        const size_t smem = 2 * kGenTile * static_cast<size_t>(p.D) * sizeof(T);
        allow_smem(kernel, smem);
        const dim3 grid(tiles(p.Lq, kGenWarps), static_cast<unsigned>(p.H), static_cast<unsigned>(p.B));
        kernel<<<grid, kGenWarps * 32, smem, stream>>>(p, ds);
        CUDA_CHECK_LAUNCH();
      }
      if ((p.dk || p.dv) && p.Lk > 0) {
        auto kernel = attn_bwd_dkv_generic<T, NPL>;
        const size_t smem = 2 * kGenTile * sizeof(A) + 2 * kGenTile * static_cast<size_t>(p.D) * sizeof(T);
        allow_smem(kernel, smem);
        const dim3 grid(tiles(p.Lk, kGenWarps), static_cast<unsigned>(p.Hkv), static_cast<unsigned>(p.B));
        kernel<<<grid, kGenWarps * 32, smem, stream>>>(p, ds);
        CUDA_CHECK_LAUNCH();
      }
    });
  };
  cuda_detail::with_float_type(p.dtype, "causal_attention", run);
}

void rotary_fwd_cuda(const RotaryParams& p, int device) { rotary_launch<false>(p, device); }
void rotary_bwd_cuda(const RotaryParams& p, int device) { rotary_launch<true>(p, device); }

}  // namespace ssmtrain
