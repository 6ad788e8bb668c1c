// Data movement and creation on CUDA: copy with dtype conversion (any strided views), fill,
// arange, and the counter-based random fills. Random element i uses Philox counter
// offset + i, through the same SSMT_HD functions of core/random.h that the CPU runs, so
// uniform draws are bit-identical across devices. Normal draws go through logf/cosf/sqrtf,
// which CUDA and glibc both compute to within an ulp or two but not always to the same
// last bit; the tests hold them to 1e-6 relative.
#include "core/cuda/backend_cuda.cuh"
#include "core/cuda/elementwise.cuh"
#include "core/random.h"

namespace ssmtrain::cuda_detail {
namespace {

template <typename To, typename From>
struct ConvertFn {
  __device__ __forceinline__ To operator()(From x) const { return convert<To>(x); }
};

template <typename T>
struct FillFn {
  T value;
  __device__ __forceinline__ T operator()() const { return value; }
};

template <typename T>
__global__ void arange_kernel(T* __restrict__ out, int64_t n, double start, double step) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x)
    out[i] = convert<T>(start + static_cast<double>(i) * step);
}

enum class Draw { uniform, normal, randint };

// dst[i] = low + (high - low) * u (uniform), mean + std * z (normal), or the integer draw.
template <Draw D, typename T>
__global__ void random_kernel(T* __restrict__ out, int64_t n, uint64_t seed, uint64_t offset, double a,
                              double b, int64_t ilow, uint64_t irange) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const uint64_t counter = offset + static_cast<uint64_t>(i);
    if constexpr (D == Draw::uniform) {
      out[i] = convert<T>(a + (b - a) * static_cast<double>(random_uniform(seed, counter)));
    } else if constexpr (D == Draw::normal) {
      out[i] = convert<T>(a + b * static_cast<double>(random_normal(seed, counter)));
    } else {
      const uint64_t word = philox4x32(counter, seed).v[2];
      out[i] = convert<T>(ilow + static_cast<int64_t>(word % irange));
    }
  }
}

template <Draw D>
void launch_random(const Tensor& dst, uint64_t seed, uint64_t offset, double a, double b, int64_t ilow,
                   uint64_t irange) {
  SSMT_ASSERT(dst.is_contiguous(), "random fill of ", dst.describe(), ": dst must be contiguous");
  const int64_t n = dst.numel();
  if (n == 0) return;
  DeviceContext& ctx = context_of(dst);
  SSMT_DISPATCH_ALL(dst.dtype(), "random fill", [&] {
    random_kernel<D, scalar_t><<<elementwise_grid(n, ctx.sm_count), kElementwiseThreads, 0, ctx.stream.get()>>>(
        static_cast<scalar_t*>(dst.data_ptr()), n, seed, offset, a, b, ilow, irange);
    CUDA_CHECK_LAUNCH();
  });
}

// t as `rows` rows of `cols` contiguous elements, `pitch` elements apart: true when the last
// axis has stride 1 and every leading axis steps by whole rows of the one before it (a
// column slice of a bigger tensor, e.g. a part of a split, or a contiguous tensor).
bool as_rows(const Tensor& t, int64_t& rows, int64_t& cols, int64_t& pitch) {
  const int n = t.dim();
  if (n == 0) return false;
  const auto& sh = t.shape();
  const auto& st = t.strides();
  if (st[n - 1] != 1 && sh[n - 1] != 1) return false;
  cols = sh[n - 1];
  rows = 1;
  pitch = n >= 2 ? st[n - 2] : cols;
  int64_t step = pitch;  // the stride axis i must have
  for (int i = n - 2; i >= 0; --i) {
    if (sh[i] != 1 && st[i] != step) return false;
    rows *= sh[i];
    step *= sh[i];
  }
  return pitch >= cols;
}

// dst row r = src row r, `units` units of U each (rows `sp` and `dp` bytes apart), one
// 16-byte unit a thread where widths, pitches and bases allow. The runtime's 2-D copy
// (cudaMemcpy2DAsync) it replaces made the backward of Mamba's x_proj split (three column
// blocks of 96, 32 and 32 bytes in 16384 rows) take 39 us a layer at the 129M model's shape.
template <typename U>
__global__ void copy_rows_kernel(const char* __restrict__ src, int64_t sp, char* __restrict__ dst, int64_t dp,
                                 int64_t rows, int64_t units) {
  const int64_t total = rows * units;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < total;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t r = i / units, u = i - r * units;
    *reinterpret_cast<U*>(dst + r * dp + u * static_cast<int64_t>(sizeof(U))) =
        *reinterpret_cast<const U*>(src + r * sp + u * static_cast<int64_t>(sizeof(U)));
  }
}

void copy_rows(const void* src, int64_t sp, void* dst, int64_t dp, int64_t rows, int64_t bytes,
               const DeviceContext& ctx) {
  // The widest unit that divides the row width, both pitches and both base addresses.
  const uint64_t all = static_cast<uint64_t>(bytes) | static_cast<uint64_t>(sp) | static_cast<uint64_t>(dp) |
                       reinterpret_cast<uintptr_t>(src) | reinterpret_cast<uintptr_t>(dst);
  auto launch = [&](auto unit) {
    using U = decltype(unit);
    const int64_t units = bytes / static_cast<int64_t>(sizeof(U));
    copy_rows_kernel<U><<<elementwise_grid(rows * units, ctx.sm_count), kElementwiseThreads, 0, ctx.stream.get()>>>(
        static_cast<const char*>(src), sp, static_cast<char*>(dst), dp, rows, units);
    CUDA_CHECK_LAUNCH();
  };
  if (all % 16 == 0) return launch(uint4{});
  if (all % 8 == 0) return launch(uint2{});
  if (all % 4 == 0) return launch(uint32_t{});
  if (all % 2 == 0) return launch(uint16_t{});
  launch(uint8_t{});
}

}  // namespace

void CudaBackend::copy(const Tensor& src, const Tensor& dst) {
  DeviceGuard guard(device_);
  SSMT_ASSERT(src.shape() == dst.shape(), "copy ", src.describe(), " -> ", dst.describe());
  if (dst.numel() == 0) return;
  if (src.dtype() == dst.dtype() && src.is_contiguous() && dst.is_contiguous()) {
    CUDA_CHECK(cudaMemcpyAsync(dst.data_ptr(), src.data_ptr(), dst.nbytes(), cudaMemcpyDeviceToDevice,
                               stream_of(dst)));
    return;
  }
  // Rows between column slices (a split's parts and their gradients): one row copy, which
  // runs at copy bandwidth where the elementwise kernel pays a strided index per element.
  int64_t rs, cs, ps, rd, cd, pd;
  if (src.dtype() == dst.dtype() && as_rows(src, rs, cs, ps) && as_rows(dst, rd, cd, pd) && rs == rd && cs == cd) {
    const int64_t es = static_cast<int64_t>(dtype_size(dst.dtype()));
    copy_rows(src.data_ptr(), ps * es, dst.data_ptr(), pd * es, rs, cs * es, context_of(dst));
    return;
  }
  SSMT_DISPATCH_ALL(dst.dtype(), "copy", [&] {
    using To = scalar_t;
    SSMT_DISPATCH_ALL(src.dtype(), "copy", [&] {
      using From = scalar_t;
      launch_elementwise<To, From>(ConvertFn<To, From>{}, dst, src);
    });
  });
}

void CudaBackend::fill(const Tensor& dst, double value) {
  DeviceGuard guard(device_);
  SSMT_DISPATCH_ALL(dst.dtype(), "fill", [&] {
    launch_elementwise<scalar_t>(FillFn<scalar_t>{convert<scalar_t>(value)}, dst);
  });
}

void CudaBackend::arange(const Tensor& dst, double start, double step) {
  DeviceGuard guard(device_);
  SSMT_ASSERT(dst.is_contiguous() && dst.dim() == 1, "arange into ", dst.describe());
  const int64_t n = dst.numel();
  if (n == 0) return;
  DeviceContext& ctx = context_of(dst);
  SSMT_DISPATCH_ALL(dst.dtype(), "arange", [&] {
    arange_kernel<<<elementwise_grid(n, ctx.sm_count), kElementwiseThreads, 0, ctx.stream.get()>>>(
        static_cast<scalar_t*>(dst.data_ptr()), n, start, step);
    CUDA_CHECK_LAUNCH();
  });
}

void CudaBackend::fill_uniform(const Tensor& dst, uint64_t seed, uint64_t offset, double low, double high) {
  DeviceGuard guard(device_);
  launch_random<Draw::uniform>(dst, seed, offset, low, high, 0, 1);
}

void CudaBackend::fill_normal(const Tensor& dst, uint64_t seed, uint64_t offset, double mean, double std) {
  DeviceGuard guard(device_);
  launch_random<Draw::normal>(dst, seed, offset, mean, std, 0, 1);
}

void CudaBackend::fill_randint(const Tensor& dst, uint64_t seed, uint64_t offset, int64_t low, int64_t high) {
  DeviceGuard guard(device_);
  SSMT_CHECK(high > low, "randint into ", dst.describe(), ": empty range [", low, ", ", high, ")");
  launch_random<Draw::randint>(dst, seed, offset, 0, 0, low, static_cast<uint64_t>(high - low));
}

}  // namespace ssmtrain::cuda_detail
