// Causal depthwise conv1d on CUDA: forward, backward and (through the forward with L = 1)
// the generation step. Same CausalConv1dParams as the CPU kernels (causal_conv1d.h): x and
// dout are SeqViews (batch and time strides free, channels contiguous), weight and bias f32,
// states and sequence outputs in x's dtype (f32 or bf16), kernel width 1 <= K <= 4.
//
// Work split (channels are the fast, coalesced axis everywhere):
//  - forward: one thread per output (b, t, c) reading its K inputs of the extended sequence
//    xext (initial state, then x); a second small kernel writes final_state.
//  - dx and d initial_state: one thread per position e of xext (gather form of the
//    transposed convolution, so no atomics): d xext[e] = sum_k w[k] dpre[e - k] plus the
//    final-state gradient for the last K - 1 positions. dpre = dout * silu'(pre) is
//    recomputed from the inputs (K loads each), never stored.
//  - dweight and dbias: each thread sums one channel over one time slice of one batch row
//    into a partial (B, slices, C, K + 1); a second kernel adds the partials in a fixed
//    order, so the result is deterministic (no float atomics). The slice count depends on
//    the shapes only.
//  - the tiled kernels (below; the path taken whenever channels come in aligned vectors of
//    4) do the forward, or the whole backward, in one pass per (batch, 32-step tile, 4
//    channels), each input read once: about 20x fewer instructions and loads than the
//    per-element kernels, which recompute dpre K times per output.
//
// Packed documents (seq_idx, causal_conv1d.h): a tap, a final-state entry and the matching
// gradient terms count only when the sequence position they read (s < 0: the initial state,
// which belongs to position 0's document) is in the same document as the output (or as
// position L - 1 for the final state); the others are replaced by 0. The per-element kernels
// test each term against the loaded indices; the tiled kernels carry the indices of their
// window beside its values, in a separate instantiation (kDocs), so the plain path is
// unchanged. The kernels trust seq_idx to be non-decreasing (checked only on the CPU).
#include <cuda_runtime.h>

#include <algorithm>

#include "core/backend.h"
#include "core/cuda/device.cuh"
#include "core/dtype.h"
#include "core/math.h"
#include "ssm/kernels/causal_conv1d.h"

namespace ssmtrain {

namespace {

#define CONV_CUDA_CHECK(expr)                                                                              \
  do {                                                                                                     \
    cudaError_t e_ = (expr);                                                                               \
    if (e_ != cudaSuccess)                                                                                 \
      throw InternalError(detail::concat(__FILE__, ":", __LINE__, ": ", #expr, ": ", cudaGetErrorString(e_))); \
  } while (0)

constexpr int kThreads = 256;
constexpr int kMaxWidth = 4;

struct ConvArgs {
  int B, L, C;
  bool silu;
  const void* x;
  long long x_bs, x_ss;  // batch and time strides of x (elements)
  const float* w;        // (C, K)
  const float* bias;     // (C) or null
  const void* state;     // (B, C, K-1) or null
  const int* seq;        // (B, L) document indices, or null (one document per row)
  void* out;             // (B, L, C)
  void* final_state;     // (B, C, K-1) or null
  const void* dout;
  long long d_bs, d_ss;  // strides of dout
  const void* dfinal;    // (B, C, K-1) or null
  void* dx;              // (B, L, C) or null
  void* dstate;          // (B, C, K-1) or null
  float* part;           // (B, slices, C, K + 1)
  int slices, slice_len;
};

template <typename T> __device__ __forceinline__ float ld(const void* p, long long i) {
  return static_cast<float>(static_cast<const T*>(p)[i]);
}
template <typename T> __device__ __forceinline__ void st(void* p, long long i, float v) {
  static_cast<T*>(p)[i] = T(v);
}

// xext[b, e, c], e in [0, L + K - 1): the initial state (or 0) for e < K - 1, then x.
template <typename T, int K>
__device__ __forceinline__ float xext(const ConvArgs& a, int b, int e, int c) {
  if (e >= K - 1) return ld<T>(a.x, b * a.x_bs + static_cast<long long>(e - (K - 1)) * a.x_ss + c);
  if constexpr (K > 1) {
    if (a.state) return ld<T>(a.state, (static_cast<long long>(b) * a.C + c) * (K - 1) + e);
  }
  return 0.f;
}

// The document of sequence position s of row b; s < 0 (the initial state or the padding)
// belongs to position 0's. Only with a.seq.
__device__ __forceinline__ int doc_of(const ConvArgs& a, int b, int s) {
  return a.seq[static_cast<long long>(b) * a.L + max(s, 0)];
}

// Whether the input at position s belongs to the document of position t (always, without
// seq_idx).
__device__ __forceinline__ bool same_doc(const ConvArgs& a, int b, int s, int t) {
  return !a.seq || doc_of(a, b, s) == doc_of(a, b, t);
}

// xext[b, e, c] as output t's tap sees it: 0 outside t's document.
template <typename T, int K>
__device__ __forceinline__ float xext_for(const ConvArgs& a, int b, int e, int c, int t) {
  return same_doc(a, b, e - (K - 1), t) ? xext<T, K>(a, b, e, c) : 0.f;
}

// bias + sum_k w[c, k] xext[b, t + k, c] over the taps in t's document (before the activation).
template <typename T, int K>
__device__ __forceinline__ float pre_act(const ConvArgs& a, int b, int t, int c) {
  float acc = a.bias ? a.bias[c] : 0.f;
#pragma unroll
  for (int k = 0; k < K; ++k) acc += a.w[c * K + k] * xext_for<T, K>(a, b, t + k, c, t);
  return acc;
}

// Gradient of the pre-activation at (b, t, c).
template <typename T, int K>
__device__ __forceinline__ float dpre(const ConvArgs& a, int b, int t, int c) {
  float g = ld<T>(a.dout, b * a.d_bs + static_cast<long long>(t) * a.d_ss + c);
  if (a.silu) {
    const float v = pre_act<T, K>(a, b, t, c);
    g *= math::silu_grad(v, math::sigmoid_fast(v));
  }
  return g;
}

template <typename T, int K>
__global__ void __launch_bounds__(kThreads) conv_forward_kernel(ConvArgs a) {
  const long long total = static_cast<long long>(a.B) * a.L * a.C;
  for (long long i = blockIdx.x * static_cast<long long>(blockDim.x) + threadIdx.x; i < total;
       i += static_cast<long long>(gridDim.x) * blockDim.x) {
    const int c = static_cast<int>(i % a.C);
    const long long r = i / a.C;
    const int t = static_cast<int>(r % a.L), b = static_cast<int>(r / a.L);
    const float v = pre_act<T, K>(a, b, t, c);
    st<T>(a.out, i, a.silu ? math::silu_fast(v) : v);
  }
}

// final_state[b, c, j] = xext[b, L + j, c], j < K - 1 (0 outside the last document).
template <typename T, int K>
__global__ void conv_final_state_kernel(ConvArgs a) {
  const long long total = static_cast<long long>(a.B) * a.C * (K - 1);
  for (long long i = blockIdx.x * static_cast<long long>(blockDim.x) + threadIdx.x; i < total;
       i += static_cast<long long>(gridDim.x) * blockDim.x) {
    const int j = static_cast<int>(i % (K - 1));
    const long long r = i / (K - 1);
    const int c = static_cast<int>(r % a.C), b = static_cast<int>(r / a.C);
    st<T>(a.final_state, i, xext_for<T, K>(a, b, a.L + j, c, a.L - 1));
  }
}

// d xext[b, e, c] for e in [0, L + K - 1): to dx (e >= K - 1) or d initial_state (e < K - 1).
template <typename T, int K>
__global__ void __launch_bounds__(kThreads) conv_dx_kernel(ConvArgs a) {
  const int E = a.L + K - 1;
  const long long total = static_cast<long long>(a.B) * E * a.C;
  for (long long i = blockIdx.x * static_cast<long long>(blockDim.x) + threadIdx.x; i < total;
       i += static_cast<long long>(gridDim.x) * blockDim.x) {
    const int c = static_cast<int>(i % a.C);
    const long long r = i / a.C;
    const int e = static_cast<int>(r % E), b = static_cast<int>(r / E);
    const bool to_dx = e >= K - 1;
    if (to_dx ? !a.dx : !a.dstate) continue;
    // Position s = e - (K - 1) reaches output t (and the final state) only inside its document.
    const int s = e - (K - 1);
    float acc = 0.f;
    if (a.dfinal && e >= a.L && same_doc(a, b, s, a.L - 1))
      acc = ld<T>(a.dfinal, (static_cast<long long>(b) * a.C + c) * (K - 1) + (e - a.L));
#pragma unroll
    for (int k = 0; k < K; ++k) {
      const int t = e - k;
      if (t >= 0 && t < a.L && same_doc(a, b, s, t)) acc += a.w[c * K + k] * dpre<T, K>(a, b, t, c);
    }
    if (to_dx)
      st<T>(a.dx, (static_cast<long long>(b) * a.L + (e - (K - 1))) * a.C + c, acc);
    else
      st<T>(a.dstate, (static_cast<long long>(b) * a.C + c) * (K - 1) + e, acc);
  }
}

// part[b, s, c, k] = sum over t in slice s of dpre * xext[t + k]; part[b, s, c, K] = sum dpre.
// Grid: (ceil(C / kThreads), slices, B).
template <typename T, int K>
__global__ void __launch_bounds__(kThreads) conv_dweight_partial_kernel(ConvArgs a) {
  const int c = blockIdx.x * kThreads + threadIdx.x, s = blockIdx.y, b = blockIdx.z;
  if (c >= a.C) return;
  const int t0 = s * a.slice_len, t1 = min(a.L, t0 + a.slice_len);
  float acc[K + 1];
#pragma unroll
  for (int k = 0; k <= K; ++k) acc[k] = 0.f;
  for (int t = t0; t < t1; ++t) {
    const float g = dpre<T, K>(a, b, t, c);
#pragma unroll
    for (int k = 0; k < K; ++k) acc[k] += g * xext_for<T, K>(a, b, t + k, c, t);
    acc[K] += g;
  }
  float* dst = a.part + ((static_cast<long long>(b) * a.slices + s) * a.C + c) * (K + 1);
#pragma unroll
  for (int k = 0; k <= K; ++k) dst[k] = acc[k];
}

// dweight[c, k] = sum_{b, s} part[b, s, c, k], dbias[c] = sum_{b, s} part[b, s, c, K]: a
// block of kRedCols columns x kRedGroups row groups; group g sums rows g, g + kRedGroups, ...
// in order (independent loads in flight), then the groups are added in group order. The
// grouping depends on the row count only, so the result is deterministic.
constexpr int kRedCols = 32, kRedGroups = 16;

template <int K>
__global__ void __launch_bounds__(kRedCols * kRedGroups)
    conv_dweight_reduce_kernel(const float* part, int rows, int C, float* dweight, float* dbias) {
  __shared__ float sums[kRedGroups][kRedCols];
  const int width = C * (K + 1);
  const int j = blockIdx.x * kRedCols + threadIdx.x, g = threadIdx.y;
  float acc = 0.f;
  if (j < width) {
#pragma unroll 8
    for (int r = g; r < rows; r += kRedGroups) acc += part[static_cast<long long>(r) * width + j];
  }
  sums[g][threadIdx.x] = acc;
  __syncthreads();
  if (g != 0 || j >= width) return;
  float total = 0.f;
#pragma unroll
  for (int k = 0; k < kRedGroups; ++k) total += sums[k][threadIdx.x];
  const int c = j / (K + 1), k = j % (K + 1);
  if (k < K) {
    if (dweight) dweight[c * K + k] = total;
  } else if (dbias) {
    dbias[c] = total;
  }
}

template <int K>
void launch_dweight_reduce(const float* part, int64_t rows, int C, void* dweight, void* dbias, cudaStream_t stream) {
  const int width = C * (K + 1);
  conv_dweight_reduce_kernel<K><<<(width + kRedCols - 1) / kRedCols, dim3(kRedCols, kRedGroups), 0, stream>>>(
      part, static_cast<int>(rows), C, static_cast<float*>(dweight), static_cast<float*>(dbias));
}

// ---- tiled kernels: the fast path for long sequences ----
//
// One thread owns kVec adjacent channels (one 8- or 16-byte access per time step, coalesced
// across the warp) over a tile of kTile time steps, walking time in order with the last K
// inputs in registers, so every input is loaded once and each pre-activation is computed
// once. The backward's thread also keeps the last K values of dpre, writes dx as soon as its
// K terms are known, and sums the weight and bias gradients of its tile into registers; the
// K - 1 values of dpre just past the tile that its last dx need are recomputed (a halo).
// Used when channels come in whole vectors at aligned addresses; other shapes take the
// per-element kernels above.
constexpr int kTile = 32;           // time steps per thread
constexpr int kTiledThreads = 128;  // threads per block (C = 1536 is 3 blocks of 4-channel threads)

template <typename T>
struct VecOf;
template <>
struct VecOf<float> {
  static constexpr int n = 4;
  using type = float4;
};
template <>
struct VecOf<bf16> {
  static constexpr int n = 4;
  using type = uint2;  // 4 bf16
};

template <typename T>
__device__ __forceinline__ void load_vec(const void* base, long long i, float (&v)[VecOf<T>::n]) {
  using V = typename VecOf<T>::type;
  const V raw = *reinterpret_cast<const V*>(static_cast<const T*>(base) + i);
  const T* e = reinterpret_cast<const T*>(&raw);
#pragma unroll
  for (int j = 0; j < VecOf<T>::n; ++j) v[j] = static_cast<float>(e[j]);
}

template <typename T>
__device__ __forceinline__ void store_vec(void* base, long long i, const float (&v)[VecOf<T>::n]) {
  using V = typename VecOf<T>::type;
  V raw;
  T* e = reinterpret_cast<T*>(&raw);
#pragma unroll
  for (int j = 0; j < VecOf<T>::n; ++j) e[j] = T(v[j]);
  *reinterpret_cast<V*>(static_cast<T*>(base) + i) = raw;
}

// The kVec channels [c, c + kVec) of xext at sequence position s of batch b (s < 0: the
// initial state or zeros).
template <typename T, int K>
__device__ __forceinline__ void load_x(const ConvArgs& a, int b, int s, int c, float (&v)[VecOf<T>::n]) {
  constexpr int V = VecOf<T>::n;
  if (s >= 0) {
    load_vec<T>(a.x, b * a.x_bs + static_cast<long long>(s) * a.x_ss + c, v);
    return;
  }
#pragma unroll
  for (int j = 0; j < V; ++j) v[j] = xext<T, K>(a, b, s + K - 1, c + j);
}

// A thread's start of a tile: the weights and bias of its kVec channels, and the K - 1
// inputs before the tile (win[k] = xext at t0 - (K - 1) + k).
template <typename T, int K>
__device__ __forceinline__ void tile_start(const ConvArgs& a, int b, int c, int t0, float (&w)[K][VecOf<T>::n],
                                           float (&bias)[VecOf<T>::n], float (&win)[K][VecOf<T>::n]) {
  constexpr int V = VecOf<T>::n;
#pragma unroll
  for (int j = 0; j < V; ++j) {
    bias[j] = a.bias ? a.bias[c + j] : 0.f;
#pragma unroll
    for (int k = 0; k < K; ++k) w[k][j] = a.w[(c + j) * K + k];
  }
#pragma unroll
  for (int k = 0; k < K - 1; ++k) load_x<T, K>(a, b, t0 - (K - 1) + k, c, win[k]);
}

// The document indices beside a window (kDocs only): doc[k] = the document of position
// t0 - (K - 1) + k for k < K - 1 (position 0's before the sequence).
template <int K>
__device__ __forceinline__ void docs_start(const ConvArgs& a, int b, int t0, int (&doc)[K]) {
#pragma unroll
  for (int k = 0; k < K - 1; ++k) doc[k] = doc_of(a, b, t0 - (K - 1) + k);
}

// Grid: (ceil(C / kVec / kThreads), tiles, B). kDocs: with seq_idx. Without seq_idx the
// tile's steps run four at a time with the four inputs loaded first, as read-only loads (a
// loop of single steps loads each step's input only after the previous step's store: one
// memory round trip per step; docs/perf_train.md). With seq_idx, one step at a time.
template <typename T, int K, bool kDocs>
__global__ void __launch_bounds__(kTiledThreads) conv_forward_tiled_kernel(ConvArgs a) {
  constexpr int V = VecOf<T>::n;
  const int c = (blockIdx.x * kTiledThreads + threadIdx.x) * V;
  if (c >= a.C) return;
  const int b = blockIdx.z, t0 = blockIdx.y * kTile, t1 = min(a.L, t0 + kTile);
  float w[K][V], bias[V], win[K][V];  // win[k]: xext at t - (K - 1) + k
  [[maybe_unused]] int doc[K];        // kDocs: the document of win[k]'s position
  tile_start<T, K>(a, b, c, t0, w, bias, win);
  if constexpr (kDocs) docs_start<K>(a, b, t0, doc);
  int t = t0;
  if constexpr (!kDocs) {
    using Raw = typename VecOf<T>::type;
    constexpr int kAhead = 4;
    const Raw* xp = reinterpret_cast<const Raw*>(static_cast<const T*>(a.x) + b * a.x_bs + c);
    const long long xs = a.x_ss / V;  // the time stride in vectors (tiled_ok: a multiple of V)
    for (; t + kAhead <= t1; t += kAhead) {
      Raw rx[kAhead];
#pragma unroll
      for (int r = 0; r < kAhead; ++r) rx[r] = __ldg(xp + (t + r) * xs);
#pragma unroll
      for (int r = 0; r < kAhead; ++r) {
        const T* ex = reinterpret_cast<const T*>(&rx[r]);
        float out[V];
#pragma unroll
        for (int j = 0; j < V; ++j) {
          win[K - 1][j] = static_cast<float>(ex[j]);
          float v = bias[j];
#pragma unroll
          for (int k = 0; k < K; ++k) v += w[k][j] * win[k][j];
          out[j] = a.silu ? math::silu_fast(v) : v;
#pragma unroll
          for (int k = 0; k < K - 1; ++k) win[k][j] = win[k + 1][j];
        }
        store_vec<T>(a.out, (static_cast<long long>(b) * a.L + t + r) * a.C + c, out);
      }
    }
  }
#pragma unroll 4
  for (; t < t1; ++t) {
    load_x<T, K>(a, b, t, c, win[K - 1]);
    if constexpr (kDocs) doc[K - 1] = doc_of(a, b, t);
    float out[V];
#pragma unroll
    for (int j = 0; j < V; ++j) {
      float v = bias[j];
#pragma unroll
      for (int k = 0; k < K; ++k) {
        if constexpr (kDocs) v += w[k][j] * (doc[k] == doc[K - 1] ? win[k][j] : 0.f);
        else v += w[k][j] * win[k][j];
      }
      out[j] = a.silu ? math::silu_fast(v) : v;
    }
    store_vec<T>(a.out, (static_cast<long long>(b) * a.L + t) * a.C + c, out);
#pragma unroll
    for (int k = 0; k < K - 1; ++k) {
#pragma unroll
      for (int j = 0; j < V; ++j) win[k][j] = win[k + 1][j];
      if constexpr (kDocs) doc[k] = doc[k + 1];
    }
  }
}

// The gradient at the pre-activation of channel j: dout g times silu' at bias + sum_k w[k] x[k]
// (g itself without the activation).
template <int K, int V>
__device__ __forceinline__ float grad_pre(const ConvArgs& a, float g, float bias, const float (&w)[K][V],
                                          const float (&x)[K][V], int j) {
  if (!a.silu) return g;
  float v = bias;
#pragma unroll
  for (int k = 0; k < K; ++k) v += w[k][j] * x[k][j];
  return g * math::silu_grad(v, math::sigmoid_fast(v));
}

// dx over the tile (and d initial_state from tile 0), and the tile's weight/bias partials
// part[b, tile, c, K + 1]. Grid: (ceil(C / kVec / kThreads), tiles, B). kDocs: with seq_idx.
// Without seq_idx, the steps where every test of the general step holds (u in [t0 + K - 1, min(t1, L)): an
// input inside the sequence and the tile, its dx inside the tile, no initial or final state)
// run four at a time with the four steps' loads issued first, as read-only loads; the
// general step, one step at a time, waits for its loads behind the previous step's stores.
template <typename T, int K, bool kDocs>
__global__ void __launch_bounds__(kTiledThreads) conv_backward_tiled_kernel(ConvArgs a) {
  constexpr int V = VecOf<T>::n;
  const int c = (blockIdx.x * kTiledThreads + threadIdx.x) * V;
  if (c >= a.C) return;
  const int b = blockIdx.z, t0 = blockIdx.y * kTile, t1 = min(a.L, t0 + kTile);
  float w[K][V], bias[V], win[K][V], ring[K][V], acc[K + 1][V];  // ring[k]: dpre at u - (K - 1) + k
  // kDocs: doc[k] = the document of position u - (K - 1) + k, the position of both win[k]
  // (while u < L) and ring[k]; last_doc = the document of position L - 1.
  [[maybe_unused]] int doc[K], last_doc = 0;
  tile_start<T, K>(a, b, c, t0, w, bias, win);
  if constexpr (kDocs) {
    // As before the first step's shift: doc[k + 1] = the document of t0 - (K - 1) + k.
    doc[0] = 0;
#pragma unroll
    for (int k = 0; k < K - 1; ++k) doc[k + 1] = doc_of(a, b, t0 - (K - 1) + k);
    last_doc = doc_of(a, b, a.L - 1);
  }
#pragma unroll
  for (int j = 0; j < V; ++j) {
#pragma unroll
    for (int k = 0; k < K; ++k) ring[k][j] = 0.f;
#pragma unroll
    for (int k = 0; k <= K; ++k) acc[k][j] = 0.f;
  }
  // Tile 0 also produces d xext at the K - 1 initial-state positions (s < 0).
  const int s_first = (blockIdx.y == 0 && a.dstate) ? -(K - 1) : t0;
  const int u_end = min(t1 + K - 1, a.L + K - 1);
  auto general_step = [&](int u) {
    // dpre[u] (0 past the sequence) into the ring's newest slot.
#pragma unroll
    for (int k = 0; k < K - 1; ++k) {
#pragma unroll
      for (int j = 0; j < V; ++j) ring[k][j] = ring[k + 1][j];
      if constexpr (kDocs) doc[k] = doc[k + 1];
    }
    if constexpr (kDocs) doc[K - 1] = doc_of(a, b, min(u, a.L - 1));  // past L: never read (dpre = 0)
    if (u < a.L) {
      load_x<T, K>(a, b, u, c, win[K - 1]);
      // The taps of output u: win, with those outside u's document read as 0 (kDocs).
      float x[K][V];
#pragma unroll
      for (int k = 0; k < K; ++k)
#pragma unroll
        for (int j = 0; j < V; ++j) {
          if constexpr (kDocs) x[k][j] = doc[k] == doc[K - 1] ? win[k][j] : 0.f;
          else x[k][j] = win[k][j];
        }
      float g[V];
      load_vec<T>(a.dout, b * a.d_bs + static_cast<long long>(u) * a.d_ss + c, g);
#pragma unroll
      for (int j = 0; j < V; ++j) {
        g[j] = grad_pre<K>(a, g[j], bias[j], w, x, j);
        ring[K - 1][j] = g[j];
      }
      if (u < t1) {
#pragma unroll
        for (int j = 0; j < V; ++j) {
#pragma unroll
          for (int k = 0; k < K; ++k) acc[k][j] += g[j] * x[k][j];
          acc[K][j] += g[j];
        }
      }
#pragma unroll
      for (int k = 0; k < K - 1; ++k)
#pragma unroll
        for (int j = 0; j < V; ++j) win[k][j] = win[k + 1][j];
    } else {
#pragma unroll
      for (int j = 0; j < V; ++j) ring[K - 1][j] = 0.f;
    }
    // d xext at s = u - (K - 1): sum_k w[k] dpre[s + K - 1 - k] = sum_k w[k] ring[K - 1 - k],
    // over the outputs in s's document (kDocs: doc[0] is s's, doc[K - 1 - k] the output's).
    const int s = u - (K - 1);
    if (s < s_first || s >= t1) return;
    float d[V];
#pragma unroll
    for (int j = 0; j < V; ++j) {
      float v = 0.f;
#pragma unroll
      for (int k = 0; k < K; ++k) {
        if constexpr (kDocs) v += w[k][j] * (doc[K - 1 - k] == doc[0] ? ring[K - 1 - k][j] : 0.f);
        else v += w[k][j] * ring[K - 1 - k][j];
      }
      d[j] = v;
    }
    // The final-state gradient reaches the entries that stayed (kDocs: those in the last document).
    bool to_final = a.dfinal != nullptr;
    if constexpr (kDocs) to_final = to_final && doc[0] == last_doc;
    if (to_final && s >= a.L - (K - 1)) {
#pragma unroll
      for (int j = 0; j < V; ++j) {
        // xext position e = s + K - 1 >= L: final_state entry e - L.
        const int e = s + K - 1;
        if (e >= a.L) d[j] += ld<T>(a.dfinal, (static_cast<long long>(b) * a.C + c + j) * (K - 1) + (e - a.L));
      }
    }
    if (s >= 0) {
      if (a.dx) store_vec<T>(a.dx, (static_cast<long long>(b) * a.L + s) * a.C + c, d);
    } else {
#pragma unroll
      for (int j = 0; j < V; ++j) st<T>(a.dstate, (static_cast<long long>(b) * a.C + c + j) * (K - 1) + (s + K - 1), d[j]);
    }
  };
  int u = t0;
  if constexpr (!kDocs) {
    using Raw = typename VecOf<T>::type;
    constexpr int kAhead = 4;
    const int steady_begin = min(t0 + K - 1, u_end), steady_end = max(steady_begin, min(t1, a.L));
    for (; u < steady_begin; ++u) general_step(u);
    const Raw* xp = reinterpret_cast<const Raw*>(static_cast<const T*>(a.x) + b * a.x_bs + c);
    const Raw* gp = reinterpret_cast<const Raw*>(static_cast<const T*>(a.dout) + b * a.d_bs + c);
    const long long xs = a.x_ss / V, gs = a.d_ss / V;  // strides in vectors (tiled_ok: multiples of V)
    for (; u + kAhead <= steady_end; u += kAhead) {
      Raw rx[kAhead], rg[kAhead];
#pragma unroll
      for (int r = 0; r < kAhead; ++r) {
        rx[r] = __ldg(xp + (u + r) * xs);
        rg[r] = __ldg(gp + (u + r) * gs);
      }
#pragma unroll
      for (int r = 0; r < kAhead; ++r) {
        const T* ex = reinterpret_cast<const T*>(&rx[r]);
        const T* eg = reinterpret_cast<const T*>(&rg[r]);
        float g[V], d[V];
#pragma unroll
        for (int j = 0; j < V; ++j) {
#pragma unroll
          for (int k = 0; k < K - 1; ++k) ring[k][j] = ring[k + 1][j];
          win[K - 1][j] = static_cast<float>(ex[j]);
          g[j] = grad_pre<K>(a, static_cast<float>(eg[j]), bias[j], w, win, j);
          ring[K - 1][j] = g[j];
#pragma unroll
          for (int k = 0; k < K; ++k) acc[k][j] += g[j] * win[k][j];
          acc[K][j] += g[j];
#pragma unroll
          for (int k = 0; k < K - 1; ++k) win[k][j] = win[k + 1][j];
          float v = 0.f;
#pragma unroll
          for (int k = 0; k < K; ++k) v += w[k][j] * ring[K - 1 - k][j];
          d[j] = v;
        }
        if (a.dx) store_vec<T>(a.dx, (static_cast<long long>(b) * a.L + (u + r - (K - 1))) * a.C + c, d);
      }
    }
  }
#pragma unroll 4
  for (; u < u_end; ++u) general_step(u);
  if (a.part) {
    float* dst = a.part + ((static_cast<long long>(b) * a.slices + blockIdx.y) * a.C + c) * (K + 1);
#pragma unroll
    for (int j = 0; j < V; ++j)
#pragma unroll
      for (int k = 0; k <= K; ++k) dst[j * (K + 1) + k] = acc[k][j];
  }
}

// Whether the tiled kernels can run: whole vectors of channels at aligned addresses.
template <typename T>
bool tiled_ok(const CausalConv1dParams& p, bool backward) {
  constexpr int V = VecOf<T>::n;
  const auto aligned = [](const void* q) { return reinterpret_cast<uintptr_t>(q) % (V * sizeof(T)) == 0; };
  bool ok = p.C % V == 0 && p.L >= 1 && aligned(p.x.data) && p.x.batch_stride % V == 0 && p.x.seq_stride % V == 0;
  if (!backward) return ok && (p.out == nullptr || aligned(p.out));
  return ok && aligned(p.dout.data) && p.dout.batch_stride % V == 0 && p.dout.seq_stride % V == 0 &&
         (p.dx == nullptr || aligned(p.dx));
}

int grid_for(long long n) {
  return static_cast<int>(std::clamp<long long>((n + kThreads - 1) / kThreads, 1, 65536));
}

ConvArgs make_args(const CausalConv1dParams& p) {
  SSMT_CHECK(p.dtype == DType::f32 || p.dtype == DType::bf16,
             "causal_conv1d: the CUDA kernel takes f32 or bf16 inputs, got ", dtype_name(p.dtype),
             " (run f64 on the CPU)");
  SSMT_CHECK(p.K >= 1 && p.K <= kMaxWidth, "causal_conv1d: the CUDA kernel supports kernel widths 1 to ", kMaxWidth,
             ", got K = ", p.K, " (run it on the CPU)");
  SSMT_CHECK(p.B * (p.L + p.K) * p.C < (int64_t{1} << 62) && p.L < (int64_t{1} << 30) && p.C < (int64_t{1} << 30),
             "causal_conv1d: shape too large for the CUDA kernel");
  ConvArgs a{};
  a.B = static_cast<int>(p.B), a.L = static_cast<int>(p.L), a.C = static_cast<int>(p.C);
  a.silu = p.silu;
  a.x = p.x.data, a.x_bs = p.x.batch_stride, a.x_ss = p.x.seq_stride;
  a.w = static_cast<const float*>(p.weight);
  a.bias = static_cast<const float*>(p.bias);
  a.state = p.initial_state;
  a.seq = p.seq_idx;
  a.out = p.out;
  a.final_state = p.final_state;
  a.dout = p.dout.data, a.d_bs = p.dout.batch_stride, a.d_ss = p.dout.seq_stride;
  a.dfinal = p.dfinal_state;
  a.dx = p.dx;
  a.dstate = p.dinitial_state;
  return a;
}

// Calls fn(T{}, integral_constant<int, K>{}) for the runtime dtype and width.
template <typename Fn>
void dispatch(DType dt, int64_t K, Fn&& fn) {
  auto by_width = [&](auto tag) {
    switch (K) {
      case 1: fn(tag, std::integral_constant<int, 1>{}); break;
      case 2: fn(tag, std::integral_constant<int, 2>{}); break;
      case 3: fn(tag, std::integral_constant<int, 3>{}); break;
      default: fn(tag, std::integral_constant<int, 4>{}); break;
    }
  };
  if (dt == DType::bf16)
    by_width(bf16{});
  else
    by_width(float{});
}

}  // namespace

void causal_conv1d_fwd_cuda(const CausalConv1dParams& p, int device) {
  ConvArgs a = make_args(p);
  if (p.B == 0 || p.C == 0) return;
  cuda_detail::DeviceGuard guard(device);
  auto stream = static_cast<cudaStream_t>(cuda::compute_stream(device));
  dispatch(p.dtype, p.K, [&](auto t, auto k) {
    using T = decltype(t);
    constexpr int K = decltype(k)::value;
    if (p.L > 0 && p.out) {
      if (tiled_ok<T>(p, false) && p.B <= 65535) {
        const dim3 grid(static_cast<unsigned>((p.C / VecOf<T>::n + kTiledThreads - 1) / kTiledThreads),
                        static_cast<unsigned>((p.L + kTile - 1) / kTile), static_cast<unsigned>(p.B));
        if (a.seq)
          conv_forward_tiled_kernel<T, K, true><<<grid, kTiledThreads, 0, stream>>>(a);
        else
          conv_forward_tiled_kernel<T, K, false><<<grid, kTiledThreads, 0, stream>>>(a);
      } else {
        conv_forward_kernel<T, K><<<grid_for(p.B * p.L * p.C), kThreads, 0, stream>>>(a);
      }
      CONV_CUDA_CHECK(cudaGetLastError());
    }
    if constexpr (K > 1) {
      if (p.final_state) {
        conv_final_state_kernel<T, K><<<grid_for(p.B * p.C * (K - 1)), kThreads, 0, stream>>>(a);
        CONV_CUDA_CHECK(cudaGetLastError());
      }
    }
  });
}

void causal_conv1d_bwd_cuda(const CausalConv1dParams& p, int device) {
  ConvArgs a = make_args(p);
  const Device dev = Device::cuda(device);
  if (p.C == 0) return;
  SSMT_CHECK(p.B <= 65535, "causal_conv1d: batch ", p.B, " too large for the CUDA kernel (at most 65535)");
  cuda_detail::DeviceGuard guard(device);
  auto stream = static_cast<cudaStream_t>(cuda::compute_stream(device));
  if (p.B == 0) {
    // An empty batch: the weight and bias gradients are empty sums.
    if (p.dweight) CONV_CUDA_CHECK(cudaMemsetAsync(p.dweight, 0, sizeof(float) * p.C * p.K, stream));
    if (p.dbias) CONV_CUDA_CHECK(cudaMemsetAsync(p.dbias, 0, sizeof(float) * p.C, stream));
    return;
  }
  // Time slices per batch row for the weight-gradient partials: about 2048 blocks in all,
  // at least 32 steps per slice; from the shapes only, so the summation order is fixed.
  const int64_t cblocks = (p.C + kThreads - 1) / kThreads;
  const int64_t want = std::max<int64_t>(1, (2048 + p.B * cblocks - 1) / (p.B * cblocks));
  const int64_t slices = std::clamp<int64_t>(want, 1, std::max<int64_t>(1, (p.L + 31) / 32));
  a.slices = static_cast<int>(slices);
  a.slice_len = static_cast<int>(std::max<int64_t>(1, (p.L + slices - 1) / slices));
  Tensor part;
  const bool need_dw = p.dweight || p.dbias;
  dispatch(p.dtype, p.K, [&](auto t, auto k) {
    using T = decltype(t);
    constexpr int K = decltype(k)::value;
    if (tiled_ok<T>(p, true) && p.L >= 1) {
      // One pass: dx, d initial_state and the weight partials of each (batch, time tile).
      const int64_t tiles = (p.L + kTile - 1) / kTile;
      a.slices = static_cast<int>(tiles);
      a.part = nullptr;
      if (need_dw) {
        part = Tensor::empty({p.B, tiles, p.C, K + 1}, DType::f32, dev);
        a.part = part.data<float>();
      }
      const dim3 grid(static_cast<unsigned>((p.C / VecOf<T>::n + kTiledThreads - 1) / kTiledThreads),
                      static_cast<unsigned>(tiles), static_cast<unsigned>(p.B));
      if (a.seq)
        conv_backward_tiled_kernel<T, K, true><<<grid, kTiledThreads, 0, stream>>>(a);
      else
        conv_backward_tiled_kernel<T, K, false><<<grid, kTiledThreads, 0, stream>>>(a);
      CONV_CUDA_CHECK(cudaGetLastError());
      if (need_dw) {
        launch_dweight_reduce<K>(a.part, p.B * tiles, a.C, p.dweight, p.dbias, stream);
        CONV_CUDA_CHECK(cudaGetLastError());
      }
      return;
    }
    if (p.dx || p.dinitial_state) {
      conv_dx_kernel<T, K><<<grid_for(p.B * (p.L + K - 1) * p.C), kThreads, 0, stream>>>(a);
      CONV_CUDA_CHECK(cudaGetLastError());
    }
    if (need_dw) {
      part = Tensor::empty({p.B, slices, p.C, K + 1}, DType::f32, dev);
      a.part = part.data<float>();
      dim3 grid(static_cast<unsigned>(cblocks), static_cast<unsigned>(slices), static_cast<unsigned>(p.B));
      conv_dweight_partial_kernel<T, K><<<grid, kThreads, 0, stream>>>(a);
      CONV_CUDA_CHECK(cudaGetLastError());
      launch_dweight_reduce<K>(a.part, p.B * slices, a.C, p.dweight, p.dbias, stream);
      CONV_CUDA_CHECK(cudaGetLastError());
    }
  });
}

}  // namespace ssmtrain
