// Fused chunked SSD on CUDA (bf16 inputs, tensor cores). See ssd_cuda.h for the interface
// and docs/perf_ssm.md for the measurements.
//
// Notation (per batch b, head h, chunk c of Q steps; g = h / (H / G)):
//   dt_s = softplus(dt_raw_s + bias), cs_l = sum_{k <= l} dt_k A (inside the chunk),
//   y_l  = sum_{s <= l} (C_l . B_s) e^{cs_l - cs_s} dt_s x_s + e^{cs_l} H_c C_l + D x_l,
//   H_{c+1} = e^{cs_last} H_c + sum_s e^{cs_last - cs_s} dt_s x_s B_s^T        (H: P x N).
// A chunk is processed in tiles of 64 steps ("rows"); Q is padded up to Qp = 64 * ceil(Q/64)
// with dt = 0 and zero inputs, and so is the tail past L: padded steps change nothing.
//
// Forward (5 launches): prep (dt, cs per chunk: one block scan), chunk states (X^T (w o B)
// per chunk on tensor cores), state passing (H_c entering every chunk, one thread per state
// element, sequential over chunks), the C B^T tiles per group (below), chunk scan (per
// 64-row tile of l: e^{cs} C H_c^T plus the masked (C B^T o decay o dt) x products over the
// tiles s <= l; the per-head Q x Q scores never leave the multiprocessor). Nothing is saved
// for the backward but the inputs.
//
// Backward: prep, chunk states and state passing again (the H_c), the chunk states of the
// output gradient (dS_c = sum_l e^{cs_l} dy_l C_l^T), the reverse state passing (G_c, the
// gradient of the state leaving chunk c), then two tile kernels: one per l-tile (dC and the
// row sums of dcs), one per s-tile (dB, dx, the x . d(dt x) term of ddt and the column sums
// of dcs); a last block scan per chunk turns dcs into ddt, dA and ddt_bias. dB and dC are
// summed over the heads of a block inside the tile kernels (d_state <= 128; per head above:
// heads_per_block); where a block holds a whole group they are final there, else kept in
// fp32 per such part and summed over the parts in a fixed order; dA, dD,
// ddt_bias per (batch, chunk) likewise: no float atomics, deterministic.
//
// Packed documents (seq_idx, ssd.h): every decay factor spanning a document boundary is 0.
// The kernels keep the document index of each row of a tile beside its cs in shared memory
// and compare: e^{cs_l - cs_s} needs doc_l == doc_s, the chunk-state weight of step s needs
// doc_s == doc_last, and e^{cs_l} (the entering state reaching step l, or the chunk's end)
// needs doc_l == doc_before (the step before the chunk; for the first chunk, step 0).
// Without seq_idx every index is 0 and the masks keep everything.
//
// Products: bf16 operands in shared memory, fp32 accumulators. The chunk scan and (up to
// d_state 128) the l- and s-tile backward use mma.sync m16n8k16 with the score tiles held in
// registers (masked, scaled and packed to bf16 A fragments there), and so do the chunk
// states (tiles staged by cp.async; chunk_state_mma_kernel); the tile backward above d_state
// 128 and the chunk states at headdim 128 with d_state 256 use WMMA 16x16x16.
// The mma.sync kernels take C_l B_s^T, which depends on the group and not the head, from
// f32 tiles computed once per (batch, chunk, group) by cb_tiles_kernel, in their accumulator
// layout (16 KB per 64 x 64 tile pair: 640 bytes per token and group at Q = 256, and as much
// again for the transpose in the backward), and stage their source or l-tiles by cp.async
// into two or three buffers, the next tile loading while the current one is multiplied; the
// entering states and G_c reach them in bf16, written by the state passes beside the f32
// states. The dC and dB kernels take two heads of a group per tile iteration at headdim 64
// and add their score tiles before the one product with the group's B_s or C_l. Operands
// that are scaled (w o B, the masked score tiles) are rounded to bf16 after the scaling, as
// the official kernels do; states and all sums stay fp32.
#include "ssm/kernels/ssd_cuda.h"

#include <cuda_bf16.h>
#include <cuda_runtime.h>
#include <mma.h>

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <tuple>
#include <type_traits>
#include <utility>

#include "core/backend.h"
#include "core/cuda/cuda_check.cuh"
#include "core/cuda/device.cuh"
#include "core/error.h"
#include "core/math.h"
#include "core/tensor.h"

namespace ssmtrain {

namespace {

namespace wmma = nvcuda::wmma;
using bf = __nv_bfloat16;

constexpr int kT = 64;         // rows of a tile
constexpr int kThreads = 256;  // 8 warps
constexpr int kWarps = kThreads / 32;

// Shared-memory row strides: bf16 rows padded by 8 elements, fp32 rows by 4 (16 bytes),
// which keeps every 16-row fragment 32-byte aligned and spreads the rows over the banks.
constexpr int ldb(int w) { return w + 8; }
constexpr int ldf(int w) { return w + 4; }
constexpr size_t round_up(size_t v) { return (v + 127) / 128 * 128; }
constexpr size_t bf_bytes(int rows, int w) { return round_up(sizeof(bf) * rows * ldb(w)); }
constexpr size_t f_bytes(int rows, int w) { return round_up(sizeof(float) * rows * ldf(w)); }
constexpr size_t cmax(size_t a, size_t b) { return a > b ? a : b; }
// Blocks of a kernel that fit on one multiprocessor by shared memory (228 KB, 1 KB reserved
// per block), capped at `most`: the kernels' minimum-blocks launch bound, so that the
// register budget never keeps out a block that shared memory would admit.
constexpr int smem_blocks(size_t bytes, int most) {
  const int fit = static_cast<int>((228 * 1024) / (bytes + 1024));
  return fit < 1 ? 1 : fit > most ? most : fit;
}


struct SsdDims {
  int B, L, H, P, G, N, Q, Qp, Qt, nc, hpg;  // hpg: heads per group
  int Pp, Np;                                // padded P and N of the state buffers
  int hb;  // heads per block of the dB/dC kernels (a divisor of hpg; 1 for the WMMA ones)
  int dx_row, dbc_row;                       // elements between (b, t) rows of dx and of dBm, dCm
};

// ---- warp-level tensor-core products ----

using Acc = wmma::fragment<wmma::accumulator, 16, 16, 16, float>;

// A warp's share of an R x W output: one 16-row strip and NF column fragments.
template <int R, int W>
struct WarpTile {
  static constexpr int kStrips = R / 16, kPerStrip = kWarps / kStrips, NF = W / 16 / kPerStrip;
  static_assert(kWarps % kStrips == 0 && (W / 16) % kPerStrip == 0, "warp tiling");
  int row0, col0;
  __device__ WarpTile() {
    const int w = threadIdx.x / 32;
    row0 = (w % kStrips) * 16;
    col0 = (w / kStrips) * NF * 16;
  }
};

template <int NF>
__device__ __forceinline__ void zero(Acc (&acc)[NF]) {
#pragma unroll
  for (int f = 0; f < NF; ++f) wmma::fill_fragment(acc[f], 0.f);
}

// acc[f] += A[row0 .. row0 + 16, 0 .. K) x B[0 .. K, col0 + 16 f .. + 16). A is row-major
// (element (r, k) at A[r * lda + k]) or col-major (at A[r + k * lda]); B likewise with
// (k, c) at B[k * ldb + c] (row) or B[k + c * ldb] (col).
template <int NF, int K, typename LA, typename LB>
__device__ __forceinline__ void mma(Acc (&acc)[NF], const bf* A, int lda, const bf* Bm, int ldbm, int row0, int col0) {
#pragma unroll 4
  for (int k = 0; k < K; k += 16) {
    wmma::fragment<wmma::matrix_a, 16, 16, 16, bf, LA> a;
    if constexpr (std::is_same_v<LA, wmma::row_major>) wmma::load_matrix_sync(a, A + row0 * lda + k, lda);
    else wmma::load_matrix_sync(a, A + row0 + k * lda, lda);
#pragma unroll
    for (int f = 0; f < NF; ++f) {
      wmma::fragment<wmma::matrix_b, 16, 16, 16, bf, LB> b;
      const int c = col0 + 16 * f;
      if constexpr (std::is_same_v<LB, wmma::row_major>) wmma::load_matrix_sync(b, Bm + k * ldbm + c, ldbm);
      else wmma::load_matrix_sync(b, Bm + k + c * ldbm, ldbm);
      wmma::mma_sync(acc[f], a, b, acc[f]);
    }
  }
}

template <int NF>
__device__ __forceinline__ void store(float* dst, int ld, const Acc (&acc)[NF], int row0, int col0) {
#pragma unroll
  for (int f = 0; f < NF; ++f) wmma::store_matrix_sync(dst + row0 * ld + col0 + 16 * f, acc[f], ld, wmma::mem_row_major);
}

// The two 64 x 64 score tiles of a backward tile pair, into shared f32: S1 = A1 B1^T (over
// the state, K = NP) and S2 = A2 B2^T (over the head, K = PP); all operands row-major tiles.
using WS = WarpTile<kT, kT>;
template <int PP, int NP>
__device__ __forceinline__ void score_tiles(float* sS1, const bf* A1, const bf* B1, float* sS2, const bf* A2,
                                            const bf* B2) {
  const WS ws;
  Acc s1[WS::NF], s2[WS::NF];
  zero(s1);
  zero(s2);
  mma<WS::NF, NP, wmma::row_major, wmma::col_major>(s1, A1, ldb(NP), B1, ldb(NP), ws.row0, ws.col0);
  mma<WS::NF, PP, wmma::row_major, wmma::col_major>(s2, A2, ldb(PP), B2, ldb(PP), ws.row0, ws.col0);
  store(sS1, ldf(kT), s1, ws.row0, ws.col0);
  store(sS2, ldf(kT), s2, ws.row0, ws.col0);
}

// ---- staging global -> shared ----

// dst[r][j] = scale(r) * src[r * stride + j] for r < rows, j < cols, zero elsewhere of the
// 64 x W tile (src: bf16 rows of a sequence tensor).
// Whether rows of src can be moved as 16-byte vectors of 8 elements (the same answer on
// every thread of a block).
__device__ __forceinline__ bool vector_rows(const bf* src, int64_t stride, int cols) {
  return cols % 8 == 0 && stride % 8 == 0 && (reinterpret_cast<uintptr_t>(src) & 15) == 0;
}

template <int W, typename Scale>
__device__ __forceinline__ void stage(bf* dst, const bf* src, int64_t stride, int rows, int cols, Scale scale) {
  if (vector_rows(src, stride, cols)) {
    for (int i = threadIdx.x; i < kT * W / 8; i += kThreads) {
      const int r = i / (W / 8), j = (i % (W / 8)) * 8;
      uint4 v = make_uint4(0, 0, 0, 0);
      if (r < rows && j < cols) {
        v = *reinterpret_cast<const uint4*>(src + r * stride + j);
        const float sc = scale(r);
        __nv_bfloat162* h = reinterpret_cast<__nv_bfloat162*>(&v);
#pragma unroll
        for (int k = 0; k < 4; ++k) {
          const float2 f = __bfloat1622float2(h[k]);
          h[k] = __floats2bfloat162_rn(f.x * sc, f.y * sc);
        }
      }
      *reinterpret_cast<uint4*>(dst + r * ldb(W) + j) = v;
    }
    return;
  }
  for (int i = threadIdx.x; i < kT * W; i += kThreads) {
    const int r = i / W, j = i % W;
    float v = 0.f;
    if (r < rows && j < cols) v = scale(r) * __bfloat162float(src[r * stride + j]);
    dst[r * ldb(W) + j] = __float2bfloat16(v);
  }
}
template <int W>
__device__ __forceinline__ void stage_raw(bf* dst, const bf* src, int64_t stride, int rows, int cols) {
  if (vector_rows(src, stride, cols)) {
    for (int i = threadIdx.x; i < kT * W / 8; i += kThreads) {
      const int r = i / (W / 8), j = (i % (W / 8)) * 8;
      const uint4 v = r < rows && j < cols ? *reinterpret_cast<const uint4*>(src + r * stride + j)
                                           : make_uint4(0, 0, 0, 0);
      *reinterpret_cast<uint4*>(dst + r * ldb(W) + j) = v;
    }
    return;
  }
  for (int i = threadIdx.x; i < kT * W; i += kThreads) {
    const int r = i / W, j = i % W;
    dst[r * ldb(W) + j] = r < rows && j < cols ? src[r * stride + j] : __float2bfloat16(0.f);
  }
}
// A padded (Pp x Np) fp32 state into a bf16 tile [Pp][ldb(Np)].
template <int PP, int NP>
__device__ __forceinline__ void stage_state(bf* dst, const float* src) {
  for (int i = threadIdx.x; i < PP * NP / 4; i += kThreads) {
    const float4 v = reinterpret_cast<const float4*>(src)[i];
    __nv_bfloat162* o = reinterpret_cast<__nv_bfloat162*>(dst + (4 * i / NP) * ldb(NP) + 4 * i % NP);
    o[0] = __floats2bfloat162_rn(v.x, v.y);
    o[1] = __floats2bfloat162_rn(v.z, v.w);
  }
}

// Where the tile `tile` of chunk c starts, and how many of its 64 rows are real steps.
struct TileRows {
  int t0, rows;
  __device__ TileRows(const SsdDims& d, int c, int tile) {
    t0 = c * d.Q + tile * kT;
    rows = max(0, min(min(kT, d.Q - tile * kT), d.L - t0));
  }
};

// Sum of 4 lanes (tid % 4 == 0..3 of one row), the same on all four, in a fixed order.
__device__ __forceinline__ float quad_sum(float v) {
  v += __shfl_xor_sync(0xffffffffu, v, 1);
  v += __shfl_xor_sync(0xffffffffu, v, 2);
  return v;
}

// ---- kernels ----

struct Ptrs {
  const bf *x, *dt, *Bm, *Cm, *dy;
  int64_t x_bs, x_ss, dt_bs, dt_ss, B_bs, B_ss, C_bs, C_ss, dy_bs, dy_ss;
  const float *A, *D, *dt_bias, *h0, *dh_last;
  const int32_t* seq;  // (B, L) document indices, or null
  bool softplus;
};

// The document of step pos of row b, pos clamped into [0, L): before the sequence is its
// first step, past it the last (0 for every step without seq_idx).
__device__ __forceinline__ int doc_at(const Ptrs& p, const SsdDims& d, int b, int pos) {
  return p.seq ? p.seq[static_cast<size_t>(b) * d.L + min(max(pos, 0), d.L - 1)] : 0;
}
// The documents of the step before chunk c and of its last step.
__device__ __forceinline__ int doc_before(const Ptrs& p, const SsdDims& d, int b, int c) {
  return doc_at(p, d, b, c * d.Q - 1);
}
__device__ __forceinline__ int doc_last(const Ptrs& p, const SsdDims& d, int b, int c) {
  return doc_at(p, d, b, c * d.Q + d.Q - 1);
}
// The chunk carries the state entering it to its end (no document starts inside it). For
// kernels instantiated with (kDocs: seq_idx given, both indices loaded without a branch) and
// without documents (always).
template <bool kDocs>
__device__ __forceinline__ bool chunk_carries(const Ptrs& p, const SsdDims& d, int b, int c) {
  if constexpr (!kDocs) {
    return true;
  } else {
    const int32_t* row = p.seq + static_cast<size_t>(b) * d.L;
    return row[max(c * d.Q - 1, 0)] == row[min(c * d.Q + d.Q - 1, d.L - 1)];
  }
}
// The tile kernels come in two instantiations: kDocs (with seq_idx) compares document
// indices, the plain one compiles the comparisons away (the index arrays are not loaded).
template <bool kDocs>
__device__ __forceinline__ bool same_doc(int a, int b) {
  return !kDocs || a == b;
}
// doc[r] for the kT rows of a tile (rows past the chunk's steps: its last step's document).
template <bool kDocs>
__device__ __forceinline__ void load_tile_docs(const Ptrs& p, const SsdDims& d, int b, int c, const TileRows& tr,
                                               int* doc) {
  if constexpr (!kDocs) return;
  const int last = min(c * d.Q + d.Q, d.L) - 1;
  for (int r = threadIdx.x; r < kT; r += kThreads) doc[r] = doc_at(p, d, b, min(tr.t0 + r, last));
}

// A source tile s of a chunk: B_s and x_s rows (raw) and its cs and dt into shared memory.
template <int PP, int NP, bool kDocs>
__device__ __forceinline__ void stage_source_tile(const Ptrs& p, const SsdDims& d, int b, int h, const TileRows& ts,
                                                  const float* cs_tile, const float* dt_tile, bf* sB, bf* sX,
                                                  float* cs_s, float* dt_s, int c, int* doc_s) {
  const int g = h / d.hpg;
  load_tile_docs<kDocs>(p, d, b, c, ts, doc_s);
  stage_raw<NP>(sB, p.Bm + b * p.B_bs + ts.t0 * p.B_ss + g * d.N, p.B_ss, ts.rows, d.N);
  stage_raw<PP>(sX, p.x + b * p.x_bs + ts.t0 * p.x_ss + h * d.P, p.x_ss, ts.rows, d.P);
  for (int r = threadIdx.x; r < kT; r += kThreads) {
    cs_s[r] = cs_tile[r];
    dt_s[r] = dt_tile[r];
  }
}

// dt and cs of every (b, h, chunk): dtv, cs (B, H, nc, Qp). One block of 256 threads.
__global__ void __launch_bounds__(kThreads) prep_kernel(Ptrs p, SsdDims d, float* dtv, float* cs) {
  __shared__ float warp_tot[kWarps];
  const int c = blockIdx.x, h = blockIdx.y, b = blockIdx.z, t = threadIdx.x;
  const int pos = c * d.Q + t;
  const bool valid = t < d.Q && pos < d.L;
  float dtval = 0.f;
  if (valid) {
    const float raw = __bfloat162float(p.dt[b * p.dt_bs + pos * p.dt_ss + h]) + (p.dt_bias ? p.dt_bias[h] : 0.f);
    dtval = p.softplus ? math::softplus(raw) : raw;
  }
  float v = dtval * p.A[h];
  const int lane = t & 31, wp = t >> 5;
#pragma unroll
  for (int o = 1; o < 32; o <<= 1) {
    const float u = __shfl_up_sync(0xffffffffu, v, o);
    if (lane >= o) v += u;
  }
  if (lane == 31) warp_tot[wp] = v;
  __syncthreads();
  float before = 0.f;
  for (int i = 0; i < wp; ++i) before += warp_tot[i];
  v += before;
  if (t < d.Qp) {
    const size_t at = ((static_cast<size_t>(b) * d.H + h) * d.nc + c) * d.Qp + t;
    dtv[at] = dtval;
    cs[at] = v;
  }
}

// Per chunk: out (P x N, padded) = X^T (w o Y) summed over the chunk's steps.
//   kGrad = false: X = x, Y = Bm, w_s = e^{cs_last - cs_s} dt_s (the chunk's own state)
//   kGrad = true:  X = dy, Y = Cm, w_l = e^{cs_l}            (dS_c of the backward)
//   kDocs: steps of another document than the state's get weight 0 (staged through w_row,
//   whose barrier the plain instantiation does not pay).
template <int PP, int NP, bool kGrad, bool kDocs>
__global__ void __launch_bounds__(kThreads) chunk_state_kernel(Ptrs p, SsdDims d, const float* dtv, const float* cs,
                                                               float* out) {
  extern __shared__ __align__(128) unsigned char smem[];
  __shared__ float w_row[kDocs ? kT : 1];
  bf* sX = reinterpret_cast<bf*>(smem);
  bf* sY = reinterpret_cast<bf*>(smem + bf_bytes(kT, PP));
  const int c = blockIdx.x, h = blockIdx.y, b = blockIdx.z, g = h / d.hpg;
  const size_t cb = ((static_cast<size_t>(b) * d.H + h) * d.nc + c) * d.Qp;
  const float cs_last = cs[cb + d.Qp - 1];
  // Steps of the document the chunk's state belongs to: the last step's (own state), or
  // the step before the chunk's (dS: the gradient reaches the entering state).
  [[maybe_unused]] const int doc_keep = !kDocs ? 0 : kGrad ? doc_before(p, d, b, c) : doc_last(p, d, b, c);
  using WT = WarpTile<PP, NP>;
  const WT wt;
  Acc acc[WT::NF];
  zero(acc);
  for (int tile = 0; tile < d.Qt; ++tile) {
    const TileRows tr(d, c, tile);
    if (tr.rows <= 0) break;
    const float* cst = cs + cb + tile * kT;
    const float* dtt = dtv + cb + tile * kT;
    auto weight = [&](int r) { return kGrad ? __expf(cst[r]) : __expf(cs_last - cst[r]) * dtt[r]; };
    if constexpr (kDocs) {
      for (int r = threadIdx.x; r < kT; r += kThreads)
        w_row[r] = doc_at(p, d, b, tr.t0 + r) == doc_keep ? weight(r) : 0.f;
      __syncthreads();
    }
    auto w = [&](int r) {
      if constexpr (kDocs) return w_row[r];
      else return weight(r);
    };
    if constexpr (kGrad) {
      stage_raw<PP>(sX, p.dy + b * p.dy_bs + tr.t0 * p.dy_ss + h * d.P, p.dy_ss, tr.rows, d.P);
      stage<NP>(sY, p.Cm + b * p.C_bs + tr.t0 * p.C_ss + g * d.N, p.C_ss, tr.rows, d.N, w);
    } else {
      stage_raw<PP>(sX, p.x + b * p.x_bs + tr.t0 * p.x_ss + h * d.P, p.x_ss, tr.rows, d.P);
      stage<NP>(sY, p.Bm + b * p.B_bs + tr.t0 * p.B_ss + g * d.N, p.B_ss, tr.rows, d.N, w);
    }
    __syncthreads();
    mma<WT::NF, kT, wmma::col_major, wmma::row_major>(acc, sX, ldb(PP), sY, ldb(NP), wt.row0, wt.col0);
    __syncthreads();
  }
  float* o = out + ((static_cast<size_t>(b) * d.nc + c) * d.H + h) * PP * NP;
#pragma unroll
  for (int f = 0; f < WT::NF; ++f)
    wmma::store_matrix_sync(o + wt.row0 * NP + wt.col0 + 16 * f, acc[f], NP, wmma::mem_row_major);
}

// State passing: one thread per 4 consecutive state elements (a float4 of the padded P x N
// state), sequential over chunks. The chunk states of kAhead chunks are loaded before the
// recurrence consumes them, so that each thread keeps kAhead 16-byte loads in flight: the
// pass is a stream over the states, bound by memory bandwidth, not by the latency of one
// dependent load per chunk.
constexpr int kAhead = 8;
constexpr int kPassElems = 4 * kThreads;  // state elements per block

__device__ __forceinline__ float4 fma4(float a, float4 x, float4 y) {
  return make_float4(a * x.x + y.x, a * x.y + y.y, a * x.z + y.z, a * x.w + y.w);
}
__device__ __forceinline__ float dot4(float4 a, float4 b) { return a.x * b.x + a.y * b.y + a.z * b.z + a.w * b.w; }

// The unpadded (B, H, P, N) state h at the 4 padded elements e .. e + 3 (zeros outside).
__device__ __forceinline__ float4 load_state4(const float* h, const SsdDims& d, int b, int hd, int e) {
  float v[4] = {0.f, 0.f, 0.f, 0.f};
  const int pi = e / d.Np, n0 = e % d.Np;
  if (h && pi < d.P) {
    const float* src = h + ((static_cast<size_t>(b) * d.H + hd) * d.P + pi) * d.N;
    for (int k = 0; k < 4; ++k)
      if (n0 + k < d.N) v[k] = src[n0 + k];
  }
  return make_float4(v[0], v[1], v[2], v[3]);
}
__device__ __forceinline__ void store_state4(float* h, const SsdDims& d, int b, int hd, int e, float4 v) {
  const int pi = e / d.Np, n0 = e % d.Np;
  if (!h || pi >= d.P) return;
  float* dst = h + ((static_cast<size_t>(b) * d.H + hd) * d.P + pi) * d.N;
  const float a[4] = {v.x, v.y, v.z, v.w};
  for (int k = 0; k < 4; ++k)
    if (n0 + k < d.N) dst[n0 + k] = a[k];
}

// The 4 values at e .. e + 3 of a bf16 state (8 bytes).
__device__ __forceinline__ void store_bf4(bf* at, float4 v) {
  __nv_bfloat162 o[2] = {__floats2bfloat162_rn(v.x, v.y), __floats2bfloat162_rn(v.z, v.w)};
  *reinterpret_cast<uint2*>(at) = *reinterpret_cast<const uint2*>(o);
}

// Forward: st (B, nc, H, Pp, Np) holds each chunk's own state on entry; the state entering
// each chunk goes to st_bf unless null (same layout, bf16: what the mma.sync tile kernels
// multiply with) and, with keep_f32, back into st (the backward's reverse pass and the WMMA
// backward read it); h_last (B, H, P, N) the final state.
template <bool kDocs>
__global__ void __launch_bounds__(kThreads) state_pass_fwd_kernel(Ptrs p, SsdDims d, const float* cs, float* st,
                                                                  bf* st_bf, bool keep_f32, float* h_last) {
  const int e = (blockIdx.x * kThreads + threadIdx.x) * 4, h = blockIdx.y, b = blockIdx.z;
  const size_t step = static_cast<size_t>(d.H) * d.Pp * d.Np / 4;  // float4s from one chunk to the next
  const size_t base = (static_cast<size_t>(b) * d.nc * d.H + h) * d.Pp * d.Np + e;
  float4* s = reinterpret_cast<float4*>(st + base);
  const float* cs_last = cs + (static_cast<size_t>(b) * d.H + h) * d.nc * d.Qp + d.Qp - 1;
  float4 run = load_state4(p.h0, d, b, h, e);
  for (int c0 = 0; c0 < d.nc; c0 += kAhead) {
    float4 own[kAhead];
    float csl[kAhead];
    bool carry[kAhead];
    // All the batch's loads first, without a branch between them (a chunk past the end reads
    // the last one again, unused): a `break` here, or an exponential of a loaded value, made
    // each chunk wait for its loads before the next chunk's were issued.
#pragma unroll
    for (int k = 0; k < kAhead; ++k) {
      const int c = min(c0 + k, d.nc - 1);
      own[k] = s[c * step];
      csl[k] = cs_last[static_cast<size_t>(c) * d.Qp];
      carry[k] = chunk_carries<kDocs>(p, d, b, c);
    }
#pragma unroll
    for (int k = 0; k < kAhead; ++k) {
      if (c0 + k >= d.nc) break;
      if (keep_f32) s[(c0 + k) * step] = run;
      if (st_bf) store_bf4(st_bf + base + (c0 + k) * step * 4, run);
      run = fma4(carry[k] ? __expf(csl[k]) : 0.f, run, own[k]);
    }
  }
  store_state4(h_last, d, b, h, e, run);
}

// Reverse: dS (B, nc, H, Pp, Np) holds dS_c on entry and, with keep_f32, G_c (the gradient
// of the state leaving chunk c) on exit, in place (what the WMMA backward reads); G_bf, unless
// null, receives G_c in bf16 (what the mma.sync backward reads); dh0 the gradient of h0.
// gdot (B, H, nc, gridDim.x) receives each block's part of e^{cs_last} <G_c, H_c> (a term of
// dcs_last).
template <bool kDocs>
__global__ void __launch_bounds__(kThreads) state_pass_bwd_kernel(Ptrs p, SsdDims d, const float* cs, const float* st,
                                                                  float* dS, bf* G_bf, bool keep_f32, float* dh0,
                                                                  float* gdot) {
  __shared__ float red[kAhead][kWarps];
  const int e = (blockIdx.x * kThreads + threadIdx.x) * 4, h = blockIdx.y, b = blockIdx.z;
  const size_t step = static_cast<size_t>(d.H) * d.Pp * d.Np / 4;
  const size_t base = (static_cast<size_t>(b) * d.nc * d.H + h) * d.Pp * d.Np + e;
  float4* g = reinterpret_cast<float4*>(dS + base);
  const float4* hs = reinterpret_cast<const float4*>(st + base);
  const size_t bh = static_cast<size_t>(b) * d.H + h;
  const float* cs_last = cs + bh * d.nc * d.Qp + d.Qp - 1;
  const int lane = threadIdx.x & 31, w = threadIdx.x >> 5;
  float4 run = load_state4(p.dh_last, d, b, h, e);
  for (int top = d.nc - 1; top >= 0; top -= kAhead) {
    float4 ds[kAhead], hc[kAhead];
    float csl[kAhead], dot[kAhead];
    bool carry[kAhead];
    // All the batch's loads first, without a branch between them (see state_pass_fwd_kernel;
    // a chunk before the first reads chunk 0 again, unused).
#pragma unroll
    for (int k = 0; k < kAhead; ++k) {
      const int c = max(top - k, 0);
      ds[k] = g[c * step];
      hc[k] = hs[c * step];
      csl[k] = cs_last[static_cast<size_t>(c) * d.Qp];
      carry[k] = chunk_carries<kDocs>(p, d, b, c);
    }
#pragma unroll
    for (int k = 0; k < kAhead; ++k) {
      dot[k] = 0.f;
      const int c = top - k;
      if (c < 0) continue;
      const float decay = carry[k] ? __expf(csl[k]) : 0.f;
      if (keep_f32) g[c * step] = run;
      if (G_bf) store_bf4(G_bf + base + c * step * 4, run);
      dot[k] = decay * dot4(run, hc[k]);
      run = fma4(decay, run, ds[k]);
    }
#pragma unroll
    for (int k = 0; k < kAhead; ++k) {
#pragma unroll
      for (int o = 16; o > 0; o >>= 1) dot[k] += __shfl_xor_sync(0xffffffffu, dot[k], o);
      if (lane == 0) red[k][w] = dot[k];
    }
    __syncthreads();
    if (threadIdx.x < kAhead && top - static_cast<int>(threadIdx.x) >= 0) {
      float sum = 0.f;
      for (int i = 0; i < kWarps; ++i) sum += red[threadIdx.x][i];
      gdot[(bh * d.nc + top - threadIdx.x) * gridDim.x + blockIdx.x] = sum;
    }
    __syncthreads();
  }
  store_state4(dh0, d, b, h, e, run);
}

// ---- the chunk-scan forward on mma.sync (register-resident score fragments) ----
//
// y_l = e^{cs_l} C_l H_c^T + sum_{s <= l} (C_l B_s^T o decay o dt_s) x_s + D x_l per 64-row
// tile l, with the score tile never leaving registers (the WMMA version of this kernel
// passed it through shared memory twice per source tile; docs/perf_ssm.md): 8 warps, warp w
// owning rows 16 (w % 4) .. + 16 of the l-tile and the half w / 4 of the 64 source columns s
// (and of the state columns n in the prologue). Per source tile, a warp computes its 16 x 32
// block of S = C_l B_s^T (m16n8k16, K = NP), masks and scales it in the
// accumulators (e^{cs_l - cs_s} dt_s, causal, documents), packs the accumulators into bf16
// A fragments (the accumulator layout of two n8 tiles is the A layout of one k16 step) and
// multiplies by its 32 rows of x_s. The two halves' partial 16 x PP outputs are added once,
// through shared memory, at the end. The prologue e^{cs_l} C_l H_c^T scales the product's
// rows in f32 instead of rounding e^{cs_l} C_l to bf16 first. Every d_state (up to 256).

__device__ __forceinline__ unsigned smem_addr(const void* p) {
  return static_cast<unsigned>(__cvta_generic_to_shared(p));
}
// Four 8 x 8 b16 matrices; lane l gives the address of row l % 8 of matrix l / 8.
__device__ __forceinline__ void ldsm_x4(uint32_t (&r)[4], const bf* p) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(smem_addr(p)));
}
__device__ __forceinline__ void ldsm_x4_trans(uint32_t (&r)[4], const bf* p) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(smem_addr(p)));
}
// c += a b: a 16 x 16 (row), b 16 x 8 (col), bf16 in, f32 accumulators.
__device__ __forceinline__ void mma_bf16(float (&c)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
      "{%0, %1, %2, %3};\n"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}
__device__ __forceinline__ uint32_t pack_bf16(float lo, float hi) {
  const __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
  return *reinterpret_cast<const uint32_t*>(&v);
}

// acc[nt] (nt < NT, n8 tiles from column col0) += A[row0 .., k0 .. k0 + K) B^T, where A is
// row-major [r][k] (ld lda) and B is stored [n][k] (ld ldbm): both read with ldmatrix.
template <int NT, int K>
__device__ __forceinline__ void mma_abt(float (&acc)[NT][4], const bf* A, int lda, int row0, const bf* Bt, int ldbm,
                                        int col0, int k0) {
  static_assert(NT % 2 == 0, "n8 tiles are loaded in pairs");
  const int lane = threadIdx.x & 31;
#pragma unroll
  for (int k = 0; k < K; k += 16) {
    uint32_t a[4];
    ldsm_x4(a, A + (row0 + (lane & 15)) * lda + k0 + k + (lane >> 4) * 8);
#pragma unroll
    for (int nt = 0; nt < NT; nt += 2) {
      uint32_t b[4];
      ldsm_x4(b, Bt + (col0 + nt * 8 + (lane & 7) + ((lane >> 4) << 3)) * ldbm + k0 + k + ((lane >> 3) & 1) * 8);
      mma_bf16(acc[nt], a, b[0], b[1]);
      mma_bf16(acc[nt + 1], a, b[2], b[3]);
    }
  }
}

template <int NT>
__device__ __forceinline__ void zero_acc(float (&acc)[NT][4]) {
#pragma unroll
  for (int nt = 0; nt < NT; ++nt) acc[nt][0] = acc[nt][1] = acc[nt][2] = acc[nt][3] = 0.f;
}

// acc[nt] (nt < NT, n8 tiles from column 0) += A[row0 .., k0 .. k0 + K) Bm[k0 .. k0 + K, ..),
// where A is row-major [r][k] (ld lda) and Bm row-major [k][n] (ld ldbm, read transposed).
// One 16-step k of it (mma_ab_range below runs a range of them known only at run time).
template <int NT>
__device__ __forceinline__ void mma_ab_step(float (&acc)[NT][4], const bf* A, int lda, int row0, const bf* Bm,
                                            int ldbm, int k) {
  static_assert(NT % 2 == 0, "n8 tiles are loaded in pairs");
  const int lane = threadIdx.x & 31;
  uint32_t a[4];
  ldsm_x4(a, A + (row0 + (lane & 15)) * lda + k + (lane >> 4) * 8);
#pragma unroll
  for (int nt = 0; nt < NT; nt += 2) {
    uint32_t bv[4];
    ldsm_x4_trans(bv, Bm + (k + (lane & 7) + ((lane >> 3) & 1) * 8) * ldbm + nt * 8 + (lane >> 4) * 8);
    mma_bf16(acc[nt], a, bv[0], bv[1]);
    mma_bf16(acc[nt + 1], a, bv[2], bv[3]);
  }
}
template <int NT, int K>
__device__ __forceinline__ void mma_ab(float (&acc)[NT][4], const bf* A, int lda, int row0, const bf* Bm, int ldbm,
                                       int k0) {
#pragma unroll
  for (int k = k0; k < k0 + K; k += 16) mma_ab_step(acc, A, lda, row0, Bm, ldbm, k);
}

// A warp's 16 x 8 NT block of masked, scaled scores (NT n8 accumulator tiles) as the bf16 A
// fragments of NT / 2 k16 steps: the accumulator layout of n8 tiles 2k, 2k + 1 is the A
// layout of step k.
template <int NT>
__device__ __forceinline__ void pack_scores(uint32_t (&af)[NT / 2][4], const float (&w)[NT][4]) {
#pragma unroll
  for (int nt = 0; nt < NT; ++nt) {
    af[nt >> 1][(nt & 1) * 2 + 0] = pack_bf16(w[nt][0], w[nt][1]);
    af[nt >> 1][(nt & 1) * 2 + 1] = pack_bf16(w[nt][2], w[nt][3]);
  }
}

// acc[nt] += W T[s0 .. s0 + 16 KS, ..): W the packed 16 x 16 KS scores, T row-major [s][n]
// (ld ldt, read transposed).
template <int NT, int KS>
__device__ __forceinline__ void mma_scores(float (&acc)[NT][4], const uint32_t (&af)[KS][4], const bf* T, int ldt,
                                           int s0) {
  const int lane = threadIdx.x & 31;
#pragma unroll
  for (int k = 0; k < KS; ++k) {
#pragma unroll
    for (int nt = 0; nt < NT; nt += 2) {
      uint32_t bv[4];
      ldsm_x4_trans(bv, T + (s0 + k * 16 + (lane & 7) + ((lane >> 3) & 1) * 8) * ldt + nt * 8 + (lane >> 4) * 8);
      mma_bf16(acc[nt], af[k], bv[0], bv[1]);
      mma_bf16(acc[nt + 1], af[k], bv[2], bv[3]);
    }
  }
}

// The two halves of the warps hold partial sums of the same 16-row strips; half 1 leaves its
// accumulators (rows r0 and r0 + 8 of this lane) in f32 shared memory (ld floats a row) for
// half 0 to add after a barrier.
template <int NT>
__device__ __forceinline__ void stash_half(float* sF, int ld, const float (&acc)[NT][4], int r0) {
  const int tq = threadIdx.x & 3;
#pragma unroll
  for (int nt = 0; nt < NT; ++nt) {
    const int n = nt * 8 + tq * 2;
    sF[r0 * ld + n] = acc[nt][0];
    sF[r0 * ld + n + 1] = acc[nt][1];
    sF[(r0 + 8) * ld + n] = acc[nt][2];
    sF[(r0 + 8) * ld + n + 1] = acc[nt][3];
  }
}

// Four n8 tiles of a bf16 row-major matrix (rows `stride` apart from `base`) at this lane's
// accumulator positions: rows r0 + 8 (e >> 1), columns (nt0 + u) 8 + 2 tq + (e & 1); 0 past
// rows or cols, or when not `on`. The epilogues load these before any of their stores: the
// output may alias the input as far as the compiler knows, so a load after a store waits for
// it, and one load, wait and store an element made 32 round trips a thread.
__device__ __forceinline__ void load_n8x4(float (&v)[4][4], const bf* base, int64_t stride, int r0, int rows,
                                          int nt0, int cols, bool on) {
  const int tq = threadIdx.x & 3;
#pragma unroll
  for (int u = 0; u < 4; ++u)
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      const int r = r0 + (e >> 1) * 8, k = (nt0 + u) * 8 + tq * 2 + (e & 1);
      v[u][e] = on && r < rows && k < cols ? __bfloat162float(base[r * stride + k]) : 0.f;
    }
}

// One row of a dB/dC result (`row` f32 or bf16): this lane's two columns n0 + 8 nt + 2 tq + {0, 1}
// of each n8 tile, the values v(nt, 0) and v(nt, 1), those before N; a pair as one store when
// `paired` (every pair aligned to its size).
template <int NT, typename T, typename V>
__device__ __forceinline__ void store_row_pairs(T* row, int N, int n0, bool paired, V&& v) {
  const int tq = threadIdx.x & 3;
#pragma unroll
  for (int nt = 0; nt < NT; ++nt) {
    const int n = n0 + nt * 8 + tq * 2;
    const float v0 = v(nt, 0), v1 = v(nt, 1);
    if (paired) {
      if (n < N) {
        if constexpr (std::is_same_v<T, float>) *reinterpret_cast<float2*>(row + n) = make_float2(v0, v1);
        else *reinterpret_cast<__nv_bfloat162*>(row + n) = __floats2bfloat162_rn(v0, v1);
      }
    } else {
      if (n < N) row[n] = T(v0);
      if (n + 1 < N) row[n + 1] = T(v1);
    }
  }
}

// A dB/dC tile kernel's result: this lane's accumulators, rows r0 and r0 + 8 of the tile t
// (those before t.rows) and columns n0 + 8 nt + 2 tq + {0, 1} (those before N). When the
// block's hb heads are the whole group (H / hb == G: `part` is the group), the sum is final
// and goes to `out` (B, L, G, N) in bf16, rows d.dbc_row apart; otherwise to the f32 partial
// sums `parts_out` (B, L, H / hb, N), one per hb heads of a group, which sum_heads_kernel adds
// in order. Both null: nothing to store (the gradient is not wanted).
template <int NT>
__device__ __forceinline__ void store_dbc_cols(float* parts_out, bf* out, const SsdDims& d, int b, const TileRows& t,
                                               int part, const float (&acc)[NT][4], int r0, int n0) {
  const int parts = d.H / d.hb;
  const bool out_pairs = d.N % 2 == 0 && d.dbc_row % 2 == 0 && (reinterpret_cast<uintptr_t>(out) & 3) == 0;
#pragma unroll
  for (int u = 0; u < 2; ++u) {
    const int r = r0 + 8 * u;
    if (r >= t.rows) continue;
    const size_t bt = static_cast<size_t>(b) * d.L + t.t0 + r;
    auto v = [&](int nt, int k) { return acc[nt][2 * u + k]; };
    if (out)
      store_row_pairs<NT>(out + bt * d.dbc_row + static_cast<size_t>(part) * d.N, d.N, n0, out_pairs, v);
    else if (parts_out)
      store_row_pairs<NT>(parts_out + (bt * parts + part) * d.N, d.N, n0, d.N % 2 == 0, v);
  }
}

// The l-tile and dB backward hand the score tile W between the two warps of a row strip
// through shared memory: each computes W for 16 rows and its 32 of the 64 columns (half the
// work of S = A B^T), rounds it to bf16 into the strip's rows of sW [kT][ldb(kT)], and after
// the strip's barrier multiplies all 64 columns of its rows by the wide tile's half of the
// state columns, so that a warp holds 16 x NP / 2 accumulators rather than 16 x NP.
template <int NT = 4>
__device__ __forceinline__ void put_scores(bf* sW, const float (&w)[NT][4], int r0, int col0) {
  const int tq = threadIdx.x & 3;
#pragma unroll
  for (int nt = 0; nt < NT; ++nt) {
    const int col = col0 + nt * 8 + tq * 2;
    *reinterpret_cast<uint32_t*>(sW + r0 * ldb(kT) + col) = pack_bf16(w[nt][0], w[nt][1]);
    *reinterpret_cast<uint32_t*>(sW + (r0 + 8) * ldb(kT) + col) = pack_bf16(w[nt][2], w[nt][3]);
  }
}
// The two warps (strip, 0) and (strip, 1) of a row strip meet: named barrier 1 + strip.
__device__ __forceinline__ void strip_sync(int strip) {
  asm volatile("bar.sync %0, 64;\n" ::"r"(1 + strip) : "memory");
}
// acc[nt] (nt < NT, n8 tiles from column 0) += A[row0 .., k) Bm[k, ..) over the 16-steps k of
// [k_begin, k_end) (at most 4 of them, k_begin a multiple of 16): mma_ab with a run-time range.
template <int NT>
__device__ __forceinline__ void mma_ab_range(float (&acc)[NT][4], const bf* A, int lda, int row0, const bf* Bm,
                                             int ldbm, int k_begin, int k_end) {
#pragma unroll
  for (int u = 0; u < 4; ++u) {
    const int k = k_begin + 16 * u;
    if (k >= k_end) break;
    mma_ab_step(acc, A, lda, row0, Bm, ldbm, k);
  }
}

// ---- C B^T once per (batch, chunk, group) ----
//
// The score tile S1 = C_l B_s^T depends on the group, not on the head: it is computed once
// per (batch, chunk, group) and tile pair (l-tile i, s-tile j <= i) and read by every head
// of the group. Each 64 x 64 tile is stored in the mma.sync accumulator layout of the
// kernels that read it (warp w owns rows 16 (w % 4) .. + 16 and columns 32 (w / 4) .. + 32
// as four n8 tiles; lane `lane` holds 4 floats of each), so that a lane reads its 16
// accumulator values as four float4, coalesced: [pair][warp][nt][lane][4], 4096 floats a
// pair. `rows_s` = false: rows l, columns s (the forward and the l-tile backward);
// true: the transpose B_s C_l^T, rows s, columns l (the s-tile backward).
constexpr int kPairFloats = kT * kT;
__host__ __device__ constexpr int tile_pair(int i, int j) { return i * (i + 1) / 2 + j; }  // j <= i

__device__ __forceinline__ size_t cb_pair_at(const SsdDims& d, int b, int c, int g, int pair) {
  return ((static_cast<size_t>(b) * d.nc + c) * d.G + g) * (static_cast<size_t>(d.Qt) * (d.Qt + 1) / 2) + pair;
}

// A warp's 16 x 32 block of a stored tile pair, as its accumulators: NT of its four n8 tiles
// from tile nt0.
template <int NT = 4>
__device__ __forceinline__ void load_cb(float (&acc)[NT][4], const float* cb, size_t pair_at, int nt0 = 0) {
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const float4* src = reinterpret_cast<const float4*>(cb + pair_at * kPairFloats) + (warp * 4 + nt0) * 32 + lane;
#pragma unroll
  for (int nt = 0; nt < NT; ++nt) {
    const float4 v = src[nt * 32];
    acc[nt][0] = v.x, acc[nt][1] = v.y, acc[nt][2] = v.z, acc[nt][3] = v.w;
  }
}

// grid (nc x pairs, G, B): C_i B_j^T into cb_l (rows l) and, when cb_s is given, B_j C_i^T
// into cb_s (rows s) for the tile pair (i, j <= i) of chunk c and group g.
template <int NP>
__global__ void __launch_bounds__(kThreads) cb_tiles_kernel(Ptrs p, SsdDims d, float* cb_l, float* cb_s) {
  extern __shared__ __align__(128) unsigned char smem[];
  bf* sC = reinterpret_cast<bf*>(smem);
  bf* sB = reinterpret_cast<bf*>(smem + bf_bytes(kT, NP));
  const int npairs = d.Qt * (d.Qt + 1) / 2;
  const int c = blockIdx.x / npairs, pair = blockIdx.x % npairs, g = blockIdx.y, b = blockIdx.z;
  int i = 0;
  while (tile_pair(i + 1, 0) <= pair) ++i;
  const int j = pair - tile_pair(i, 0);
  const TileRows tl(d, c, i), ts(d, c, j);
  stage_raw<NP>(sC, p.Cm + b * p.C_bs + tl.t0 * p.C_ss + g * d.N, p.C_ss, max(tl.rows, 0), d.N);
  stage_raw<NP>(sB, p.Bm + b * p.B_bs + ts.t0 * p.B_ss + g * d.N, p.B_ss, max(ts.rows, 0), d.N);
  __syncthreads();
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, row0 = (warp & 3) * 16, half = warp >> 2;
  const size_t at = cb_pair_at(d, b, c, g, pair);
  float acc[4][4];
  zero_acc(acc);
  mma_abt<4, NP>(acc, sC, ldb(NP), row0, sB, ldb(NP), half * 32, 0);
  float4* dst = reinterpret_cast<float4*>(cb_l + at * kPairFloats) + warp * 4 * 32 + lane;
#pragma unroll
  for (int nt = 0; nt < 4; ++nt) dst[nt * 32] = make_float4(acc[nt][0], acc[nt][1], acc[nt][2], acc[nt][3]);
  if (cb_s) {
    zero_acc(acc);
    mma_abt<4, NP>(acc, sB, ldb(NP), row0, sC, ldb(NP), half * 32, 0);
    dst = reinterpret_cast<float4*>(cb_s + at * kPairFloats) + warp * 4 * 32 + lane;
#pragma unroll
    for (int nt = 0; nt < 4; ++nt) dst[nt * 32] = make_float4(acc[nt][0], acc[nt][1], acc[nt][2], acc[nt][3]);
  }
}

// ---- tiles staged through cp.async, double-buffered ----
//
// Each mma.sync tile kernel walks a list of 64-step tiles of the chunk (the forward and the
// l-tile backward the source tiles s <= l, the s-tile backward the l-tiles l >= s): each is
// staged while the previous one is multiplied, by cp.async into the other of two buffers,
// so that the loads overlap the products of the same block.

// 16 bytes from global to shared memory, asynchronously; zero-filled when !valid (src is then
// not read, but must be a valid address).
__device__ __forceinline__ void cp_async16(void* dst, const void* src, bool valid) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(smem_addr(dst)), "l"(src),
               "r"(valid ? 16 : 0)
               : "memory");
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::: "memory"); }
template <int N>
__device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory");
}

// A padded (Pp x Np) bf16 state into a bf16 tile [Pp][ldb(Np)] by cp.async (the caller
// commits): 16-byte copies, no conversion (the state passes write the bf16 copy).
template <int PP, int NP>
__device__ __forceinline__ void stage_state_async(bf* dst, const bf* src) {
  static_assert(PP * NP / 8 % kThreads == 0, "whole vectors per thread");
#pragma unroll
  for (int k = 0; k < PP * NP / 8 / kThreads; ++k) {
    const int i = static_cast<int>(threadIdx.x) + k * kThreads;
    const int r = i / (NP / 8), j = (i % (NP / 8)) * 8;
    cp_async16(dst + r * ldb(NP) + j, src + r * NP + j, true);
  }
}

// stage_raw by cp.async (rows that can move as 16-byte vectors), else synchronously.
template <int W>
__device__ __forceinline__ void stage_raw_async(bf* dst, const bf* src, int64_t stride, int rows, int cols) {
  if (!vector_rows(src, stride, cols)) {
    stage_raw<W>(dst, src, stride, rows, cols);
    return;
  }
  static_assert(kT * W / 8 % kThreads == 0, "whole vectors per thread");
#pragma unroll
  for (int k = 0; k < kT * W / 8 / kThreads; ++k) {  // straight-line: no loop for the compiler to peel
    const int i = static_cast<int>(threadIdx.x) + k * kThreads;
    const int r = i / (W / 8), j = (i % (W / 8)) * 8;
    const bool valid = r < rows && j < cols;
    cp_async16(dst + r * ldb(W) + j, valid ? src + r * stride + j : src, valid);
  }
}
// kT floats (16-byte aligned) by cp.async, one vector on each of the first kT / 4 threads.
__device__ __forceinline__ void copy_row_async(float* dst, const float* src) {
  static_assert(kT / 4 <= kThreads, "one vector per thread");
  if (threadIdx.x < kT / 4) cp_async16(dst + 4 * threadIdx.x, src + 4 * threadIdx.x, true);
}

// The last 64-step tile of chunk c that holds a step (tiles past L hold none).
__device__ __forceinline__ int last_tile(const SsdDims& d, int c) {
  return (min(d.Q, d.L - c * d.Q) - 1) / kT;
}

// ---- chunk states on mma.sync ----
//
// out (PP x NP) = X^T (w o Y) over the chunk's steps, as chunk_state_kernel computes it, with
// the 64-step tiles of X and Y staged by cp.async into two buffers (tile j + 1 loads while
// tile j is multiplied) and mma.sync m16n8k16: A = X^T read from the [step][head] tile by
// ldmatrix.trans and its fragments scaled by the step weights w (4 per lane and k-step)
// before the product, which rounds w o x to bf16 (the WMMA kernel rounded w o Y); B = Y read
// by ldmatrix.trans. Warp w owns rows 16 (w % S) .. + 16 of the PP rows (S = PP / 16 strips)
// and NP / (8 / S) columns. The weights of the chunk's Qp steps are made once, before the
// loop. Serves all sizes but PP 128 with NP 256 (128 accumulators a lane; WMMA there).
template <int PP, int NP>
struct ChunkStateMmaPlan {
  static constexpr int kStrips = PP / 16, kPerStrip = kWarps / kStrips, kCols = NP / kPerStrip, NT = kCols / 8;
  static_assert(kWarps % kStrips == 0 && NT % 2 == 0 && NT <= 16, "chunk-state warp tiling");
  static constexpr size_t x_bytes = bf_bytes(kT, PP), buf_bytes = x_bytes + bf_bytes(kT, NP);
  static constexpr size_t w_row = 2 * buf_bytes;
  static constexpr size_t total = w_row + round_up(kSsdCudaMaxChunk * sizeof(float));
  // Three blocks a multiprocessor (80 registers) hold 8 accumulator tiles a lane without
  // spilling; 16 need the registers of two (and spill a few address registers to L1).
  static constexpr int kMinBlocks = NT > 8 ? 2 : 3;
};

template <int PP, int NP, bool kGrad, bool kDocs>
__global__ void __launch_bounds__(kThreads, ChunkStateMmaPlan<PP, NP>::kMinBlocks)
    chunk_state_mma_kernel(Ptrs p, SsdDims d, const float* dtv, const float* cs, float* out) {
  using S = ChunkStateMmaPlan<PP, NP>;
  extern __shared__ __align__(128) unsigned char smem[];
  float* w_row = reinterpret_cast<float*>(smem + S::w_row);
  const int c = blockIdx.x, h = blockIdx.y, b = blockIdx.z, g = h / d.hpg;
  const size_t cb = ((static_cast<size_t>(b) * d.H + h) * d.nc + c) * d.Qp;
  const int last = last_tile(d, c);
  auto issue = [&](int j) {
    const TileRows tr(d, c, j);
    bf* sX = reinterpret_cast<bf*>(smem + (j & 1) * S::buf_bytes);
    bf* sY = reinterpret_cast<bf*>(smem + (j & 1) * S::buf_bytes + S::x_bytes);
    if constexpr (kGrad) {
      stage_raw_async<PP>(sX, p.dy + b * p.dy_bs + tr.t0 * p.dy_ss + h * d.P, p.dy_ss, tr.rows, d.P);
      stage_raw_async<NP>(sY, p.Cm + b * p.C_bs + tr.t0 * p.C_ss + g * d.N, p.C_ss, tr.rows, d.N);
    } else {
      stage_raw_async<PP>(sX, p.x + b * p.x_bs + tr.t0 * p.x_ss + h * d.P, p.x_ss, tr.rows, d.P);
      stage_raw_async<NP>(sY, p.Bm + b * p.B_bs + tr.t0 * p.B_ss + g * d.N, p.B_ss, tr.rows, d.N);
    }
    cp_async_commit();
  };
  issue(0);
  // The step weights (0 for steps of another document than the state's, as chunk_state_kernel).
  {
    const float cs_last = cs[cb + d.Qp - 1];
    [[maybe_unused]] const int doc_keep = !kDocs ? 0 : kGrad ? doc_before(p, d, b, c) : doc_last(p, d, b, c);
    for (int t = threadIdx.x; t < d.Qp; t += kThreads) {
      float v = kGrad ? __expf(cs[cb + t]) : __expf(cs_last - cs[cb + t]) * dtv[cb + t];
      if constexpr (kDocs) v = doc_at(p, d, b, c * d.Q + t) == doc_keep ? v : 0.f;
      w_row[t] = v;
    }
  }
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, tq = lane & 3;
  const int row0 = (warp % S::kStrips) * 16, col0 = (warp / S::kStrips) * S::kCols;
  float acc[S::NT][4];
  zero_acc(acc);
  for (int j = 0; j <= last; ++j) {
    if (j < last) issue(j + 1);
    else cp_async_commit();  // an empty group keeps the wait count uniform
    cp_async_wait<1>();
    __syncthreads();  // tile j (and, the first time, the weights) visible to every warp
    const bf* sX = reinterpret_cast<const bf*>(smem + (j & 1) * S::buf_bytes);
    const bf* sY = reinterpret_cast<const bf*>(smem + (j & 1) * S::buf_bytes + S::x_bytes);
    const float* wt = w_row + j * kT;
#pragma unroll
    for (int k = 0; k < kT; k += 16) {
      // A = X^T rows row0 .., steps k ..: the [step][head] tile read transposed.
      uint32_t a[4];
      ldsm_x4_trans(a, sX + (k + (lane & 7) + ((lane >> 4) & 1) * 8) * ldb(PP) + row0 + ((lane >> 3) & 1) * 8);
      // Registers 0, 1 hold steps k + 2 tq, + 1; registers 2, 3 the same + 8.
#pragma unroll
      for (int u = 0; u < 4; ++u) {
        const int st = k + 2 * tq + (u >> 1) * 8;
        const float2 f = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(&a[u]));
        a[u] = pack_bf16(f.x * wt[st], f.y * wt[st + 1]);
      }
#pragma unroll
      for (int nt = 0; nt < S::NT; nt += 2) {
        uint32_t bv[4];
        ldsm_x4_trans(bv, sY + (k + (lane & 7) + ((lane >> 3) & 1) * 8) * ldb(NP) + col0 + nt * 8 + (lane >> 4) * 8);
        mma_bf16(acc[nt], a, bv[0], bv[1]);
        mma_bf16(acc[nt + 1], a, bv[2], bv[3]);
      }
    }
    __syncthreads();  // buffer j & 1 read by every warp before tile j + 2 is issued into it
  }
  float* o = out + ((static_cast<size_t>(b) * d.nc + c) * d.H + h) * PP * NP;
  const int r0 = row0 + (lane >> 2);
#pragma unroll
  for (int nt = 0; nt < S::NT; ++nt) {
    const int n = col0 + nt * 8 + tq * 2;
    *reinterpret_cast<float2*>(o + r0 * NP + n) = make_float2(acc[nt][0], acc[nt][1]);
    *reinterpret_cast<float2*>(o + (r0 + 8) * NP + n) = make_float2(acc[nt][2], acc[nt][3]);
  }
}

// One buffer: a head-wide tile `head` [kT][ldb(PP)] (x_s or dy_l), with kWide a d_state-wide
// tile `wide` [kT][ldb(NP)] (B_s or C_l; the kernels that read C B^T from the per-group
// tiles instead need no B_s or C_l of their own to form it), and the tile's cs, dt and
// document indices. With kHeads > 1 the buffer holds the head-wide tile, cs and dt of that
// many heads of one group, which share `wide` and the documents: StagedTile(at, k) (or
// t.of(k)) views head k.
template <int PP, int NP, bool kWide, int kHeads = 1>
struct StagedTile {
  static constexpr size_t wide_bytes = kWide ? bf_bytes(kT, NP) : 0;
  static constexpr size_t vec_bytes = round_up(2 * kT * sizeof(float));
  static constexpr size_t head_bytes = bf_bytes(kT, PP) + vec_bytes;  // one head's tile, cs and dt
  static constexpr size_t bytes = wide_bytes + kHeads * head_bytes + round_up(kT * sizeof(int));
  unsigned char* base;
  bf *wide, *head;
  float *cs, *dt;
  int* doc;
  __device__ explicit StagedTile(unsigned char* at, int k = 0)
      : base(at),
        wide(reinterpret_cast<bf*>(at)),
        head(reinterpret_cast<bf*>(at + wide_bytes + k * head_bytes)),
        cs(reinterpret_cast<float*>(at + wide_bytes + k * head_bytes + bf_bytes(kT, PP))),
        dt(cs + kT),
        doc(reinterpret_cast<int*>(at + wide_bytes + kHeads * head_bytes)) {}
  __device__ StagedTile of(int k) const { return StagedTile(base, k); }
};

// Issues the loads of tile j of chunk c into t for heads h .. h + nh - 1 (nh <= kHeads): x_s
// (and B_s) when kSource, else dy_l (and C_l), with cs and dt (64 floats each at a 256-byte
// aligned offset of (B, H, nc, Qp); cb is head h's chunk offset); the caller commits.
template <int PP, int NP, bool kWide, bool kDocs, bool kSource, int kHeads>
__device__ __forceinline__ void issue_tile(const Ptrs& p, const SsdDims& d, int b, int h, int nh, int c, int j,
                                           size_t cb, const float* cs, const float* dtv,
                                           const StagedTile<PP, NP, kWide, kHeads>& t) {
  const TileRows tr(d, c, j);
  const int g = h / d.hpg;
  load_tile_docs<kDocs>(p, d, b, c, tr, t.doc);
  if constexpr (kWide) {
    if constexpr (kSource)
      stage_raw_async<NP>(t.wide, p.Bm + b * p.B_bs + tr.t0 * p.B_ss + g * d.N, p.B_ss, tr.rows, d.N);
    else stage_raw_async<NP>(t.wide, p.Cm + b * p.C_bs + tr.t0 * p.C_ss + g * d.N, p.C_ss, tr.rows, d.N);
  }
  const size_t head_step = static_cast<size_t>(d.nc) * d.Qp;  // from one head's cs, dt to the next's
#pragma unroll
  for (int k = 0; k < kHeads; ++k) {
    if (k > 0 && k >= nh) break;
    const StagedTile<PP, NP, kWide, kHeads> tk = t.of(k);
    if constexpr (kSource)
      stage_raw_async<PP>(tk.head, p.x + b * p.x_bs + tr.t0 * p.x_ss + (h + k) * d.P, p.x_ss, tr.rows, d.P);
    else stage_raw_async<PP>(tk.head, p.dy + b * p.dy_bs + tr.t0 * p.dy_ss + (h + k) * d.P, p.dy_ss, tr.rows, d.P);
    copy_row_async(tk.cs, cs + cb + k * head_step + j * kT);
    copy_row_async(tk.dt, dtv + cb + k * head_step + j * kT);
  }
}

// for j = first .. last: body(j, tile j), the tile staged and visible to every thread, with
// kBufs buffers of `stride` bytes from buf0 (tile j in buffer (j - first) % kBufs):
//   1: each tile loaded, then used; a barrier before the next load overwrites it.
//   2: tile j + 1 loads while body(j) runs; a second barrier after body(j), since tile j + 2
//      goes into the buffer body(j) reads.
//   3: tile j + 1 loads while body(j) runs, into the buffer of tile j - 2, which every warp
//      has left before passing iteration j - 1's barrier: one barrier an iteration, and one
//      after the loop (the callers overlay the buffers afterwards).
// The bodies only read shared memory. With `primed`, the caller has issued and committed tile
// `first` into buf0 already (before its prologue). Tile views are built per use: an array of
// views indexed by j would live in local memory.
template <int PP, int NP, bool kWide, bool kDocs, bool kSource, int kBufs, int kHeads = 1, typename Body>
__device__ __forceinline__ void tile_loop(const Ptrs& p, const SsdDims& d, int b, int h, int nh, int c, int first,
                                          int last, size_t cb, const float* cs, const float* dtv, unsigned char* buf0,
                                          size_t stride, bool primed, Body&& body) {
  using Tile = StagedTile<PP, NP, kWide, kHeads>;
  auto buf = [&](int j) { return buf0 + ((j - first) % kBufs) * stride; };
  for (int j = first; j <= last; ++j) {
    if constexpr (kBufs > 1) {
      if (!primed && j == first) {
        issue_tile<PP, NP, kWide, kDocs, kSource, kHeads>(p, d, b, h, nh, c, j, cb, cs, dtv, Tile(buf0));
        cp_async_commit();
      }
      if (j < last)
        issue_tile<PP, NP, kWide, kDocs, kSource, kHeads>(p, d, b, h, nh, c, j + 1, cb, cs, dtv, Tile(buf(j + 1)));
      cp_async_commit();
      cp_async_wait<1>();
    } else {
      issue_tile<PP, NP, kWide, kDocs, kSource, kHeads>(p, d, b, h, nh, c, j, cb, cs, dtv, Tile(buf0));
      cp_async_commit();
      cp_async_wait<0>();
    }
    __syncthreads();
    body(j, Tile(buf(j)));
    if constexpr (kBufs < 3) __syncthreads();  // the tile read by every warp before its buffer is loaded again
  }
  if constexpr (kBufs == 3) __syncthreads();
}

// f(nt, e, decay) for the 16 accumulator values [nt][e] of a lane, with the decay between the
// block's own tile i (the lane's rows r0 and r0 + 8) and the staged tile j (the lane's
// columns col0 + 8 nt + 2 tq + {0, 1}), 0 where the causal order or a document boundary
// cuts it:
//   kRowsL (rows l, staged source columns s: the forward, the l-tile backward): e^{cs_l - cs_s} dt_s
//   else   (rows s, staged l-tile columns: the s-tile backward):               e^{cs_l - cs_s}
// A cut value's exponent is -inf (e^-inf = 0): a select, where a conditional exponential
// would become a branch around each.
template <bool kRowsL, bool kDocs, int NT = 4, typename Tile, typename F>
__device__ __forceinline__ void pair_decay(const Tile& t, const float* cs_r, const int* doc_r, int i, int j, int r0,
                                           int col0, F&& f) {
  const int tq = threadIdx.x & 3;
  const bool off = kRowsL ? j < i : j > i;
#pragma unroll
  for (int nt = 0; nt < NT; ++nt) {
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      const int r = r0 + (e >> 1) * 8, col = col0 + nt * 8 + tq * 2 + (e & 1);
      const bool keep = (off || (kRowsL ? col <= r : col >= r)) && same_doc<kDocs>(doc_r[r], t.doc[col]);
      const float v = __expf(keep ? (kRowsL ? cs_r[r] - t.cs[col] : t.cs[col] - cs_r[r]) : -INFINITY);
      f(nt, e, kRowsL ? v * t.dt[col] : v);
    }
  }
}

// The shared-memory plan common to the four mma.sync tile kernels (each derives from it and
// names its own regions in the first `fixed` bytes): those bytes, then kBufs tile buffers
// back to back, each holding kHeads heads' tiles (the f32 output tile of `out_w` columns, if
// any, overlays them from the first at the end; the bf16 state H_c or G_c of one head from
// the second in the prologue, while the first receives the loop's first tile), then `vecs`
// row vectors of kT floats at `vec` and one of kT document indices at `docs`. kBlocks blocks
// a multiprocessor: kMinBlocks (3 or 2) where two buffers still fit, else 2; then as many
// buffers, up to 3, as fit at that count (three let the tile loop drop its second barrier,
// see tile_loop).
template <int PP, int NP, bool kWide, size_t fixed, int out_w, int vecs, int kMinBlocks = 2, int kHeads = 1>
struct TileBudget {  // the sizes and counts; TilePlan adds the regions' offsets
  using Tile = StagedTile<PP, NP, kWide, kHeads>;
  static constexpr size_t vec_bytes = round_up(vecs * kT * sizeof(float)), doc_bytes = round_up(kT * sizeof(int));
  static constexpr size_t tile_bytes = round_up(Tile::bytes), state_bytes = bf_bytes(PP, NP);
  static constexpr size_t region(int bufs) {
    return cmax(cmax(bufs * tile_bytes, (bufs > 1 ? tile_bytes : 0) + state_bytes), f_bytes(kT, out_w));
  }
  static constexpr size_t with(int bufs) { return fixed + region(bufs) + vec_bytes + doc_bytes; }
  static constexpr size_t limit(int blocks) { return (228 * 1024) / blocks - 1024; }  // 1 KB reserved a block
  static constexpr int kBlocks = kMinBlocks >= 3 && with(2) <= limit(3) ? 3 : 2;
  static constexpr int kBufs = with(3) <= limit(kBlocks) ? 3 : with(2) <= limit(kBlocks) ? 2 : 1;
  static constexpr size_t total = with(kBufs);
  static constexpr bool fits() { return total <= limit(kBlocks); }
};
template <int PP, int NP, bool kWide, size_t fixed, int out_w, int vecs, int kMinBlocks = 2, int kHeads = 1>
struct TilePlan : TileBudget<PP, NP, kWide, fixed, out_w, vecs, kMinBlocks, kHeads> {
  using Budget = TileBudget<PP, NP, kWide, fixed, out_w, vecs, kMinBlocks, kHeads>;
  static constexpr size_t buf0 = fixed;
  static constexpr size_t buf1 = Budget::kBufs > 1 ? buf0 + Budget::tile_bytes : buf0;  // where the state goes
  static constexpr size_t vec = fixed + Budget::region(Budget::kBufs);
  static constexpr size_t docs = vec + Budget::vec_bytes;
};

// Shared-memory plan of the forward: C_l, the two buffers of the source tiles (x_s; S comes
// from the per-group C B^T tiles), cs_l, doc_l.
template <int PP, int NP>
struct ScanFwdMmaSmem : TilePlan<PP, NP, false, bf_bytes(kT, NP), PP, 1, PP == 64 ? 3 : 2> {  // vec: cs_l; docs: doc_l
  static constexpr size_t sC = 0;
};

template <int PP, int NP, bool kDocs>
__global__ void __launch_bounds__(kThreads, ScanFwdMmaSmem<PP, NP>::kBlocks)
    chunk_scan_fwd_mma_kernel(Ptrs p, SsdDims d, const float* dtv, const float* cs, const bf* st, const float* cbl,
                              bf* y) {
  using S = ScanFwdMmaSmem<PP, NP>;
  using Tile = StagedTile<PP, NP, false>;
  constexpr int NTO = PP / 8;  // output n8 tiles of a warp (all PP columns, half of the sum)
  extern __shared__ __align__(128) unsigned char smem[];
  bf* sC = reinterpret_cast<bf*>(smem + S::sC);
  bf* sH = reinterpret_cast<bf*>(smem + S::buf1);
  float* sY = reinterpret_cast<float*>(smem + S::buf0);
  float* cs_l = reinterpret_cast<float*>(smem + S::vec);
  int* doc_l = reinterpret_cast<int*>(smem + S::docs);

  const int c = blockIdx.x / d.Qt, i = blockIdx.x % d.Qt, h = blockIdx.y, b = blockIdx.z, g = h / d.hpg;
  const TileRows tl(d, c, i);
  if (tl.rows <= 0) return;
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, strip = warp & 3, half = warp >> 2;
  const int row0 = strip * 16, gr = lane >> 2, tq = lane & 3;  // fragment row group, column pair
  const size_t cb = ((static_cast<size_t>(b) * d.H + h) * d.nc + c) * d.Qp;
  const int entering = doc_before(p, d, b, c);
  // H_c and C_l, then (double buffering) source tile 0: all copies issued before the block
  // waits for any, while the row vectors load.
  stage_state_async<PP, NP>(sH, st + ((static_cast<size_t>(b) * d.nc + c) * d.H + h) * PP * NP);
  stage_raw_async<NP>(sC, p.Cm + b * p.C_bs + tl.t0 * p.C_ss + g * d.N, p.C_ss, tl.rows, d.N);
  cp_async_commit();
  if constexpr (S::kBufs > 1) {
    issue_tile<PP, NP, false, kDocs, true>(p, d, b, h, 1, c, 0, cb, cs, dtv, Tile(smem + S::buf0));
    cp_async_commit();
  }
  for (int r = threadIdx.x; r < kT; r += kThreads) cs_l[r] = cs[cb + i * kT + r];
  load_tile_docs<kDocs>(p, d, b, c, tl, doc_l);
  if constexpr (S::kBufs > 1) cp_async_wait<1>();  // H_c in (tile 0 may still be in flight)
  else cp_async_wait<0>();
  __syncthreads();

  // Prologue: this half of the state columns of C_l H_c^T, rows scaled by e^{cs_l}.
  float acc[NTO][4];
  zero_acc(acc);
  mma_abt<NTO, NP / 2>(acc, sC, ldb(NP), row0, sH, ldb(NP), 0, half * (NP / 2));
  {
    const int r0 = row0 + gr, r1 = r0 + 8;
    const float e0 = same_doc<kDocs>(doc_l[r0], entering) ? __expf(cs_l[r0]) : 0.f;
    const float e1 = same_doc<kDocs>(doc_l[r1], entering) ? __expf(cs_l[r1]) : 0.f;
#pragma unroll
    for (int nt = 0; nt < NTO; ++nt) {
      acc[nt][0] *= e0, acc[nt][1] *= e0;
      acc[nt][2] *= e1, acc[nt][3] *= e1;
    }
  }
  __syncthreads();  // H_c read by every warp before the source tiles overwrite it

  // (B_s is not staged: S = C_l B_s^T comes from cbl, computed once per group)
  tile_loop<PP, NP, false, kDocs, true, S::kBufs>(
      p, d, b, h, 1, c, 0, i, cb, cs, dtv, smem + S::buf0, S::tile_bytes, S::kBufs > 1, [&](int j, const Tile& t) {
        // On the diagonal tile, a warp whose source columns all lie after its rows adds nothing.
        if (j < i || half * 32 <= row0 + 15) {
          float sc[4][4];  // S rows row0 .. + 16, source columns 32 half .. + 32
          load_cb(sc, cbl, cb_pair_at(d, b, c, g, tile_pair(i, j)));
          // Mask and scale in the accumulators, pack, and acc += W (16 x 32) x_s[32 half ..].
          pair_decay<true, kDocs>(t, cs_l, doc_l, i, j, row0 + gr, half * 32,
                                  [&](int nt, int e, float decay) { sc[nt][e] *= decay; });
          uint32_t af[2][4];
          pack_scores(af, sc);
          mma_scores(acc, af, t.head, ldb(PP), half * 32);
        }
      });

  // The second half's partial sums through shared memory, then y = acc + D x.
  if (half == 1) stash_half(sY, ldf(PP), acc, row0 + gr);
  __syncthreads();
  if (half == 0) {
    const float Dh = p.D ? p.D[h] : 0.f;
    // Four n8 tiles at a time, their x loads (for D x) issued before any of their y stores.
#pragma unroll
    for (int nb = 0; nb < NTO; nb += 4) {
      float xv[4][4];
      load_n8x4(xv, p.x + b * p.x_bs + tl.t0 * p.x_ss + h * d.P, p.x_ss, row0 + gr, tl.rows, nb, d.P, p.D != nullptr);
#pragma unroll
      for (int u = 0; u < 4; ++u)
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const int r = row0 + gr + (e >> 1) * 8, pi = (nb + u) * 8 + tq * 2 + (e & 1);
          if (r < tl.rows && pi < d.P)
            y[((static_cast<size_t>(b) * d.L + tl.t0 + r) * d.H + h) * d.P + pi] =
                __float2bfloat16(acc[nb + u][e] + sY[r * ldf(PP) + pi] + Dh * xv[u][e]);
        }
    }
  }
}

// Shared-memory plan of the l-tile backward (dC, row sums of dcs). Regions are reused by
// phase so that two blocks fit on a multiprocessor (98 KB at headdim 64, d_state 128):
// the source tiles (B_s, x_s) overlay H_c, which only the prologue reads, and the f32 dC
// tile overlays e^{cs} dy (prologue) and the score tiles (loop).
template <int PP, int NP>
struct BwdLSmem {
  static constexpr size_t sC = 0;
  static constexpr size_t sDy = sC + bf_bytes(kT, NP);
  static constexpr size_t sSrc = sDy + bf_bytes(kT, PP);  // B_s then x_s; H_c (bf16) in the prologue
  static constexpr size_t src_bytes = cmax(bf_bytes(kT, NP) + bf_bytes(kT, PP), bf_bytes(PP, NP));
  static constexpr size_t sLoop = sSrc + src_bytes;  // e^{cs} dy; S1, S2; the dC tile (f32)
  static constexpr size_t loop_bytes = cmax(cmax(bf_bytes(kT, PP), 2 * f_bytes(kT, kT)), f_bytes(kT, NP));
  static constexpr size_t sW = sLoop + loop_bytes;
  static constexpr size_t vec = sW + bf_bytes(kT, kT);
  static constexpr size_t docs = vec + round_up(3 * kT * sizeof(float));  // doc_l, doc_s
  static constexpr size_t total = docs + round_up(2 * kT * sizeof(int));
};

// Per l-tile: dC_l = sum_{s <= l} W'_ls B_s + e^{cs_l} H_c^T dy_l, W'_ls = e^{cs_l - cs_s}
// dt_s (dy_l . x_s), and the row sums of dcs: sum_s (C_l . B_s) W'_ls + e^{cs_l} dy_l . H_c C_l.
// dC_part (B, L, H, N) f32; dcs_row (B, H, nc, Qp).
template <int PP, int NP, bool kDocs>
__global__ void __launch_bounds__(kThreads, smem_blocks(BwdLSmem<PP, NP>::total, 2)) bwd_l_kernel(Ptrs p, SsdDims d, const float* dtv, const float* cs,
                                                         const float* st, float* dC_part, float* dcs_row) {
  using S = BwdLSmem<PP, NP>;
  extern __shared__ __align__(128) unsigned char smem[];
  bf* sC = reinterpret_cast<bf*>(smem + S::sC);
  bf* sDy = reinterpret_cast<bf*>(smem + S::sDy);
  bf* sB = reinterpret_cast<bf*>(smem + S::sSrc);
  bf* sX = reinterpret_cast<bf*>(smem + S::sSrc + bf_bytes(kT, NP));
  bf* sH = reinterpret_cast<bf*>(smem + S::sSrc);
  float* sF = reinterpret_cast<float*>(smem + S::sLoop);
  bf* sDs = reinterpret_cast<bf*>(smem + S::sLoop);
  float* sS1 = reinterpret_cast<float*>(smem + S::sLoop);
  float* sS2 = reinterpret_cast<float*>(smem + S::sLoop + f_bytes(kT, kT));
  bf* sW = reinterpret_cast<bf*>(smem + S::sW);
  float* cs_l = reinterpret_cast<float*>(smem + S::vec);
  float* cs_s = cs_l + kT;
  float* dt_s = cs_s + kT;
  int* doc_l = reinterpret_cast<int*>(smem + S::docs);
  int* doc_s = doc_l + kT;

  const int c = blockIdx.x / d.Qt, i = blockIdx.x % d.Qt, h = blockIdx.y, b = blockIdx.z, g = h / d.hpg;
  const TileRows tl(d, c, i);
  const size_t cb = ((static_cast<size_t>(b) * d.H + h) * d.nc + c) * d.Qp;
  const int row = threadIdx.x / 4, part = threadIdx.x % 4;  // 4 threads per row for the row sums
  if (tl.rows <= 0) {
    if (part == 0) dcs_row[cb + i * kT + row] = 0.f;
    return;
  }
  const int entering = doc_before(p, d, b, c);
  for (int r = threadIdx.x; r < kT; r += kThreads) cs_l[r] = cs[cb + i * kT + r];
  load_tile_docs<kDocs>(p, d, b, c, tl, doc_l);
  __syncthreads();
  const bf* dyl = p.dy + b * p.dy_bs + tl.t0 * p.dy_ss + h * d.P;
  stage_raw<NP>(sC, p.Cm + b * p.C_bs + tl.t0 * p.C_ss + g * d.N, p.C_ss, tl.rows, d.N);
  stage_raw<PP>(sDy, dyl, p.dy_ss, tl.rows, d.P);
  stage<PP>(sDs, dyl, p.dy_ss, tl.rows, d.P, [&](int r) { return same_doc<kDocs>(doc_l[r], entering) ? __expf(cs_l[r]) : 0.f; });
  stage_state<PP, NP>(sH, st + ((static_cast<size_t>(b) * d.nc + c) * d.H + h) * PP * NP);
  __syncthreads();

  using WC = WarpTile<kT, NP>;
  const WC wc;
  Acc acc[WC::NF];
  zero(acc);
  mma<WC::NF, PP, wmma::row_major, wmma::row_major>(acc, sDs, ldb(PP), sH, ldb(NP), wc.row0, wc.col0);
  __syncthreads();
  store(sF, ldf(NP), acc, wc.row0, wc.col0);
  __syncthreads();
  float rsum = 0.f;  // the row sum of dcs for `row`, on all four of its threads
  {
    float v = 0.f;
    for (int n = part; n < NP; n += 4) v += __bfloat162float(sC[row * ldb(NP) + n]) * sF[row * ldf(NP) + n];
    rsum = quad_sum(v);
  }
  __syncthreads();

  for (int j = 0; j <= i; ++j) {
    stage_source_tile<PP, NP, kDocs>(p, d, b, h, TileRows(d, c, j), cs + cb + j * kT, dtv + cb + j * kT, sB, sX, cs_s, dt_s,
                              c, doc_s);
    __syncthreads();
    score_tiles<PP, NP>(sS1, sC, sB, sS2, sDy, sX);
    __syncthreads();
    {
      float v = 0.f;
#pragma unroll 4
      for (int k = 0; k < 16; ++k) {
        const int s = part * 16 + k;
        const bool keep = (j < i || s <= row) && same_doc<kDocs>(doc_l[row], doc_s[s]);
        const float w = keep ? sS2[row * ldf(kT) + s] * __expf(cs_l[row] - cs_s[s]) * dt_s[s] : 0.f;
        sW[row * ldb(kT) + s] = __float2bfloat16(w);
        v += sS1[row * ldf(kT) + s] * w;
      }
      rsum += quad_sum(v);
    }
    __syncthreads();
    mma<WC::NF, kT, wmma::row_major, wmma::row_major>(acc, sW, ldb(kT), sB, ldb(NP), wc.row0, wc.col0);
    __syncthreads();
  }
  store(sF, ldf(NP), acc, wc.row0, wc.col0);
  __syncthreads();
  if (part == 0) dcs_row[cb + i * kT + row] = rsum;
  for (int e = threadIdx.x; e < tl.rows * d.N; e += kThreads) {
    const int r = e / d.N, n = e % d.N;
    dC_part[((static_cast<size_t>(b) * d.L + tl.t0 + r) * d.H + h) * d.N + n] = sF[r * ldf(NP) + n];
  }
}

// The l-tile backward on mma.sync: warp (strip, half) owns 16 rows of the tile. Per source
// tile it forms S2 = dy_l x_s^T over half of the 64 source columns, giving W (masked,
// scaled) in registers; S1 = C_l B_s^T only enters the row sums of dcs (sum_s S1 o W), whose
// halves meet through shared memory at the end of each head. dC += W B_s runs over all 64
// columns and half of the state columns (W handed through the strip tile, put_scores), as
// does the prologue. For d_state <= 128.
// Shared memory: C_l (the prologue's; the loop's W strips overlay it), dy_l of kHeads heads,
// the tile buffers (B_s and the heads' x_s; one head's H_c overlays the second in the
// prologue), each head's cs_l and second-half row sums, doc_l.
template <int PP, int NP, int kHeads, template <int, int, bool, size_t, int, int, int, int> class Plan = TilePlan>
using BwdLPlan = Plan<PP, NP, true, bf_bytes(kT, NP) + kHeads * bf_bytes(kT, PP), 0, 2 * kHeads, 2, kHeads>;
// Heads of a group taken together in the l-tile and dB backward (see bwd_l_mma_kernel): two
// where the plan still admits two blocks a multiprocessor with two buffers (headdim 64).
template <typename Budget2>
constexpr int heads_together() {
  return Budget2::fits() && Budget2::kBufs >= 2 ? 2 : 1;
}
template <int PP, int NP>
struct BwdLMmaSmem : BwdLPlan<PP, NP, heads_together<BwdLPlan<PP, NP, 2, TileBudget>>()> {
  static constexpr int kHeads = heads_together<BwdLPlan<PP, NP, 2, TileBudget>>();
  static constexpr size_t sC = 0, sW = 0, sDy = bf_bytes(kT, NP);  // head k's dy_l at sDy + k bf_bytes(kT, PP)
  static_assert(bf_bytes(kT, kT) <= bf_bytes(kT, NP), "W overlays C_l");
};

// dC_l = sum over the block's heads of [e^{cs_l} dy_l H_c + sum_{s <= l} W B_s], W = (dy_l
// x_s^T) o decay o dt_s per head, and each head's row sums of dcs. B_s belongs to the group,
// so the heads taken together (kHeads) add their W tiles in f32 before one product with
// B_s: per tile pair a warp runs 16 mma.sync per head for W and 32 for W B_s, where a head
// at a time ran 48 per head, and B_s is staged once for them. The W tile is shared by the two
// warps of a row strip (put_scores), each warp holding dC for half the state columns.
template <int PP, int NP, bool kDocs>
__global__ void __launch_bounds__(kThreads, 2)
    bwd_l_mma_kernel(Ptrs p, SsdDims d, const float* dtv, const float* cs, const bf* st, const float* cbl,
                     float* dC_part, bf* dC_out, float* dcs_row) {
  static_assert(NP <= 128, "the mma.sync dC kernel serves d_state <= 128 (the WMMA one above)");
  using S = BwdLMmaSmem<PP, NP>;
  constexpr int kH = S::kHeads;
  static_assert(S::fits(), "the l-tile backward's plan fits two blocks");
  using Tile = StagedTile<PP, NP, true, kH>;
  constexpr int NTC = NP / 16;  // n8 tiles of a warp's dC: its half of the state columns
  constexpr int kDyStride = static_cast<int>(bf_bytes(kT, PP) / sizeof(bf));
  extern __shared__ __align__(128) unsigned char smem[];
  bf* sC = reinterpret_cast<bf*>(smem + S::sC);
  bf* sW = reinterpret_cast<bf*>(smem + S::sW);
  bf* sDy = reinterpret_cast<bf*>(smem + S::sDy);
  bf* sH = reinterpret_cast<bf*>(smem + S::buf1);
  float* cs_l = reinterpret_cast<float*>(smem + S::vec);  // head k's at cs_l + k kT
  float* rs_half = cs_l + kH * kT;                        // the second half's row sums, likewise
  int* doc_l = reinterpret_cast<int*>(smem + S::docs);

  // The block takes d.hb heads of one group (blockIdx.y: which d.hb), kH at a time; dC is
  // summed over the heads in the accumulators, so that one f32 dC tile per d.hb heads leaves
  // the multiprocessor.
  const int c = blockIdx.x / d.Qt, i = blockIdx.x % d.Qt, part = blockIdx.y, b = blockIdx.z;
  const int g = part * d.hb / d.hpg, h_end = (part + 1) * d.hb;
  const TileRows tl(d, c, i);
  if (tl.rows <= 0) {
    for (int h = part * d.hb; h < h_end; ++h)
      if (threadIdx.x < kT)
        dcs_row[((static_cast<size_t>(b) * d.H + h) * d.nc + c) * d.Qp + i * kT + threadIdx.x] = 0.f;
    return;
  }
  const int warp = threadIdx.x >> 5, strip = warp & 3, half = warp >> 2;
  const int row0 = strip * 16, tq = threadIdx.x & 3, n0 = half * (NP / 2);
  const int r0 = row0 + ((threadIdx.x & 31) >> 2), r1 = r0 + 8;  // this lane's two rows
  const int entering = doc_before(p, d, b, c);
  const size_t head_step = static_cast<size_t>(d.nc) * d.Qp;  // from one head's cs to the next's
  load_tile_docs<kDocs>(p, d, b, c, tl, doc_l);

  float acc[NTC][4];  // dC of the heads so far
  zero_acc(acc);
#pragma unroll 1
  for (int h = part * d.hb; h < h_end; h += kH) {
    const int nh = min(kH, h_end - h);
    const size_t cb = ((static_cast<size_t>(b) * d.H + h) * d.nc + c) * d.Qp;  // head h's; h + k's at + k head_step
    float rs[kH][2] = {};  // this lane's part of each head's row sums of dcs (rows r0, r1)
    // Prologue, a head at a time: dC += e^{cs_l} dy_l H_c over this warp's half of the state
    // columns, 16 at a time, the rows scaled in f32 before they join the other heads' sums.
    // Source tile 0 (double buffering) loads behind the first head's H_c; C_l (for the row
    // sums) is staged again for each kH heads, as the loop's W strips overlay it.
#pragma unroll
    for (int k = 0; k < kH; ++k) {
      if (k > 0 && k >= nh) break;
      stage_state_async<PP, NP>(sH, st + ((static_cast<size_t>(b) * d.nc + c) * d.H + h + k) * PP * NP);
      cp_async_commit();
      if (k == 0) {
        if constexpr (S::kBufs > 1) {
          issue_tile<PP, NP, true, kDocs, true>(p, d, b, h, nh, c, 0, cb, cs, dtv, Tile(smem + S::buf0));
          cp_async_commit();
        }
        stage_raw<NP>(sC, p.Cm + b * p.C_bs + tl.t0 * p.C_ss + g * d.N, p.C_ss, tl.rows, d.N);
        for (int u = 0; u < nh; ++u) {
          for (int r = threadIdx.x; r < kT; r += kThreads) cs_l[u * kT + r] = cs[cb + u * head_step + i * kT + r];
          stage_raw<PP>(sDy + u * kDyStride, p.dy + b * p.dy_bs + tl.t0 * p.dy_ss + (h + u) * d.P, p.dy_ss, tl.rows,
                        d.P);
        }
      }
      if (k == 0 && S::kBufs > 1) cp_async_wait<1>();  // H_c in (tile 0 may still be in flight)
      else cp_async_wait<0>();
      __syncthreads();
      const bf* dyk = sDy + k * kDyStride;
      const float e0 = same_doc<kDocs>(doc_l[r0], entering) ? __expf(cs_l[k * kT + r0]) : 0.f;
      const float e1 = same_doc<kDocs>(doc_l[r1], entering) ? __expf(cs_l[k * kT + r1]) : 0.f;
#pragma unroll
      for (int nt = 0; nt < NTC; nt += 2) {
        float t[2][4];
        zero_acc(t);
        mma_ab<2, PP>(t, dyk, ldb(PP), row0, sH + n0 + nt * 8, ldb(NP), 0);
#pragma unroll
        for (int u = 0; u < 2; ++u) {
          const int n = n0 + (nt + u) * 8 + tq * 2;
          t[u][0] *= e0, t[u][1] *= e0, t[u][2] *= e1, t[u][3] *= e1;
          const bf* c0 = sC + r0 * ldb(NP) + n;
          const bf* c1 = sC + r1 * ldb(NP) + n;
          rs[k][0] += __bfloat162float(c0[0]) * t[u][0] + __bfloat162float(c0[1]) * t[u][1];
          rs[k][1] += __bfloat162float(c1[0]) * t[u][2] + __bfloat162float(c1[1]) * t[u][3];
#pragma unroll
          for (int e = 0; e < 4; ++e) acc[nt + u][e] += t[u][e];
        }
      }
      __syncthreads();  // H_c read by every warp before the next head's (or a source tile) overwrites it
    }

    tile_loop<PP, NP, true, kDocs, true, S::kBufs, kH>(
        p, d, b, h, nh, c, 0, i, cb, cs, dtv, smem + S::buf0, S::tile_bytes, S::kBufs > 1, [&](int j, const Tile& t) {
          const size_t pair = cb_pair_at(d, b, c, g, tile_pair(i, j));
          // The warp's 32 source columns, 16 at a time (half the score registers live). On the
          // diagonal tile, 16 columns that all lie after the warp's rows have W = 0 (and its
          // strip's product skips them).
#pragma unroll
          for (int q = 0; q < 2; ++q) {
            const int col0 = half * 32 + q * 16;
            if (j < i || col0 <= row0 + 15) {
              float w[2][4];  // W of the heads, summed
#pragma unroll
              for (int k = 0; k < kH; ++k) {
                if (k > 0 && k >= nh) break;
                const Tile tk = t.of(k);
                float sw[2][4];  // S2 = dy_l x_s^T, then this head's W
                zero_acc(sw);
                mma_abt<2, PP>(sw, sDy + k * kDyStride, ldb(PP), row0, tk.head, ldb(PP), col0, 0);
                pair_decay<true, kDocs, 2>(tk, cs_l + k * kT, doc_l, i, j, r0, col0,
                                           [&](int nt, int e, float decay) { sw[nt][e] *= decay; });
                {
                  float s1[2][4];  // S1 = C_l B_s^T (from cbl): the row sums take sum_s S1 o W (W unrounded)
                  load_cb<2>(s1, cbl, pair, 2 * q);
#pragma unroll
                  for (int nt = 0; nt < 2; ++nt) {
                    rs[k][0] += s1[nt][0] * sw[nt][0] + s1[nt][1] * sw[nt][1];
                    rs[k][1] += s1[nt][2] * sw[nt][2] + s1[nt][3] * sw[nt][3];
                  }
                }
#pragma unroll
                for (int nt = 0; nt < 2; ++nt)
#pragma unroll
                  for (int e = 0; e < 4; ++e) w[nt][e] = k == 0 ? sw[nt][e] : w[nt][e] + sw[nt][e];
              }
              put_scores(sW, w, r0, col0);
            }
          }
          strip_sync(strip);
          // dC[:, n0 ..] += W (16 x 64, rounded to bf16) B_s[:, n0 .. n0 + NP / 2)
          mma_ab_range(acc, sW, ldb(kT), row0, t.wide + n0, ldb(NP), 0, j < i ? kT : row0 + 16);
        });

    // The heads' row sums of dcs, the second half's through shared memory (rs_half is written
    // again only after the next heads' barriers).
#pragma unroll
    for (int k = 0; k < kH; ++k) {
      rs[k][0] = quad_sum(rs[k][0]);
      rs[k][1] = quad_sum(rs[k][1]);
      if (half == 1 && tq == 0) rs_half[k * kT + r0] = rs[k][0], rs_half[k * kT + r1] = rs[k][1];
    }
    __syncthreads();
    if (half == 0 && tq == 0) {
#pragma unroll
      for (int k = 0; k < kH; ++k) {
        if (k > 0 && k >= nh) break;
        float* row = dcs_row + cb + k * head_step + i * kT;
        row[r0] = rs[k][0] + rs_half[k * kT + r0];
        row[r1] = rs[k][1] + rs_half[k * kT + r1];
      }
    }
  }

  store_dbc_cols(dC_part, dC_out, d, b, tl, part, acc, r0, n0);  // dC of the block's heads
}

// Shared-memory plan of the s-tile backward (dB, dx, ddt terms, column sums of dcs).
template <int PP, int NP>
struct BwdSSmem {
  static constexpr int FW = PP > NP ? PP : NP;
  static constexpr size_t sB = 0;
  static constexpr size_t sX = sB + bf_bytes(kT, NP);
  static constexpr size_t sC = sX + bf_bytes(kT, PP);
  static constexpr size_t sDy = sC + bf_bytes(kT, NP);
  // G_c (bf16) in the prologue; S1, S2, M, W in the loop; the f32 output tiles after each.
  static constexpr size_t sLoop = sDy + bf_bytes(kT, PP);
  static constexpr size_t loop_bytes =
      cmax(cmax(2 * f_bytes(kT, kT) + 2 * bf_bytes(kT, kT), f_bytes(kT, FW)), bf_bytes(PP, NP));
  static constexpr size_t vec = sLoop + loop_bytes;  // cs_s, dt_s, cs_l, wlast, rowv, rowd
  static constexpr size_t docs = vec + round_up(6 * kT * sizeof(float));  // doc_s, doc_l
  static constexpr size_t total = docs + round_up(2 * kT * sizeof(int));
};

// Per s-tile, with W'_ls = e^{cs_l - cs_s} dt_s (dy_l . x_s):
//   d(dt x)_s = sum_{l >= s} (C_l . B_s) e^{cs_l - cs_s} dy_l + e^{cs_last - cs_s} G_c B_s
//   dx_s = dt_s d(dt x)_s + D dy_s,   ddt_dir_s = x_s . d(dt x)_s
//   dB_s = sum_{l >= s} W'_ls C_l + e^{cs_last - cs_s} dt_s G_c^T x_s
//   dcs_col_s = -sum_{l >= s} (C_l . B_s) W'_ls - v_s,   v_s = e^{cs_last - cs_s} dt_s x_s . G_c B_s
// vsum_part / dD_part (B, H, nc, Qt): the tile's sum of v_s (a term of dcs_last) and of dy . x.
template <int PP, int NP, bool kDocs>
__global__ void __launch_bounds__(kThreads, smem_blocks(BwdSSmem<PP, NP>::total, 2)) bwd_s_kernel(Ptrs p, SsdDims d, const float* dtv, const float* cs,
                                                         const float* G, float* dB_part, bf* dx, float* ddt_dir,
                                                         float* dcs_col, float* vsum_part, float* dD_part) {
  using S = BwdSSmem<PP, NP>;
  extern __shared__ __align__(128) unsigned char smem[];
  bf* sB = reinterpret_cast<bf*>(smem + S::sB);
  bf* sX = reinterpret_cast<bf*>(smem + S::sX);
  bf* sC = reinterpret_cast<bf*>(smem + S::sC);
  bf* sDy = reinterpret_cast<bf*>(smem + S::sDy);
  bf* sG = reinterpret_cast<bf*>(smem + S::sLoop);
  float* sS1 = reinterpret_cast<float*>(smem + S::sLoop);
  float* sS2 = reinterpret_cast<float*>(smem + S::sLoop + f_bytes(kT, kT));
  bf* sM = reinterpret_cast<bf*>(smem + S::sLoop + 2 * f_bytes(kT, kT));
  bf* sW = reinterpret_cast<bf*>(smem + S::sLoop + 2 * f_bytes(kT, kT) + bf_bytes(kT, kT));
  float* sF = reinterpret_cast<float*>(smem + S::sLoop);
  float* cs_s = reinterpret_cast<float*>(smem + S::vec);
  float* dt_s = cs_s + kT;
  float* cs_l = dt_s + kT;
  float* wlast = cs_l + kT;
  float* rowv = wlast + kT;    // per-row v_s
  float* rowd = rowv + kT;     // per-row dy . x
  int* doc_s = reinterpret_cast<int*>(smem + S::docs);
  int* doc_l = doc_s + kT;

  const int c = blockIdx.x / d.Qt, i = blockIdx.x % d.Qt, h = blockIdx.y, b = blockIdx.z, g = h / d.hpg;
  const TileRows ts(d, c, i);
  const size_t cb = ((static_cast<size_t>(b) * d.H + h) * d.nc + c) * d.Qp;
  const size_t tile_at = ((static_cast<size_t>(b) * d.H + h) * d.nc + c) * d.Qt + i;
  const int row = threadIdx.x / 4, part = threadIdx.x % 4;
  if (ts.rows <= 0) {
    if (part == 0) dcs_col[cb + i * kT + row] = 0.f, ddt_dir[cb + i * kT + row] = 0.f;
    if (threadIdx.x == 0) vsum_part[tile_at] = 0.f, dD_part[tile_at] = 0.f;
    return;
  }
  const float cs_last = cs[cb + d.Qp - 1];
  const int last = doc_last(p, d, b, c);
  load_tile_docs<kDocs>(p, d, b, c, ts, doc_s);
  __syncthreads();
  for (int r = threadIdx.x; r < kT; r += kThreads) {
    cs_s[r] = cs[cb + i * kT + r];
    dt_s[r] = dtv[cb + i * kT + r];
    wlast[r] = same_doc<kDocs>(doc_s[r], last) ? __expf(cs_last - cs_s[r]) : 0.f;
  }
  __syncthreads();
  const bf* Bs = p.Bm + b * p.B_bs + ts.t0 * p.B_ss + g * d.N;
  const bf* xs = p.x + b * p.x_bs + ts.t0 * p.x_ss + h * d.P;
  stage_raw<NP>(sB, Bs, p.B_ss, ts.rows, d.N);
  stage_raw<PP>(sX, xs, p.x_ss, ts.rows, d.P);
  stage_state<PP, NP>(sG, G + ((static_cast<size_t>(b) * d.nc + c) * d.H + h) * PP * NP);
  // The scaled operands of the state terms, in the loop's C and dy buffers for now.
  stage<PP>(sDy, xs, p.x_ss, ts.rows, d.P, [&](int r) { return wlast[r] * dt_s[r]; });
  stage<NP>(sC, Bs, p.B_ss, ts.rows, d.N, [&](int r) { return wlast[r]; });
  __syncthreads();

  using WB = WarpTile<kT, NP>;
  using WX = WarpTile<kT, PP>;
  const WB wb;
  const WX wx;
  Acc accB[WB::NF], accX[WX::NF];
  zero(accB);
  zero(accX);
  mma<WB::NF, PP, wmma::row_major, wmma::row_major>(accB, sDy, ldb(PP), sG, ldb(NP), wb.row0, wb.col0);
  mma<WX::NF, NP, wmma::row_major, wmma::col_major>(accX, sC, ldb(NP), sG, ldb(NP), wx.row0, wx.col0);
  __syncthreads();  // sF overlays sG
  store(sF, ldf(PP), accX, wx.row0, wx.col0);
  __syncthreads();
  float vrow;
  {
    float v = 0.f;
    for (int k = part; k < PP; k += 4) v += __bfloat162float(sX[row * ldb(PP) + k]) * sF[row * ldf(PP) + k];
    vrow = quad_sum(v) * dt_s[row];
  }
  __syncthreads();

  float csum = 0.f;  // sum over l of (C_l . B_s) W'_ls for s = row
  for (int j = i; j < d.Qt; ++j) {
    const TileRows tl(d, c, j);
    if (tl.rows <= 0) break;
    stage_raw<NP>(sC, p.Cm + b * p.C_bs + tl.t0 * p.C_ss + g * d.N, p.C_ss, tl.rows, d.N);
    stage_raw<PP>(sDy, p.dy + b * p.dy_bs + tl.t0 * p.dy_ss + h * d.P, p.dy_ss, tl.rows, d.P);
    for (int r = threadIdx.x; r < kT; r += kThreads) cs_l[r] = cs[cb + j * kT + r];
    load_tile_docs<kDocs>(p, d, b, c, tl, doc_l);
    __syncthreads();
    score_tiles<PP, NP>(sS1, sB, sC, sS2, sX, sDy);
    __syncthreads();
    {
      float v = 0.f;
#pragma unroll 4
      for (int k = 0; k < 16; ++k) {
        const int l = part * 16 + k;
        const bool keep = (j > i || l >= row) && same_doc<kDocs>(doc_l[l], doc_s[row]);
        const float decay = keep ? __expf(cs_l[l] - cs_s[row]) : 0.f;
        const float t1 = sS1[row * ldf(kT) + l];
        const float w = sS2[row * ldf(kT) + l] * decay * dt_s[row];
        sM[row * ldb(kT) + l] = __float2bfloat16(t1 * decay);
        sW[row * ldb(kT) + l] = __float2bfloat16(w);
        v += t1 * w;
      }
      csum += quad_sum(v);
    }
    __syncthreads();
    mma<WX::NF, kT, wmma::row_major, wmma::row_major>(accX, sM, ldb(kT), sDy, ldb(PP), wx.row0, wx.col0);
    mma<WB::NF, kT, wmma::row_major, wmma::row_major>(accB, sW, ldb(kT), sC, ldb(NP), wb.row0, wb.col0);
    __syncthreads();
  }

  // d(dt x) of the tile -> dx, the x . d(dt x) term of ddt, dy . x for dD.
  store(sF, ldf(PP), accX, wx.row0, wx.col0);
  __syncthreads();
  const float Dh = p.D ? p.D[h] : 0.f;
  {
    float vx = 0.f, vd = 0.f;
    for (int k = part; k < d.P; k += 4) {
      const float xv = __bfloat162float(sX[row * ldb(PP) + k]);
      vx += xv * sF[row * ldf(PP) + k];
      if (row < ts.rows) vd += xv * __bfloat162float(p.dy[b * p.dy_bs + (ts.t0 + row) * p.dy_ss + h * d.P + k]);
    }
    vx = quad_sum(vx);
    vd = quad_sum(vd);
    if (part == 0) {
      ddt_dir[cb + i * kT + row] = vx;
      dcs_col[cb + i * kT + row] = -csum - vrow;
      rowv[row] = vrow;
      rowd[row] = vd;
    }
  }
  if (dx) {
    for (int e = threadIdx.x; e < ts.rows * d.P; e += kThreads) {
      const int r = e / d.P, k = e % d.P, t = ts.t0 + r;
      const float dyv = __bfloat162float(p.dy[b * p.dy_bs + t * p.dy_ss + h * d.P + k]);
      dx[(static_cast<size_t>(b) * d.L + t) * d.dx_row + h * d.P + k] =
          __float2bfloat16(dt_s[r] * sF[r * ldf(PP) + k] + Dh * dyv);
    }
  }
  __syncthreads();
  if (threadIdx.x == 0) {
    float sv = 0.f, sd = 0.f;
    for (int r = 0; r < kT; ++r) sv += rowv[r], sd += rowd[r];
    vsum_part[tile_at] = sv;
    dD_part[tile_at] = sd;
  }
  store(sF, ldf(NP), accB, wb.row0, wb.col0);
  __syncthreads();
  for (int e = threadIdx.x; e < ts.rows * d.N; e += kThreads) {
    const int r = e / d.N, n = e % d.N;
    dB_part[((static_cast<size_t>(b) * d.L + ts.t0 + r) * d.H + h) * d.N + n] = sF[r * ldf(NP) + n];
  }
}

// The s-tile backward on mma.sync, as two kernels so that each warp holds one accumulator
// tile: bwd_s_x_mma_kernel (d(dt x) -> dx, ddt_dir, dcs_col, and the v_s and dy . x sums;
// needs S1 = B_s C_l^T for M and S2 = x_s dy_l^T for the row sums) and bwd_s_b_mma_kernel
// (dB; needs S2 only). Warp (strip, half): 16 rows s of the tile, half of the 64 columns l
// of each l-tile; in the d(dt x) kernel (and its prologue, over half the state columns) the
// halves' partials meet through shared memory at the end, in the dB kernel W is handed
// through the strip tile and each warp holds half the state columns of dB (as the l-tile
// backward). For d_state <= 128.
// Formulas: see bwd_s_kernel.
// Shared memory: B_s, x_s, the two buffers of the l-tiles (dy_l; S1 comes from the per-group
// B C^T tiles; the f32 d(dt x) tile overlays the first at the end, G_c the second in the
// prologue), the row vectors (cs_s, dt_s, wlast, the second half's csum and vrow, rowv,
// rowd), doc_s.
template <int PP, int NP>
struct BwdSXMmaSmem : TilePlan<PP, NP, false, bf_bytes(kT, NP) + bf_bytes(kT, PP), PP, 7, PP == 64 ? 3 : 2> {
  static constexpr size_t sB = 0, sX = bf_bytes(kT, NP);
};

// The s-tile's cs, dt, wlast = e^{cs_last - cs_s} (0 across a document boundary) and docs, of
// heads h .. h + nh - 1 (cb: head h's chunk offset; head k's vectors at + k vec_step).
template <bool kDocs>
__device__ __forceinline__ void load_s_tile_scalars(const Ptrs& p, const SsdDims& d, int b, int c, int i,
                                                    const TileRows& ts, const float* dtv, const float* cs, size_t cb,
                                                    float* cs_s, float* dt_s, float* wlast, int* doc_s, int nh = 1,
                                                    int vec_step = 0) {
  const int last = doc_last(p, d, b, c);
  load_tile_docs<kDocs>(p, d, b, c, ts, doc_s);
  __syncthreads();
  for (int k = 0; k < nh; ++k) {
    const size_t at = cb + static_cast<size_t>(k) * d.nc * d.Qp;
    const float cs_last = cs[at + d.Qp - 1];
    for (int r = threadIdx.x; r < kT; r += kThreads) {
      const float csv = cs[at + i * kT + r];
      cs_s[k * vec_step + r] = csv;
      dt_s[k * vec_step + r] = dtv[at + i * kT + r];
      wlast[k * vec_step + r] = same_doc<kDocs>(doc_s[r], last) ? __expf(cs_last - csv) : 0.f;
    }
  }
}

template <int PP, int NP, bool kDocs>
__global__ void __launch_bounds__(kThreads, BwdSXMmaSmem<PP, NP>::kBlocks)
    bwd_s_x_mma_kernel(Ptrs p, SsdDims d, const float* dtv, const float* cs, const bf* G, const float* cbs, bf* dx,
                       float* ddt_dir, float* dcs_col, float* vsum_part, float* dD_part) {
  using S = BwdSXMmaSmem<PP, NP>;
  using Tile = StagedTile<PP, NP, false>;
  constexpr int NTX = PP / 8;
  extern __shared__ __align__(128) unsigned char smem[];
  bf* sB = reinterpret_cast<bf*>(smem + S::sB);
  bf* sX = reinterpret_cast<bf*>(smem + S::sX);
  bf* sG = reinterpret_cast<bf*>(smem + S::buf1);
  float* sF = reinterpret_cast<float*>(smem + S::buf0);
  float* cs_s = reinterpret_cast<float*>(smem + S::vec);
  float* dt_s = cs_s + kT;
  float* wlast = dt_s + kT;
  float* csum_h = wlast + kT;
  float* vrow_h = csum_h + kT;
  float* rowv = vrow_h + kT;
  float* rowd = rowv + kT;
  int* doc_s = reinterpret_cast<int*>(smem + S::docs);

  const int c = blockIdx.x / d.Qt, i = blockIdx.x % d.Qt, h = blockIdx.y, b = blockIdx.z, g = h / d.hpg;
  const TileRows ts(d, c, i);
  const size_t cb = ((static_cast<size_t>(b) * d.H + h) * d.nc + c) * d.Qp;
  const size_t tile_at = ((static_cast<size_t>(b) * d.H + h) * d.nc + c) * d.Qt + i;
  if (ts.rows <= 0) {
    if (threadIdx.x < kT) dcs_col[cb + i * kT + threadIdx.x] = 0.f, ddt_dir[cb + i * kT + threadIdx.x] = 0.f;
    if (threadIdx.x == 0) vsum_part[tile_at] = 0.f, dD_part[tile_at] = 0.f;
    return;
  }
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, strip = warp & 3, half = warp >> 2;
  const int row0 = strip * 16, gr = lane >> 2, tq = lane & 3, r0 = row0 + gr, r1 = r0 + 8;
  const int last = last_tile(d, c);
  // G_c and the s-tile's B_s, x_s, then (double buffering) l-tile i: all copies issued before
  // the block waits for any, while the row vectors load.
  stage_state_async<PP, NP>(sG, G + ((static_cast<size_t>(b) * d.nc + c) * d.H + h) * PP * NP);
  stage_raw_async<NP>(sB, p.Bm + b * p.B_bs + ts.t0 * p.B_ss + g * d.N, p.B_ss, ts.rows, d.N);
  stage_raw_async<PP>(sX, p.x + b * p.x_bs + ts.t0 * p.x_ss + h * d.P, p.x_ss, ts.rows, d.P);
  cp_async_commit();
  if constexpr (S::kBufs > 1) {
    issue_tile<PP, NP, false, kDocs, false>(p, d, b, h, 1, c, i, cb, cs, dtv, Tile(smem + S::buf0));
    cp_async_commit();
  }
  load_s_tile_scalars<kDocs>(p, d, b, c, i, ts, dtv, cs, cb, cs_s, dt_s, wlast, doc_s);
  if constexpr (S::kBufs > 1) cp_async_wait<1>();
  else cp_async_wait<0>();
  __syncthreads();

  // Prologue: d(dt x) = wlast B_s G_c^T over this half of the state columns; its part of v_s.
  float acc[NTX][4];
  zero_acc(acc);
  mma_abt<NTX, NP / 2>(acc, sB, ldb(NP), row0, sG, ldb(NP), 0, half * (NP / 2));
  float v0 = 0.f, v1 = 0.f;
  {
    const float w0 = wlast[r0], w1 = wlast[r1];
#pragma unroll
    for (int nt = 0; nt < NTX; ++nt) {
      const int k = nt * 8 + tq * 2;
      acc[nt][0] *= w0, acc[nt][1] *= w0;
      acc[nt][2] *= w1, acc[nt][3] *= w1;
      v0 += __bfloat162float(sX[r0 * ldb(PP) + k]) * acc[nt][0] + __bfloat162float(sX[r0 * ldb(PP) + k + 1]) * acc[nt][1];
      v1 += __bfloat162float(sX[r1 * ldb(PP) + k]) * acc[nt][2] + __bfloat162float(sX[r1 * ldb(PP) + k + 1]) * acc[nt][3];
    }
  }
  __syncthreads();  // G_c read by every warp before the l-tiles overwrite it

  float cs0 = 0.f, cs1 = 0.f;  // this lane's part of sum_l S1 W for rows r0, r1
  // (C_l is not staged: S1 = B_s C_l^T comes from cbs, computed once per group)
  tile_loop<PP, NP, false, kDocs, false, S::kBufs>(
      p, d, b, h, 1, c, i, last, cb, cs, dtv, smem + S::buf0, S::tile_bytes, S::kBufs > 1, [&](int j, const Tile& t) {
        const size_t pair = cb_pair_at(d, b, c, g, tile_pair(j, i));
        const float dt0 = dt_s[r0], dt1 = dt_s[r1];
        // The warp's 32 columns l, 16 at a time (half the score registers live: at three
        // blocks a multiprocessor, 32 held at once spilled in this loop). On the diagonal tile,
        // 16 columns that all lie before the warp's rows s add nothing.
#pragma unroll
        for (int q = 0; q < 2; ++q) {
          const int col0 = half * 32 + q * 16;
          if (j > i || col0 + 15 >= row0) {
            float s1[2][4], s2[2][4];
            load_cb<2>(s1, cbs, pair, 2 * q);
            zero_acc(s2);
            mma_abt<2, PP>(s2, sX, ldb(PP), row0, t.head, ldb(PP), col0, 0);
            pair_decay<false, kDocs, 2>(t, cs_s, doc_s, i, j, r0, col0, [&](int nt, int e, float decay) {
              const float w = s2[nt][e] * decay * (e < 2 ? dt0 : dt1);
              if (e < 2) cs0 += s1[nt][e] * w;
              else cs1 += s1[nt][e] * w;
              s1[nt][e] *= decay;  // M
            });
            uint32_t af[1][4];
            pack_scores(af, s1);
            mma_scores(acc, af, t.head, ldb(PP), col0);  // d(dt x) += M (16 x 16) dy_l[col0 ..]
          }
        }
      });

  // The halves' sums: the second half's d(dt x), csum and v parts through shared memory.
  cs0 = quad_sum(cs0), cs1 = quad_sum(cs1), v0 = quad_sum(v0), v1 = quad_sum(v1);
  if (half == 1) {
    stash_half(sF, ldf(PP), acc, r0);
    if (tq == 0) csum_h[r0] = cs0, csum_h[r1] = cs1, vrow_h[r0] = v0, vrow_h[r1] = v1;
  }
  __syncthreads();
  if (half == 0) {
    const float Dh = p.D ? p.D[h] : 0.f;
    float vx0 = 0.f, vx1 = 0.f, vd0 = 0.f, vd1 = 0.f;
    // Four n8 tiles at a time, their dy loads issued before any of their dx stores.
#pragma unroll
    for (int nb = 0; nb < NTX; nb += 4) {
      float dyv[4][4];
      load_n8x4(dyv, p.dy + b * p.dy_bs + ts.t0 * p.dy_ss + h * d.P, p.dy_ss, r0, ts.rows, nb, d.P, true);
#pragma unroll
      for (int u = 0; u < 4; ++u)
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const int r = e < 2 ? r0 : r1, k = (nb + u) * 8 + tq * 2 + (e & 1);
          const float f = acc[nb + u][e] + sF[r * ldf(PP) + k];  // d(dt x)[r][k]
          const float xv = __bfloat162float(sX[r * ldb(PP) + k]);
          if (dx && r < ts.rows && k < d.P)
            dx[(static_cast<size_t>(b) * d.L + ts.t0 + r) * d.dx_row + h * d.P + k] =
                __float2bfloat16(dt_s[r] * f + Dh * dyv[u][e]);
          if (e < 2) vx0 += xv * f, vd0 += xv * dyv[u][e];
          else vx1 += xv * f, vd1 += xv * dyv[u][e];
        }
    }
    vx0 = quad_sum(vx0), vx1 = quad_sum(vx1), vd0 = quad_sum(vd0), vd1 = quad_sum(vd1);
    if (tq == 0) {
      const float vr0 = (v0 + vrow_h[r0]) * dt_s[r0], vr1 = (v1 + vrow_h[r1]) * dt_s[r1];
      ddt_dir[cb + i * kT + r0] = vx0;
      ddt_dir[cb + i * kT + r1] = vx1;
      dcs_col[cb + i * kT + r0] = -(cs0 + csum_h[r0]) - vr0;
      dcs_col[cb + i * kT + r1] = -(cs1 + csum_h[r1]) - vr1;
      rowv[r0] = vr0, rowv[r1] = vr1, rowd[r0] = vd0, rowd[r1] = vd1;
    }
  }
  __syncthreads();
  if (threadIdx.x == 0) {
    float sv = 0.f, sd = 0.f;
    for (int r = 0; r < kT; ++r) sv += rowv[r], sd += rowd[r];
    vsum_part[tile_at] = sv;
    dD_part[tile_at] = sd;
  }
}

// Shared memory: x_s of kHeads heads, the W strips, the tile buffers (C_l and the heads' dy_l;
// one head's G_c overlays the second in the prologue), each head's cs_s, dt_s, wlast, doc_s.
template <int PP, int NP, int kHeads, template <int, int, bool, size_t, int, int, int, int> class Plan = TilePlan>
using BwdSBPlan = Plan<PP, NP, true, kHeads * bf_bytes(kT, PP) + bf_bytes(kT, kT), 0, 3 * kHeads, 2, kHeads>;
template <int PP, int NP>
struct BwdSBMmaSmem : BwdSBPlan<PP, NP, heads_together<BwdSBPlan<PP, NP, 2, TileBudget>>()> {
  static constexpr int kHeads = heads_together<BwdSBPlan<PP, NP, 2, TileBudget>>();
  static constexpr size_t sX = 0, sW = kHeads * bf_bytes(kT, PP);  // head k's x_s at k bf_bytes(kT, PP)
};

// dB_s = sum over the block's heads of [wlast dt_s x_s G_c + sum_{l >= s} W C_l], W = (x_s
// dy_l^T) o decay o dt_s per head: as in the l-tile backward, the heads taken together add
// their W in f32 before one product with the group's C_l, and the two warps of a row strip
// share W (put_scores), each holding dB for half the state columns.
template <int PP, int NP, bool kDocs>
__global__ void __launch_bounds__(kThreads, 2)
    bwd_s_b_mma_kernel(Ptrs p, SsdDims d, const float* dtv, const float* cs, const bf* G, float* dB_part,
                       bf* dB_out) {
  static_assert(NP <= 128, "the mma.sync dB kernel serves d_state <= 128 (the WMMA one above)");
  using S = BwdSBMmaSmem<PP, NP>;
  constexpr int kH = S::kHeads;
  static_assert(S::fits(), "the dB backward's plan fits two blocks");
  using Tile = StagedTile<PP, NP, true, kH>;
  constexpr int NTB = NP / 16;  // n8 tiles of a warp's dB: its half of the state columns
  constexpr int kXStride = static_cast<int>(bf_bytes(kT, PP) / sizeof(bf));
  extern __shared__ __align__(128) unsigned char smem[];
  bf* sX = reinterpret_cast<bf*>(smem + S::sX);
  bf* sW = reinterpret_cast<bf*>(smem + S::sW);
  bf* sG = reinterpret_cast<bf*>(smem + S::buf1);
  float* cs_s = reinterpret_cast<float*>(smem + S::vec);  // head k's cs_s, dt_s, wlast at + 3 k kT
  float* dt_s = cs_s + kT;
  float* wlast = dt_s + kT;
  int* doc_s = reinterpret_cast<int*>(smem + S::docs);

  // d.hb heads of one group, kH at a time, dB summed over them in the accumulators (as the
  // l-tile backward does for dC).
  const int c = blockIdx.x / d.Qt, i = blockIdx.x % d.Qt, part = blockIdx.y, b = blockIdx.z;
  const int h_end = (part + 1) * d.hb;
  const TileRows ts(d, c, i);
  if (ts.rows <= 0) return;
  const int warp = threadIdx.x >> 5, strip = warp & 3, half = warp >> 2;
  const int row0 = strip * 16, r0 = row0 + ((threadIdx.x & 31) >> 2), r1 = r0 + 8, n0 = half * (NP / 2);
  const int last = last_tile(d, c);

  float acc[NTB][4];  // dB of the heads so far
  zero_acc(acc);
#pragma unroll 1
  for (int h = part * d.hb; h < h_end; h += kH) {
    const int nh = min(kH, h_end - h);
    const size_t cb = ((static_cast<size_t>(b) * d.H + h) * d.nc + c) * d.Qp;  // head h's
    // Prologue, a head at a time: dB += wlast dt_s x_s G_c over this warp's half of the state
    // columns, 16 at a time, the rows scaled in f32 before they join the other
    // heads' sums. l-tile i (double buffering) loads behind the first head's G_c.
#pragma unroll
    for (int k = 0; k < kH; ++k) {
      if (k > 0 && k >= nh) break;
      stage_state_async<PP, NP>(sG, G + ((static_cast<size_t>(b) * d.nc + c) * d.H + h + k) * PP * NP);
      cp_async_commit();
      if (k == 0) {
        if constexpr (S::kBufs > 1) {
          issue_tile<PP, NP, true, kDocs, false>(p, d, b, h, nh, c, i, cb, cs, dtv, Tile(smem + S::buf0));
          cp_async_commit();
        }
        load_s_tile_scalars<kDocs>(p, d, b, c, i, ts, dtv, cs, cb, cs_s, dt_s, wlast, doc_s, nh, 3 * kT);
        for (int u = 0; u < nh; ++u)
          stage_raw<PP>(sX + u * kXStride, p.x + b * p.x_bs + ts.t0 * p.x_ss + (h + u) * d.P, p.x_ss, ts.rows, d.P);
      }
      if (k == 0 && S::kBufs > 1) cp_async_wait<1>();
      else cp_async_wait<0>();
      __syncthreads();
      const float w0 = wlast[3 * k * kT + r0] * dt_s[3 * k * kT + r0];
      const float w1 = wlast[3 * k * kT + r1] * dt_s[3 * k * kT + r1];
#pragma unroll
      for (int nt = 0; nt < NTB; nt += 2) {
        float t[2][4];
        zero_acc(t);
        mma_ab<2, PP>(t, sX + k * kXStride, ldb(PP), row0, sG + n0 + nt * 8, ldb(NP), 0);
#pragma unroll
        for (int u = 0; u < 2; ++u) {
          acc[nt + u][0] += t[u][0] * w0, acc[nt + u][1] += t[u][1] * w0;
          acc[nt + u][2] += t[u][2] * w1, acc[nt + u][3] += t[u][3] * w1;
        }
      }
      __syncthreads();  // G_c read by every warp before the next head's (or an l-tile) overwrites it
    }

    tile_loop<PP, NP, true, kDocs, false, S::kBufs, kH>(
        p, d, b, h, nh, c, i, last, cb, cs, dtv, smem + S::buf0, S::tile_bytes, S::kBufs > 1, [&](int j, const Tile& t) {
          // On the diagonal tile, a warp whose columns l all lie before its rows s has W = 0
          // (and its strip's product skips those columns).
          if (j > i || half * 32 + 31 >= row0) {
            float w[4][4];  // W of the heads, summed
#pragma unroll
            for (int k = 0; k < kH; ++k) {
              if (k > 0 && k >= nh) break;
              const Tile tk = t.of(k);
              float s2[4][4];
              zero_acc(s2);
              mma_abt<4, PP>(s2, sX + k * kXStride, ldb(PP), row0, tk.head, ldb(PP), half * 32, 0);
              const float dt0 = dt_s[3 * k * kT + r0], dt1 = dt_s[3 * k * kT + r1];
              pair_decay<false, kDocs>(tk, cs_s + 3 * k * kT, doc_s, i, j, r0, half * 32,
                                       [&](int nt, int e, float decay) {
                                         s2[nt][e] *= decay * (e < 2 ? dt0 : dt1);  // this head's W
                                       });
#pragma unroll
              for (int nt = 0; nt < 4; ++nt)
#pragma unroll
                for (int e = 0; e < 4; ++e) w[nt][e] = k == 0 ? s2[nt][e] : w[nt][e] + s2[nt][e];
            }
            put_scores(sW, w, r0, half * 32);
          }
          strip_sync(strip);
          // dB[:, n0 ..] += W (16 x 64, rounded to bf16) C_l[:, n0 .. n0 + NP / 2)
          mma_ab_range(acc, sW, ldb(kT), row0, t.wide + n0, ldb(NP), j > i ? 0 : row0, kT);
        });
  }

  store_dbc_cols(dB_part, dB_out, d, b, ts, part, acc, r0, n0);
}

// Per chunk: dcs -> d(dt A) by a reverse cumsum; ddt = ddt_dir + A d(dt A) (then through
// the softplus), and the chunk's parts of dA and ddt_bias. ddt (B, L, H) bf16 or null.
__global__ void __launch_bounds__(kThreads) finalize_dt_kernel(Ptrs p, SsdDims d, const float* dtv, const float* ddt_dir,
                                                               const float* dcs_row, const float* dcs_col,
                                                               const float* gdot, int ngdot, const float* vsum_part,
                                                               bf* ddt, float* dA_part, float* dbias_part) {
  __shared__ float warp_tot[kWarps], red_a[kWarps], red_b[kWarps];
  const int c = blockIdx.x, h = blockIdx.y, b = blockIdx.z;
  const size_t chunk = (static_cast<size_t>(b) * d.H + h) * d.nc + c, cb = chunk * d.Qp;
  // Thread t holds position Qp-1-t so that an inclusive prefix scan is the reverse cumsum.
  const int t = d.Qp - 1 - static_cast<int>(threadIdx.x);
  float v = 0.f;
  if (t >= 0) {
    v = dcs_row[cb + t] + dcs_col[cb + t];
    if (t == d.Qp - 1) {
      for (int k = 0; k < ngdot; ++k) v += gdot[chunk * ngdot + k];
      for (int k = 0; k < d.Qt; ++k) v += vsum_part[chunk * d.Qt + k];
    }
  }
  const int lane = threadIdx.x & 31, w = threadIdx.x >> 5;
#pragma unroll
  for (int o = 1; o < 32; o <<= 1) {
    const float u = __shfl_up_sync(0xffffffffu, v, o);
    if (lane >= o) v += u;
  }
  if (lane == 31) warp_tot[w] = v;
  __syncthreads();
  for (int k = 0; k < w; ++k) v += warp_tot[k];
  float da = 0.f, dbias = 0.f;
  const int pos = c * d.Q + t;
  if (t >= 0 && t < d.Q && pos < d.L) {
    const float dtval = dtv[cb + t];
    const float A = p.A[h];
    float g = ddt_dir[cb + t] + A * v;
    da = dtval * v;
    if (p.softplus) {
      const float raw = __bfloat162float(p.dt[b * p.dt_bs + pos * p.dt_ss + h]) + (p.dt_bias ? p.dt_bias[h] : 0.f);
      g *= math::sigmoid(raw);
    }
    dbias = g;
    if (ddt) ddt[(static_cast<size_t>(b) * d.L + pos) * d.H + h] = __float2bfloat16(g);
  }
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) {
    da += __shfl_xor_sync(0xffffffffu, da, o);
    dbias += __shfl_xor_sync(0xffffffffu, dbias, o);
  }
  if (lane == 0) red_a[w] = da, red_b[w] = dbias;
  __syncthreads();
  if (threadIdx.x == 0) {
    float sa = 0.f, sb = 0.f;
    for (int k = 0; k < kWarps; ++k) sa += red_a[k], sb += red_b[k];
    dA_part[chunk] = sa;
    dbias_part[chunk] = sb;
  }
}

// out (B, L, G, N) bf16, rows d.dbc_row apart, = sum over the parts of each group of part
// (B, L, H / hb, N), in order (a part: the sum over hb heads, taken by the tile kernel).
__global__ void sum_heads_kernel(const float* part, bf* out, SsdDims d) {
  const int parts = d.H / d.hb, per_group = d.hpg / d.hb;
  const size_t total = static_cast<size_t>(d.B) * d.L * d.G * d.N;
  for (size_t i = blockIdx.x * static_cast<size_t>(blockDim.x) + threadIdx.x; i < total;
       i += static_cast<size_t>(gridDim.x) * blockDim.x) {
    const int n = static_cast<int>(i % d.N);
    const size_t r = i / d.N;
    const int g = static_cast<int>(r % d.G);
    const size_t bt = r / d.G;
    const float* src = part + (bt * parts + static_cast<size_t>(g) * per_group) * d.N + n;
    float acc = 0.f;
    for (int k = 0; k < per_group; ++k) acc += src[static_cast<size_t>(k) * d.N];
    out[bt * d.dbc_row + static_cast<size_t>(g) * d.N + n] = __float2bfloat16(acc);
  }
}

// out[h] = sum over (b, j < per) of part[(b * H + h) * per + j]. One block
// per head: thread t sums the terms t, t + 256, ... in order, then a fixed tree over the
// threads, so the result does not depend on the run (B x per is 8k terms at B1 L65536).
__global__ void __launch_bounds__(kThreads) sum_per_head_kernel(const float* part, float* out, int B, int H, int per) {
  __shared__ float red[kWarps];
  const int h = blockIdx.x;
  float acc = 0.f;
  for (int i = threadIdx.x; i < B * per; i += kThreads) {
    const int b = i / per, j = i - b * per;
    acc += part[(static_cast<size_t>(b) * H + h) * per + j];
  }
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) acc += __shfl_xor_sync(0xffffffffu, acc, o);
  if (threadIdx.x % 32 == 0) red[threadIdx.x / 32] = acc;
  __syncthreads();
  if (threadIdx.x == 0) {
    float s = 0.f;
    for (int w = 0; w < kWarps; ++w) s += red[w];
    out[h] = s;
  }
}

// ---- host side ----

int pad_state_dim(int64_t v, int64_t max) {
  SSMT_CHECK(v >= 1 && v <= max, "ssd_chunked (CUDA): size ", v, " is outside 1..", max);
  return v <= 64 ? 64 : v <= 128 ? 128 : 256;
}

// Heads per block of the mma.sync dB/dC kernels (d_state <= 128; 1 above, where the WMMA
// kernels take a head a block). A block sums its heads' dB and dC in its accumulators, two
// heads at a time; up to 8 heads a block keep (chunks x 4, H / 8, B) blocks to spread. Where
// that is a whole group (H / G <= 8), the block's sum is final: the kernels write dB and dC
// in bf16, with no f32 partials to write, read and add (sum_heads_kernel). A whole group of
// 24 heads a block did not pay at B1 L65536 (1024 blocks; 5.315-5.325 ms against 5.304-5.313
// with 8 heads and the sum, H100) and lost 1% at B8 L2048 (256 blocks, under one wave):
// docs/perf_ssm.md. SSMTRAIN_SSD_HEADS_PER_BLOCK = k (a divisor of H / G) sets it, for tuning.
int heads_per_block(const SsdDims& d) {
  if (d.Np > 128) return 1;
  static const char* const env = std::getenv("SSMTRAIN_SSD_HEADS_PER_BLOCK");  // read once
  if (env && *env) {
    const int k = std::atoi(env);
    SSMT_CHECK(k >= 1 && d.hpg % k == 0, "ssd_chunked (CUDA): SSMTRAIN_SSD_HEADS_PER_BLOCK = '", env,
               "' must divide the heads per group (", d.hpg, ")");
    return k;
  }
  for (int hb : {8, 6, 4, 3, 2})
    if (d.hpg % hb == 0) return hb;
  return 1;
}

SsdDims make_dims(const SsdParams& p) {
  SsdDims d{};
  d.B = static_cast<int>(p.B), d.L = static_cast<int>(p.L), d.H = static_cast<int>(p.H);
  d.P = static_cast<int>(p.P), d.G = static_cast<int>(p.G), d.N = static_cast<int>(p.N);
  d.Q = static_cast<int>(p.chunk_size);
  d.Qt = (d.Q + kT - 1) / kT;
  d.Qp = d.Qt * kT;
  d.nc = static_cast<int>(p.num_chunks());
  d.hpg = d.H / d.G;
  d.Pp = pad_state_dim(p.P, kSsdCudaMaxHeaddim);
  d.Np = pad_state_dim(p.N, kSsdCudaMaxState);
  d.dx_row = static_cast<int>(p.dx_row());
  d.dbc_row = static_cast<int>(p.dbc_row());
  d.hb = heads_per_block(d);
  static_assert(64 * 64 % kPassElems == 0, "state passing covers whole blocks");
  return d;
}

Ptrs make_ptrs(const SsdParams& p) {
  Ptrs q{};
  q.x = static_cast<const bf*>(p.x.data), q.x_bs = p.x.batch_stride, q.x_ss = p.x.seq_stride;
  q.dt = static_cast<const bf*>(p.dt.data), q.dt_bs = p.dt.batch_stride, q.dt_ss = p.dt.seq_stride;
  q.Bm = static_cast<const bf*>(p.Bm.data), q.B_bs = p.Bm.batch_stride, q.B_ss = p.Bm.seq_stride;
  q.Cm = static_cast<const bf*>(p.Cm.data), q.C_bs = p.Cm.batch_stride, q.C_ss = p.Cm.seq_stride;
  q.dy = static_cast<const bf*>(p.dy.data), q.dy_bs = p.dy.batch_stride, q.dy_ss = p.dy.seq_stride;
  q.A = static_cast<const float*>(p.A);
  q.D = static_cast<const float*>(p.D);
  q.dt_bias = static_cast<const float*>(p.dt_bias);
  q.h0 = static_cast<const float*>(p.h0);
  q.dh_last = static_cast<const float*>(p.dh_last);
  q.seq = p.seq_idx;
  q.softplus = p.dt_softplus;
  return q;
}

// Calls f with the padded (P, N) as compile-time constants.
template <typename F>
void with_sizes(const SsdDims& d, F&& f) {
  auto n_case = [&](auto pp) {
    switch (d.Np) {
      case 64: f(pp, std::integral_constant<int, 64>{}); break;
      case 128: f(pp, std::integral_constant<int, 128>{}); break;
      default: f(pp, std::integral_constant<int, 256>{}); break;
    }
  };
  if (d.Pp == 64) n_case(std::integral_constant<int, 64>{});
  else n_case(std::integral_constant<int, 128>{});
}

template <typename K>
void launch(K kernel, dim3 grid, size_t smem, cudaStream_t stream, const auto&... args) {
  CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem)));
  kernel<<<grid, kThreads, smem, stream>>>(args...);
  CUDA_CHECK_LAUNCH();
}

// C B^T of every (batch, chunk, group) and causal tile pair, in the tile kernels' fragment
// layout: rows l (first); with `transposed`, also B C^T with rows s (second). f32, 16 KB a
// tile pair: 10 MB a layer at B8 L2048 Q256 G1 (per group, not per head).
std::pair<Tensor, Tensor> cb_tiles(const Ptrs& q, const SsdDims& d, bool transposed, Device device,
                                   cudaStream_t stream) {
  const int npairs = d.Qt * (d.Qt + 1) / 2;
  const Dims shape{d.B, d.nc, d.G, npairs, kPairFloats};
  Tensor cbl = Tensor::empty(shape, DType::f32, device);
  Tensor cbs = transposed ? Tensor::empty(shape, DType::f32, device) : Tensor();
  with_sizes(d, [&](auto, auto np) {
    constexpr int NP = decltype(np)::value;
    launch(cb_tiles_kernel<NP>, dim3(d.nc * npairs, d.G, d.B), 2 * bf_bytes(kT, NP), stream, q, d,
           cbl.data<float>(), transposed ? cbs.data<float>() : static_cast<float*>(nullptr));
  });
  return {cbl, cbs};
}

// Chunk states (kGrad: of the output gradient) of every (batch, chunk, head) into out: on
// mma.sync with cp.async staging, but at headdim 128 with d_state 256 (WMMA).
template <int PP, int NP, bool kGrad>
void chunk_states(const Ptrs& q, const SsdDims& d, const float* dtv, const float* cs, float* out, cudaStream_t stream) {
  const dim3 chunks(d.nc, d.H, d.B);
  if constexpr (PP == 128 && NP == 256) {
    launch(q.seq ? chunk_state_kernel<PP, NP, kGrad, true> : chunk_state_kernel<PP, NP, kGrad, false>, chunks,
           bf_bytes(kT, PP) + bf_bytes(kT, NP), stream, q, d, dtv, cs, out);
  } else {
    launch(q.seq ? chunk_state_mma_kernel<PP, NP, kGrad, true> : chunk_state_mma_kernel<PP, NP, kGrad, false>, chunks,
           ChunkStateMmaPlan<PP, NP>::total, stream, q, d, dtv, cs, out);
  }
}

// What prep_kernel makes per (batch, head, chunk): dt and cs (B, H, nc, Qp).
struct ChunkVecs {
  Tensor dt, cs;
  ChunkVecs(const SsdDims& d, Device device)
      : dt(Tensor::empty({d.B, d.H, d.nc, d.Qp}, DType::f32, device)),
        cs(Tensor::empty({d.B, d.H, d.nc, d.Qp}, DType::f32, device)) {}
};

// Prep, chunk states and state passing: fills v and st (the state entering each chunk).
// st: each chunk's own state, then (keep_f32) the state entering it; st_bf: the entering
// states in bf16 for the tile kernels.
void entering_states(const Ptrs& q, const SsdDims& d, ChunkVecs& v, float* st, bf* st_bf, bool keep_f32, float* h_last,
                     cudaStream_t stream) {
  const dim3 chunks(d.nc, d.H, d.B);
  float* dtv = v.dt.data<float>();
  float* cs = v.cs.data<float>();
  prep_kernel<<<chunks, kThreads, 0, stream>>>(q, d, dtv, cs);
  CUDA_CHECK_LAUNCH();
  with_sizes(d, [&](auto pp, auto np) {
    constexpr int PP = decltype(pp)::value, NP = decltype(np)::value;
    chunk_states<PP, NP, false>(q, d, dtv, cs, st, stream);
  });
  (q.seq ? state_pass_fwd_kernel<true> : state_pass_fwd_kernel<false>)<<<dim3(d.Pp * d.Np / kPassElems, d.H, d.B),
                                                                         kThreads, 0, stream>>>(q, d, cs, st, st_bf,
                                                                                                keep_f32, h_last);
  CUDA_CHECK_LAUNCH();
}

}  // namespace

bool ssd_cuda_supports(DType dtype, int64_t P, int64_t N, int64_t chunk_size) {
  return dtype == DType::bf16 && P >= 1 && P <= kSsdCudaMaxHeaddim && N >= 1 && N <= kSsdCudaMaxState &&
         chunk_size >= 1 && chunk_size <= kSsdCudaMaxChunk;
}

void ssd_fwd_cuda(const SsdParams& p, Device device) {
  SSMT_CHECK(ssd_cuda_supports(p.dtype, p.P, p.N, p.chunk_size), "ssd_chunked (CUDA): unsupported call");
  if (p.B == 0 || p.L == 0 || p.H == 0) return;
  const SsdDims d = make_dims(p);
  const Ptrs q = make_ptrs(p);
  cuda_detail::DeviceGuard guard(device.index);
  auto stream = static_cast<cudaStream_t>(cuda::compute_stream(device.index));
  ChunkVecs v(d, device);
  Tensor st = Tensor::empty({d.B, d.nc, d.H, d.Pp, d.Np}, DType::f32, device);
  Tensor st_bf = Tensor::empty({d.B, d.nc, d.H, d.Pp, d.Np}, DType::bf16, device);
  entering_states(q, d, v, st.data<float>(), static_cast<bf*>(st_bf.data_ptr()), false, static_cast<float*>(p.h_last),
                  stream);
  with_sizes(d, [&](auto pp, auto np) {
    constexpr int PP = decltype(pp)::value, NP = decltype(np)::value;
    Tensor cbl = cb_tiles(q, d, false, device, stream).first;
    launch(q.seq ? chunk_scan_fwd_mma_kernel<PP, NP, true> : chunk_scan_fwd_mma_kernel<PP, NP, false>,
           dim3(d.nc * d.Qt, d.H, d.B), ScanFwdMmaSmem<PP, NP>::total, stream, q, d,
           static_cast<const float*>(v.dt.data<float>()), static_cast<const float*>(v.cs.data<float>()),
           static_cast<const bf*>(st_bf.data_ptr()), static_cast<const float*>(cbl.data<float>()),
           static_cast<bf*>(p.y));
  });
}

void ssd_bwd_cuda(const SsdParams& p, Device device) {
  SSMT_CHECK(ssd_cuda_supports(p.dtype, p.P, p.N, p.chunk_size), "ssd_chunked (CUDA): unsupported call");
  if (p.B == 0 || p.L == 0 || p.H == 0) return;
  const SsdDims d = make_dims(p);
  const Ptrs q = make_ptrs(p);
  cuda_detail::DeviceGuard guard(device.index);
  auto stream = static_cast<cudaStream_t>(cuda::compute_stream(device.index));
  auto f32 = [&](const Dims& shape) { return Tensor::empty(shape, DType::f32, device); };
  ChunkVecs v(d, device);
  Tensor st = f32({d.B, d.nc, d.H, d.Pp, d.Np}), dS = f32({d.B, d.nc, d.H, d.Pp, d.Np});
  // The states in bf16 for the mma.sync backward (d_state <= 128); the WMMA one above reads
  // the f32 H_c and G_c instead.
  const bool mma_bwd = d.Np <= 128;
  Tensor st_bf, G_bf;
  if (mma_bwd) {
    st_bf = Tensor::empty({d.B, d.nc, d.H, d.Pp, d.Np}, DType::bf16, device);
    G_bf = Tensor::empty({d.B, d.nc, d.H, d.Pp, d.Np}, DType::bf16, device);
  }
  bf* st_bf_p = mma_bwd ? static_cast<bf*>(st_bf.data_ptr()) : nullptr;
  bf* G_bf_p = mma_bwd ? static_cast<bf*>(G_bf.data_ptr()) : nullptr;
  float* dtv_p = v.dt.data<float>();
  float* cs_p = v.cs.data<float>();
  entering_states(q, d, v, st.data<float>(), st_bf_p, true, nullptr, stream);

  const dim3 chunks(d.nc, d.H, d.B), tiles(d.nc * d.Qt, d.H, d.B), head_parts(d.nc * d.Qt, d.H / d.hb, d.B);
  with_sizes(d, [&](auto pp, auto np) {
    constexpr int PP = decltype(pp)::value, NP = decltype(np)::value;
    chunk_states<PP, NP, true>(q, d, dtv_p, cs_p, dS.data<float>(), stream);
  });
  const int ngdot = d.Pp * d.Np / kPassElems;
  Tensor gdot = f32({d.B, d.H, d.nc, ngdot});
  (q.seq ? state_pass_bwd_kernel<true> : state_pass_bwd_kernel<false>)<<<dim3(ngdot, d.H, d.B), kThreads, 0, stream>>>(
      q, d, cs_p, st.data<float>(), dS.data<float>(), G_bf_p, !mma_bwd, static_cast<float*>(p.dh0), gdot.data<float>());
  CUDA_CHECK_LAUNCH();

  // One block's heads make a whole group (mma.sync kernels): dB and dC leave the tile kernels
  // final, in bf16; else f32 partial sums per hb heads, added by sum_heads_kernel.
  const bool direct = mma_bwd && d.H / d.hb == d.G;
  Tensor dC_part, dB_part;
  if (!direct) dC_part = f32({d.B, d.L, d.H / d.hb, d.N}), dB_part = f32({d.B, d.L, d.H / d.hb, d.N});
  float* dC_part_p = direct ? nullptr : dC_part.data<float>();
  float* dB_part_p = direct ? nullptr : dB_part.data<float>();
  bf* dC_out = direct ? static_cast<bf*>(p.dCm) : nullptr;
  bf* dB_out = direct ? static_cast<bf*>(p.dBm) : nullptr;
  Tensor dcs_row = f32({d.B, d.H, d.nc, d.Qp}), dcs_col = f32({d.B, d.H, d.nc, d.Qp});
  Tensor ddt_dir = f32({d.B, d.H, d.nc, d.Qp});
  Tensor vsum = f32({d.B, d.H, d.nc, d.Qt}), dD_part = f32({d.B, d.H, d.nc, d.Qt});
  // The l- and s-tile backward: mma.sync kernels up to d_state 128, the WMMA kernels above.
  with_sizes(d, [&](auto pp, auto np) {
    constexpr int PP = decltype(pp)::value, NP = decltype(np)::value;
    const float* pdt = dtv_p;
    const float* pcs = cs_p;
    const float* pst = st.data<float>();
    const float* pdS = dS.data<float>();
    if constexpr (NP <= 128) {
      const auto [cbl, cbs] = cb_tiles(q, d, true, device, stream);
      launch(q.seq ? bwd_l_mma_kernel<PP, NP, true> : bwd_l_mma_kernel<PP, NP, false>, head_parts,
             BwdLMmaSmem<PP, NP>::total, stream, q, d, pdt, pcs, st_bf_p,
             static_cast<const float*>(cbl.data<float>()), dC_part_p, dC_out, dcs_row.data<float>());
      launch(q.seq ? bwd_s_x_mma_kernel<PP, NP, true> : bwd_s_x_mma_kernel<PP, NP, false>, tiles,
             BwdSXMmaSmem<PP, NP>::total, stream, q, d, pdt, pcs, G_bf_p,
             static_cast<const float*>(cbs.data<float>()),
             static_cast<bf*>(p.dx), ddt_dir.data<float>(), dcs_col.data<float>(), vsum.data<float>(),
             dD_part.data<float>());
      if (p.dBm)  // the dB kernel computes nothing else
        launch(q.seq ? bwd_s_b_mma_kernel<PP, NP, true> : bwd_s_b_mma_kernel<PP, NP, false>, head_parts,
               BwdSBMmaSmem<PP, NP>::total, stream, q, d, pdt, pcs, G_bf_p, dB_part_p, dB_out);
    } else {
      launch(q.seq ? bwd_l_kernel<PP, NP, true> : bwd_l_kernel<PP, NP, false>, tiles, BwdLSmem<PP, NP>::total,
             stream, q, d, pdt, pcs, pst, dC_part.data<float>(), dcs_row.data<float>());
      launch(q.seq ? bwd_s_kernel<PP, NP, true> : bwd_s_kernel<PP, NP, false>, tiles, BwdSSmem<PP, NP>::total,
             stream, q, d, pdt, pcs, pdS, dB_part.data<float>(), static_cast<bf*>(p.dx), ddt_dir.data<float>(),
             dcs_col.data<float>(), vsum.data<float>(), dD_part.data<float>());
    }
  });
  Tensor dA_part = f32({d.B, d.H, d.nc}), dbias_part = f32({d.B, d.H, d.nc});
  finalize_dt_kernel<<<chunks, kThreads, 0, stream>>>(q, d, dtv_p, ddt_dir.data<float>(), dcs_row.data<float>(),
                                                      dcs_col.data<float>(), gdot.data<float>(), ngdot,
                                                      vsum.data<float>(), static_cast<bf*>(p.ddt),
                                                      dA_part.data<float>(), dbias_part.data<float>());
  CUDA_CHECK_LAUNCH();
  const size_t nBC = static_cast<size_t>(d.B) * d.L * d.G * d.N;
  const int blocks = static_cast<int>(std::clamp<size_t>((nBC + 255) / 256, 1, 4096));
  for (auto [part, out] : {std::pair{&dB_part, p.dBm}, std::pair{&dC_part, p.dCm}}) {
    if (!out || direct) continue;
    sum_heads_kernel<<<blocks, 256, 0, stream>>>(part->data<float>(), static_cast<bf*>(out), d);
    CUDA_CHECK_LAUNCH();
  }
  for (auto [part, out, per] : {std::tuple{&dA_part, p.dA, d.nc}, std::tuple{&dbias_part, p.ddt_bias, d.nc},
                                std::tuple{&dD_part, p.dD, d.nc * d.Qt}}) {
    if (!out) continue;
    sum_per_head_kernel<<<d.H, kThreads, 0, stream>>>(part->data<float>(), static_cast<float*>(out), d.B, d.H, per);
    CUDA_CHECK_LAUNCH();
  }
}

}  // namespace ssmtrain
