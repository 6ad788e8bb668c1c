// Row kernels over the last axis of a contiguous (M, K) matrix on CUDA: sum/max/min,
// logsumexp, inclusive cumulative sums, softmax and log-softmax with their backward.
//
// One warp per row for K <= kWarpRowLimit, one block per row above (rows.cuh), with 16-byte
// loads where the rows allow them. Reductions combine in a fixed order (per-thread strided
// partials, then a butterfly), so results are bitwise reproducible run to run. A few very
// long rows (a full reduction, M < #SMs) are split into fixed chunks reduced by separate
// blocks, whose partials a second pass folds in chunk order.
#include "core/cuda/allocator.cuh"
#include "core/cuda/rows.cuh"

namespace ssmtrain::cuda_detail {
namespace {

// Accumulator of sums: int64 for integers, float for f32/bf16, double for f64 (the CPU's sum_t).
template <typename T>
using sum_acc_t = std::conditional_t<std::is_integral_v<T>, int64_t, compute_t<T>>;

template <ReduceOp OP, typename S>
__device__ __forceinline__ S reduce_identity() {
  if constexpr (OP == ReduceOp::sum) {
    return S(0);
  } else if constexpr (OP == ReduceOp::max) {
    if constexpr (std::numeric_limits<S>::has_infinity) return -std::numeric_limits<S>::infinity();
    else return std::numeric_limits<S>::lowest();
  } else {
    if constexpr (std::numeric_limits<S>::has_infinity) return std::numeric_limits<S>::infinity();
    else return std::numeric_limits<S>::max();
  }
}

template <ReduceOp OP>
struct Combine {
  template <typename S>
  __device__ __forceinline__ S operator()(S a, S b) const {
    if constexpr (OP == ReduceOp::sum) return a + b;
    else if constexpr (OP == ReduceOp::max) return max_nan(a, b);
    else return min_nan(a, b);
  }
};

// out[r] = OP over row r of x (M, K) (In elements, accumulated in S, stored as Out).
template <bool kWarpGroup, ReduceOp OP, typename In, typename S, typename Out>
__global__ void reduce_rows_kernel(const In* __restrict__ x, int64_t m, int64_t k, bool vec, Out* __restrict__ out) {
  __shared__ S smem[kWarp];
  using G = RowGroup<kWarpGroup>;
  const Combine<OP> combine;
  for (int64_t r = G::index(); r < m; r += G::count()) {
    S acc = reduce_identity<OP, S>();
    for_row(x + r * k, k, G::thread(), G::size(), vec,
            [&](int64_t, In v) { acc = combine(acc, static_cast<S>(arith(v))); });
    acc = group_allreduce<kWarpGroup>(acc, combine, smem);
    if (G::thread() == 0) out[r] = convert<Out>(acc);
  }
}

// Chunk c of row r (blockIdx.x = c, blockIdx.y = r) reduced by one block into
// partial[r * chunks + c].
constexpr int64_t kReduceChunk = 32768;

template <ReduceOp OP, typename T, typename S>
__global__ void reduce_chunks_kernel(const T* __restrict__ x, int64_t k, bool vec, S* __restrict__ partial) {
  __shared__ S smem[kWarp];
  const Combine<OP> combine;
  const int64_t c0 = static_cast<int64_t>(blockIdx.x) * kReduceChunk;
  const int64_t len = k - c0 < kReduceChunk ? k - c0 : kReduceChunk;
  S acc = reduce_identity<OP, S>();
  for_row(x + blockIdx.y * k + c0, len, threadIdx.x, blockDim.x, vec,
          [&](int64_t, T v) { acc = combine(acc, static_cast<S>(arith(v))); });
  acc = block_allreduce(acc, combine, smem);
  if (threadIdx.x == 0) partial[blockIdx.y * gridDim.x + blockIdx.x] = acc;
}

template <ReduceOp OP, typename In, typename S, typename Out>
void launch_reduce(const In* x, int64_t m, int64_t k, bool vec, Out* out, const DeviceContext& ctx) {
  RowLaunch L = row_launch(m, k, ctx);
  if (L.warp) {
    reduce_rows_kernel<true, OP, In, S, Out><<<L.grid, L.block, 0, ctx.stream.get()>>>(x, m, k, vec, out);
  } else {
    reduce_rows_kernel<false, OP, In, S, Out><<<L.grid, L.block, 0, ctx.stream.get()>>>(x, m, k, vec, out);
  }
  CUDA_CHECK_LAUNCH();
}

template <ReduceOp OP, typename T>
void reduce_rows_typed(const Tensor& x, const Tensor& out) {
  using S = sum_acc_t<T>;
  const DeviceContext& ctx = context_of(x);
  const int64_t m = x.size(0), k = x.size(1);
  const T* px = static_cast<const T*>(x.data_ptr());
  T* po = static_cast<T*>(out.data_ptr());
  const bool vec = rows_vectorizable<T>(px, k);
  const int64_t chunks = ceil_div(k, kReduceChunk);
  if (chunks > 1 && m < ctx.sm_count) {
    // Few long rows: chunk partials from many blocks, then one fold per row in chunk order.
    DeviceBuffer partial(static_cast<size_t>(m * chunks) * sizeof(S), x.device().index);
    reduce_chunks_kernel<OP, T, S><<<dim3(static_cast<unsigned>(chunks), static_cast<unsigned>(m)), kRowBlockThreads,
                                     0, ctx.stream.get()>>>(px, k, vec, partial.as<S>());
    CUDA_CHECK_LAUNCH();
    launch_reduce<OP, S, S, T>(partial.as<S>(), m, chunks, rows_vectorizable<S>(partial.as<S>(), chunks),
                                      po, ctx);
    return;
  }
  launch_reduce<OP, T, S, T>(px, m, k, vec, po, ctx);
}

// ---- logsumexp ----

template <bool kWarpGroup, typename T>
__global__ void logsumexp_rows_kernel(const T* __restrict__ x, int64_t m, int64_t k, bool vec, T* __restrict__ out) {
  using A = compute_t<T>;
  __shared__ LseState<A> smem[kWarp];
  using G = RowGroup<kWarpGroup>;
  for (int64_t r = G::index(); r < m; r += G::count()) {
    LseState<A> st = lse_init<A>();
    for_row(x + r * k, k, G::thread(), G::size(), vec, [&](int64_t, T v) { lse_add(st, arith(v)); });
    st = group_lse<kWarpGroup>(st, smem);
    if (G::thread() == 0) out[r] = convert<T>(lse_value(st));
  }
}

// ---- cumsum ----

constexpr int kScanItems = 4;  // consecutive elements per thread and tile

// Inclusive scan of v over the group (warp or block); smem: 32 entries. Returns the
// group total in `total`.
template <bool kWarpGroup, typename S>
__device__ __forceinline__ S group_inclusive_scan(S v, S* smem, S& total) {
  const int lane = threadIdx.x % kWarp;
#pragma unroll
  for (int offset = 1; offset < kWarp; offset <<= 1) {
    S o = __shfl_up_sync(0xffffffffu, v, offset);
    if (lane >= offset) v += o;
  }
  if constexpr (kWarpGroup) {
    total = __shfl_sync(0xffffffffu, v, kWarp - 1);
    return v;
  } else {
    const int warp = threadIdx.x / kWarp, nwarps = blockDim.x / kWarp;
    __syncthreads();  // smem may still be read by the previous tile
    if (lane == kWarp - 1) smem[warp] = v;
    __syncthreads();
    S before = S(0), all = S(0);
    for (int w = 0; w < nwarps; ++w) {
      if (w < warp) before += smem[w];
      all += smem[w];
    }
    total = all;
    return v + before;
  }
}

// Tiles of size * kScanItems elements, in row order (reversed when `reverse`): each thread
// scans its kScanItems consecutive elements, the group scans the thread totals, and a carry
// links the tiles.
template <bool kWarpGroup, typename T>
__global__ void cumsum_rows_kernel(const T* __restrict__ x, int64_t m, int64_t k, bool reverse, T* __restrict__ out) {
  using S = sum_acc_t<T>;
  __shared__ S smem[kWarp];
  using G = RowGroup<kWarpGroup>;
  const int t = G::thread(), g = G::size();
  const int64_t tile = static_cast<int64_t>(g) * kScanItems;
  for (int64_t r = G::index(); r < m; r += G::count()) {
    const T* xr = x + r * k;
    T* orow = out + r * k;
    S carry = S(0);
    for (int64_t base = 0; base < k; base += tile) {
      S v[kScanItems];
      S local = S(0);
#pragma unroll
      for (int j = 0; j < kScanItems; ++j) {
        int64_t pos = base + static_cast<int64_t>(t) * kScanItems + j;  // logical position
        S e = S(0);
        if (pos < k) e = static_cast<S>(arith(xr[reverse ? k - 1 - pos : pos]));
        local += e;
        v[j] = local;
      }
      S total;
      S inclusive = group_inclusive_scan<kWarpGroup>(local, smem, total);
      S prefix = carry + (inclusive - local);
#pragma unroll
      for (int j = 0; j < kScanItems; ++j) {
        int64_t pos = base + static_cast<int64_t>(t) * kScanItems + j;
        if (pos < k) orow[reverse ? k - 1 - pos : pos] = convert<T>(prefix + v[j]);
      }
      carry += total;
    }
  }
}

// ---- softmax ----

template <bool kWarpGroup, typename T>
__global__ void softmax_rows_kernel(const T* __restrict__ x, int64_t m, int64_t k, bool vec, bool log,
                                    T* __restrict__ y) {
  using A = compute_t<T>;
  __shared__ LseState<A> smem[kWarp];
  using G = RowGroup<kWarpGroup>;
  for (int64_t r = G::index(); r < m; r += G::count()) {
    const T* xr = x + r * k;
    LseState<A> st = lse_init<A>();
    for_row(xr, k, G::thread(), G::size(), vec, [&](int64_t, T v) { lse_add(st, arith(v)); });
    st = group_lse<kWarpGroup>(st, smem);
    if (log) {
      const A shift = st.m + d_log(st.s);
      write_row(y + r * k, k, G::thread(), G::size(), vec, [&](int64_t i) { return convert<T>(arith(xr[i]) - shift); });
    } else {
      const A inv = A(1) / st.s, mx = st.m;
      write_row(y + r * k, k, G::thread(), G::size(), vec,
                [&](int64_t i) { return convert<T>(d_exp(arith(xr[i]) - mx) * inv); });
    }
  }
}

// softmax: gx = y * (gy - sum(gy * y)); log_softmax: gx = gy - exp(y) * sum(gy).
template <bool kWarpGroup, typename T>
__global__ void softmax_backward_kernel(const T* __restrict__ y, const T* __restrict__ gy, int64_t m, int64_t k,
                                        bool vec, bool log, T* __restrict__ gx) {
  using A = compute_t<T>;
  __shared__ A smem[kWarp];
  using G = RowGroup<kWarpGroup>;
  for (int64_t r = G::index(); r < m; r += G::count()) {
    const T* yr = y + r * k;
    const T* gr = gy + r * k;
    A acc = A(0);
    if (log) {
      for_row(gr, k, G::thread(), G::size(), vec, [&](int64_t, T g) { acc += arith(g); });
    } else {
      for_row(gr, k, G::thread(), G::size(), vec, [&](int64_t i, T g) { acc += arith(g) * arith(yr[i]); });
    }
    acc = group_allreduce<kWarpGroup>(acc, [](A a, A b) { return a + b; }, smem);
    if (log) {
      write_row(gx + r * k, k, G::thread(), G::size(), vec,
                [&](int64_t i) { return convert<T>(arith(gr[i]) - d_exp(arith(yr[i])) * acc); });
    } else {
      write_row(gx + r * k, k, G::thread(), G::size(), vec,
                [&](int64_t i) { return convert<T>(arith(yr[i]) * (arith(gr[i]) - acc)); });
    }
  }
}


void check_rows(const Tensor& x, const Tensor& out, bool same_shape, const char* what) {
  bool shape_ok = same_shape ? out.shape() == x.shape() : out.numel() == x.size(0);
  SSMT_ASSERT(x.dim() == 2 && shape_ok && out.is_contiguous() && out.dtype() == x.dtype(), what, ": ",
              x.describe(), " -> ", out.describe());
}

}  // namespace

void CudaBackend::reduce_rows(ReduceOp op, const Tensor& x_in, const Tensor& out) {
  DeviceGuard guard(device_);
  Tensor x = contiguous_input(x_in);
  check_rows(x, out, false, "reduce_rows");
  if (out.numel() == 0) return;  // empty rows (K = 0) give the identity of op, as on the CPU
  SSMT_DISPATCH_ALL(x.dtype(), "reduce_rows", [&] {
    switch (op) {
      case ReduceOp::sum: return reduce_rows_typed<ReduceOp::sum, scalar_t>(x, out);
      case ReduceOp::max: return reduce_rows_typed<ReduceOp::max, scalar_t>(x, out);
      case ReduceOp::min: return reduce_rows_typed<ReduceOp::min, scalar_t>(x, out);
    }
  });
}

void CudaBackend::logsumexp_rows(const Tensor& x_in, const Tensor& out) {
  DeviceGuard guard(device_);
  Tensor x = contiguous_input(x_in);
  check_rows(x, out, false, "logsumexp_rows");
  if (out.numel() == 0) return;
  const DeviceContext& ctx = context_of(x);
  const int64_t m = x.size(0), k = x.size(1);
  SSMT_DISPATCH_FLOAT(x.dtype(), "logsumexp_rows", [&] {
    using T = scalar_t;
    const T* px = static_cast<const T*>(x.data_ptr());
    RowLaunch L = row_launch(m, k, ctx);
    SSMT_ROW_LAUNCH(L, ctx, logsumexp_rows_kernel, T, px, m, k, rows_vectorizable<T>(px, k),
                    static_cast<T*>(out.data_ptr()));
  });
}

void CudaBackend::cumsum_rows(const Tensor& x_in, const Tensor& out, bool reverse) {
  DeviceGuard guard(device_);
  Tensor x = contiguous_input(x_in);
  check_rows(x, out, true, "cumsum_rows");
  if (out.numel() == 0) return;
  const DeviceContext& ctx = context_of(x);
  const int64_t m = x.size(0), k = x.size(1);
  SSMT_DISPATCH_ALL(x.dtype(), "cumsum_rows", [&] {
    using T = scalar_t;
    // A warp's tile is 32 * kScanItems elements: rows up to that take one warp each.
    RowLaunch L = row_launch(m, k <= kWarp * kScanItems ? k : kWarpRowLimit + 1, ctx);
    SSMT_ROW_LAUNCH(L, ctx, cumsum_rows_kernel, T, static_cast<const T*>(x.data_ptr()), m, k, reverse,
                    static_cast<T*>(out.data_ptr()));
  });
}

void CudaBackend::softmax_rows(const Tensor& x_in, const Tensor& y, bool log) {
  DeviceGuard guard(device_);
  Tensor x = contiguous_input(x_in);
  check_rows(x, y, true, "softmax_rows");
  if (y.numel() == 0) return;
  const DeviceContext& ctx = context_of(x);
  const int64_t m = x.size(0), k = x.size(1);
  SSMT_DISPATCH_FLOAT(x.dtype(), "softmax_rows", [&] {
    using T = scalar_t;
    const T* px = static_cast<const T*>(x.data_ptr());
    T* py = static_cast<T*>(y.data_ptr());
    bool vec = rows_vectorizable<T>(px, k) && rows_vectorizable<T>(py, k);
    RowLaunch L = row_launch(m, k, ctx);
    SSMT_ROW_LAUNCH(L, ctx, softmax_rows_kernel, T, px, m, k, vec, log, py);
  });
}

void CudaBackend::softmax_rows_backward(const Tensor& y_in, const Tensor& gy_in, const Tensor& gx, bool log) {
  DeviceGuard guard(device_);
  Tensor y = contiguous_input(y_in), gy = contiguous_input(gy_in);
  check_rows(y, gx, true, "softmax_rows_backward");
  SSMT_ASSERT(gy.shape() == y.shape() && gy.dtype() == y.dtype(), "softmax_rows_backward: gy ", gy.describe());
  if (gx.numel() == 0) return;
  const DeviceContext& ctx = context_of(y);
  const int64_t m = y.size(0), k = y.size(1);
  SSMT_DISPATCH_FLOAT(y.dtype(), "softmax_rows_backward", [&] {
    using T = scalar_t;
    const T* py = static_cast<const T*>(y.data_ptr());
    const T* pg = static_cast<const T*>(gy.data_ptr());
    T* pgx = static_cast<T*>(gx.data_ptr());
    bool vec = rows_vectorizable<T>(py, k) && rows_vectorizable<T>(pg, k) && rows_vectorizable<T>(pgx, k);
    RowLaunch L = row_launch(m, k, ctx);
    SSMT_ROW_LAUNCH(L, ctx, softmax_backward_kernel, T, py, pg, m, k, vec, log, pgx);
  });
}

}  // namespace ssmtrain::cuda_detail
