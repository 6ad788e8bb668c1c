// The pre-norm residual step fused on CUDA: s = h + y and n = rms_norm(s) * w, forward and
// backward (core/backend.h, add_rms_norm_*). The residual stream h, s and their gradients are
// f32; y, n and their gradients come in the compute dtype (bf16 under mixed precision), so
// the casts around a mixer are folded in here instead of being passes of their own.
//
// Forward: one warp per row (one block above kWarpRowLimit): s written while the sum of
// squares accumulates, then n from the s just written (the thread rereads its own stores).
// Backward: the same geometry for gh = gs + rstd * (g - xhat * mean(g * xhat)) with
// g = gn * w, xhat = s * rstd, and gy = gh in y's dtype. The weight gradient
// gw = sum over rows of gn * xhat is a column sum done without atomics: a fixed grid of
// row slabs (a function of M only) writes one partial row each, and a second kernel adds the
// partials in slab order, so the result does not depend on scheduling. For rows of up to
// 1024 elements taken 4 wide (the model widths), the slabs' partials are summed inside the
// row pass itself (add_rms_norm_backward_gw_kernel), which saves a second read of s and gn.
#include <algorithm>
#include <type_traits>

#include "core/cuda/rows.cuh"

namespace ssmtrain::cuda_detail {
namespace {

template <typename T>
__device__ __forceinline__ float load_f(const T* p, int64_t i) {
  return static_cast<float>(p[i]);
}

// Four consecutive elements p[i, i + 4) as floats, in one 16-byte (f32) or 8-byte (bf16)
// access; the callers only use these on rows of a multiple of 4 at aligned addresses.
template <typename T>
struct Quad;
template <>
struct Quad<float> {
  using type = float4;
};
template <>
struct Quad<bf16> {
  using type = uint2;
};

template <typename T>
__device__ __forceinline__ void load4(const T* p, int64_t i, float (&v)[4]) {
  const typename Quad<T>::type raw = *reinterpret_cast<const typename Quad<T>::type*>(p + i);
  const T* e = reinterpret_cast<const T*>(&raw);
#pragma unroll
  for (int j = 0; j < 4; ++j) v[j] = static_cast<float>(e[j]);
}

template <typename T>
__device__ __forceinline__ void store4(T* p, int64_t i, const float (&v)[4]) {
  typename Quad<T>::type raw;
  T* e = reinterpret_cast<T*>(&raw);
#pragma unroll
  for (int j = 0; j < 4; ++j) e[j] = convert<T>(v[j]);
  *reinterpret_cast<typename Quad<T>::type*>(p + i) = raw;
}

// kVec: every row is whole aligned groups of 4 (d % 4 == 0, aligned bases): one access per 4.
template <bool kWarpGroup, bool kVec, typename TY, typename TN>
__global__ void add_rms_norm_forward_kernel(const float* __restrict__ h, const TY* __restrict__ y,
                                            const float* __restrict__ w, int64_t m, int64_t d, float eps,
                                            float* __restrict__ s, TN* __restrict__ n, float* __restrict__ rstd) {
  __shared__ float smem[kWarp];
  using G = RowGroup<kWarpGroup>;
  const float inv_d = 1.0f / static_cast<float>(d);
  for (int64_t r = G::index(); r < m; r += G::count()) {
    const float* hr = h + r * d;
    float* sr = s + r * d;
    TN* nr = n + r * d;
    float ss = 0.0f;
    if constexpr (kVec) {
      for (int64_t i = 4 * G::thread(); i < d; i += 4 * G::size()) {
        float v[4], yv[4] = {0.f, 0.f, 0.f, 0.f};
        load4(hr, i, v);
        if (y) load4(y + r * d, i, yv);
#pragma unroll
        for (int j = 0; j < 4; ++j) {
          v[j] += yv[j];
          ss += v[j] * v[j];
        }
        store4(sr, i, v);
      }
    } else {
      for (int64_t i = G::thread(); i < d; i += G::size()) {
        const float v = hr[i] + (y ? load_f(y + r * d, i) : 0.0f);
        sr[i] = v;
        ss += v * v;
      }
    }
    ss = group_allreduce<kWarpGroup>(ss, [](float a, float b) { return a + b; }, smem);
    const float inv = 1.0f / d_sqrt(ss * inv_d + eps);
    if constexpr (kVec) {
      for (int64_t i = 4 * G::thread(); i < d; i += 4 * G::size()) {
        float v[4], wv[4];
        load4(sr, i, v);
        load4(w, i, wv);
#pragma unroll
        for (int j = 0; j < 4; ++j) v[j] = v[j] * inv * wv[j];
        store4(nr, i, v);
      }
    } else {
      for (int64_t i = G::thread(); i < d; i += G::size()) nr[i] = convert<TN>(sr[i] * inv * w[i]);
    }
    if (G::thread() == 0) rstd[r] = inv;
  }
}

template <bool kWarpGroup, bool kVec, typename TN, typename TY>
__global__ void add_rms_norm_backward_kernel(const float* __restrict__ s, const float* __restrict__ w,
                                             const float* __restrict__ rstd, const TN* __restrict__ gn,
                                             const float* __restrict__ gs, int64_t m, int64_t d,
                                             float* __restrict__ gh, TY* __restrict__ gy) {
  __shared__ float smem[kWarp];
  using G = RowGroup<kWarpGroup>;
  const float inv_d = 1.0f / static_cast<float>(d);
  for (int64_t r = G::index(); r < m; r += G::count()) {
    const float* sr = s + r * d;
    const TN* gr = gn + r * d;
    const float inv = rstd[r];
    float dot = 0.0f;  // sum of g * xhat
    if constexpr (kVec) {
      for (int64_t i = 4 * G::thread(); i < d; i += 4 * G::size()) {
        float sv[4], gv[4], wv[4];
        load4(sr, i, sv);
        load4(gr, i, gv);
        load4(w, i, wv);
#pragma unroll
        for (int j = 0; j < 4; ++j) dot += gv[j] * wv[j] * (sv[j] * inv);
      }
    } else {
      for (int64_t i = G::thread(); i < d; i += G::size()) dot += load_f(gr, i) * w[i] * (sr[i] * inv);
    }
    dot = group_allreduce<kWarpGroup>(dot, [](float a, float b) { return a + b; }, smem) * inv_d;
    if constexpr (kVec) {
      for (int64_t i = 4 * G::thread(); i < d; i += 4 * G::size()) {
        float sv[4], gv[4], wv[4], out[4], gsv[4] = {0.f, 0.f, 0.f, 0.f};
        load4(sr, i, sv);
        load4(gr, i, gv);
        load4(w, i, wv);
        if (gs) load4(gs + r * d, i, gsv);
#pragma unroll
        for (int j = 0; j < 4; ++j) out[j] = inv * (gv[j] * wv[j] - sv[j] * inv * dot) + gsv[j];
        if (gh) store4(gh + r * d, i, out);
        if (gy) store4(gy + r * d, i, out);
      }
    } else {
      for (int64_t i = G::thread(); i < d; i += G::size()) {
        const float xhat = sr[i] * inv;
        float v = inv * (load_f(gr, i) * w[i] - xhat * dot);
        if (gs) v += gs[r * d + i];
        if (gh) gh[r * d + i] = v;
        if (gy) gy[r * d + i] = convert<TY>(v);
      }
    }
  }
}

// The backward with the weight gradient's partial sums fused in, for rows of at most 128 kQ
// elements taken 4 wide (the warp-per-row geometry; model widths up to 1024). Each block of
// kGwWarps warps takes a fixed run of rows (rows_per_block, a function of M only), a warp
// every kGwWarps-th row of it; a lane keeps its elements of s and gn in registers between the
// two walks of a row and its columns' sums of gn xhat over its rows. The block then adds its
// warps' sums in warp order into one partial row, and add_rms_norm_gw_sum_kernel adds the
// partial rows in block order: the weight gradient is deterministic, and the separate
// partial pass, which read s and gn again (75 MB a layer at the 129M model's shape), is gone.
// gh and gy are bitwise those of add_rms_norm_backward_kernel (same sums in the same order).
constexpr int kGwWarps = 8;
constexpr int64_t kGwMaxBlocks = 1024;  // partial rows of the weight gradient, at most

int64_t gw_blocks(int64_t m) { return std::min<int64_t>(kGwMaxBlocks, std::max<int64_t>(1, (m + 31) / 32)); }

template <int kQ, typename TN, typename TY>
__global__ void __launch_bounds__(kGwWarps * kWarp)
    add_rms_norm_backward_gw_kernel(const float* __restrict__ s, const float* __restrict__ w,
                                    const float* __restrict__ rstd, const TN* __restrict__ gn,
                                    const float* __restrict__ gs, int64_t m, int64_t d, int64_t rows_per_block,
                                    float* __restrict__ gh, TY* __restrict__ gy, float* __restrict__ partial) {
  __shared__ float red[kGwWarps][kQ * 4 * kWarp];
  const int warp = threadIdx.x / kWarp, lane = threadIdx.x % kWarp;
  const float inv_d = 1.0f / static_cast<float>(d);
  float acc[kQ][4];
#pragma unroll
  for (int q = 0; q < kQ; ++q)
#pragma unroll
    for (int j = 0; j < 4; ++j) acc[q][j] = 0.0f;
  const int64_t r0 = static_cast<int64_t>(blockIdx.x) * rows_per_block;
  const int64_t r1 = r0 + rows_per_block < m ? r0 + rows_per_block : m;
  for (int64_t r = r0 + warp; r < r1; r += kGwWarps) {
    const float inv = rstd[r];
    float sv[kQ][4], gv[kQ][4];
    float dot = 0.0f;  // sum of g * xhat
#pragma unroll
    for (int q = 0; q < kQ; ++q) {
      const int64_t i = 4 * (lane + kWarp * q);
      if (i < d) {
        float wv[4];
        load4(s + r * d, i, sv[q]);
        load4(gn + r * d, i, gv[q]);
        load4(w, i, wv);
#pragma unroll
        for (int j = 0; j < 4; ++j) dot += gv[q][j] * wv[j] * (sv[q][j] * inv);
      }
    }
    dot = warp_allreduce(dot, [](float a, float b) { return a + b; }) * inv_d;
#pragma unroll
    for (int q = 0; q < kQ; ++q) {
      const int64_t i = 4 * (lane + kWarp * q);
      if (i < d) {
        float wv[4], out[4], gsv[4] = {0.f, 0.f, 0.f, 0.f};
        load4(w, i, wv);
        if (gs) load4(gs + r * d, i, gsv);
#pragma unroll
        for (int j = 0; j < 4; ++j) {
          out[j] = inv * (gv[q][j] * wv[j] - sv[q][j] * inv * dot) + gsv[j];
          acc[q][j] += gv[q][j] * (sv[q][j] * inv);
        }
        if (gh) store4(gh + r * d, i, out);
        if (gy) store4(gy + r * d, i, out);
      }
    }
  }
#pragma unroll
  for (int q = 0; q < kQ; ++q) {
    const int i = 4 * (lane + kWarp * q);
#pragma unroll
    for (int j = 0; j < 4; ++j) red[warp][i + j] = acc[q][j];
  }
  __syncthreads();
  for (int64_t c = threadIdx.x; c < d; c += blockDim.x) {
    float t = 0.0f;
#pragma unroll
    for (int k = 0; k < kGwWarps; ++k) t += red[k][c];
    partial[static_cast<int64_t>(blockIdx.x) * d + c] = t;
  }
}

// Calls f(std::integral_constant<int, kQ>{}) with kQ = ceil(d / 128), 1 <= kQ <= 8.
template <typename F>
void with_quads(int64_t d, F&& f) {
  switch ((d + 127) / 128) {
    case 1: f(std::integral_constant<int, 1>{}); break;
    case 2: f(std::integral_constant<int, 2>{}); break;
    case 3: f(std::integral_constant<int, 3>{}); break;
    case 4: f(std::integral_constant<int, 4>{}); break;
    case 5: f(std::integral_constant<int, 5>{}); break;
    case 6: f(std::integral_constant<int, 6>{}); break;
    case 7: f(std::integral_constant<int, 7>{}); break;
    default: f(std::integral_constant<int, 8>{}); break;
  }
}

constexpr int kColThreads = 256;     // columns per block of the weight-gradient pass
constexpr int64_t kMaxSlabs = 256;   // row slabs (partial rows) of the weight gradient

int64_t slab_count(int64_t m) { return std::min<int64_t>(kMaxSlabs, std::max<int64_t>(1, (m + 63) / 64)); }

// partial[slab][j] = sum over the slab's rows, in row order, of gn * s * rstd at column j.
template <typename TN>
__global__ void add_rms_norm_gw_partial_kernel(const float* __restrict__ s, const float* __restrict__ rstd,
                                               const TN* __restrict__ gn, int64_t m, int64_t d, int64_t slab_rows,
                                               float* __restrict__ partial) {
  const int64_t j = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (j >= d) return;
  const int64_t slab = blockIdx.y;
  const int64_t r0 = slab * slab_rows, r1 = r0 + slab_rows < m ? r0 + slab_rows : m;
  float acc = 0.0f;
  for (int64_t r = r0; r < r1; ++r) acc += load_f(gn, r * d + j) * (s[r * d + j] * rstd[r]);
  partial[slab * d + j] = acc;
}

__global__ void add_rms_norm_gw_sum_kernel(const float* __restrict__ partial, int64_t slabs, int64_t d,
                                           float* __restrict__ gw) {
  sum_partial_rows(partial, slabs, d, [gw](int64_t c, float v) { gw[c] = v; });
}

// Calls f(static_cast<T*>(nullptr)) with T the element type of t (bf16, f32), or with
// float for an undefined t (the kernels then get a null pointer).
template <typename F>
void with_float_type(const Tensor& t, F&& f) {
  if (!t.defined() || t.dtype() == DType::f32) return f(static_cast<float*>(nullptr));
  if (t.dtype() == DType::bf16) return f(static_cast<bf16*>(nullptr));
  SSMT_ASSERT(false, "add_rms_norm: ", t.describe(), " must be f32 or bf16 on CUDA");
}

// Rows of d elements at these bases (null = unused) can take the 4-wide accesses: d % 4 == 0
// and every base 16-byte aligned (which covers the 8-byte bf16 quads too).
bool vec_rows(int64_t d, std::initializer_list<const void*> bases) {
  if (d % 4 != 0) return false;
  for (const void* p : bases)
    if (p && !aligned_to(p, 16)) return false;
  return true;
}

// launch(warp, vec) with both as std::bool_constant: the kernel variant for the row
// geometry (a warp or a block per row) and the access width (4-wide or single).
template <typename F>
void with_row_variant(bool warp, bool vec, F&& launch) {
  if (warp) {
    vec ? launch(std::true_type{}, std::true_type{}) : launch(std::true_type{}, std::false_type{});
  } else {
    vec ? launch(std::false_type{}, std::true_type{}) : launch(std::false_type{}, std::false_type{});
  }
}

template <typename T>
T* data_or_null(const Tensor& t) {
  return t.defined() ? static_cast<T*>(t.data_ptr()) : nullptr;
}

}  // namespace

void CudaBackend::add_rms_norm_forward(const Tensor& h_in, const Tensor& y_in, const Tensor& w_in, double eps,
                                       const Tensor& s, const Tensor& n, const Tensor& rstd) {
  DeviceGuard guard(device_);
  const bool fused = h_in.dtype() == DType::f32 && w_in.dtype() == DType::f32 &&
                     (!y_in.defined() || y_in.dtype() != DType::f64) && n.dtype() != DType::f64;
  if (!fused)
    return add_rms_norm_forward_composed(*this, h_in, y_in, w_in, eps, s, n, rstd);
  Tensor h = contiguous_input(h_in), y = contiguous_input(y_in), w = contiguous_input(w_in);
  SSMT_ASSERT(h.dim() == 2 && h.dtype() == DType::f32 && s.shape() == h.shape() && s.dtype() == DType::f32 &&
                  s.is_contiguous() && n.shape() == h.shape() && n.is_contiguous() &&
                  (!y.defined() || y.shape() == h.shape()) && w.dtype() == DType::f32 && w.numel() == h.size(1) &&
                  rstd.numel() == h.size(0) && rstd.dtype() == DType::f32 && rstd.is_contiguous(),
              "add_rms_norm_forward: ", h.describe(), ", ", y.describe(), " -> ", s.describe(), ", ", n.describe());
  const int64_t m = h.size(0), d = h.size(1);
  if (m == 0 || d == 0) return;
  const DeviceContext& ctx = context_of(h);
  const RowLaunch L = row_launch(m, d, ctx);
  with_float_type(y, [&](auto* ty) {
    using TY = std::remove_pointer_t<decltype(ty)>;
    with_float_type(n, [&](auto* tn) {
      using TN = std::remove_pointer_t<decltype(tn)>;
      const bool vec = vec_rows(d, {h.data_ptr(), y.defined() ? y.data_ptr() : nullptr, w.data_ptr(), s.data_ptr(),
                                    n.data_ptr()});
      with_row_variant(L.warp, vec, [&](auto warp, auto vec4) {
        add_rms_norm_forward_kernel<decltype(warp)::value, decltype(vec4)::value, TY, TN><<<L.grid, L.block, 0, ctx.stream.get()>>>(
            static_cast<const float*>(h.data_ptr()), data_or_null<const TY>(y), static_cast<const float*>(w.data_ptr()),
            m, d, static_cast<float>(eps), static_cast<float*>(s.data_ptr()), static_cast<TN*>(n.data_ptr()),
            static_cast<float*>(rstd.data_ptr()));
      });
      CUDA_CHECK_LAUNCH();
    });
  });
}

void CudaBackend::add_rms_norm_backward(const Tensor& s_in, const Tensor& w_in, const Tensor& rstd_in,
                                        const Tensor& gn_in, const Tensor& gs_in, const Tensor& gh,
                                        const Tensor& gy, const Tensor& gw) {
  DeviceGuard guard(device_);
  const bool fused = s_in.dtype() == DType::f32 && w_in.dtype() == DType::f32 && gn_in.dtype() != DType::f64 &&
                     (!gy.defined() || gy.dtype() != DType::f64);
  if (!fused)
    return add_rms_norm_backward_composed(*this, s_in, w_in, rstd_in, gn_in, gs_in, gh, gy, gw);
  Tensor s = contiguous_input(s_in), w = contiguous_input(w_in), rstd = contiguous_input(rstd_in);
  Tensor gn = contiguous_input(gn_in), gs = contiguous_input(gs_in);
  SSMT_ASSERT(s.dim() == 2 && s.dtype() == DType::f32 && gn.shape() == s.shape() &&
                  (!gs.defined() || (gs.shape() == s.shape() && gs.dtype() == DType::f32)) &&
                  (!gh.defined() || (gh.shape() == s.shape() && gh.dtype() == DType::f32 && gh.is_contiguous())) &&
                  (!gy.defined() || (gy.shape() == s.shape() && gy.is_contiguous())) && w.dtype() == DType::f32 &&
                  w.numel() == s.size(1) && rstd.numel() == s.size(0) && rstd.dtype() == DType::f32 &&
                  (!gw.defined() || (gw.numel() == s.size(1) && gw.dtype() == DType::f32 && gw.is_contiguous())),
              "add_rms_norm_backward: ", s.describe(), ", ", gn.describe(), " -> ", gh.describe(), ", ",
              gy.describe(), ", ", gw.describe());
  const int64_t m = s.size(0), d = s.size(1);
  if (d == 0) return;
  const DeviceContext& ctx = context_of(s);
  if (m == 0) {
    if (gw.defined()) fill(gw, 0);
    return;
  }
  const RowLaunch L = row_launch(m, d, ctx);
  const bool vec = vec_rows(d, {s.data_ptr(), w.data_ptr(), gn.data_ptr(), gs.defined() ? gs.data_ptr() : nullptr,
                                gh.defined() ? gh.data_ptr() : nullptr, gy.defined() ? gy.data_ptr() : nullptr});
  if (gw.defined() && vec && L.warp) {
    // Rows and weight-gradient partials in one pass, then the partials' sum.
    const int64_t blocks = gw_blocks(m), rows_per_block = ceil_div(m, blocks);
    Tensor partial = Tensor::empty({blocks, d}, DType::f32, s.device());
    with_float_type(gn, [&](auto* tn) {
      using TN = std::remove_pointer_t<decltype(tn)>;
      with_float_type(gy, [&](auto* ty) {
        using TY = std::remove_pointer_t<decltype(ty)>;
        with_quads(d, [&](auto quads) {
          add_rms_norm_backward_gw_kernel<decltype(quads)::value, TN, TY>
              <<<static_cast<unsigned>(blocks), kGwWarps * kWarp, 0, ctx.stream.get()>>>(
                  static_cast<const float*>(s.data_ptr()), static_cast<const float*>(w.data_ptr()),
                  static_cast<const float*>(rstd.data_ptr()), static_cast<const TN*>(gn.data_ptr()),
                  data_or_null<const float>(gs), m, d, rows_per_block, data_or_null<float>(gh),
                  data_or_null<TY>(gy), static_cast<float*>(partial.data_ptr()));
        });
        CUDA_CHECK_LAUNCH();
      });
    });
    add_rms_norm_gw_sum_kernel<<<partial_sum_grid(d), partial_sum_block(), 0, ctx.stream.get()>>>(
        static_cast<const float*>(partial.data_ptr()), blocks, d, static_cast<float*>(gw.data_ptr()));
    CUDA_CHECK_LAUNCH();
    return;
  }
  with_float_type(gn, [&](auto* tn) {
    using TN = std::remove_pointer_t<decltype(tn)>;
    with_float_type(gy, [&](auto* ty) {
      using TY = std::remove_pointer_t<decltype(ty)>;
      with_row_variant(L.warp, vec, [&](auto warp, auto vec4) {
        add_rms_norm_backward_kernel<decltype(warp)::value, decltype(vec4)::value, TN, TY><<<L.grid, L.block, 0, ctx.stream.get()>>>(
            static_cast<const float*>(s.data_ptr()), static_cast<const float*>(w.data_ptr()),
            static_cast<const float*>(rstd.data_ptr()), static_cast<const TN*>(gn.data_ptr()),
            data_or_null<const float>(gs), m, d, data_or_null<float>(gh), data_or_null<TY>(gy));
      });
      CUDA_CHECK_LAUNCH();
    });
    if (!gw.defined()) return;
    const int64_t slabs = slab_count(m), slab_rows = ceil_div(m, slabs);
    Tensor partial = Tensor::empty({slabs, d}, DType::f32, s.device());
    const dim3 grid(static_cast<unsigned>(ceil_div(d, kColThreads)), static_cast<unsigned>(slabs));
    add_rms_norm_gw_partial_kernel<TN><<<grid, kColThreads, 0, ctx.stream.get()>>>(
        static_cast<const float*>(s.data_ptr()), static_cast<const float*>(rstd.data_ptr()),
        static_cast<const TN*>(gn.data_ptr()), m, d, slab_rows, static_cast<float*>(partial.data_ptr()));
    CUDA_CHECK_LAUNCH();
    add_rms_norm_gw_sum_kernel<<<partial_sum_grid(d), partial_sum_block(), 0, ctx.stream.get()>>>(
        static_cast<const float*>(partial.data_ptr()), slabs, d, static_cast<float*>(gw.data_ptr()));
    CUDA_CHECK_LAUNCH();
  });
}

}  // namespace ssmtrain::cuda_detail
