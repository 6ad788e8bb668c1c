// Fused cross-entropy on CUDA. The forward makes one pass over each row of logits with the
// online (max, sum-exp) state (rows.cuh) and writes the per-row loss and logsumexp; the
// backward recomputes softmax from the saved logsumexp while writing dlogits, so the
// probabilities never exist in memory. One warp per row for vocabularies up to
// kWarpRowLimit, one block per row above; 16-byte accesses where the rows allow them.
//
// Targets equal to ignore_index give loss 0 and a zero gradient row. A target outside
// [0, V) that is not ignore_index cannot be reported from the device without a
// synchronisation: its row gets loss 0 and the gradient of the softmax alone (backend.h).
#include <algorithm>

#include "core/cuda/rows.cuh"

namespace ssmtrain::cuda_detail {
namespace {

template <bool kWarpGroup, typename T>
__global__ void cross_entropy_forward_kernel(const T* __restrict__ logits, const int64_t* __restrict__ targets,
                                             int64_t m, int64_t v, bool vec, int64_t ignore_index, AnyFloat loss,
                                             AnyFloat lse) {
  using A = compute_t<T>;
  __shared__ LseState<A> smem[kWarp];
  using G = RowGroup<kWarpGroup>;
  for (int64_t r = G::index(); r < m; r += G::count()) {
    const T* row = logits + r * v;
    LseState<A> st = lse_init<A>();
    for_row(row, v, G::thread(), G::size(), vec, [&](int64_t, T x) { lse_add(st, arith(x)); });
    st = group_lse<kWarpGroup>(st, smem);
    if (G::thread() == 0) {
      const A row_lse = lse_value(st);
      const int64_t t = targets[r];
      const bool counted = t != ignore_index && t >= 0 && t < v;
      lse.store<A>(r, row_lse);
      loss.store<A>(r, counted ? row_lse - arith(row[t]) : A(0));
    }
  }
}

template <bool kWarpGroup, typename T>
__global__ void cross_entropy_backward_kernel(const T* __restrict__ logits, const int64_t* __restrict__ targets,
                                              AnyFloat lse, AnyFloat gloss, int64_t m, int64_t v, bool vec,
                                              int64_t ignore_index, T* __restrict__ dlogits) {
  using A = compute_t<T>;
  constexpr int VEC = 16 / sizeof(T);
  using G = RowGroup<kWarpGroup>;
  for (int64_t r = G::index(); r < m; r += G::count()) {
    const T* row = logits + r * v;
    T* drow = dlogits + r * v;
    const int64_t t = targets[r];
    const bool ignored = t == ignore_index;
    const A row_lse = ignored ? A(0) : lse.load<A>(r);
    const A g = ignored ? A(0) : gloss.load<A>(r);
    // (softmax - onehot) * g, the onehot term only at a valid target.
    auto grad = [&](int64_t i, T x) -> T {
      if (ignored) return convert<T>(A(0));
      A p = d_exp(arith(x) - row_lse);
      return convert<T>(i == t ? (p - A(1)) * g : p * g);
    };
    if (vec) {
      const Vec<T, VEC>* rv = reinterpret_cast<const Vec<T, VEC>*>(row);
      Vec<T, VEC>* dv = reinterpret_cast<Vec<T, VEC>*>(drow);
      for (int64_t i = G::thread(); i < v / VEC; i += G::size()) {
        Vec<T, VEC> in = rv[i], out;
#pragma unroll
        for (int j = 0; j < VEC; ++j) out.v[j] = grad(i * VEC + j, in.v[j]);
        dv[i] = out;
      }
    } else {
      for (int64_t i = G::thread(); i < v; i += G::size()) drow[i] = grad(i, row[i]);
    }
  }
}


// Forward and backward in one launch: the row's logsumexp, then (softmax - onehot) * scale
// written in the gradient's dtype D. The second walk over the row mostly hits L2: a row of
// 50k f32 logits is 200 KB and the rows in flight at once fit in the 50 MB cache.
template <bool kWarpGroup, typename T, typename D>
__global__ void cross_entropy_with_grad_kernel(const T* __restrict__ logits, const int64_t* __restrict__ targets,
                                               AnyFloat scale, int64_t m, int64_t v, bool vec_in,
                                               bool vec_out, int64_t ignore_index, AnyFloat loss, AnyFloat lse,
                                               D* __restrict__ dlogits) {
  using A = compute_t<T>;
  __shared__ LseState<A> smem[kWarp];
  using G = RowGroup<kWarpGroup>;
  const A g = scale.load<A>(0);
  for (int64_t r = G::index(); r < m; r += G::count()) {
    const T* row = logits + r * v;
    LseState<A> st = lse_init<A>();
    for_row(row, v, G::thread(), G::size(), vec_in, [&](int64_t, T x) { lse_add(st, arith(x)); });
    st = group_lse<kWarpGroup>(st, smem);
    const A row_lse = lse_value(st);
    const int64_t t = targets[r];
    const bool ignored = t == ignore_index;
    const bool counted = !ignored && t >= 0 && t < v;
    if (G::thread() == 0) {
      lse.store<A>(r, row_lse);
      loss.store<A>(r, counted ? row_lse - arith(row[t]) : A(0));
    }
    write_row(dlogits + r * v, v, G::thread(), G::size(), vec_out, [&](int64_t i) -> D {
      if (ignored) return convert<D>(A(0));
      const A p = d_exp(arith(row[i]) - row_lse);
      return convert<D>(i == t ? (p - A(1)) * g : p * g);
    });
  }
}

// Rows that fit in shared memory (V * sizeof(T) bytes within the device's opt-in limit, whole
// 16-byte vectors): one block of kSmemRowThreads per row copies the row from global memory
// once, every 16-byte piece of it in flight at once, and both walks (logsumexp, then the
// gradient) read shared memory. The kernel above walks global memory twice; at 50k f32 logits
// a row (200 KB) the rows of its resident blocks no longer fit in L2, so the second walk went
// to DRAM again (docs/perf_train.md). One block per multiprocessor at this size.
constexpr int kSmemRowThreads = 1024;

// dst[0, 16 bytes) = src[0, 16 bytes), asynchronously where the hardware can (sm_80+: the
// copy needs no registers, so a thread can have all of its pieces in flight).
__device__ __forceinline__ void copy16_async(void* dst, const void* src) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  const unsigned d = static_cast<unsigned>(__cvta_generic_to_shared(dst));
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(d), "l"(src) : "memory");
#else
  *static_cast<uint4*>(dst) = *static_cast<const uint4*>(src);
#endif
}
__device__ __forceinline__ void copy16_wait_all() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  asm volatile("cp.async.wait_all;\n" ::: "memory");
#endif
}

template <typename T, typename D>
__global__ void __launch_bounds__(kSmemRowThreads)
    cross_entropy_with_grad_smem_kernel(const T* __restrict__ logits, const int64_t* __restrict__ targets,
                                        AnyFloat scale, int64_t m, int64_t v, bool vec_out, int64_t ignore_index,
                                        AnyFloat loss, AnyFloat lse, D* __restrict__ dlogits) {
  using A = compute_t<T>;
  constexpr int VEC = 16 / sizeof(T);
  extern __shared__ __align__(16) unsigned char smem_row[];
  __shared__ LseState<A> smem[kWarp];
  T* srow = reinterpret_cast<T*>(smem_row);
  const A g = scale.load<A>(0);
  const int64_t nv = v / VEC;
  for (int64_t r = blockIdx.x; r < m; r += gridDim.x) {
    const T* row = logits + r * v;
    for (int64_t i = threadIdx.x; i < nv; i += blockDim.x) copy16_async(srow + i * VEC, row + i * VEC);
    copy16_wait_all();
    __syncthreads();
    LseState<A> st = lse_init<A>();
    for_row(srow, v, threadIdx.x, blockDim.x, true, [&](int64_t, T x) { lse_add(st, arith(x)); });
    st = group_lse<false>(st, smem);
    const A row_lse = lse_value(st);
    const int64_t t = targets[r];
    const bool ignored = t == ignore_index;
    const bool counted = !ignored && t >= 0 && t < v;
    if (threadIdx.x == 0) {
      lse.store<A>(r, row_lse);
      loss.store<A>(r, counted ? row_lse - arith(srow[t]) : A(0));
    }
    write_row(dlogits + r * v, v, threadIdx.x, blockDim.x, vec_out, [&](int64_t i) -> D {
      if (ignored) return convert<D>(A(0));
      const A p = d_exp(arith(srow[i]) - row_lse);
      return convert<D>(i == t ? (p - A(1)) * g : p * g);
    });
    __syncthreads();  // every walk of srow done before the next row's copies land in it
  }
}
}  // namespace

void CudaBackend::cross_entropy_forward(const Tensor& logits_in, const Tensor& targets_in, int64_t ignore_index,
                                        const Tensor& loss, const Tensor& lse) {
  DeviceGuard guard(device_);
  Tensor logits = contiguous_input(logits_in), targets = contiguous_input(targets_in);
  SSMT_ASSERT(logits.dim() == 2 && targets.dtype() == DType::i64 && targets.numel() == logits.size(0) &&
                  loss.numel() == logits.size(0) && lse.numel() == logits.size(0) && loss.is_contiguous() &&
                  lse.is_contiguous(),
              "cross_entropy_forward: ", logits.describe(), ", ", targets.describe(), " -> ", loss.describe(), ", ",
              lse.describe());
  const int64_t m = logits.size(0), v = logits.size(1);
  if (m == 0) return;
  const DeviceContext& ctx = context_of(logits);
  SSMT_DISPATCH_FLOAT(logits.dtype(), "cross_entropy_forward", [&] {
    using T = scalar_t;
    const T* pl = static_cast<const T*>(logits.data_ptr());
    RowLaunch L = row_launch(m, v, ctx);
    SSMT_ROW_LAUNCH(L, ctx, cross_entropy_forward_kernel, T, pl, static_cast<const int64_t*>(targets.data_ptr()), m,
                    v, rows_vectorizable<T>(pl, v), ignore_index, any_float(loss), any_float(lse));
  });
}

void CudaBackend::cross_entropy_backward(const Tensor& logits_in, const Tensor& targets_in, const Tensor& lse_in,
                                         const Tensor& gloss_in, int64_t ignore_index, const Tensor& dlogits) {
  DeviceGuard guard(device_);
  Tensor logits = contiguous_input(logits_in), targets = contiguous_input(targets_in);
  Tensor lse = contiguous_input(lse_in), gloss = contiguous_input(gloss_in);
  SSMT_ASSERT(logits.dim() == 2 && dlogits.shape() == logits.shape() && dlogits.is_contiguous() &&
                  dlogits.dtype() == logits.dtype() && targets.dtype() == DType::i64 &&
                  targets.numel() == logits.size(0) && lse.numel() == logits.size(0) &&
                  gloss.numel() == logits.size(0) && lse.dim() == 1 && gloss.dim() == 1,
              "cross_entropy_backward: ", logits.describe(), " -> ", dlogits.describe());
  const int64_t m = logits.size(0), v = logits.size(1);
  if (dlogits.numel() == 0) return;
  const DeviceContext& ctx = context_of(logits);
  SSMT_DISPATCH_FLOAT(logits.dtype(), "cross_entropy_backward", [&] {
    using T = scalar_t;
    const T* pl = static_cast<const T*>(logits.data_ptr());
    T* pd = static_cast<T*>(dlogits.data_ptr());
    RowLaunch L = row_launch(m, v, ctx);
    SSMT_ROW_LAUNCH(L, ctx, cross_entropy_backward_kernel, T, pl, static_cast<const int64_t*>(targets.data_ptr()),
                    any_float(lse), any_float(gloss), m, v, rows_vectorizable<T>(pl, v) && rows_vectorizable<T>(pd, v),
                    ignore_index, pd);
  });
}

}  // namespace ssmtrain::cuda_detail

namespace ssmtrain::cuda_detail {

void CudaBackend::cross_entropy_with_grad(const Tensor& logits_in, const Tensor& targets_in, int64_t ignore_index,
                                          const Tensor& scale, const Tensor& loss, const Tensor& lse,
                                          const Tensor& dlogits) {
  DeviceGuard guard(device_);
  Tensor logits = contiguous_input(logits_in), targets = contiguous_input(targets_in);
  SSMT_ASSERT(logits.dim() == 2 && dlogits.shape() == logits.shape() && dlogits.is_contiguous() &&
                  targets.dtype() == DType::i64 && targets.numel() == logits.size(0) &&
                  loss.numel() == logits.size(0) && lse.numel() == logits.size(0) && loss.is_contiguous() &&
                  lse.is_contiguous() && scale.numel() == 1 && scale.is_contiguous(),
              "cross_entropy_with_grad: ", logits.describe(), ", ", targets.describe(), ", scale ",
              scale.describe(), " -> ", dlogits.describe());
  const int64_t m = logits.size(0), v = logits.size(1);
  if (m == 0) return;
  const DeviceContext& ctx = context_of(logits);
  const AnyFloat ps = any_float(scale);
  const int64_t* pt = static_cast<const int64_t*>(targets.data_ptr());
  SSMT_DISPATCH_FLOAT(logits.dtype(), "cross_entropy_with_grad", [&] {
    using T = scalar_t;
    const T* pl = static_cast<const T*>(logits.data_ptr());
    const bool vec_in = rows_vectorizable<T>(pl, v);
    RowLaunch L = row_launch(m, v, ctx);
    const size_t row_bytes = static_cast<size_t>(v) * sizeof(T);
    // Rows of 32 KB and more: the generic kernel's resident rows (8 blocks per multiprocessor)
    // outgrow L2 from about there.
    // (The opt-in limit covers the kernel's static shared memory too: 1 KB is left for it.)
    const bool smem_rows =
        !L.warp && vec_in && row_bytes >= (size_t{32} << 10) && row_bytes + (size_t{1} << 10) <= ctx.smem_optin;
    auto launch = [&](auto* pd) {
      using D = std::remove_pointer_t<decltype(pd)>;
      const bool vec_out = rows_vectorizable<D>(pd, v);
      if (smem_rows) {
        auto kernel = cross_entropy_with_grad_smem_kernel<T, D>;
        CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                        static_cast<int>(row_bytes)));
        // Rows in flight: as many blocks as fit on the multiprocessors at once.
        const int per_sm = std::max<int>(1, static_cast<int>(std::min<size_t>(
                                                2, ctx.smem_optin / std::max<size_t>(row_bytes, 1))));
        const int grid = static_cast<int>(std::min<int64_t>(m, static_cast<int64_t>(ctx.sm_count) * per_sm));
        kernel<<<grid, kSmemRowThreads, row_bytes, ctx.stream.get()>>>(pl, pt, ps, m, v, vec_out, ignore_index,
                                                                      any_float(loss), any_float(lse), pd);
      } else if (L.warp)
        cross_entropy_with_grad_kernel<true, T, D><<<L.grid, L.block, 0, ctx.stream.get()>>>(
            pl, pt, ps, m, v, vec_in, vec_out, ignore_index, any_float(loss), any_float(lse), pd);
      else
        cross_entropy_with_grad_kernel<false, T, D><<<L.grid, L.block, 0, ctx.stream.get()>>>(
            pl, pt, ps, m, v, vec_in, vec_out, ignore_index, any_float(loss), any_float(lse), pd);
      CUDA_CHECK_LAUNCH();
    };
    switch (dlogits.dtype()) {
      case DType::f32: launch(static_cast<float*>(dlogits.data_ptr())); break;
      case DType::bf16: launch(static_cast<bf16*>(dlogits.data_ptr())); break;
      case DType::f64: launch(static_cast<double*>(dlogits.data_ptr())); break;
      default: SSMT_ASSERT(false, "cross_entropy_with_grad: dlogits ", dlogits.describe());
    }
  });
}

}  // namespace ssmtrain::cuda_detail
