// Row and last-axis indexing on CUDA: index_select_rows / index_add_rows (embedding
// forward and backward) and gather_last / scatter_add_last, for every dtype.
//
// The adds are deterministic without atomics: the (target, source position) pairs are
// sorted with a stable radix sort (CUB), so the sources of each target are contiguous and
// in position order; the first entry of each run (its "head") then adds the whole run in
// that order, in the compute type, rounding once on the store. That is the CPU backend's
// order exactly, so f32 results agree with it bit for bit.
//
// Indices are not validated on the device (that would need a synchronisation): an
// out-of-range index reads as zero in the selects and is skipped by the adds.
#include <cub/device/device_radix_sort.cuh>

#include <algorithm>

#include "core/cuda/allocator.cuh"
#include "core/cuda/backend_cuda.cuh"
#include "core/cuda/elementwise.cuh"
#include "core/cuda/rows.cuh"

namespace ssmtrain::cuda_detail {
namespace {

template <typename T>
using add_acc_t = std::conditional_t<std::is_integral_v<T>, int64_t, compute_t<T>>;

constexpr int kThreads = 256;

inline int grid_for(int64_t work, const DeviceContext& ctx) { return elementwise_grid(work, ctx.sm_count); }

// ---- index_select_rows: a copy of whole rows in units U (16 bytes when rows allow) ----

template <typename U>
__global__ void select_rows_kernel(const U* __restrict__ x, const int64_t* __restrict__ idx, int64_t n, int64_t m,
                                   int64_t units, U* __restrict__ out) {
  const int64_t total = m * units;
  for (int64_t e = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; e < total;
       e += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t r = e / units, c = e - r * units;
    const int64_t src = idx[r];
    out[e] = (src >= 0 && src < n) ? x[src * units + c] : U{};
  }
}

template <typename U>
void launch_select(const Tensor& x, const int64_t* idx, const Tensor& out, int64_t row_bytes) {
  const DeviceContext& ctx = context_of(out);
  const int64_t units = row_bytes / static_cast<int64_t>(sizeof(U)), m = out.size(0);
  select_rows_kernel<U><<<grid_for(m * units, ctx), kThreads, 0, ctx.stream.get()>>>(
      static_cast<const U*>(x.data_ptr()), idx, x.size(0), m, units, static_cast<U*>(out.data_ptr()));
  CUDA_CHECK_LAUNCH();
}

// ---- the sort behind the deterministic adds ----

// keys[i] = key of source i (or `sentinel` when its index is out of range), vals[i] = i:
// key = (i / j) * k + idx[i] for valid idx in [0, k) (scatter_add_last, rows of j indices),
// or idx[i] itself when j = 0 (index_add_rows, one group).
template <typename Key>
__global__ void make_keys_kernel(const int64_t* __restrict__ idx, int64_t count, int64_t j, int64_t k, Key sentinel,
                                 Key* __restrict__ keys, int64_t* __restrict__ vals) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < count;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t v = idx[i];
    const int64_t row = j > 0 ? i / j : 0;
    keys[i] = (v >= 0 && v < k) ? static_cast<Key>(row * k + v) : sentinel;
    vals[i] = i;
  }
}

// The (key, position) pairs of `count` sources sorted by key, stably.
template <typename Key>
struct SortedSources {
  DeviceBuffer keys, vals;
  SortedSources(int64_t count, int device)
      : keys(static_cast<size_t>(count) * sizeof(Key), device), vals(static_cast<size_t>(count) * sizeof(int64_t), device) {}
};

// Sorts the sources: `groups` rows of `j` indices each (j = 0: one group), valid indices in [0, k).
template <typename Key>
void sort_sources(const int64_t* idx, int64_t count, int64_t j, int64_t k, int64_t groups, SortedSources<Key>& out,
                  int device, const DeviceContext& ctx) {
  SSMT_ASSERT(count < (int64_t{1} << 31), "index add over ", count, " entries: at most 2^31 - 1 supported");
  const Key sentinel = static_cast<Key>(groups * k);  // past every valid key
  DeviceBuffer keys_in(static_cast<size_t>(count) * sizeof(Key), device);
  DeviceBuffer vals_in(static_cast<size_t>(count) * sizeof(int64_t), device);
  make_keys_kernel<Key><<<grid_for(count, ctx), kThreads, 0, ctx.stream.get()>>>(idx, count, j, k, sentinel,
                                                                                  keys_in.as<Key>(), vals_in.as<int64_t>());
  CUDA_CHECK_LAUNCH();
  int end_bit = 1;
  while (end_bit < static_cast<int>(sizeof(Key) * 8) && (static_cast<uint64_t>(sentinel) >> end_bit) != 0) ++end_bit;
  size_t temp_bytes = 0;
  CUDA_CHECK(cub::DeviceRadixSort::SortPairs(nullptr, temp_bytes, keys_in.as<Key>(), out.keys.template as<Key>(),
                                             vals_in.as<int64_t>(), out.vals.template as<int64_t>(),
                                             static_cast<int>(count), 0, end_bit, ctx.stream.get()));
  DeviceBuffer temp(std::max<size_t>(temp_bytes, 1), device);
  CUDA_CHECK(cub::DeviceRadixSort::SortPairs(temp.as<void>(), temp_bytes, keys_in.as<Key>(),
                                             out.keys.template as<Key>(), vals_in.as<int64_t>(),
                                             out.vals.template as<int64_t>(), static_cast<int>(count), 0, end_bit,
                                             ctx.stream.get()));
}

// Sorted position s starts a run when its key differs from the previous one.
template <typename Key>
__device__ __forceinline__ bool run_head(const Key* keys, int64_t s) {
  return s == 0 || keys[s] != keys[s - 1];
}

// index_add_rows: thread (s, c) with s a run head adds column c of the run's source rows
// into out[key][c] in position order.
template <typename T, typename Key>
__global__ void add_rows_kernel(const T* __restrict__ g, const Key* __restrict__ keys, const int64_t* __restrict__ vals,
                                int64_t count, int64_t width, Key limit, T* __restrict__ out) {
  using S = add_acc_t<T>;
  const int64_t total = count * width;
  for (int64_t e = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; e < total;
       e += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t s = e / width, c = e - s * width;
    const Key key = keys[s];
    if (key >= limit || !run_head(keys, s)) continue;
    T* dst = out + static_cast<int64_t>(key) * width + c;
    S acc = static_cast<S>(arith(*dst));
    for (int64_t p = s; p < count && keys[p] == key; ++p) acc += static_cast<S>(arith(g[vals[p] * width + c]));
    *dst = convert<T>(acc);
  }
}

// scatter_add_last: thread s (a run head) adds its run's elements into out[key].
template <typename T, typename Key>
__global__ void scatter_add_kernel(const T* __restrict__ g, const Key* __restrict__ keys,
                                   const int64_t* __restrict__ vals, int64_t count, Key limit, T* __restrict__ out) {
  using S = add_acc_t<T>;
  for (int64_t s = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; s < count;
       s += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const Key key = keys[s];
    if (key >= limit || !run_head(keys, s)) continue;
    S acc = static_cast<S>(arith(out[key]));
    for (int64_t p = s; p < count && keys[p] == key; ++p) acc += static_cast<S>(arith(g[vals[p]]));
    out[key] = convert<T>(acc);
  }
}

template <typename T>
__global__ void gather_last_kernel(const T* __restrict__ x, const int64_t* __restrict__ idx, int64_t total, int64_t j,
                                   int64_t k, T* __restrict__ out) {
  for (int64_t e = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; e < total;
       e += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t i = idx[e];
    out[e] = (i >= 0 && i < k) ? x[(e / j) * k + i] : convert<T>(0);
  }
}

void check_index_tensor(const Tensor& idx, const char* op) {
  SSMT_ASSERT(idx.dtype() == DType::i64 && idx.is_contiguous(), op, ": indices ", idx.describe());
}

}  // namespace

void CudaBackend::index_select_rows(const Tensor& x_in, const Tensor& idx, const Tensor& out) {
  DeviceGuard guard(device_);
  Tensor x = contiguous_input(x_in);
  check_index_tensor(idx, "index_select_rows");
  SSMT_ASSERT(x.dim() == 2 && out.dim() == 2 && out.size(0) == idx.numel() && out.size(1) == x.size(1) &&
                  out.is_contiguous() && out.dtype() == x.dtype(),
              "index_select_rows: ", x.describe(), "[", idx.describe(), "] -> ", out.describe());
  if (out.numel() == 0) return;
  const int64_t row_bytes = x.size(1) * dtype_size(x.dtype());
  const int64_t* pi = static_cast<const int64_t*>(idx.data_ptr());
  auto fits = [&](size_t unit) {
    return row_bytes % static_cast<int64_t>(unit) == 0 && aligned_to(x.data_ptr(), unit) &&
           aligned_to(out.data_ptr(), unit);
  };
  if (fits(16)) return launch_select<uint4>(x, pi, out, row_bytes);
  if (fits(8)) return launch_select<uint2>(x, pi, out, row_bytes);
  if (fits(4)) return launch_select<uint32_t>(x, pi, out, row_bytes);
  if (fits(2)) return launch_select<uint16_t>(x, pi, out, row_bytes);
  launch_select<uint8_t>(x, pi, out, row_bytes);
}

void CudaBackend::index_add_rows(const Tensor& g_in, const Tensor& idx, const Tensor& out) {
  DeviceGuard guard(device_);
  Tensor g = contiguous_input(g_in);
  check_index_tensor(idx, "index_add_rows");
  SSMT_ASSERT(g.dim() == 2 && out.dim() == 2 && g.size(0) == idx.numel() && out.size(1) == g.size(1) &&
                  out.is_contiguous() && out.dtype() == g.dtype(),
              "index_add_rows: ", out.describe(), "[", idx.describe(), "] += ", g.describe());
  const int64_t n = out.size(0), m = g.size(0), width = g.size(1);
  if (m == 0 || width == 0 || n == 0) return;
  const DeviceContext& ctx = context_of(out);
  SSMT_ASSERT(n < (int64_t{1} << 31), "index_add_rows: ", out.describe(), " has too many rows");
  using Key = uint32_t;
  SortedSources<Key> sorted(m, device_);
  // One group (j = 0): the key is the target row itself.
  sort_sources<Key>(static_cast<const int64_t*>(idx.data_ptr()), m, 0, n, 1, sorted, device_, ctx);
  SSMT_DISPATCH_ALL(g.dtype(), "index_add_rows", [&] {
    using T = scalar_t;
    add_rows_kernel<T, Key><<<grid_for(m * width, ctx), kThreads, 0, ctx.stream.get()>>>(
        static_cast<const T*>(g.data_ptr()), sorted.keys.as<Key>(), sorted.vals.as<int64_t>(), m, width,
        static_cast<Key>(n), static_cast<T*>(out.data_ptr()));
    CUDA_CHECK_LAUNCH();
  });
}

void CudaBackend::gather_last(const Tensor& x_in, const Tensor& idx, const Tensor& out) {
  DeviceGuard guard(device_);
  Tensor x = contiguous_input(x_in);
  check_index_tensor(idx, "gather_last");
  SSMT_ASSERT(x.dim() == 2 && idx.dim() == 2 && out.shape() == idx.shape() && idx.size(0) == x.size(0) &&
                  out.is_contiguous() && out.dtype() == x.dtype(),
              "gather_last: ", x.describe(), "[", idx.describe(), "] -> ", out.describe());
  const int64_t total = out.numel(), j = idx.size(1), k = x.size(1);
  if (total == 0) return;
  const DeviceContext& ctx = context_of(out);
  SSMT_DISPATCH_ALL(x.dtype(), "gather_last", [&] {
    using T = scalar_t;
    gather_last_kernel<T><<<grid_for(total, ctx), kThreads, 0, ctx.stream.get()>>>(
        static_cast<const T*>(x.data_ptr()), static_cast<const int64_t*>(idx.data_ptr()), total, j, k,
        static_cast<T*>(out.data_ptr()));
    CUDA_CHECK_LAUNCH();
  });
}

void CudaBackend::scatter_add_last(const Tensor& g_in, const Tensor& idx, const Tensor& out) {
  DeviceGuard guard(device_);
  Tensor g = contiguous_input(g_in);
  check_index_tensor(idx, "scatter_add_last");
  SSMT_ASSERT(g.dim() == 2 && idx.shape() == g.shape() && out.dim() == 2 && out.size(0) == g.size(0) &&
                  out.is_contiguous() && out.dtype() == g.dtype(),
              "scatter_add_last: ", out.describe(), "[", idx.describe(), "] += ", g.describe());
  const int64_t m = out.size(0), k = out.size(1), j = g.size(1), count = g.numel();
  if (count == 0 || k == 0) return;
  const DeviceContext& ctx = context_of(out);
  auto run = [&](auto key_tag) {
    using Key = decltype(key_tag);
    SortedSources<Key> sorted(count, device_);
    sort_sources<Key>(static_cast<const int64_t*>(idx.data_ptr()), count, j, k, m, sorted, device_, ctx);
    SSMT_DISPATCH_ALL(g.dtype(), "scatter_add_last", [&] {
      using T = scalar_t;
      scatter_add_kernel<T, Key><<<grid_for(count, ctx), kThreads, 0, ctx.stream.get()>>>(
          static_cast<const T*>(g.data_ptr()), sorted.keys.template as<Key>(), sorted.vals.template as<int64_t>(),
          count, static_cast<Key>(m * k), static_cast<T*>(out.data_ptr()));
      CUDA_CHECK_LAUNCH();
    });
  };
  // Keys m * k + idx, plus one sentinel past them: 32 bits when they fit.
  if (m * k < (int64_t{1} << 32) - 1)
    run(uint32_t{});
  else
    run(uint64_t{});
}

}  // namespace ssmtrain::cuda_detail
