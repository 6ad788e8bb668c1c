// RMSNorm and LayerNorm over the last axis of x (M, D), forward and backward, with float
// statistics (double for f64 input; backend_cpu.h).
//
// The weight and bias gradients sum over rows. For determinism the rows are cut into a
// number of blocks that depends only on M; each block sums its rows in order into its own
// partial, and the partials are then added in block order.
#include <cmath>
#include <vector>

#include "core/cpu/backend_cpu.h"
#include "core/cpu/kernel_util.h"
#include "core/cpu/row_reduce.h"

namespace ssmtrain::cpu {

namespace {

// An optional per-feature vector (D) in the compute type; empty when t is undefined.
template <typename A> std::vector<A> feature_vector(const Tensor& t, int64_t d) {
  std::vector<A> v;
  if (!t.defined()) return v;
  SSMT_ASSERT(t.numel() == d, "norm parameter ", t.describe(), ": expected ", d, " elements");
  v.resize(static_cast<size_t>(d));
  for (int64_t i = 0; i < d; ++i) v[i] = static_cast<A>(load_any_float(t, i));
  return v;
}

void check_rows(const Tensor& x, const Tensor& out, const Tensor& stat, const char* what) {
  SSMT_ASSERT(x.dim() == 2 && out.shape() == x.shape() && out.is_contiguous() && out.dtype() == x.dtype() &&
                  stat.numel() == x.size(0) && stat.is_contiguous() && is_floating(stat.dtype()),
              what, ": ", x.describe(), " -> ", out.describe(), ", ", stat.describe());
}

// Parameter-gradient partials: `count` (<= 256) row blocks, each with `width` sums per feature.
struct RowBlocks {
  int64_t rows, count, size;
  RowBlocks(int64_t m) : rows(m) {
    count = std::min<int64_t>(256, std::max<int64_t>(1, (m + 31) / 32));
    size = (m + count - 1) / count;
  }
};

// body(row, partial) for every row, partial being the accumulator array of the row's block
// ((width) values, zero-initialised); returns the partials, block-major.
template <typename A, typename Body>
std::vector<A> over_row_blocks(const RowBlocks& blocks, int64_t width, int64_t work_per_row, const Body& body) {
  std::vector<A> partial(static_cast<size_t>(blocks.count * width), A(0));
  parallel_for(blocks.count, blocks.size * work_per_row, [&](int64_t begin, int64_t end) {
    for (int64_t blk = begin; blk < end; ++blk) {
      int64_t r_end = std::min(blocks.rows, (blk + 1) * blocks.size);
      for (int64_t r = blk * blocks.size; r < r_end; ++r) body(r, partial.data() + blk * width);
    }
  });
  return partial;
}

// out[j] = sum over blocks of partial[blk][column + j], j < d, in block order.
template <typename A>
void sum_blocks(const std::vector<A>& partial, int64_t count, int64_t width, int64_t column, int64_t d,
                const Tensor& out) {
  for (int64_t j = 0; j < d; ++j) {
    A s = 0;
    for (int64_t blk = 0; blk < count; ++blk) s += partial[blk * width + column + j];
    store_any_float(out, j, s);
  }
}

}  // namespace

void CpuBackend::rms_norm_forward(const Tensor& x_in, const Tensor& w, double eps, const Tensor& y,
                                  const Tensor& rstd) {
  Tensor x = contiguous_input(x_in);
  check_rows(x, y, rstd, "rms_norm_forward");
  SSMT_DISPATCH_FLOAT(x.dtype(), "rms_norm_forward", [&] {
    using T = scalar_t;
    using A = acc_t<T>;
    const int64_t m = x.size(0), d = x.size(1);
    const std::vector<A> wv = feature_vector<A>(w, d);
    const T* px = static_cast<const T*>(x.data_ptr());
    T* py = static_cast<T*>(y.data_ptr());
    parallel_for(m, 2 * d, [&](int64_t begin, int64_t end) {
      for (int64_t r = begin; r < end; ++r) {
        const T* xr = px + r * d;
        T* yr = py + r * d;
        A ss = row_reduce<A>(ReduceOp::sum, xr, d, [](A v) { return v * v; });
        A inv = A(1) / std::sqrt(ss / static_cast<A>(std::max<int64_t>(d, 1)) + static_cast<A>(eps));
        if (wv.empty()) {
          for (int64_t i = 0; i < d; ++i) yr[i] = store<T>(load(xr[i]) * inv);
        } else {
          for (int64_t i = 0; i < d; ++i) yr[i] = store<T>(load(xr[i]) * inv * wv[i]);
        }
        store_any_float(rstd, r, inv);
      }
    });
  });
}

void CpuBackend::rms_norm_backward(const Tensor& x_in, const Tensor& w, const Tensor& rstd, const Tensor& gy_in,
                                   const Tensor& gx, const Tensor& gw) {
  Tensor x = contiguous_input(x_in), gy = contiguous_input(gy_in);
  check_rows(x, gx, rstd, "rms_norm_backward");
  SSMT_ASSERT(gy.shape() == x.shape() && gy.dtype() == x.dtype(), "rms_norm_backward: gy ", gy.describe());
  const bool want_gw = w.defined() && gw.defined();
  SSMT_DISPATCH_FLOAT(x.dtype(), "rms_norm_backward", [&] {
    using T = scalar_t;
    using A = acc_t<T>;
    const int64_t m = x.size(0), d = x.size(1);
    const std::vector<A> wv = feature_vector<A>(w, d);
    const T* px = static_cast<const T*>(x.data_ptr());
    const T* pg = static_cast<const T*>(gy.data_ptr());
    T* pgx = static_cast<T*>(gx.data_ptr());
    const RowBlocks blocks(m);
    const int64_t width = want_gw ? d : 0;
    auto partial = over_row_blocks<A>(blocks, width, 3 * d, [&](int64_t r, A* gw_acc) {
      const T* xr = px + r * d;
      const T* gr = pg + r * d;
      T* gxr = pgx + r * d;
      const A inv = static_cast<A>(load_any_float(rstd, r));
      auto weight = [&](int64_t i) { return wv.empty() ? A(1) : wv[i]; };
      // c = mean(g * xhat) with g = gy * w, xhat = x * rstd.
      A dot = 0;
      for (int64_t i = 0; i < d; ++i) dot += load(gr[i]) * weight(i) * load(xr[i]);
      const A c = dot * inv / static_cast<A>(d);
      for (int64_t i = 0; i < d; ++i) {
        A xhat = load(xr[i]) * inv;
        gxr[i] = store<T>(inv * (load(gr[i]) * weight(i) - xhat * c));
      }
      if (want_gw)
        for (int64_t i = 0; i < d; ++i) gw_acc[i] += load(gr[i]) * load(xr[i]) * inv;
    });
    if (want_gw) sum_blocks<A>(partial, blocks.count, width, 0, d, gw);
  });
}

void CpuBackend::layer_norm_forward(const Tensor& x_in, const Tensor& w, const Tensor& b, double eps,
                                    const Tensor& y, const Tensor& mean, const Tensor& rstd) {
  Tensor x = contiguous_input(x_in);
  check_rows(x, y, rstd, "layer_norm_forward");
  SSMT_ASSERT(mean.numel() == x.size(0) && mean.is_contiguous(), "layer_norm_forward: mean ", mean.describe());
  SSMT_DISPATCH_FLOAT(x.dtype(), "layer_norm_forward", [&] {
    using T = scalar_t;
    using A = acc_t<T>;
    const int64_t m = x.size(0), d = x.size(1);
    const std::vector<A> wv = feature_vector<A>(w, d), bv = feature_vector<A>(b, d);
    const T* px = static_cast<const T*>(x.data_ptr());
    T* py = static_cast<T*>(y.data_ptr());
    const A inv_d = A(1) / static_cast<A>(std::max<int64_t>(d, 1));
    parallel_for(m, 3 * d, [&](int64_t begin, int64_t end) {
      for (int64_t r = begin; r < end; ++r) {
        const T* xr = px + r * d;
        T* yr = py + r * d;
        // Two passes (mean, then squared deviations): no cancellation for large means.
        A mu = row_reduce<A>(ReduceOp::sum, xr, d, Identity{}) * inv_d;
        A var = row_reduce<A>(ReduceOp::sum, xr, d, [mu](A v) { return (v - mu) * (v - mu); }) * inv_d;
        A inv = A(1) / std::sqrt(var + static_cast<A>(eps));
        for (int64_t i = 0; i < d; ++i) {
          A v = (load(xr[i]) - mu) * inv;
          if (!wv.empty()) v *= wv[i];
          if (!bv.empty()) v += bv[i];
          yr[i] = store<T>(v);
        }
        store_any_float(mean, r, mu);
        store_any_float(rstd, r, inv);
      }
    });
  });
}

void CpuBackend::layer_norm_backward(const Tensor& x_in, const Tensor& w, const Tensor& mean, const Tensor& rstd,
                                     const Tensor& gy_in, const Tensor& gx, const Tensor& gw, const Tensor& gb) {
  Tensor x = contiguous_input(x_in), gy = contiguous_input(gy_in);
  check_rows(x, gx, rstd, "layer_norm_backward");
  SSMT_ASSERT(gy.shape() == x.shape() && gy.dtype() == x.dtype() && mean.numel() == x.size(0),
              "layer_norm_backward: gy ", gy.describe(), ", mean ", mean.describe());
  const bool want_gw = gw.defined(), want_gb = gb.defined();
  SSMT_DISPATCH_FLOAT(x.dtype(), "layer_norm_backward", [&] {
    using T = scalar_t;
    using A = acc_t<T>;
    const int64_t m = x.size(0), d = x.size(1);
    const std::vector<A> wv = feature_vector<A>(w, d);
    const T* px = static_cast<const T*>(x.data_ptr());
    const T* pg = static_cast<const T*>(gy.data_ptr());
    T* pgx = static_cast<T*>(gx.data_ptr());
    const RowBlocks blocks(m);
    // Partials per block: [gw (d) | gb (d)], whichever are wanted.
    const int64_t gw_col = 0, gb_col = want_gw ? d : 0, width = (want_gw ? d : 0) + (want_gb ? d : 0);
    auto partial = over_row_blocks<A>(blocks, width, 4 * d, [&](int64_t r, A* acc) {
      const T* xr = px + r * d;
      const T* gr = pg + r * d;
      T* gxr = pgx + r * d;
      const A mu = static_cast<A>(load_any_float(mean, r)), inv = static_cast<A>(load_any_float(rstd, r));
      auto weight = [&](int64_t i) { return wv.empty() ? A(1) : wv[i]; };
      // gx = rstd * (g - mean(g) - xhat * mean(g * xhat)), g = gy * w, xhat = (x - mean) * rstd.
      A sum_g = 0, sum_gx = 0;
      for (int64_t i = 0; i < d; ++i) {
        A g = load(gr[i]) * weight(i);
        sum_g += g;
        sum_gx += g * (load(xr[i]) - mu) * inv;
      }
      const A mean_g = sum_g / static_cast<A>(d), mean_gx = sum_gx / static_cast<A>(d);
      for (int64_t i = 0; i < d; ++i) {
        A xhat = (load(xr[i]) - mu) * inv;
        gxr[i] = store<T>(inv * (load(gr[i]) * weight(i) - mean_g - xhat * mean_gx));
      }
      if (want_gw)
        for (int64_t i = 0; i < d; ++i) acc[gw_col + i] += load(gr[i]) * (load(xr[i]) - mu) * inv;
      if (want_gb)
        for (int64_t i = 0; i < d; ++i) acc[gb_col + i] += load(gr[i]);
    });
    if (want_gw) sum_blocks<A>(partial, blocks.count, width, gw_col, d, gw);
    if (want_gb) sum_blocks<A>(partial, blocks.count, width, gb_col, d, gb);
  });
}

}  // namespace ssmtrain::cpu
