// Selective scan forward and backward on CUDA (see selective_scan.h for the layout).
//
// Thread mapping: a block of 128 threads owns CH = 128 / TPC channels of one (batch, group);
// the TPC lanes (4 or 8) of a channel hold NL = N / TPC of its states each, so the sum over
// n of a channel is log2(TPC) warp shuffles. The sequence is walked in tiles of a fixed
// number of steps (32 forward, 16 backward), fully unrolled: only h carries from one step to
// the next, so the exponentials and loads of later steps overlap the current one. Steps past
// L are padded with delta = 0 (a = 1, no input), which leaves the state unchanged, so no tile
// needs a variable trip count. The raw values of the next tile are loaded into registers
// while the current one is scanned; softplus, the D skip and the z gate run in the staging
// and store phases, where every thread works on its own (step, channel) elements.
//
// Forward: the state before every kScanCheckpoint steps is saved when a gradient is needed.
// Backward, per 16-step tile from the last: recompute the tile's states from its checkpoint
// into shared memory, then run the adjoint recurrence backwards. The per-state products are
// summed with butterfly reduce-scatters (over a channel's lanes for d(u) and d(delta); over
// the warp's channels for dB and dC), the warps' dB/dC partials then go to per-block
// partials; reductions over the batch (dA, dD, ddelta_bias) go to per-(batch, segment)
// partials; small kernels sum the partials in a fixed order, so the result is deterministic.
//
// Time segments: when B x D is too small to fill the GPU, the sequence is cut into segments
// scanned in parallel (grid.z = B x segments). Pass 1 scans each segment from zero (the
// state forwards; the adjoint backwards, which needs no states) and keeps its end value and
// its sum of delta; pass 2 chains them through exp(A sum delta); pass 3 is the ordinary
// kernel, each segment starting from its carried value. See set_segments for the count.
//
// Packed documents (seq_idx): the decay of a step where the document index changes is the
// constant 0 (selective_scan.h). Each tile's restarts are one bit mask (bit t: step l0 + t
// restarts), built by a warp ballot from the indices that lane t loads with the tile's other
// raw values. Every place a decay is formed reads it: the forward step, the backward's
// recompute, the adjoint step a_t lam_t and the adjoint summary pass; and a time segment
// holding a restart carries nothing across it (pass 1 records a flag per segment, pass 2
// uses a decay product of 0 for it). A tile without restarts runs the unmasked instantiation
// of the tile loop. Every kernel is compiled twice, with and without seq_idx (kSeq): the plain
// scan loads no indices and has no masked loop at all, so packed-document support costs it
// nothing. The kernels trust seq_idx to be non-decreasing (checked only on the CPU).
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdlib>
#include <type_traits>

#include "core/backend.h"
#include "core/cuda/device.cuh"
#include "core/dtype.h"
#include "core/math.h"
#include "ssm/kernels/selective_scan.h"

namespace ssmtrain {

namespace {

#define SCAN_CUDA_CHECK(expr)                                                                     \
  do {                                                                                            \
    cudaError_t e_ = (expr);                                                                      \
    if (e_ != cudaSuccess)                                                                        \
      throw InternalError(detail::concat(__FILE__, ":", __LINE__, ": ", #expr, ": ", cudaGetErrorString(e_))); \
  } while (0)

constexpr int kThreads = 128;
constexpr int kTile = kScanTile;         // forward tile
constexpr int kBTile = kScanCheckpoint;  // backward tile = checkpoint interval
static_assert(kTile % kBTile == 0, "checkpoints must fall on forward-tile boundaries or inside");
constexpr float kLog2e = 1.4426950408889634f;

struct ScanParams {
  int B, L, D, N, G, nchunks, nckpt, nblocks_per_group;  // forward tiles, checkpoints
  bool softplus;
  bool A_log;              // A holds log(-A): the decay rate is -exp(A)
  const void* u;           // (B, L, D)
  const void* delta;       // (B, L, D)
  const void* z;           // (B, L, D) or null
  const float* A;          // (D, N)
  const void* Bm;          // (B, L, G, N), each (G, N) row dense; rows at the strides below
  const void* Cm;          // (B, L, G, N), likewise
  long long B_bs, C_bs;    // batch strides of Bm and Cm, in elements
  int B_ss, C_ss;          // their sequence strides (a row: G N elements or more)
  const float* Dskip;      // (D) or null
  const float* delta_bias; // (D) or null
  const float* h0;         // (B, D, N) or null
  const int* seq_idx;      // (B, L) document indices, or null (one document per row)
  void* out;               // (B, L, D)
  float* h_last;           // (B, D, N)
  float* ckpt;             // (B, D, nckpt, N) or null
  // backward
  const void* dout;        // (B, L, D)
  const float* dh_last;    // (B, D, N) or null
  void* du;                // (B, L, D)
  void* ddelta;            // (B, L, D)
  void* dz;                // (B, L, D) or null
  float* dB_part;          // (B, G, nblocks_per_group, L, N)
  float* dC_part;          // (B, G, nblocks_per_group, L, N)
  float* dA_part;          // (B, D, N)
  float* dD_part;          // (B, D)
  float* dbias_part;       // (B, D)
  float* dh0;              // (B, D, N) or null
  // Time segments scanned in parallel (nseg = 1: the whole sequence in one block). Segment
  // s covers steps [s * seg_len, min(L, (s + 1) * seg_len)); seg_len is a multiple of kTile.
  int nseg, seg_len;
  float* seg_local;        // (B, D, nseg, N): the summary pass's end values
  float* seg_dtsum;        // (B, D, nseg): sum of delta over each segment (summary pass)
  float* seg_keep;         // (B, D, nseg), with seq_idx: 0 when a document starts inside the
                           // segment (its decay product is 0), else 1; null without seq_idx
  const float* seg_init;   // (B, D, nseg, N): state before (forward) / adjoint after (backward) each segment
};

// Entry i of A as the recurrence uses it: A itself, or -exp(A) when the params hold log(-A)
// (expf, as the CUDA exp op, so the values are those of the composed -exp(A_log)).
__device__ __forceinline__ float decay_rate(const float* A, bool a_log, size_t i) {
  const float a = A[i];
  return a_log ? -expf(a) : a;
}

template <typename T> __device__ __forceinline__ void store(void* p, size_t i, float v) {
  static_cast<T*>(p)[i] = T(v);
}

// 2^x on the multi-function unit (the same instruction __expf uses, without its multiply:
// the A entries are scaled by log2(e) once).
__device__ __forceinline__ float exp2_fast(float x) {
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
  return y;
}

// out[0..NL) = p[0..NL) from shared memory, as 16- or 8-byte loads (p aligned to 4 * NL bytes).
template <int NL>
__device__ __forceinline__ void load_row(const float* p, float (&out)[NL]) {
  if constexpr (NL % 4 == 0) {
#pragma unroll
    for (int i = 0; i < NL / 4; ++i) {
      const float4 v = reinterpret_cast<const float4*>(p)[i];
      out[4 * i] = v.x, out[4 * i + 1] = v.y, out[4 * i + 2] = v.z, out[4 * i + 3] = v.w;
    }
  } else if constexpr (NL == 2) {
    const float2 v = *reinterpret_cast<const float2*>(p);
    out[0] = v.x, out[1] = v.y;
  } else {
    out[0] = p[0];
  }
}
template <int NL>
__device__ __forceinline__ void store_row(float* p, const float (&in)[NL]) {
  if constexpr (NL % 4 == 0) {
#pragma unroll
    for (int i = 0; i < NL / 4; ++i)
      reinterpret_cast<float4*>(p)[i] = make_float4(in[4 * i], in[4 * i + 1], in[4 * i + 2], in[4 * i + 3]);
  } else if constexpr (NL == 2) {
    *reinterpret_cast<float2*>(p) = make_float2(in[0], in[1]);
  } else {
    p[0] = in[0];
  }
}

// The decay exp(dt A) of one state (A2 = A log2 e); with kResets, the constant 0 at a step
// that starts a document (`reset`). Without kResets this is exactly the plain decay.
template <bool kResets>
__device__ __forceinline__ float decay(float dt, float A2, bool reset) {
  if constexpr (kResets) return reset ? 0.f : exp2_fast(dt * A2);
  else return exp2_fast(dt * A2);
}

// One step of the recurrence for a lane's NL states, h <- a h + (dt u) B with a the decay
// above, from the shared-memory rows of B and C at this lane's states; returns the lane's
// part of y = C . h.
template <int NL, bool kResets>
__device__ __forceinline__ float scan_step(float (&h)[NL], const float (&A2)[NL], float dt, float du,
                                           const float* B_row, const float* C_row, bool reset) {
  float Bt[NL], Ct[NL], yp = 0.f;
  load_row<NL>(B_row, Bt);
  load_row<NL>(C_row, Ct);
#pragma unroll
  for (int s = 0; s < NL; ++s) {
    h[s] = decay<kResets>(dt, A2[s], reset) * h[s] + du * Bt[s];
    yp += h[s] * Ct[s];
  }
  return yp;
}

// Runs fn(std::true_type) for a tile with restarts (mask != 0), else fn(std::false_type):
// the plain tile loop is a separate instantiation, untouched by the masks. mask is uniform
// over the block, so the branch never diverges.
template <typename Fn>
__device__ __forceinline__ void with_resets(unsigned mask, Fn&& fn) {
  if (mask) fn(std::true_type{});
  else fn(std::false_type{});
}

// Butterfly reduce-scatter of V values (V a power of two) over the lanes that differ in the
// lane bits M, 2M, .. < MEnd: each level exchanges half of the values still held, so the
// whole sum costs V/2 + V/4 + .. shuffles rather than V per level. On return the lane holds
// in v[0 .. max(V / 2^levels, 1)) the totals of the values base, base + 1, ...; once a
// single value is left, further levels all-reduce it, and `writer` stays true on only one of
// the lanes holding each total (the one whose remaining bits are zero).
template <int V, int M, int MEnd>
__device__ __forceinline__ void reduce_scatter(float* v, int lane, int& base, bool& writer) {
  if constexpr (M < MEnd) {
    if constexpr (V > 1) {
      constexpr int H = V / 2;
      const bool upper = lane & M;
#pragma unroll
      for (int i = 0; i < H; ++i) {
        const float send = upper ? v[i] : v[i + H], keep = upper ? v[i + H] : v[i];
        v[i] = keep + __shfl_xor_sync(0xffffffffu, send, M);
      }
      if (upper) base += H;
      reduce_scatter<H, 2 * M, MEnd>(v, lane, base, writer);
    } else {
      v[0] += __shfl_xor_sync(0xffffffffu, v[0], M);
      if (lane & M) writer = false;
      reduce_scatter<1, 2 * M, MEnd>(v, lane, base, writer);
    }
  }
}
template <int V, int M, int MEnd>
constexpr int scattered_count() {
  if constexpr (M >= MEnd || V == 1) return V;
  else return scattered_count<V / 2, 2 * M, MEnd>();
}

// Geometry of a block with TPC lanes per channel: CH channels, and the staging layout in
// which thread tid moves the (step, channel) elements (tid / CH + j * TPC, tid % CH), j < SEQ.
template <int TPC, int NL, int TILE>
struct Geo {
  static constexpr int CH = kThreads / TPC;                             // channels per block
  static constexpr int NMAX = TPC * NL;                                 // states per channel held by the lanes
  static constexpr int SEQ = TILE / TPC;                                // staged sequence elements per thread
  static constexpr int NBC = (TILE * NMAX + kThreads - 1) / kThreads;  // staged B (and C) elements per thread
  static_assert(kThreads % CH == 0 && TILE % TPC == 0, "tile geometry");
  // Whether staged B/C element j of this thread exists (the last pass may be partial).
  static __device__ __forceinline__ bool bc_slot(int j) {
    return (TILE * NMAX) % kThreads == 0 || static_cast<int>(threadIdx.x) + j * kThreads < TILE * NMAX;
  }
};

// Block coordinates shared by both kernels: (b, g, channel block) from the grid; the scan
// role (channel cl, lane q of that channel) and the staging role (channel cs, first step rs).
template <int TPC>
struct BlockCoords {
  int b, seg, lbeg, lend, g, c0, nch, cl, q, d, cs, rs;
  bool active, sactive;
  __device__ BlockCoords(const ScanParams& p) {
    constexpr int CH = kThreads / TPC;
    const int Dg = p.D / p.G;
    g = blockIdx.y;
    b = blockIdx.z / p.nseg;
    seg = blockIdx.z % p.nseg;
    lbeg = seg * p.seg_len;
    lend = min(p.L, lbeg + p.seg_len);
    c0 = g * Dg + blockIdx.x * CH;
    nch = min(CH, (g + 1) * Dg - c0);
    cl = threadIdx.x / TPC;
    q = threadIdx.x % TPC;
    d = c0 + cl;
    active = cl < nch;
    cs = threadIdx.x % CH;
    rs = threadIdx.x / CH;
    sactive = cs < nch;
  }
};

// Raw values of one tile, loaded into registers one tile ahead of their use so that the
// global loads overlap the scan of the current tile. Steps past L load as zeros.
template <typename T, int TPC, int NL, int TILE, bool kBackward, bool kSeq>
struct TileRegs {
  using G = Geo<TPC, NL, TILE>;
  T u[G::SEQ], x[G::SEQ], z[G::SEQ], o[G::SEQ], Bv[G::NBC], Cv[G::NBC];
  int seq_cur, seq_prev;  // with seq_idx: the indices at steps l0 + lane and l0 + lane - 1 (lane < TILE)

  __device__ __forceinline__ void fetch(const ScanParams& p, const BlockCoords<TPC>& bc, int l0) {
    if constexpr (kSeq) {
      const int lane = threadIdx.x & 31, t = l0 + lane;
      const bool ok = lane < TILE && t > 0 && t < p.L;  // step 0 never restarts; padded steps neither
      const int* row = p.seq_idx + static_cast<size_t>(bc.b) * p.L;
      seq_cur = ok ? row[t] : 0;
      seq_prev = ok ? row[t - 1] : 0;
    }
#pragma unroll
    for (int j = 0; j < G::SEQ; ++j) {
      const int t = bc.rs + j * TPC;
      const bool ok = bc.sactive && l0 + t < p.L;
      const size_t off = (static_cast<size_t>(bc.b) * p.L + l0 + t) * p.D + bc.c0 + bc.cs;
      u[j] = ok ? static_cast<const T*>(p.u)[off] : T(0.f);
      x[j] = ok ? static_cast<const T*>(p.delta)[off] : T(0.f);
      z[j] = ok && p.z ? static_cast<const T*>(p.z)[off] : T(0.f);
      if constexpr (kBackward) o[j] = ok ? static_cast<const T*>(p.dout)[off] : T(0.f);
    }
    // The tile's first rows of B and C; the elements' offsets from there fit in 32 bits.
    const T* Bt = static_cast<const T*>(p.Bm) + bc.b * p.B_bs + static_cast<long long>(l0) * p.B_ss;
    const T* Ct = static_cast<const T*>(p.Cm) + bc.b * p.C_bs + static_cast<long long>(l0) * p.C_ss;
#pragma unroll
    for (int j = 0; j < G::NBC; ++j) {
      const int i = threadIdx.x + j * kThreads, t = i / G::NMAX, n = i % G::NMAX;
      const bool ok = G::bc_slot(j) && l0 + t < p.L && n < p.N;
      const int row = bc.g * p.N + n;
      Bv[j] = ok ? Bt[t * p.B_ss + row] : T(0.f);
      Cv[j] = ok ? Ct[t * p.C_ss + row] : T(0.f);
    }
  }
  // The restarts of the fetched tile: bit t set when step l0 + t starts a new document (0
  // without seq_idx: a constant, so the masked tile loop is not even compiled). Every lane of
  // the warp must call it; every warp gets the same mask.
  __device__ __forceinline__ unsigned resets() const {
    if constexpr (kSeq) return __ballot_sync(0xffffffffu, seq_cur != seq_prev);
    else return 0u;
  }
  // The staged B and C rows into shared memory ([TILE][NMAX] arrays; either may be null).
  __device__ __forceinline__ void store_bc(float (*sB)[G::NMAX], float (*sC)[G::NMAX]) const {
#pragma unroll
    for (int j = 0; j < G::NBC; ++j) {
      const int i = threadIdx.x + j * kThreads;
      if (G::bc_slot(j)) {
        if (sB) sB[i / G::NMAX][i % G::NMAX] = static_cast<float>(Bv[j]);
        if (sC) sC[i / G::NMAX][i % G::NMAX] = static_cast<float>(Cv[j]);
      }
    }
  }
  // delta for staged element j: softplus(delta + bias) inside the sequence, 0 past its end
  // (a = exp(0 * A) = 1 and delta * u = 0: padded steps leave the state unchanged).
  __device__ __forceinline__ float dt(const ScanParams& p, const BlockCoords<TPC>& bc, int l0, int j, float bias,
                                      float* sig) const {
    const float xv = static_cast<float>(x[j]) + bias;
    const bool ok = bc.sactive && l0 + bc.rs + j * TPC < p.L;
    float v = xv, grad = 1.f;
    if (p.softplus) {
      if (sig) math::softplus_and_grad_fast(xv, v, grad);  // one exponential for both
      else v = math::softplus_fast(xv);
    }
    if (sig) *sig = grad;
    return ok ? v : 0.f;
  }
};

// dL/dy before the gate: dout * silu(z) with a gate, else dout.
__device__ __forceinline__ float gate_grad(const ScanParams& p, float dout, float z) {
  return p.z ? dout * math::silu_fast(z) : dout;
}

// kSummary: pass 1 of a segmented forward (each segment from zero; its end state and sum of
// delta only). Otherwise the forward proper.
template <typename T, int NL, int TPC, bool kSeq, bool kSummary>
__global__ void __launch_bounds__(kThreads, 4) scan_forward_kernel(ScanParams p) {
  using G = Geo<TPC, NL, kTile>;
  constexpr int CH = G::CH, NMAX = G::NMAX;
  __shared__ float s_u[kTile][CH], s_dt[kTile][CH], s_y[kTile][CH];
  __shared__ __align__(16) float s_B[kTile][NMAX];
  __shared__ __align__(16) float s_C[kTile][NMAX];
  const BlockCoords<TPC> bc(p);
  if (kSummary && bc.seg == p.nseg - 1) return;  // the carry needs no summary of the last segment
  const int N = p.N, L = p.L, D = p.D;
  const size_t bd = static_cast<size_t>(bc.b) * D + bc.d, bds = bd * p.nseg + bc.seg;

  float A2[NL], h[NL], dtsum = 0.f;
  [[maybe_unused]] float ybuf[TPC];  // the last TPC steps' partial sums of y
  const int lane = threadIdx.x & 31;
  [[maybe_unused]] bool seg_resets = false;  // (summary) whether a document starts inside the segment
#pragma unroll
  for (int s = 0; s < NL; ++s) {
    const int n = bc.q * NL + s;
    const bool ok = bc.active && n < N;
    A2[s] = ok ? decay_rate(p.A, p.A_log, static_cast<size_t>(bc.d) * N + n) * kLog2e : 0.f;
    h[s] = !ok || kSummary ? 0.f : bc.seg > 0 ? p.seg_init[bds * N + n] : p.h0 ? p.h0[bd * N + n] : 0.f;
  }
  const int cs = bc.c0 + bc.cs;
  const float Dv_s = bc.sactive && p.Dskip ? p.Dskip[cs] : 0.f;
  const float bias_s = bc.sactive && p.delta_bias ? p.delta_bias[cs] : 0.f;

  TileRegs<T, TPC, NL, kTile, false, kSeq> next;
  float cur_u[G::SEQ], cur_z[G::SEQ];  // the staged elements' u and z, for the output
  unsigned cur_resets = 0;             // the staged tile's restarts (bit t: step t)
  auto commit = [&](int l0) {
#pragma unroll
    for (int j = 0; j < G::SEQ; ++j) {
      const int t = bc.rs + j * TPC;
      cur_u[j] = static_cast<float>(next.u[j]);
      cur_z[j] = static_cast<float>(next.z[j]);
      s_u[t][bc.cs] = cur_u[j];
      s_dt[t][bc.cs] = next.dt(p, bc, l0, j, bias_s, nullptr);
    }
    cur_resets = next.resets();
    next.store_bc(s_B, s_C);
  };

  const int k0 = bc.lbeg / kTile, k1 = (bc.lend + kTile - 1) / kTile;
  next.fetch(p, bc, k0 * kTile);
  commit(k0 * kTile);
  __syncthreads();
  for (int k = k0; k < k1; ++k) {
    const int l0 = k * kTile;
    if (k + 1 < k1) next.fetch(p, bc, l0 + kTile);
    const unsigned resets = cur_resets;
    if constexpr (kSummary) seg_resets |= resets != 0;
    // The recurrence: only h carries from one step to the next, so with the loop unrolled
    // the exponentials and loads of later steps overlap the current one.
    with_resets(resets, [&](auto masked) {
      constexpr bool kResets = decltype(masked)::value;
#pragma unroll
      for (int t = 0; t < kTile; ++t) {
        if (!kSummary && t % kBTile == 0 && p.ckpt && bc.active) {  // the state before every kBTile steps
          const int c = (l0 + t) / kBTile;
          if (c < p.nckpt) {
#pragma unroll
            for (int s = 0; s < NL; ++s) {
              const int n = bc.q * NL + s;
              if (n < N) p.ckpt[(bd * p.nckpt + c) * N + n] = h[s];
            }
          }
        }
        const float dt = s_dt[t][bc.cl];
        const float yp = scan_step<NL, kResets>(h, A2, dt, dt * s_u[t][bc.cl], &s_B[t][bc.q * NL],
                                                &s_C[t][bc.q * NL], (resets >> t) & 1u);
        if constexpr (kSummary) {
          dtsum += dt;
        } else {
          // y over the channel's lanes, TPC steps at a time: one reduce-scatter leaves each
          // lane the sum of one of the steps (TPC - 1 shuffles per TPC steps, not log2(TPC)
          // per step), and every lane writes one.
          ybuf[t % TPC] = yp;
          if (t % TPC == TPC - 1) {
            int base = 0;
            bool writer = true;
            reduce_scatter<TPC, 1, TPC>(ybuf, lane, base, writer);
            s_y[t - (TPC - 1) + base][bc.cl] = ybuf[0];
          }
        }
      }
    });
    __syncthreads();
    // Outputs of the tile (D skip and z gate applied here, by every thread), then the next
    // tile's values into shared memory.
#pragma unroll
    for (int j = 0; j < G::SEQ; ++j) {
      const int t = bc.rs + j * TPC;
      if (!kSummary && bc.sactive && l0 + t < L) {
        float y = s_y[t][bc.cs] + Dv_s * cur_u[j];
        if (p.z) y *= math::silu_fast(cur_z[j]);
        store<T>(p.out, (static_cast<size_t>(bc.b) * L + l0 + t) * D + cs, y);
      }
    }
    if (k + 1 < k1) commit(l0 + kTile);
    __syncthreads();
  }
  if (bc.active && (kSummary || bc.seg == p.nseg - 1)) {
    float* dst = kSummary ? p.seg_local + bds * N : p.h_last + bd * N;
#pragma unroll
    for (int s = 0; s < NL; ++s) {
      const int n = bc.q * NL + s;
      if (n < N) dst[n] = h[s];
    }
    if (kSummary && bc.q == 0) {
      p.seg_dtsum[bds] = dtsum;
      if (p.seg_keep) p.seg_keep[bds] = seg_resets ? 0.f : 1.f;
    }
  }
}

template <int NL, int TPC>
constexpr size_t backward_dynamic_smem() {
  // state history + per-warp partial sums of dB and dC
  return sizeof(float) * ((kBTile - 1) * NL * kThreads + 2 * (kThreads / 32) * kBTile * TPC * NL);
}

// At most 128 registers a thread: with the 53 KB of shared memory of NL = 4, four blocks fit
// on a multiprocessor, and a 129th register would leave room for three.
template <typename T, int NL, int TPC, bool kSeq>
__global__ void __launch_bounds__(kThreads, 4) scan_backward_kernel(ScanParams p) {
  using G = Geo<TPC, NL, kBTile>;
  constexpr int CH = G::CH, NMAX = G::NMAX, kWarps = kThreads / 32;
  __shared__ float s_u[kBTile][CH], s_dt[kBTile][CH], s_gy[kBTile][CH];
  __shared__ float s_y[kBTile][CH], s_dud[2][kBTile][CH];  // d(u), d(delta) before softplus'
  __shared__ __align__(16) float s_B[kBTile][NMAX];
  __shared__ __align__(16) float s_C[kBTile][NMAX];
  __shared__ float s_bias[kThreads];
  extern __shared__ __align__(16) float dyn[];
  float* hist = dyn;                               // [kBTile - 1][kThreads][NL]
  float* redB = hist + (kBTile - 1) * NL * kThreads;  // [kWarps][kBTile][NMAX]
  float* redC = redB + kWarps * kBTile * NMAX;      // [kWarps][kBTile][NMAX]

  const BlockCoords<TPC> bc(p);
  const int N = p.N, L = p.L, D = p.D, warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const size_t bd = static_cast<size_t>(bc.b) * D + bc.d, bds = bd * p.nseg + bc.seg;
  const size_t bsd = (static_cast<size_t>(bc.b) * p.nseg + bc.seg) * D + bc.d;  // per-(b, segment) partials
  const bool last_seg = bc.seg == p.nseg - 1;

  float A_r[NL], A2[NL], g[NL], dA_acc[NL];
#pragma unroll
  for (int s = 0; s < NL; ++s) {
    const int n = bc.q * NL + s;
    const bool ok = bc.active && n < N;
    A_r[s] = ok ? decay_rate(p.A, p.A_log, static_cast<size_t>(bc.d) * N + n) : 0.f;
    A2[s] = A_r[s] * kLog2e;
    // the adjoint after the segment's last step
    g[s] = !ok ? 0.f : !last_seg ? p.seg_init[bds * N + n] : p.dh_last ? p.dh_last[bd * N + n] : 0.f;
    dA_acc[s] = 0.f;
  }
  const float Dv = bc.active && p.Dskip ? p.Dskip[bc.d] : 0.f, Dq = bc.q == 0 ? Dv : 0.f;
  const int cs = bc.c0 + bc.cs;
  const float bias_s = bc.sactive && p.delta_bias ? p.delta_bias[cs] : 0.f;
  float dD_acc = 0.f, dbias_acc = 0.f;

  TileRegs<T, TPC, NL, kBTile, true, kSeq> next;
  // Per staged element: softplus' (for ddelta) and dout silu'(z) (dz = that times y).
  float cur_sig[G::SEQ], cur_dzf[G::SEQ];
  unsigned cur_resets = 0;  // the staged tile's restarts (bit t: step t)
  auto commit = [&](int l0) {
#pragma unroll
    for (int j = 0; j < G::SEQ; ++j) {
      const int t = bc.rs + j * TPC;
      s_u[t][bc.cs] = static_cast<float>(next.u[j]);
      s_dt[t][bc.cs] = next.dt(p, bc, l0, j, bias_s, &cur_sig[j]);
      const float o = static_cast<float>(next.o[j]);
      if (p.z) {
        const float zz = static_cast<float>(next.z[j]), sz = math::sigmoid_fast(zz);
        s_gy[t][bc.cs] = o * zz * sz;
        cur_dzf[j] = o * math::silu_grad(zz, sz);
      } else {
        s_gy[t][bc.cs] = o;
        cur_dzf[j] = 0.f;
      }
    }
    cur_resets = next.resets();
    next.store_bc(s_B, s_C);
  };

  const int k0 = bc.lbeg / kBTile, k1 = (bc.lend + kBTile - 1) / kBTile;
  if (k1 > k0) next.fetch(p, bc, (k1 - 1) * kBTile);
  for (int k = k1 - 1; k >= k0; --k) {
    const int l0 = k * kBTile;
    commit(l0);
    float h_start[NL];
#pragma unroll
    for (int s = 0; s < NL; ++s) {
      const int n = bc.q * NL + s;
      h_start[s] = bc.active && n < N ? p.ckpt[(bd * p.nckpt + k) * N + n] : 0.f;
    }
    __syncthreads();
    if (k > k0) next.fetch(p, bc, l0 - kBTile);

    const unsigned resets = cur_resets;
    with_resets(resets, [&](auto masked) {
      constexpr bool kResets = decltype(masked)::value;
      // Recompute the tile's states into the history (and y before the gate, for dz). The
      // last state stays in registers: the adjoint starts from it.
      float hcur[NL], ybuf[TPC];
#pragma unroll
      for (int s = 0; s < NL; ++s) hcur[s] = h_start[s];
#pragma unroll
      for (int t = 0; t < kBTile; ++t) {
        const float dt = s_dt[t][bc.cl];
        const float yp = scan_step<NL, kResets>(hcur, A2, dt, dt * s_u[t][bc.cl], &s_B[t][bc.q * NL],
                                                &s_C[t][bc.q * NL], (resets >> t) & 1u);
        if (t + 1 < kBTile) store_row<NL>(&hist[(t * kThreads + threadIdx.x) * NL], hcur);
        if (p.z) {  // y over the lanes, TPC steps at a time (as in the forward)
          ybuf[t % TPC] = yp;
          if (t % TPC == TPC - 1) {
            int base = 0;
            bool writer = true;
            reduce_scatter<TPC, 1, TPC>(ybuf, lane, base, writer);
            const int ty = t - (TPC - 1) + base;
            s_y[ty][bc.cl] = ybuf[0] + Dv * s_u[ty][bc.cl];
          }
        }
      }

      // The adjoint recurrence, backwards through the tile. Padded steps (past L) have
      // dt = 0 and gy = 0: they pass lam through unchanged and add nothing to dA or dD. At a
      // restart a = 0: the adjoint stops there and a * hprev adds nothing to ddelta or dA.
      // Per state: lam = gy C + g, w = lam a hprev; then d(u) = dt sum lam B and
      // d(delta) = sum A w + u sum lam B (before softplus'), dA += dt w, g <- a lam. Summing
      // lam B once serves both d(u) and d(delta), which saves two products per state.
#pragma unroll
      for (int t = kBTile - 1; t >= 0; --t) {
        const float dt = s_dt[t][bc.cl], uu = s_u[t][bc.cl], gy = s_gy[t][bc.cl], dtu = dt * uu;
        float Bt[NL], Ct[NL], hprev[NL];
        load_row<NL>(&s_B[t][bc.q * NL], Bt);
        load_row<NL>(&s_C[t][bc.q * NL], Ct);
        if (t > 0) load_row<NL>(&hist[((t - 1) * kThreads + threadIdx.x) * NL], hprev);
        else
#pragma unroll
          for (int s = 0; s < NL; ++s) hprev[s] = h_start[s];
        float lam_b = 0.f, aw = 0.f;  // this lane's sum of lam B and of A w
        float dBC[2 * NL];            // dB for the states s < NL, then dC
#pragma unroll
        for (int s = 0; s < NL; ++s) {
          const float a = decay<kResets>(dt, A2[s], (resets >> t) & 1u);
          const float lam = gy * Ct[s] + g[s];
          dBC[NL + s] = gy * hcur[s];
          dBC[s] = lam * dtu;
          lam_b += lam * Bt[s];
          const float w = lam * (a * hprev[s]);
          aw += A_r[s] * w;
          dA_acc[s] += dt * w;
          g[s] = a * lam;
          hcur[s] = hprev[s];
        }
        // Over the channel's lanes: lanes with q even end with d(u), odd with d(delta); lanes
        // 0 and 1 write them (lane 0 adds the D skip: Dq is D there and 0 elsewhere).
        float lane_sums[2] = {dt * lam_b, aw + uu * lam_b};
        int base = 0;
        bool writer = true;
        reduce_scatter<2, 1, TPC>(lane_sums, lane, base, writer);
        if (bc.q < 2) s_dud[bc.q][t][bc.cl] = lane_sums[0] + Dq * gy;
        dD_acc += gy * uu;  // kept by lane 0 only
        // dB and dC summed over the channels of this warp, then parked in shared memory.
        base = 0;
        writer = true;
        reduce_scatter<2 * NL, TPC, 32>(dBC, lane, base, writer);
        if (writer) {
#pragma unroll
          for (int i = 0; i < scattered_count<2 * NL, TPC, 32>(); ++i) {
            const int o = base + i;
            float* red = o < NL ? redB : redC;
            red[(warp * kBTile + t) * NMAX + bc.q * NL + (o < NL ? o : o - NL)] = dBC[i];
          }
        }
      }
    });
    __syncthreads();

    // The tile's outputs (coalesced) and the block's dB/dC partials. The next commit writes
    // only what the scan reads, none of what is read here, so no barrier is needed before it.
#pragma unroll
    for (int j = 0; j < G::SEQ; ++j) {
      const int t = bc.rs + j * TPC;
      if (bc.sactive && l0 + t < L) {
        const size_t off = (static_cast<size_t>(bc.b) * L + l0 + t) * D + cs;
        const float dd = s_dud[1][t][bc.cs] * cur_sig[j];
        dbias_acc += dd;
        store<T>(p.du, off, s_dud[0][t][bc.cs]);
        store<T>(p.ddelta, off, dd);
        if (p.dz) store<T>(p.dz, off, cur_dzf[j] * s_y[t][bc.cs]);
      }
    }
    const size_t part_base = ((static_cast<size_t>(bc.b) * p.G + bc.g) * p.nblocks_per_group + blockIdx.x) * L;
    for (int i = threadIdx.x; i < kBTile * N; i += kThreads) {
      const int t = i / N, n = i % N;
      if (l0 + t < L) {
        float sb = 0.f, sc = 0.f;
#pragma unroll
        for (int w = 0; w < kWarps; ++w) {
          sb += redB[(w * kBTile + t) * NMAX + n];
          sc += redC[(w * kBTile + t) * NMAX + n];
        }
        p.dB_part[(part_base + l0 + t) * N + n] = sb;
        p.dC_part[(part_base + l0 + t) * N + n] = sc;
      }
    }
  }

  if (bc.active) {
#pragma unroll
    for (int s = 0; s < NL; ++s) {
      const int n = bc.q * NL + s;
      if (n < N) {
        p.dA_part[bsd * N + n] = dA_acc[s];
        if (p.dh0 && bc.seg == 0) p.dh0[bd * N + n] = g[s];  // dh0 = a_0 * lam_0
      }
    }
    if (bc.q == 0) p.dD_part[bsd] = dD_acc;
  }
  // ddelta_bias: the TPC staging threads of a channel (tid = cs + CH * r) summed in order.
  s_bias[threadIdx.x] = dbias_acc;
  __syncthreads();
  if (threadIdx.x < CH && bc.sactive) {
    float acc = 0.f;
#pragma unroll
    for (int r = 0; r < TPC; ++r) acc += s_bias[threadIdx.x + CH * r];
    p.dbias_part[(static_cast<size_t>(bc.b) * p.nseg + bc.seg) * D + cs] = acc;
  }
}

// Pass 1 of a segmented backward: for every segment but the first, the adjoint at its
// start when it is zero after its end (g <- a_t (gy_t C_t + g), backwards), and the sum of
// delta over it. The adjoint needs no states, so this is a scan of delta, dout, z and C only.
// With seq_idx it also records whether a document starts inside the segment.
template <typename T, int NL, int TPC, bool kSeq>
__global__ void __launch_bounds__(kThreads) adjoint_summary_kernel(ScanParams p) {
  using G = Geo<TPC, NL, kBTile>;
  constexpr int CH = G::CH, NMAX = G::NMAX;
  __shared__ float s_dt[kBTile][CH], s_gy[kBTile][CH];
  __shared__ __align__(16) float s_C[kBTile][NMAX];
  const BlockCoords<TPC> bc(p);
  if (bc.seg == 0) return;  // the carry needs no summary of the first segment
  const int N = p.N;
  const size_t bds = (static_cast<size_t>(bc.b) * p.D + bc.d) * p.nseg + bc.seg;
  float A2[NL], g[NL], dtsum = 0.f;
  bool seg_resets = false;
#pragma unroll
  for (int s = 0; s < NL; ++s) {
    const int n = bc.q * NL + s;
    A2[s] = bc.active && n < N ? decay_rate(p.A, p.A_log, static_cast<size_t>(bc.d) * N + n) * kLog2e : 0.f;
    g[s] = 0.f;
  }
  const float bias_s = bc.sactive && p.delta_bias ? p.delta_bias[bc.c0 + bc.cs] : 0.f;
  TileRegs<T, TPC, NL, kBTile, true, kSeq> next;
  const int k0 = bc.lbeg / kBTile, k1 = (bc.lend + kBTile - 1) / kBTile;
  if (k1 > k0) next.fetch(p, bc, (k1 - 1) * kBTile);
  for (int k = k1 - 1; k >= k0; --k) {
    const int l0 = k * kBTile;
#pragma unroll
    for (int j = 0; j < G::SEQ; ++j) {
      const int t = bc.rs + j * TPC;
      s_dt[t][bc.cs] = next.dt(p, bc, l0, j, bias_s, nullptr);
      s_gy[t][bc.cs] = gate_grad(p, static_cast<float>(next.o[j]), static_cast<float>(next.z[j]));
    }
    const unsigned resets = next.resets();
    seg_resets |= resets != 0;
    next.store_bc(nullptr, s_C);
    __syncthreads();
    if (k > k0) next.fetch(p, bc, l0 - kBTile);
    with_resets(resets, [&](auto masked) {
      constexpr bool kResets = decltype(masked)::value;
#pragma unroll
      for (int t = kBTile - 1; t >= 0; --t) {
        const float dt = s_dt[t][bc.cl], gy = s_gy[t][bc.cl];
        float Ct[NL];
        load_row<NL>(&s_C[t][bc.q * NL], Ct);
#pragma unroll
        for (int s = 0; s < NL; ++s) g[s] = decay<kResets>(dt, A2[s], (resets >> t) & 1u) * (gy * Ct[s] + g[s]);
        dtsum += dt;
      }
    });
    __syncthreads();
  }
  if (bc.active) {
#pragma unroll
    for (int s = 0; s < NL; ++s) {
      const int n = bc.q * NL + s;
      if (n < N) p.seg_local[bds * N + n] = g[s];
    }
    if (bc.q == 0) {
      p.seg_dtsum[bds] = dtsum;
      if (p.seg_keep) p.seg_keep[bds] = seg_resets ? 0.f : 1.f;
    }
  }
}

// Pass 2 of a segmented scan, one thread per (b, d, n): the value entering each segment from
// the summaries. Forward: init[0] = first (h0), init[s + 1] = exp(A dtsum[s]) init[s] +
// local[s]. Backward (reverse): init[nseg - 1] = first (dh_last), init[s - 1] =
// exp(A dtsum[s]) init[s] + local[s]. With seq_idx, the decay product of a segment in which
// a document starts (keep[s] == 0) is 0: nothing is carried across it.
__global__ void carry_segments(const float* A, bool a_log, const float* first, const float* local,
                               const float* dtsum, const float* keep, float* init, int B, int D, int N, int nseg,
                               bool reverse) {
  const int64_t total = static_cast<int64_t>(B) * D * N;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < total;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int n = static_cast<int>(i % N);
    const int64_t bd = i / N;
    const float a = decay_rate(A, a_log, static_cast<size_t>(bd % D) * N + n);
    float v = first ? first[i] : 0.f;
    for (int j = 0; j < nseg; ++j) {
      const int s = reverse ? nseg - 1 - j : j;
      const int64_t at = bd * nseg + s;
      init[at * N + n] = v;
      if (j + 1 < nseg) {
        const float seg_decay = keep && keep[at] == 0.f ? 0.f : expf(a * dtsum[at]);
        v = seg_decay * v + local[at * N + n];
      }
    }
  }
}

// out[b, l, g, n] = sum over channel blocks cb of part[b, g, cb, l, n] (fixed order).
template <typename T>
__global__ void reduce_channel_blocks(const float* part, void* out, int B, int L, int G, int nblk, int N) {
  size_t total = static_cast<size_t>(B) * L * G * N;
  for (size_t i = blockIdx.x * static_cast<size_t>(blockDim.x) + threadIdx.x; i < total;
       i += static_cast<size_t>(gridDim.x) * blockDim.x) {
    int n = i % N;
    size_t r = i / N;
    int g = r % G;
    r /= G;
    int l = r % L;
    int b = static_cast<int>(r / L);
    float acc = 0.f;
    for (int cb = 0; cb < nblk; ++cb) acc += part[((((static_cast<size_t>(b) * G + g) * nblk + cb) * L) + l) * N + n];
    store<T>(out, i, acc);
  }
}

// out[j] = sum_b part[b, j] for j < M (fixed order); times A[j] as the recurrence uses it
// when A_log is given (the gradient of log(-A) from that of A: d/dA_log = dA * A).
__global__ void reduce_batch(const float* part, float* out, int B, int M, const float* A_log = nullptr) {
  for (int j = blockIdx.x * blockDim.x + threadIdx.x; j < M; j += gridDim.x * blockDim.x) {
    float acc = 0.f;
    for (int b = 0; b < B; ++b) acc += part[static_cast<size_t>(b) * M + j];
    out[j] = A_log ? acc * decay_rate(A_log, true, j) : acc;
  }
}

// How a channel's N states are spread: TPC lanes of NL registers each (TPC * NL >= N).
// More lanes per channel means more threads in flight (the scan is latency-bound) at the
// cost of one more shuffle per reduction and, in the backward, more dB/dC partials.
struct Variant {
  int tpc, nl;
};

// Lanes per channel: 4 or 8, or 0 for the default; SSMTRAIN_SCAN_LANES_FWD / _BWD set them
// (for tuning; anything else is an error naming the variable).
int lanes_from_env(const char* name) {
  const char* v = std::getenv(name);
  if (!v || !*v) return 0;
  const int lanes = std::atoi(v);
  SSMT_CHECK(lanes == 4 || lanes == 8, "selective_scan (CUDA): ", name, " = '", v, "' must be 4 or 8");
  return lanes;
}

// Measured on an H200 (docs/perf_ssm.md): 4 lanes per channel issue about half the
// instructions of 8 (fewer shuffles and selects per state) and win once they already give
// two blocks per multiprocessor (B8 L2048 D1536: fwd+bwd 1.73 ms against 2.27 ms); with fewer
// channels 8 lanes keep more warps in flight (B1 L65536: 33.6 ms against 43.4 ms).
Variant choose_variant(int N, bool backward, int64_t channels, int sm_count) {
  SSMT_CHECK(N >= 1 && N <= kSelectiveScanCudaMaxState, "selective_scan (CUDA): d_state N = ", N,
             " is not supported (1 <= N <= ", kSelectiveScanCudaMaxState, ")");
  static const int fwd_env = lanes_from_env("SSMTRAIN_SCAN_LANES_FWD");
  static const int bwd_env = lanes_from_env("SSMTRAIN_SCAN_LANES_BWD");
  const int env = backward ? bwd_env : fwd_env;
  int tpc = env ? env : channels * 4 >= int64_t{2} * sm_count * kThreads ? 4 : 8;
  if (N <= 4) tpc = 4;
  const int per_lane = (N + tpc - 1) / tpc;
  return {tpc, per_lane <= 1 ? 1 : per_lane <= 2 ? 2 : per_lane <= 4 ? 4 : 8};
}

// Time segments: when the blocks of one (batch, channel block) each do not fill the GPU, the
// sequence is cut into segments of at least kMinSegment steps scanned in parallel, at the
// price of a summary pass over all but one segment (pass 1) and a short carry (pass 2).
// The count minimises the modelled time: waves of resident blocks (`slots` = blocks per
// multiprocessor x multiprocessors) times the steps per segment, with the summary pass
// weighted by `summary_cost` relative to the main pass (2 in the forward, where both passes
// scan everything; 1.5 in the backward, whose summary scans only the adjoint), up to three
// waves. Measured on an H200 in docs/perf_ssm.md.
constexpr int kMinSegment = 512;

// SSMTRAIN_SCAN_SEGMENTS = S (>= 1) sets the number of segments instead (for tuning; at most
// one per kTile steps).
int segments_from_env() {
  const char* v = std::getenv("SSMTRAIN_SCAN_SEGMENTS");
  if (!v || !*v) return 0;
  const int n = std::atoi(v);
  SSMT_CHECK(n >= 1, "selective_scan (CUDA): SSMTRAIN_SCAN_SEGMENTS = '", v, "' must be a positive integer");
  return n;
}

void set_segments(ScanParams& p, int64_t slots, double summary_cost) {
  static const int forced = segments_from_env();
  const int64_t blocks = static_cast<int64_t>(p.B) * p.G * p.nblocks_per_group;
  int64_t nseg = 1;
  if (forced) {
    nseg = std::min<int64_t>(forced, p.L / kTile);
  } else if (blocks > 0 && slots > 0 && blocks < slots) {
    const int64_t most = std::min<int64_t>(p.L / kMinSegment, (3 * slots + blocks - 1) / blocks);
    double best = 1.0;  // one segment: a single partial wave
    for (int64_t n = 2; n <= most; ++n) {
      const double waves = static_cast<double>((blocks * n + slots - 1) / slots);
      const double cost = summary_cost * waves / static_cast<double>(n);
      if (cost < best) best = cost, nseg = n;
    }
  }
  nseg = std::max<int64_t>(nseg, 1);
  const int64_t per = (p.L + nseg - 1) / nseg;
  p.seg_len = static_cast<int>(std::max<int64_t>((per + kTile - 1) / kTile * kTile, kTile));
  p.nseg = nseg == 1 ? 1 : static_cast<int>((p.L + p.seg_len - 1) / p.seg_len);
}

// Blocks of `kernel` resident on the whole device at once.
template <typename K>
int64_t resident_blocks(K kernel, size_t dynamic_smem, int device) {
  int per_sm = 0;
  SCAN_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, kThreads, dynamic_smem));
  return static_cast<int64_t>(per_sm) * cuda_detail::device_context(device).sm_count;
}

ScanParams make_params(const SelectiveScanParams& s, Variant v) {
  ScanParams p{};
  p.B = static_cast<int>(s.B);
  p.L = static_cast<int>(s.L);
  p.D = static_cast<int>(s.D);
  p.N = static_cast<int>(s.N);
  p.G = static_cast<int>(s.G);
  p.nchunks = (p.L + kTile - 1) / kTile;
  p.nckpt = (p.L + kBTile - 1) / kBTile;
  const int channels = kThreads / v.tpc;
  p.nblocks_per_group = (p.D / p.G + channels - 1) / channels;
  p.softplus = s.delta_softplus;
  p.A_log = s.A_log;
  p.u = s.u.data;
  p.delta = s.delta.data;
  p.z = s.z.data;
  p.A = static_cast<const float*>(s.A);
  p.Bm = s.Bm.data;
  p.Cm = s.Cm.data;
  p.B_bs = s.Bm.batch_stride, p.B_ss = static_cast<int>(s.Bm.seq_stride);
  p.C_bs = s.Cm.batch_stride, p.C_ss = static_cast<int>(s.Cm.seq_stride);
  p.Dskip = static_cast<const float*>(s.Dskip);
  p.delta_bias = static_cast<const float*>(s.delta_bias);
  p.h0 = static_cast<const float*>(s.h0);
  p.seq_idx = s.seq_idx;
  p.nseg = 1;  // set by the launcher (set_segments)
  p.seg_len = std::max(p.nchunks * kTile, kTile);
  return p;
}

// v is a dense (B, L, row) tensor (the kernels compute offsets from the shapes); an absent
// input or an empty sequence is read nowhere. Bm and Cm need only dense rows (their strides
// go to the kernels): views into a wider projection output need no copy.
bool dense(const SeqView& v, int64_t B, int64_t L, int64_t row) {
  if (!v.data || B == 0 || L == 0) return true;
  return (B <= 1 || v.batch_stride == L * row) && (L <= 1 || v.seq_stride == row);
}

// What the entry point (selective_scan.cpp) guarantees the kernels.
void check_params(const SelectiveScanParams& s) {
  SSMT_ASSERT(s.dtype == DType::f32 || s.dtype == DType::bf16, "selective_scan (CUDA): ", dtype_name(s.dtype));
  SSMT_ASSERT(s.checkpoint_interval == kScanCheckpoint, "selective_scan (CUDA): interval ", s.checkpoint_interval);
  SSMT_ASSERT(s.G >= 1 && s.D % s.G == 0, "selective_scan (CUDA): D = ", s.D, ", G = ", s.G);
  SSMT_ASSERT(dense(s.u, s.B, s.L, s.D) && dense(s.delta, s.B, s.L, s.D) && dense(s.z, s.B, s.L, s.D) &&
                  (s.L <= 1 || (s.Bm.seq_stride >= s.G * s.N && s.Cm.seq_stride >= s.G * s.N &&
                                 s.Bm.seq_stride <= INT32_MAX / kTile && s.Cm.seq_stride <= INT32_MAX / kTile)),
              "selective_scan (CUDA): u, delta and z must be dense, B and C rows dense");
}

// Calls fn(T{}, integral_constant<NL>, integral_constant<TPC>, bool_constant<seq>) for the
// dtype, the variant and whether seq_idx is given (the plain scan compiles none of its code).
template <typename Fn>
void dispatch(DType dt, Variant v, bool seq, Fn&& fn_seq) {
  auto by_variant = [&](auto tag, auto seq_tag) {
    using T = decltype(tag);
    using std::integral_constant;
    auto fn = [&](auto t, auto nl, auto tpc) { fn_seq(t, nl, tpc, seq_tag); };
    if (v.tpc == 4) {
      switch (v.nl) {
        case 1: fn(T{}, integral_constant<int, 1>{}, integral_constant<int, 4>{}); break;
        case 2: fn(T{}, integral_constant<int, 2>{}, integral_constant<int, 4>{}); break;
        case 4: fn(T{}, integral_constant<int, 4>{}, integral_constant<int, 4>{}); break;
        default: fn(T{}, integral_constant<int, 8>{}, integral_constant<int, 4>{}); break;
      }
    } else {
      switch (v.nl) {
        case 1: fn(T{}, integral_constant<int, 1>{}, integral_constant<int, 8>{}); break;
        case 2: fn(T{}, integral_constant<int, 2>{}, integral_constant<int, 8>{}); break;
        default: fn(T{}, integral_constant<int, 4>{}, integral_constant<int, 8>{}); break;
      }
    }
  };
  auto by_dtype = [&](auto seq_tag) {
    if (dt == DType::bf16)
      by_variant(bf16{}, seq_tag);
    else
      by_variant(float{}, seq_tag);
  };
  if (seq)
    by_dtype(std::true_type{});
  else
    by_dtype(std::false_type{});
}

void launch_carry(const ScanParams& p, const float* first, const float* local, const float* dtsum,
                  const float* keep, float* init, bool reverse, cudaStream_t stream) {
  const int64_t total = static_cast<int64_t>(p.B) * p.D * p.N;
  const int threads = 256, blocks = static_cast<int>(std::clamp<int64_t>((total + threads - 1) / threads, 1, 4096));
  carry_segments<<<blocks, threads, 0, stream>>>(p.A, p.A_log, first, local, dtsum, keep, init, p.B, p.D, p.N, p.nseg,
                                                  reverse);
  SCAN_CUDA_CHECK(cudaGetLastError());
}

}  // namespace

void selective_scan_fwd_cuda(const SelectiveScanParams& s, int device) {
  check_params(s);
  const Variant v =
      choose_variant(static_cast<int>(s.N), false, s.B * s.D, cuda_detail::device_context(device).sm_count);
  ScanParams p = make_params(s, v);
  const Device dev = Device::cuda(device);
  p.out = s.out;
  p.h_last = static_cast<float*>(s.h_last);
  p.ckpt = static_cast<float*>(s.checkpoints);
  // L == 0 still launches: the kernel then copies h0 (or zeros) to h_last.
  if (p.B == 0 || p.D == 0) return;
  cuda_detail::DeviceGuard guard(dev.index);
  auto stream = static_cast<cudaStream_t>(cuda::compute_stream(dev.index));
  dispatch(s.dtype, v, s.seq_idx != nullptr, [&](auto t, auto nl, auto tpc, auto seq) {
    set_segments(p, resident_blocks(scan_forward_kernel<decltype(t), decltype(nl)::value, decltype(tpc)::value, decltype(seq)::value, false>, 0,
                                    dev.index),
                 2.0);
  });
  dim3 grid(p.nblocks_per_group, p.G, p.B * p.nseg);
  Tensor seg_local, seg_dtsum, seg_keep, seg_init;
  if (p.nseg > 1) {  // pass 1: each segment's end state from zero; pass 2: the carry
    seg_local = Tensor::empty({p.B, p.D, p.nseg, p.N}, DType::f32, dev);
    seg_dtsum = Tensor::empty({p.B, p.D, p.nseg}, DType::f32, dev);
    if (p.seq_idx) seg_keep = Tensor::empty({p.B, p.D, p.nseg}, DType::f32, dev);
    seg_init = Tensor::empty({p.B, p.D, p.nseg, p.N}, DType::f32, dev);
    ScanParams ps = p;
    ps.ckpt = nullptr;
    ps.seg_local = seg_local.data<float>();
    ps.seg_dtsum = seg_dtsum.data<float>();
    ps.seg_keep = p.seq_idx ? seg_keep.data<float>() : nullptr;
    dispatch(s.dtype, v, s.seq_idx != nullptr, [&](auto t, auto nl, auto tpc, auto seq) {
      scan_forward_kernel<decltype(t), decltype(nl)::value, decltype(tpc)::value, decltype(seq)::value, true><<<grid, kThreads, 0, stream>>>(ps);
    });
    launch_carry(p, p.h0, ps.seg_local, ps.seg_dtsum, ps.seg_keep, seg_init.data<float>(), false, stream);
    p.seg_init = seg_init.data<float>();
  }
  dispatch(s.dtype, v, s.seq_idx != nullptr, [&](auto t, auto nl, auto tpc, auto seq) {
    scan_forward_kernel<decltype(t), decltype(nl)::value, decltype(tpc)::value, decltype(seq)::value, false><<<grid, kThreads, 0, stream>>>(p);
  });
  SCAN_CUDA_CHECK(cudaGetLastError());
}

void selective_scan_bwd_cuda(const SelectiveScanParams& s, int device) {
  check_params(s);
  const Variant v =
      choose_variant(static_cast<int>(s.N), true, s.B * s.D, cuda_detail::device_context(device).sm_count);
  ScanParams p = make_params(s, v);
  const Device dev = Device::cuda(device);
  const DType dt = s.dtype;
  if (p.B == 0 || p.D == 0) return;
  SSMT_ASSERT((s.L == 0 || s.checkpoints) && dense(s.dout, s.B, s.L, s.D),
              "selective_scan (CUDA) backward: the forward's checkpoints or a dense dout are missing");
  // The kernel writes du and ddelta whether wanted or not: scratch for an unwanted one.
  Tensor du_scratch, ddelta_scratch;
  if (!s.du) du_scratch = Tensor::empty({s.B, s.L, s.D}, dt, dev);
  if (!s.ddelta) ddelta_scratch = Tensor::empty({s.B, s.L, s.D}, dt, dev);
  cuda_detail::DeviceGuard guard(dev.index);

  Tensor dB_part = Tensor::empty({p.B, p.G, p.nblocks_per_group, p.L, p.N}, DType::f32, dev);
  Tensor dC_part = Tensor::empty({p.B, p.G, p.nblocks_per_group, p.L, p.N}, DType::f32, dev);
  dispatch(dt, v, s.seq_idx != nullptr, [&](auto t, auto nl, auto tpc, auto seq) {
    constexpr int NL = decltype(nl)::value, TPC = decltype(tpc)::value;
    auto kernel = scan_backward_kernel<decltype(t), NL, TPC, decltype(seq)::value>;
    constexpr size_t smem = backward_dynamic_smem<NL, TPC>();
    SCAN_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem)));
    set_segments(p, resident_blocks(kernel, smem, dev.index), 1.5);
  });
  const int nparts = p.B * p.nseg;  // dA, dD, ddelta_bias partials: one per (batch, segment)
  Tensor dA_part = Tensor::empty({nparts, p.D, p.N}, DType::f32, dev);
  Tensor dD_part = Tensor::empty({nparts, p.D}, DType::f32, dev);
  Tensor dbias_part = Tensor::empty({nparts, p.D}, DType::f32, dev);
  p.ckpt = static_cast<float*>(s.checkpoints);
  p.dout = s.dout.data;
  p.dh_last = static_cast<const float*>(s.dh_last);
  p.du = s.du ? s.du : du_scratch.data_ptr();
  p.ddelta = s.ddelta ? s.ddelta : ddelta_scratch.data_ptr();
  p.dz = s.dz;
  p.dB_part = dB_part.data<float>();
  p.dC_part = dC_part.data<float>();
  p.dA_part = dA_part.data<float>();
  p.dD_part = dD_part.data<float>();
  p.dbias_part = dbias_part.data<float>();
  p.dh0 = static_cast<float*>(s.dh0);

  auto stream = static_cast<cudaStream_t>(cuda::compute_stream(dev.index));
  dim3 grid(p.nblocks_per_group, p.G, p.B * p.nseg);
  Tensor seg_local, seg_dtsum, seg_keep, seg_init;
  if (p.nseg > 1) {  // pass 1: each segment's adjoint at its start from zero; pass 2: the carry
    seg_local = Tensor::empty({p.B, p.D, p.nseg, p.N}, DType::f32, dev);
    seg_dtsum = Tensor::empty({p.B, p.D, p.nseg}, DType::f32, dev);
    if (p.seq_idx) seg_keep = Tensor::empty({p.B, p.D, p.nseg}, DType::f32, dev);
    seg_init = Tensor::empty({p.B, p.D, p.nseg, p.N}, DType::f32, dev);
    ScanParams ps = p;
    ps.seg_local = seg_local.data<float>();
    ps.seg_dtsum = seg_dtsum.data<float>();
    ps.seg_keep = p.seq_idx ? seg_keep.data<float>() : nullptr;
    dispatch(dt, v, s.seq_idx != nullptr, [&](auto t, auto nl, auto tpc, auto seq) {
      adjoint_summary_kernel<decltype(t), decltype(nl)::value, decltype(tpc)::value, decltype(seq)::value><<<grid, kThreads, 0, stream>>>(ps);
    });
    launch_carry(p, p.dh_last, ps.seg_local, ps.seg_dtsum, ps.seg_keep, seg_init.data<float>(), true, stream);
    p.seg_init = seg_init.data<float>();
  }
  dispatch(dt, v, s.seq_idx != nullptr, [&](auto t, auto nl, auto tpc, auto seq) {
    constexpr int NL = decltype(nl)::value, TPC = decltype(tpc)::value;
    auto kernel = scan_backward_kernel<decltype(t), NL, TPC, decltype(seq)::value>;
    constexpr size_t smem = backward_dynamic_smem<NL, TPC>();
    SCAN_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem)));
    kernel<<<grid, kThreads, smem, stream>>>(p);
  });
  SCAN_CUDA_CHECK(cudaGetLastError());

  const int threads = 256;
  // At least one block: a launch with an empty grid is an error (L == 0 gives nBC == 0).
  auto blocks = [&](size_t n) {
    return static_cast<int>(std::clamp<size_t>((n + threads - 1) / threads, 1, 4096));
  };
  size_t nBC = static_cast<size_t>(p.B) * p.L * p.G * p.N;
  auto reduce_bc = [&](const float* part, void* out) {
    if (!out) return;
    if (dt == DType::bf16)
      reduce_channel_blocks<bf16><<<blocks(nBC), threads, 0, stream>>>(part, out, p.B, p.L, p.G, p.nblocks_per_group, p.N);
    else
      reduce_channel_blocks<float><<<blocks(nBC), threads, 0, stream>>>(part, out, p.B, p.L, p.G, p.nblocks_per_group, p.N);
  };
  reduce_bc(p.dB_part, s.dBm);
  reduce_bc(p.dC_part, s.dCm);
  SCAN_CUDA_CHECK(cudaGetLastError());
  if (s.dA)
    reduce_batch<<<blocks(static_cast<size_t>(p.D) * p.N), threads, 0, stream>>>(
        p.dA_part, static_cast<float*>(s.dA), nparts, p.D * p.N, p.A_log ? p.A : nullptr);
  if (s.dDskip) reduce_batch<<<blocks(p.D), threads, 0, stream>>>(p.dD_part, static_cast<float*>(s.dDskip), nparts, p.D);
  if (s.ddelta_bias)
    reduce_batch<<<blocks(p.D), threads, 0, stream>>>(p.dbias_part, static_cast<float*>(s.ddelta_bias), nparts, p.D);
  SCAN_CUDA_CHECK(cudaGetLastError());
}

}  // namespace ssmtrain
