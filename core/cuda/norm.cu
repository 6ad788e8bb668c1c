// RMSNorm and LayerNorm over the last axis of x (M, D) on CUDA, forward and backward, with
// float statistics (double for f64 input).
//
// Forward: one warp per row for D <= kWarpRowLimit, one block per row above.
// Backward: one warp per row. The weight and bias gradients are sums over rows; for
// bitwise reproducibility and no float atomics, a fixed number of warps (a function of M
// only) each accumulate their rows in order into private per-column accumulators (shared
// memory when they fit, else a private slice of a global scratch buffer), a block adds its
// warps' accumulators in warp order into one partial row, and a second kernel adds the
// partial rows in order per column.
//
// The per-feature weight and bias are used in the compute type: when they are given in
// another dtype (bf16 weights of a bf16 model) or as a strided view, they are first
// converted into a small contiguous vector.
#include <algorithm>

#include "core/cuda/allocator.cuh"
#include "core/cuda/rows.cuh"

namespace ssmtrain::cuda_detail {
namespace {

// t as a contiguous vector of dtype dt (t itself when it already is one); undefined stays so.
Tensor feature_vector(const Tensor& t, int64_t d, DType dt) {
  if (!t.defined()) return t;
  SSMT_ASSERT(t.numel() == d && is_floating(t.dtype()), "norm parameter ", t.describe(), ": expected ", d,
              " elements");
  if (t.dtype() == dt && t.is_contiguous()) return t;
  Tensor c = Tensor::empty({d}, dt, t.device());
  cuda::cuda_backend(t.device().index).copy(t.reshape({d}), c);
  return c;
}

template <typename A>
constexpr DType compute_dtype() {
  return std::is_same_v<A, double> ? DType::f64 : DType::f32;
}

// ---- forward ----

// y = x * rstd * w, rstd = 1 / sqrt(mean(x^2) + eps); w may be null (weight 1).
template <bool kWarpGroup, typename T>
__global__ void rms_norm_forward_kernel(const T* __restrict__ x, const compute_t<T>* __restrict__ w, int64_t m,
                                        int64_t d, bool vec, double eps, T* __restrict__ y, AnyFloat rstd) {
  using A = compute_t<T>;
  __shared__ A smem[kWarp];
  using G = RowGroup<kWarpGroup>;
  const A inv_d = A(1) / static_cast<A>(d > 0 ? d : 1);
  for (int64_t r = G::index(); r < m; r += G::count()) {
    const T* xr = x + r * d;
    A ss = A(0);
    for_row(xr, d, G::thread(), G::size(), vec, [&](int64_t, T v) {
      A a = arith(v);
      ss += a * a;
    });
    ss = group_allreduce<kWarpGroup>(ss, [](A a, A b) { return a + b; }, smem);
    const A inv = A(1) / d_sqrt(ss * inv_d + static_cast<A>(eps));
    write_row(y + r * d, d, G::thread(), G::size(), vec, [&](int64_t i) {
      A v = arith(xr[i]) * inv;
      return convert<T>(w ? v * w[i] : v);
    });
    if (G::thread() == 0) rstd.store<A>(r, inv);
  }
}

// y = (x - mean) * rstd * w + b, with the mean and the variance in two passes (no
// cancellation for large means), as on the CPU.
template <bool kWarpGroup, typename T>
__global__ void layer_norm_forward_kernel(const T* __restrict__ x, const compute_t<T>* __restrict__ w,
                                          const compute_t<T>* __restrict__ b, int64_t m, int64_t d, bool vec,
                                          double eps, T* __restrict__ y, AnyFloat mean, AnyFloat rstd) {
  using A = compute_t<T>;
  __shared__ A smem[kWarp];
  using G = RowGroup<kWarpGroup>;
  const A inv_d = A(1) / static_cast<A>(d > 0 ? d : 1);
  auto add = [](A a, A c) { return a + c; };
  for (int64_t r = G::index(); r < m; r += G::count()) {
    const T* xr = x + r * d;
    A s = A(0);
    for_row(xr, d, G::thread(), G::size(), vec, [&](int64_t, T v) { s += arith(v); });
    const A mu = group_allreduce<kWarpGroup>(s, add, smem) * inv_d;
    A q = A(0);
    for_row(xr, d, G::thread(), G::size(), vec, [&](int64_t, T v) {
      A c = arith(v) - mu;
      q += c * c;
    });
    const A var = group_allreduce<kWarpGroup>(q, add, smem) * inv_d;
    const A inv = A(1) / d_sqrt(var + static_cast<A>(eps));
    write_row(y + r * d, d, G::thread(), G::size(), vec, [&](int64_t i) {
      A v = (arith(xr[i]) - mu) * inv;
      if (w) v *= w[i];
      if (b) v += b[i];
      return convert<T>(v);
    });
    if (G::thread() == 0) {
      mean.store<A>(r, mu);
      rstd.store<A>(r, inv);
    }
  }
}

// ---- backward ----

constexpr int kBackwardWarps = 8;           // warps per block of the backward
constexpr int64_t kRowsPerWarp = 4;         // at least this many rows per warp before adding warps
constexpr int64_t kMaxBackwardWarps = 4096; // cap on warps (and so on partial rows)
constexpr size_t kStaticSmem = 48 * 1024;   // dynamic shared memory without opt-in

struct NormGradLayout {
  bool layer;          // LayerNorm (else RMSNorm)
  bool want_gw, want_gb;
  int64_t width;       // accumulators per warp: [gw (d) | gb (d)], whichever are wanted
  int64_t gb_col;      // first gb column
};

// Per row r (one warp): gx and, into acc (width accumulators owned by this warp, lane l
// owning fixed columns), gy * xhat and gy.
//   RMSNorm:   gx = rstd * (g - xhat * mean(g * xhat)),             g = gy * w, xhat = x * rstd
//   LayerNorm: gx = rstd * (g - mean(g) - xhat * mean(g * xhat)),   xhat = (x - mean) * rstd
template <typename T>
__global__ void __launch_bounds__(kBackwardWarps * kWarp)
    norm_backward_kernel(const T* __restrict__ x, const T* __restrict__ gy, const compute_t<T>* __restrict__ w,
                         AnyFloat mean, AnyFloat rstd, int64_t m, int64_t d, bool vec, NormGradLayout lay,
                         bool smem_acc, T* __restrict__ gx, compute_t<T>* __restrict__ partial) {
  using A = compute_t<T>;
  constexpr int VEC = 16 / sizeof(T);
  extern __shared__ __align__(16) unsigned char smem_raw[];
  const int lane = threadIdx.x % kWarp, warp = threadIdx.x / kWarp, nwarps = blockDim.x / kWarp;
  const int64_t gwarp = static_cast<int64_t>(blockIdx.x) * nwarps + warp;
  const int64_t total_warps = static_cast<int64_t>(gridDim.x) * nwarps;
  A* acc = smem_acc ? reinterpret_cast<A*>(smem_raw) + warp * lay.width : partial + gwarp * lay.width;
  for (int64_t c = lane; c < lay.width; c += kWarp) acc[c] = A(0);
  __syncwarp();
  const A inv_d = A(1) / static_cast<A>(d);

  for (int64_t r = gwarp; r < m; r += total_warps) {
    const T* xr = x + r * d;
    const T* gr = gy + r * d;
    T* gxr = gx + r * d;
    const A mu = lay.layer ? mean.load<A>(r) : A(0);
    const A inv = rstd.load<A>(r);
    // Pass 1: sum(g) and sum(g * xhat) (RMSNorm: sum(g * x), scaled after).
    A s1 = A(0), s2 = A(0);
    auto pass1 = [&](int64_t i, A xv, A gv) {
      A g = w ? gv * w[i] : gv;
      if (lay.layer) {
        s1 += g;
        s2 += g * (xv - mu) * inv;
      } else {
        s2 += g * xv;
      }
    };
    // Pass 2: gx and the parameter-gradient accumulators.
    A c1 = A(0), c2 = A(0);
    auto pass2 = [&](int64_t i, A xv, A gv) -> T {
      A g = w ? gv * w[i] : gv;
      A xhat = (xv - mu) * inv;
      if (lay.want_gw) acc[i] += gv * xhat;
      if (lay.want_gb) acc[lay.gb_col + i] += gv;
      return convert<T>(inv * (g - c1 - xhat * c2));
    };
    if (vec) {
      const Vec<T, VEC>* xv = reinterpret_cast<const Vec<T, VEC>*>(xr);
      const Vec<T, VEC>* gv = reinterpret_cast<const Vec<T, VEC>*>(gr);
      for (int64_t i = lane; i < d / VEC; i += kWarp) {
        Vec<T, VEC> a = xv[i], g = gv[i];
#pragma unroll
        for (int j = 0; j < VEC; ++j) pass1(i * VEC + j, arith(a.v[j]), arith(g.v[j]));
      }
    } else {
      for (int64_t i = lane; i < d; i += kWarp) pass1(i, arith(xr[i]), arith(gr[i]));
    }
    s1 = warp_allreduce(s1, [](A a, A b) { return a + b; });
    s2 = warp_allreduce(s2, [](A a, A b) { return a + b; });
    if (lay.layer) {
      c1 = s1 * inv_d;
      c2 = s2 * inv_d;
    } else {
      c2 = s2 * inv * inv_d;  // mean(g * xhat) = sum(g * x) * rstd / d
    }
    if (vec) {
      const Vec<T, VEC>* xv = reinterpret_cast<const Vec<T, VEC>*>(xr);
      const Vec<T, VEC>* gv = reinterpret_cast<const Vec<T, VEC>*>(gr);
      Vec<T, VEC>* ov = reinterpret_cast<Vec<T, VEC>*>(gxr);
      for (int64_t i = lane; i < d / VEC; i += kWarp) {
        Vec<T, VEC> a = xv[i], g = gv[i], o;
#pragma unroll
        for (int j = 0; j < VEC; ++j) o.v[j] = pass2(i * VEC + j, arith(a.v[j]), arith(g.v[j]));
        ov[i] = o;
      }
    } else {
      for (int64_t i = lane; i < d; i += kWarp) gxr[i] = pass2(i, arith(xr[i]), arith(gr[i]));
    }
  }
  if (smem_acc && lay.width > 0) {
    // The block's partial row: its warps' accumulators added in warp order.
    __syncthreads();
    const A* all = reinterpret_cast<const A*>(smem_raw);
    for (int64_t c = threadIdx.x; c < lay.width; c += blockDim.x) {
      A s = all[c];
      for (int wi = 1; wi < nwarps; ++wi) s += all[wi * lay.width + c];
      partial[blockIdx.x * lay.width + c] = s;
    }
  }
}

// out column c = the sum over p < count of partial[p][c] (sum_partial_rows' fixed order);
// gw from columns [0, d), gb from [gb_col, gb_col + d).
template <typename A>
__global__ void sum_partials_kernel(const A* __restrict__ partial, int64_t count, NormGradLayout lay, int64_t d,
                                    AnyFloat gw, AnyFloat gb) {
  sum_partial_rows(partial, count, lay.width, [&](int64_t c, A s) {
    if (lay.want_gw && c < d) gw.store<A>(c, s);
    else gb.store<A>(c - lay.gb_col, s);
  });
}

template <typename T>
void norm_backward(const Tensor& x, const Tensor& w_in, const Tensor& mean, const Tensor& rstd, const Tensor& gy,
                   const Tensor& gx, const Tensor& gw, const Tensor& gb, bool layer) {
  using A = compute_t<T>;
  const DeviceContext& ctx = context_of(x);
  const int64_t m = x.size(0), d = x.size(1);
  Tensor w = feature_vector(w_in, d, compute_dtype<A>());
  NormGradLayout lay;
  lay.layer = layer;
  lay.want_gw = gw.defined() && (layer || w.defined());
  lay.want_gb = layer && gb.defined();
  lay.gb_col = lay.want_gw ? d : 0;
  lay.width = (lay.want_gw ? d : 0) + (lay.want_gb ? d : 0);

  // The decomposition depends only on M and D, never on the device, so the parameter
  // gradients are bitwise identical on any GPU.
  int64_t warps = std::min(kMaxBackwardWarps, std::max<int64_t>(1, ceil_div(m, kRowsPerWarp)));
  int wpb = kBackwardWarps;
  const size_t per_warp = static_cast<size_t>(lay.width) * sizeof(A);
  while (wpb > 1 && per_warp * wpb > kStaticSmem) wpb /= 2;
  const bool smem_acc = per_warp * wpb <= kStaticSmem;
  if (!smem_acc) wpb = kBackwardWarps;
  const int64_t blocks = ceil_div(warps, wpb);
  const int64_t partial_rows = smem_acc ? blocks : blocks * wpb;
  DeviceBuffer partial(static_cast<size_t>(std::max<int64_t>(partial_rows * lay.width, 1)) * sizeof(A),
                       x.device().index);
  const T* px = static_cast<const T*>(x.data_ptr());
  const T* pg = static_cast<const T*>(gy.data_ptr());
  T* pgx = static_cast<T*>(gx.data_ptr());
  const bool vec = rows_vectorizable<T>(px, d) && rows_vectorizable<T>(pg, d) && rows_vectorizable<T>(pgx, d);
  const size_t smem = smem_acc ? per_warp * wpb : 0;
  norm_backward_kernel<T><<<static_cast<unsigned>(blocks), wpb * kWarp, smem, ctx.stream.get()>>>(
      px, pg, w.defined() ? static_cast<const A*>(w.data_ptr()) : nullptr, layer ? any_float(mean) : AnyFloat{},
      any_float(rstd), m, d, vec, lay, smem_acc, pgx, partial.as<A>());
  CUDA_CHECK_LAUNCH();
  if (lay.width == 0) return;
  sum_partials_kernel<A><<<partial_sum_grid(lay.width), partial_sum_block(), 0, ctx.stream.get()>>>(
      partial.as<A>(), partial_rows, lay, d, lay.want_gw ? any_float(gw) : AnyFloat{},
      lay.want_gb ? any_float(gb) : AnyFloat{});
  CUDA_CHECK_LAUNCH();
}

void check_norm_rows(const Tensor& x, const Tensor& out, const Tensor& stat, const char* what) {
  SSMT_ASSERT(x.dim() == 2 && out.shape() == x.shape() && out.is_contiguous() && out.dtype() == x.dtype() &&
                  stat.numel() == x.size(0) && stat.is_contiguous() && is_floating(stat.dtype()),
              what, ": ", x.describe(), " -> ", out.describe(), ", ", stat.describe());
}

}  // namespace

void CudaBackend::rms_norm_forward(const Tensor& x_in, const Tensor& w_in, double eps, const Tensor& y,
                                   const Tensor& rstd) {
  DeviceGuard guard(device_);
  Tensor x = contiguous_input(x_in);
  check_norm_rows(x, y, rstd, "rms_norm_forward");
  if (y.numel() == 0) return;
  const DeviceContext& ctx = context_of(x);
  const int64_t m = x.size(0), d = x.size(1);
  SSMT_DISPATCH_FLOAT(x.dtype(), "rms_norm_forward", [&] {
    using T = scalar_t;
    using A = compute_t<T>;
    Tensor w = feature_vector(w_in, d, compute_dtype<A>());
    const T* px = static_cast<const T*>(x.data_ptr());
    T* py = static_cast<T*>(y.data_ptr());
    RowLaunch L = row_launch(m, d, ctx);
    SSMT_ROW_LAUNCH(L, ctx, rms_norm_forward_kernel, T, px,
                    w.defined() ? static_cast<const A*>(w.data_ptr()) : nullptr, m, d,
                    rows_vectorizable<T>(px, d) && rows_vectorizable<T>(py, d), eps, py, any_float(rstd));
  });
}

void CudaBackend::rms_norm_backward(const Tensor& x_in, const Tensor& w, const Tensor& rstd_in, const Tensor& gy_in,
                                    const Tensor& gx, const Tensor& gw) {
  DeviceGuard guard(device_);
  Tensor x = contiguous_input(x_in), gy = contiguous_input(gy_in), rstd = contiguous_input(rstd_in);
  check_norm_rows(x, gx, rstd, "rms_norm_backward");
  SSMT_ASSERT(gy.shape() == x.shape() && gy.dtype() == x.dtype(), "rms_norm_backward: gy ", gy.describe());
  SSMT_ASSERT(!gw.defined() || (gw.numel() == x.size(1) && gw.is_contiguous()), "rms_norm_backward: gw ",
              gw.describe());
  if (x.numel() == 0) return;
  SSMT_DISPATCH_FLOAT(x.dtype(), "rms_norm_backward",
                      [&] { norm_backward<scalar_t>(x, w, Tensor(), rstd, gy, gx, gw, Tensor(), false); });
}

void CudaBackend::layer_norm_forward(const Tensor& x_in, const Tensor& w_in, const Tensor& b_in, double eps,
                                     const Tensor& y, const Tensor& mean, const Tensor& rstd) {
  DeviceGuard guard(device_);
  Tensor x = contiguous_input(x_in);
  check_norm_rows(x, y, rstd, "layer_norm_forward");
  SSMT_ASSERT(mean.numel() == x.size(0) && mean.is_contiguous(), "layer_norm_forward: mean ", mean.describe());
  if (y.numel() == 0) return;
  const DeviceContext& ctx = context_of(x);
  const int64_t m = x.size(0), d = x.size(1);
  SSMT_DISPATCH_FLOAT(x.dtype(), "layer_norm_forward", [&] {
    using T = scalar_t;
    using A = compute_t<T>;
    Tensor w = feature_vector(w_in, d, compute_dtype<A>()), b = feature_vector(b_in, d, compute_dtype<A>());
    const T* px = static_cast<const T*>(x.data_ptr());
    T* py = static_cast<T*>(y.data_ptr());
    RowLaunch L = row_launch(m, d, ctx);
    SSMT_ROW_LAUNCH(L, ctx, layer_norm_forward_kernel, T, px,
                    w.defined() ? static_cast<const A*>(w.data_ptr()) : nullptr,
                    b.defined() ? static_cast<const A*>(b.data_ptr()) : nullptr, m, d,
                    rows_vectorizable<T>(px, d) && rows_vectorizable<T>(py, d), eps, py, any_float(mean),
                    any_float(rstd));
  });
}

void CudaBackend::layer_norm_backward(const Tensor& x_in, const Tensor& w, const Tensor& mean_in,
                                      const Tensor& rstd_in, const Tensor& gy_in, const Tensor& gx, const Tensor& gw,
                                      const Tensor& gb) {
  DeviceGuard guard(device_);
  Tensor x = contiguous_input(x_in), gy = contiguous_input(gy_in);
  Tensor mean = contiguous_input(mean_in), rstd = contiguous_input(rstd_in);
  check_norm_rows(x, gx, rstd, "layer_norm_backward");
  SSMT_ASSERT(gy.shape() == x.shape() && gy.dtype() == x.dtype() && mean.numel() == x.size(0),
              "layer_norm_backward: gy ", gy.describe(), ", mean ", mean.describe());
  SSMT_ASSERT((!gw.defined() || (gw.numel() == x.size(1) && gw.is_contiguous())) &&
                  (!gb.defined() || (gb.numel() == x.size(1) && gb.is_contiguous())),
              "layer_norm_backward: gw, gb");
  if (x.numel() == 0) return;
  SSMT_DISPATCH_FLOAT(x.dtype(), "layer_norm_backward",
                      [&] { norm_backward<scalar_t>(x, w, mean, rstd, gy, gx, gw, gb, true); });
}

}  // namespace ssmtrain::cuda_detail
