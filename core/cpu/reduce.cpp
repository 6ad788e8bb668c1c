// Row kernels over the last axis of an (M, K) matrix: sum/max/min, logsumexp, cumulative
// sums, softmax and log-softmax with their backward.
#include <cmath>
#include <limits>
#include <vector>

#include "core/cpu/backend_cpu.h"
#include "core/cpu/kernel_util.h"
#include "core/cpu/row_reduce.h"

namespace ssmtrain::cpu {

namespace {

template <typename T>
void reduce_rows_typed(ReduceOp op, const Tensor& x, const Tensor& out) {
  using S = sum_t<T>;
  const int64_t m = x.size(0), k = x.size(1);
  const T* px = static_cast<const T*>(x.data_ptr());
  T* po = static_cast<T*>(out.data_ptr());
  const int64_t chunks = (k + kRowChunk - 1) / kRowChunk;
#ifdef _OPENMP
  const bool few_long_rows = chunks > 1 && m < omp_get_max_threads();
#else
  const bool few_long_rows = false;
#endif
  if (!few_long_rows) {
    parallel_for(m, k, [&](int64_t begin, int64_t end) {
      for (int64_t r = begin; r < end; ++r) po[r] = store<T>(row_reduce<S>(op, px + r * k, k, Identity{}));
    });
    return;
  }
  // Few long rows (e.g. a full reduction): spread the chunks over threads, then fold the
  // partials of each row in chunk order, exactly as row_reduce does.
  std::vector<S> partial(static_cast<size_t>(m * chunks));
  parallel_for(m * chunks, kRowChunk, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      int64_t r = i / chunks, c = (i % chunks) * kRowChunk;
      partial[i] = lane_reduce<S>(op, px + r * k + c, std::min(kRowChunk, k - c), Identity{});
    }
  });
  for (int64_t r = 0; r < m; ++r) {
    S acc = reduce_identity<S>(op);
    for (int64_t c = 0; c < chunks; ++c) acc = combine<S>(op, acc, partial[r * chunks + c]);
    po[r] = store<T>(acc);
  }
}

}  // namespace

void CpuBackend::reduce_rows(ReduceOp op, const Tensor& x_in, const Tensor& out) {
  Tensor x = contiguous_input(x_in);
  SSMT_ASSERT(x.dim() == 2 && out.numel() == x.size(0) && out.is_contiguous() && out.dtype() == x.dtype(),
              "reduce_rows: ", x.describe(), " -> ", out.describe());
  SSMT_DISPATCH_ALL(x.dtype(), "reduce_rows", [&] { reduce_rows_typed<scalar_t>(op, x, out); });
}

void CpuBackend::logsumexp_rows(const Tensor& x_in, const Tensor& out) {
  Tensor x = contiguous_input(x_in);
  SSMT_ASSERT(x.dim() == 2 && out.numel() == x.size(0) && out.is_contiguous() && out.dtype() == x.dtype(),
              "logsumexp_rows: ", x.describe(), " -> ", out.describe());
  SSMT_DISPATCH_FLOAT(x.dtype(), "logsumexp_rows", [&] {
    using T = scalar_t;
    const int64_t m = x.size(0), k = x.size(1);
    const T* px = static_cast<const T*>(x.data_ptr());
    T* po = static_cast<T*>(out.data_ptr());
    parallel_for(m, 2 * k, [&](int64_t begin, int64_t end) {
      for (int64_t r = begin; r < end; ++r) po[r] = store<T>(row_logsumexp<acc_t<T>>(px + r * k, k));
    });
  });
}

void CpuBackend::cumsum_rows(const Tensor& x_in, const Tensor& out, bool reverse) {
  Tensor x = contiguous_input(x_in);
  SSMT_ASSERT(x.dim() == 2 && out.shape() == x.shape() && out.is_contiguous() && out.dtype() == x.dtype(),
              "cumsum_rows: ", x.describe(), " -> ", out.describe());
  SSMT_DISPATCH_ALL(x.dtype(), "cumsum_rows", [&] {
    using T = scalar_t;
    const int64_t m = x.size(0), k = x.size(1);
    const T* px = static_cast<const T*>(x.data_ptr());
    T* po = static_cast<T*>(out.data_ptr());
    parallel_for(m, k, [&](int64_t begin, int64_t end) {
      for (int64_t r = begin; r < end; ++r) {
        const T* xr = px + r * k;
        T* orow = po + r * k;
        sum_t<T> acc = 0;
        if (reverse) {
          for (int64_t i = k - 1; i >= 0; --i) orow[i] = store<T>(acc += load(xr[i]));
        } else {
          for (int64_t i = 0; i < k; ++i) orow[i] = store<T>(acc += load(xr[i]));
        }
      }
    });
  });
}

void CpuBackend::softmax_rows(const Tensor& x_in, const Tensor& y, bool log) {
  Tensor x = contiguous_input(x_in);
  SSMT_ASSERT(x.dim() == 2 && y.shape() == x.shape() && y.is_contiguous() && y.dtype() == x.dtype(),
              "softmax_rows: ", x.describe(), " -> ", y.describe());
  SSMT_DISPATCH_FLOAT(x.dtype(), "softmax_rows", [&] {
    using T = scalar_t;
    using A = acc_t<T>;
    const int64_t m = x.size(0), k = x.size(1);
    const T* px = static_cast<const T*>(x.data_ptr());
    T* py = static_cast<T*>(y.data_ptr());
    parallel_for(m, 3 * k, [&](int64_t begin, int64_t end) {
      for (int64_t r = begin; r < end; ++r) {
        const T* xr = px + r * k;
        T* yr = py + r * k;
        A mx = row_reduce<A>(ReduceOp::max, xr, k, Identity{});
        A s = row_reduce<A>(ReduceOp::sum, xr, k, [mx](A v) { return std::exp(v - mx); });
        if (log) {
          A shift = mx + std::log(s);
          for (int64_t i = 0; i < k; ++i) yr[i] = store<T>(load(xr[i]) - shift);
        } else {
          A inv = A(1) / s;
          for (int64_t i = 0; i < k; ++i) yr[i] = store<T>(std::exp(load(xr[i]) - mx) * inv);
        }
      }
    });
  });
}

void CpuBackend::softmax_rows_backward(const Tensor& y_in, const Tensor& gy_in, const Tensor& gx, bool log) {
  Tensor y = contiguous_input(y_in), gy = contiguous_input(gy_in);
  SSMT_ASSERT(y.dim() == 2 && gy.shape() == y.shape() && gx.shape() == y.shape() && gx.is_contiguous() &&
                  gy.dtype() == y.dtype() && gx.dtype() == y.dtype(),
              "softmax_rows_backward: ", y.describe(), ", ", gy.describe(), " -> ", gx.describe());
  SSMT_DISPATCH_FLOAT(y.dtype(), "softmax_rows_backward", [&] {
    using T = scalar_t;
    using A = acc_t<T>;
    const int64_t m = y.size(0), k = y.size(1);
    const T* pyv = static_cast<const T*>(y.data_ptr());
    const T* pg = static_cast<const T*>(gy.data_ptr());
    T* px = static_cast<T*>(gx.data_ptr());
    parallel_for(m, 3 * k, [&](int64_t begin, int64_t end) {
      for (int64_t r = begin; r < end; ++r) {
        const T* yr = pyv + r * k;
        const T* gr = pg + r * k;
        T* xr = px + r * k;
        if (log) {  // gx = gy - exp(y) * sum(gy)
          A s = row_reduce<A>(ReduceOp::sum, gr, k, Identity{});
          for (int64_t i = 0; i < k; ++i) xr[i] = store<T>(load(gr[i]) - std::exp(load(yr[i])) * s);
        } else {  // gx = y * (gy - sum(gy * y))
          A dot = 0;
          for (int64_t i = 0; i < k; ++i) dot += load(gr[i]) * load(yr[i]);
          for (int64_t i = 0; i < k; ++i) xr[i] = store<T>(load(yr[i]) * (load(gr[i]) - dot));
        }
      }
    });
  });
}

}  // namespace ssmtrain::cpu
