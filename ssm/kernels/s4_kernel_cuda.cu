// S4 / S4D on CUDA: the FFT convolution through cuFFT and the convolution-kernel
// generation (Vandermonde, Cauchy + Woodbury) as CUDA kernels, forward and backward, all on
// the compute stream of the tensors' device (no host round trip, no synchronization).
//
// fft_conv. Sequences (B, L, H) are packed time-major into a zero-padded real buffer
// (n, B, H), n = max(fft_conv_size(L), 2) >= 2L - 1, so one batched transform covers every
// (b, h) column with stride B*H and distance 1 (cuFFT's advanced layout), and every pack,
// multiply and unpack kernel reads and writes with h as the fast, coalesced axis. Kernels
// (H, L) are transposed into (n, H) through a shared-memory tile. Spectra are (n/2 + 1, B, H)
// and (n/2 + 1, H). The 1/n of the inverse transform is folded into the spectral products.
// The batch sum of dK is a loop over b in a fixed order (deterministic). cuFFT's C2R may
// overwrite its input, so every C2R consumes a spectrum that nothing reads afterwards.
// f32 and bf16 compute in f32 (R2C / C2R), f64 in f64 (D2Z / Z2D). Length 1 is padded to 2
// (any n >= 2L - 1 gives the same linear convolution).
//
// Kernel generation computes in double (double2 complex arithmetic), as on the CPU:
//  - Vandermonde forward: a block per (h, 1024 taps) stages the modes' Abar, log Abar and
//    W = C Bbar in shared memory; a thread sums its 4 consecutive taps over n in registers,
//    Abar^l = exp(l log Abar) for the first and running products for the next three.
//  - Vandermonde backward: a block per mode reduces g_l conj(Abar^l) and l g_l
//    conj(Abar^(l-1)) over l (fixed-order tree); a thread per channel then applies the chain
//    rule through the discretization and sums d dt over the modes in order.
//  - DPLR forward: a thread per (h, frequency k <= L/2) evaluates the four Cauchy sums over
//    the staged modes and the Woodbury correction; the spectrum (scaled by 1/L, with zero
//    imaginary parts at k = 0 and k = L/2, the values Re(IFFT) sees) goes through a batched
//    Z2D transform of length L.
//  - DPLR backward: a D2Z transform of dK, then a block per channel: each thread takes
//    frequencies k, recomputes the point, and for every mode warp-reduces the nine real
//    parts of its contributions; lane 0 adds them into the warp's own shared-memory slice
//    (no atomics), and the slices are summed in warp order at the end.
#include <cuda_runtime.h>
#include <cufft.h>

#include <algorithm>
#include <map>
#include <mutex>
#include <tuple>

#include "core/backend.h"
#include "core/cuda/cuda_check.cuh"
#include "core/cuda/device.cuh"
#include "core/dtype.h"
#include "core/error.h"
#include "ssm/kernels/s4_kernel.h"

namespace ssmtrain {

namespace {

#define CUFFT_CHECK(expr)                                                                                   \
  do {                                                                                                      \
    cufftResult r_ = (expr);                                                                                \
    if (r_ != CUFFT_SUCCESS)                                                                                \
      throw InternalError(detail::concat(__FILE__, ":", __LINE__, ": cuFFT error ", static_cast<int>(r_), \
                                         " in ", #expr));                                                   \
  } while (0)

constexpr int kThreads = 256;
constexpr int64_t kMaxModesCuda = 1024;  // N2 limit of the kernel-generation kernels
constexpr size_t kDefaultSmem = 48 * 1024;

int grid_for(long long n, int threads = kThreads) {
  return static_cast<int>(std::clamp<long long>((n + threads - 1) / threads, 1, 1 << 20));
}

cudaStream_t stream_of(int device) { return static_cast<cudaStream_t>(cuda::compute_stream(device)); }

// ---- scalar loads and stores in the storage type ----

template <typename T> __device__ __forceinline__ double ld_d(const void* p, long long i) {
  return static_cast<double>(static_cast<acc_t<T>>(static_cast<const T*>(p)[i]));
}
template <typename T, typename V> __device__ __forceinline__ void st(void* p, long long i, V v) {
  static_cast<T*>(p)[i] = T(static_cast<acc_t<T>>(v));
}

// ---- double2 complex arithmetic ----

__host__ __device__ __forceinline__ double2 cx(double re, double im = 0.0) { return make_double2(re, im); }
__host__ __device__ __forceinline__ double2 operator+(double2 a, double2 b) { return cx(a.x + b.x, a.y + b.y); }
__host__ __device__ __forceinline__ double2 operator-(double2 a, double2 b) { return cx(a.x - b.x, a.y - b.y); }
__host__ __device__ __forceinline__ double2 operator-(double2 a) { return cx(-a.x, -a.y); }
__host__ __device__ __forceinline__ double2 operator*(double2 a, double2 b) {
  return cx(a.x * b.x - a.y * b.y, a.x * b.y + a.y * b.x);
}
__host__ __device__ __forceinline__ double2 operator*(double s, double2 a) { return cx(s * a.x, s * a.y); }
__host__ __device__ __forceinline__ double2 operator*(double2 a, double s) { return cx(s * a.x, s * a.y); }
__host__ __device__ __forceinline__ double2 operator/(double2 a, double s) { return cx(a.x / s, a.y / s); }
__host__ __device__ __forceinline__ double2 operator+(double s, double2 a) { return cx(s + a.x, a.y); }
__host__ __device__ __forceinline__ double2 operator-(double s, double2 a) { return cx(s - a.x, -a.y); }
__host__ __device__ __forceinline__ double2 cconj(double2 a) { return cx(a.x, -a.y); }
__host__ __device__ __forceinline__ double cnorm(double2 a) { return a.x * a.x + a.y * a.y; }
__host__ __device__ __forceinline__ double2 operator/(double2 a, double2 b) {
  const double d = cnorm(b);
  return cx((a.x * b.x + a.y * b.y) / d, (a.y * b.x - a.x * b.y) / d);
}
__host__ __device__ __forceinline__ double2 operator/(double s, double2 b) { return cx(s) / b; }
__device__ __forceinline__ double2 cexp(double2 a) {
  double s, c;
  sincos(a.y, &s, &c);
  const double e = exp(a.x);
  return cx(e * c, e * s);
}
__device__ __forceinline__ double2 clog(double2 a) { return cx(log(hypot(a.x, a.y)), atan2(a.y, a.x)); }

template <typename T> __device__ __forceinline__ double2 ld_c(const void* p, long long i) {
  return cx(ld_d<T>(p, 2 * i), ld_d<T>(p, 2 * i + 1));
}
template <typename T> __device__ __forceinline__ void st_c(void* p, long long i, double2 v) {
  st<T>(p, 2 * i, v.x);
  st<T>(p, 2 * i + 1, v.y);
}

__device__ __forceinline__ double warp_sum(double v) {
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) v += __shfl_xor_sync(0xffffffffu, v, off);
  return v;
}

// Sum of v over the block in a fixed order (valid in thread 0). `red` holds >= 32 doubles.
__device__ double block_sum(double v, double* red) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = (blockDim.x + 31) >> 5;
  v = warp_sum(v);
  __syncthreads();  // red may still be read from a previous call
  if (lane == 0) red[warp] = v;
  __syncthreads();
  double total = 0;
  if (threadIdx.x == 0)
    for (int w = 0; w < warps; ++w) total += red[w];
  return total;
}

// Raises the dynamic shared-memory limit of `kernel` when a launch needs more than 48 KB.
template <typename Kernel>
void allow_smem(Kernel kernel, size_t bytes, int device, const char* op) {
  if (bytes <= kDefaultSmem) return;
  const size_t limit = cuda_detail::device_context(device).smem_optin;
  SSMT_CHECK(bytes <= limit, op, ": needs ", bytes, " bytes of shared memory per block, the device allows ", limit,
             " (run it on the CPU)");
  CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(bytes)));
}

// ---- cuFFT plans ----

enum class FftLayout : int {
  columns,  // transform j, element x at x * batch + j (time-major, batches interleaved)
  rows,     // transform j contiguous: element x at j * len + x
};

// Plans keyed by (device, type, length, batch, layout), created on first use with their stream
// set to the device's compute stream (which never changes), destroyed at exit. The cache is
// built on the first transform, after the CUDA runtime is up, so its destructor runs before
// the runtime's teardown; errors at that point are ignored.
struct PlanCache {
  std::mutex mu;
  std::map<std::tuple<int, int, long long, long long, int>, cufftHandle> plans;
  ~PlanCache() {
    for (auto& kv : plans) cufftDestroy(kv.second);
  }
};

PlanCache& plan_cache() {
  static PlanCache cache;
  return cache;
}

// The caller holds a DeviceGuard for `device`.
cufftHandle fft_plan(int device, cufftType type, long long n, long long batch, FftLayout layout) {
  PlanCache& cache = plan_cache();
  std::lock_guard<std::mutex> lock(cache.mu);
  const auto key = std::make_tuple(device, static_cast<int>(type), n, batch, static_cast<int>(layout));
  auto it = cache.plans.find(key);
  if (it != cache.plans.end()) return it->second;
  const bool forward = type == CUFFT_R2C || type == CUFFT_D2Z;
  const long long nf = n / 2 + 1;
  long long len[1] = {n};
  long long inembed[1] = {forward ? n : nf}, onembed[1] = {forward ? nf : n};
  long long istride, idist, ostride, odist;
  if (layout == FftLayout::columns) {
    istride = ostride = batch;
    idist = odist = 1;
  } else {
    istride = ostride = 1;
    idist = inembed[0], odist = onembed[0];
  }
  cufftHandle plan;
  CUFFT_CHECK(cufftCreate(&plan));
  size_t work = 0;
  cufftResult r = cufftMakePlanMany64(plan, 1, len, inembed, istride, idist, onembed, ostride, odist, type, batch,
                                      &work);
  if (r == CUFFT_SUCCESS) r = cufftSetStream(plan, stream_of(device));
  if (r != CUFFT_SUCCESS) {
    cufftDestroy(plan);
    throw InternalError(detail::concat("cuFFT plan (n = ", n, ", batch = ", batch, ", type ", static_cast<int>(type),
                                       ") failed with error ", static_cast<int>(r)));
  }
  cache.plans.emplace(key, plan);
  return plan;
}

template <typename Acc> struct Fft;
template <> struct Fft<float> {
  using C = cufftComplex;
  static constexpr cufftType r2c = CUFFT_R2C, c2r = CUFFT_C2R;
  static void fwd(cufftHandle p, float* in, C* out) { CUFFT_CHECK(cufftExecR2C(p, in, out)); }
  static void inv(cufftHandle p, C* in, float* out) { CUFFT_CHECK(cufftExecC2R(p, in, out)); }
};
template <> struct Fft<double> {
  using C = cufftDoubleComplex;
  static constexpr cufftType r2c = CUFFT_D2Z, c2r = CUFFT_Z2D;
  static void fwd(cufftHandle p, double* in, C* out) { CUFFT_CHECK(cufftExecD2Z(p, in, out)); }
  static void inv(cufftHandle p, C* in, double* out) { CUFFT_CHECK(cufftExecZ2D(p, in, out)); }
};

// ---- layout kernels ----

// x (B, L, H) -> X (n, B, H), zero for x >= L.
template <typename T, typename Acc>
__global__ void pack_seq_kernel(const T* src, Acc* dst, long long B, long long L, long long H, long long n) {
  const long long BH = B * H, total = n * BH;
  for (long long i = blockIdx.x * static_cast<long long>(blockDim.x) + threadIdx.x; i < total;
       i += static_cast<long long>(gridDim.x) * blockDim.x) {
    const long long x = i / BH, j = i - x * BH, b = j / H, h = j - b * H;
    dst[i] = x < L ? static_cast<Acc>(src[(b * L + x) * H + h]) : Acc(0);
  }
}

// X (n, B, H) -> y (B, L, H), the first L rows.
template <typename Acc, typename T>
__global__ void unpack_seq_kernel(const Acc* src, T* dst, long long B, long long L, long long H) {
  const long long total = B * L * H;
  for (long long i = blockIdx.x * static_cast<long long>(blockDim.x) + threadIdx.x; i < total;
       i += static_cast<long long>(gridDim.x) * blockDim.x) {
    const long long h = i % H, r = i / H, l = r % L, b = r / L;
    dst[i] = T(src[(l * B + b) * H + h]);
  }
}

// dst[c * rows + r] = c < cols_in ? src[r * cols_in + c] : 0 for r < rows, c < cols_out:
// a transpose with zero padding of the new leading axis, through a 32 x 33 tile (reads
// coalesced along c, writes along r). Block (32, 8); grid (row tiles, column tiles).
template <typename In, typename Out>
__global__ void transpose_pad_kernel(const In* src, Out* dst, long long rows, long long cols_in, long long cols_out) {
  using Acc = acc_t<Out>;
  __shared__ Acc tile[32][33];
  const long long r0 = blockIdx.x * 32LL;
  const long long ctiles = (cols_out + 31) / 32;
  for (long long ct = blockIdx.y; ct < ctiles; ct += gridDim.y) {
    const long long c0 = ct * 32;
    for (int i = threadIdx.y; i < 32; i += blockDim.y) {
      const long long r = r0 + i, c = c0 + threadIdx.x;
      if (r < rows && c < cols_out) tile[i][threadIdx.x] = c < cols_in ? static_cast<Acc>(src[r * cols_in + c]) : Acc(0);
    }
    __syncthreads();
    for (int i = threadIdx.y; i < 32; i += blockDim.y) {
      const long long c = c0 + i, r = r0 + threadIdx.x;
      if (r < rows && c < cols_out) dst[c * rows + r] = Out(tile[threadIdx.x][i]);
    }
    __syncthreads();
  }
}

template <typename In, typename Out>
void transpose_pad(const In* src, Out* dst, long long rows, long long cols_in, long long cols_out,
                   cudaStream_t stream) {
  const long long rtiles = (rows + 31) / 32, ctiles = (cols_out + 31) / 32;
  SSMT_CHECK(rtiles <= (1LL << 31) - 1, "fft_conv: too many rows for the CUDA transpose");
  dim3 grid(static_cast<unsigned>(rtiles), static_cast<unsigned>(std::min<long long>(ctiles, 65535)));
  transpose_pad_kernel<In, Out><<<grid, dim3(32, 8), 0, stream>>>(src, dst, rows, cols_in, cols_out);
  CUDA_CHECK_LAUNCH();
}

// Uf[f, j] *= scale * Kf[f, j % H] (j = b * H + h): the forward product.
template <typename C, typename Acc>
__global__ void mul_spectra_kernel(C* uf, const C* kf, long long nf, long long BH, long long H, Acc scale) {
  const long long total = nf * BH;
  for (long long i = blockIdx.x * static_cast<long long>(blockDim.x) + threadIdx.x; i < total;
       i += static_cast<long long>(gridDim.x) * blockDim.x) {
    const long long f = i / BH, h = (i - f * BH) % H;
    const C u = uf[i], k = kf[f * H + h];
    uf[i].x = scale * (u.x * k.x - u.y * k.y);
    uf[i].y = scale * (u.x * k.y + u.y * k.x);
  }
}

// S[f, j] = scale * conj(Kf[f, j % H]) * DYf[f, j]: the spectrum of du.
template <typename C, typename Acc>
__global__ void conj_mul_kernel(const C* kf, const C* gf, C* out, long long nf, long long BH, long long H, Acc scale) {
  const long long total = nf * BH;
  for (long long i = blockIdx.x * static_cast<long long>(blockDim.x) + threadIdx.x; i < total;
       i += static_cast<long long>(gridDim.x) * blockDim.x) {
    const long long f = i / BH, h = (i - f * BH) % H;
    const C k = kf[f * H + h], g = gf[i];
    out[i].x = scale * (k.x * g.x + k.y * g.y);
    out[i].y = scale * (k.x * g.y - k.y * g.x);
  }
}

// A[f, h] = scale * sum_b conj(Uf[f, b, h]) DYf[f, b, h], b in increasing order.
template <typename C, typename Acc>
__global__ void batch_corr_kernel(const C* uf, const C* gf, C* out, long long nf, long long B, long long H, Acc scale) {
  const long long total = nf * H;
  for (long long i = blockIdx.x * static_cast<long long>(blockDim.x) + threadIdx.x; i < total;
       i += static_cast<long long>(gridDim.x) * blockDim.x) {
    const long long f = i / H, h = i - f * H;
    Acc re = 0, im = 0;
    for (long long b = 0; b < B; ++b) {
      const long long j = (f * B + b) * H + h;
      const C u = uf[j], g = gf[j];
      re += u.x * g.x + u.y * g.y;
      im += u.x * g.y - u.y * g.x;
    }
    out[i].x = scale * re;
    out[i].y = scale * im;
  }
}

// dst[i] = src[i * stride] converted (a strided cast; stride 2 reads real parts).
template <typename In, typename Out>
__global__ void cast_kernel(const In* src, long long stride, Out* dst, long long n) {
  for (long long i = blockIdx.x * static_cast<long long>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<long long>(gridDim.x) * blockDim.x)
    dst[i] = Out(static_cast<acc_t<Out>>(static_cast<acc_t<In>>(src[i * stride])));
}

template <typename In, typename Out>
void cast(const In* src, long long stride, Out* dst, long long n, cudaStream_t stream) {
  if (n == 0) return;
  cast_kernel<In, Out><<<grid_for(n), kThreads, 0, stream>>>(src, stride, dst, n);
  CUDA_CHECK_LAUNCH();
}

// ---- fft_conv ----

struct ConvBuffers {
  long long B, L, H, n, nf, BH;
  Device dev;
};

ConvBuffers conv_sizes(const FftConvParams& p, int device) {
  ConvBuffers s{p.B, p.L, p.H, 0, 0, 0, Device::cuda(device)};
  s.n = std::max<int64_t>(fft_conv_size(p.L), 2);
  s.nf = s.n / 2 + 1;
  s.BH = s.B * s.H;
  return s;
}

template <typename Acc> Tensor real_buffer(long long n, Device dev) { return Tensor::empty({n}, dtype_of<Acc>::value, dev); }
template <typename Acc> Tensor complex_buffer(long long n, Device dev) {
  return Tensor::empty({n, 2}, dtype_of<Acc>::value, dev);
}
template <typename Acc> typename Fft<Acc>::C* cptr(const Tensor& t) {
  return reinterpret_cast<typename Fft<Acc>::C*>(t.data<Acc>());
}

// Kf (nf, H): the spectra of the zero-padded kernel rows.
template <typename T, typename Acc>
Tensor kernel_spectra(const FftConvParams& p, const ConvBuffers& s, int device, cudaStream_t stream) {
  using F = Fft<Acc>;
  Tensor kr = real_buffer<Acc>(s.n * s.H, s.dev), kf = complex_buffer<Acc>(s.nf * s.H, s.dev);
  transpose_pad(static_cast<const T*>(p.K), kr.data<Acc>(), s.H, s.L, s.n, stream);
  F::fwd(fft_plan(device, F::r2c, s.n, s.H, FftLayout::columns), kr.data<Acc>(), cptr<Acc>(kf));
  return kf;
}

template <typename T>
void fft_conv_forward_cuda(const FftConvParams& p, int device) {
  using Acc = acc_t<T>;
  using F = Fft<Acc>;
  const ConvBuffers s = conv_sizes(p, device);
  cudaStream_t stream = stream_of(device);
  Tensor xr = real_buffer<Acc>(s.n * s.BH, s.dev), uf = complex_buffer<Acc>(s.nf * s.BH, s.dev);
  pack_seq_kernel<T, Acc><<<grid_for(s.n * s.BH), kThreads, 0, stream>>>(static_cast<const T*>(p.u), xr.data<Acc>(),
                                                                           s.B, s.L, s.H, s.n);
  CUDA_CHECK_LAUNCH();
  F::fwd(fft_plan(device, F::r2c, s.n, s.BH, FftLayout::columns), xr.data<Acc>(), cptr<Acc>(uf));
  Tensor kf = kernel_spectra<T, Acc>(p, s, device, stream);
  mul_spectra_kernel<<<grid_for(s.nf * s.BH), kThreads, 0, stream>>>(cptr<Acc>(uf), cptr<Acc>(kf), s.nf, s.BH, s.H,
                                                                       Acc(1) / static_cast<Acc>(s.n));
  CUDA_CHECK_LAUNCH();
  F::inv(fft_plan(device, F::c2r, s.n, s.BH, FftLayout::columns), cptr<Acc>(uf), xr.data<Acc>());
  unpack_seq_kernel<Acc, T><<<grid_for(s.B * s.L * s.H), kThreads, 0, stream>>>(xr.data<Acc>(), static_cast<T*>(p.y),
                                                                                  s.B, s.L, s.H);
  CUDA_CHECK_LAUNCH();
}

template <typename T>
void fft_conv_backward_cuda(const FftConvParams& p, int device) {
  using Acc = acc_t<T>;
  using F = Fft<Acc>;
  const ConvBuffers s = conv_sizes(p, device);
  cudaStream_t stream = stream_of(device);
  const Acc scale = Acc(1) / static_cast<Acc>(s.n);
  const cufftHandle fwd_seq = fft_plan(device, F::r2c, s.n, s.BH, FftLayout::columns);
  Tensor xr = real_buffer<Acc>(s.n * s.BH, s.dev);
  Tensor gf = complex_buffer<Acc>(s.nf * s.BH, s.dev);  // DYf: read by both gradients, never a C2R input
  Tensor work = complex_buffer<Acc>(s.nf * s.BH, s.dev);
  pack_seq_kernel<T, Acc><<<grid_for(s.n * s.BH), kThreads, 0, stream>>>(static_cast<const T*>(p.dy), xr.data<Acc>(),
                                                                           s.B, s.L, s.H, s.n);
  CUDA_CHECK_LAUNCH();
  F::fwd(fwd_seq, xr.data<Acc>(), cptr<Acc>(gf));
  if (p.du) {  // du = correlation of dy with K: conj(Kf) * DYf
    Tensor kf = kernel_spectra<T, Acc>(p, s, device, stream);
    conj_mul_kernel<<<grid_for(s.nf * s.BH), kThreads, 0, stream>>>(cptr<Acc>(kf), cptr<Acc>(gf), cptr<Acc>(work),
                                                                      s.nf, s.BH, s.H, scale);
    CUDA_CHECK_LAUNCH();
    F::inv(fft_plan(device, F::c2r, s.n, s.BH, FftLayout::columns), cptr<Acc>(work), xr.data<Acc>());
    unpack_seq_kernel<Acc, T><<<grid_for(s.B * s.L * s.H), kThreads, 0, stream>>>(
        xr.data<Acc>(), static_cast<T*>(p.du), s.B, s.L, s.H);
    CUDA_CHECK_LAUNCH();
  }
  if (p.dK) {  // dK = batch sum of the correlations of dy with u: sum_b conj(Uf) * DYf
    // xr and work are free again in stream order.
    pack_seq_kernel<T, Acc><<<grid_for(s.n * s.BH), kThreads, 0, stream>>>(static_cast<const T*>(p.u), xr.data<Acc>(),
                                                                             s.B, s.L, s.H, s.n);
    CUDA_CHECK_LAUNCH();
    F::fwd(fwd_seq, xr.data<Acc>(), cptr<Acc>(work));
    Tensor acc = complex_buffer<Acc>(s.nf * s.H, s.dev);
    batch_corr_kernel<<<grid_for(s.nf * s.H), kThreads, 0, stream>>>(cptr<Acc>(work), cptr<Acc>(gf), cptr<Acc>(acc),
                                                                       s.nf, s.B, s.H, scale);
    CUDA_CHECK_LAUNCH();
    Tensor kr = real_buffer<Acc>(s.n * s.H, s.dev);
    F::inv(fft_plan(device, F::c2r, s.n, s.H, FftLayout::columns), cptr<Acc>(acc), kr.data<Acc>());
    transpose_pad(kr.data<Acc>(), static_cast<T*>(p.dK), s.L, s.H, s.H, stream);  // (n, H) -> (H, L)
  }
}

// ---- Vandermonde kernel generation ----

struct DiagMode {
  double2 z, logz, E, dz_dA, dz_ddt, dE_dA, dE_ddt;
};

// Abar = z, Bbar = E B and their derivatives in A (holomorphic) and dt (as on the CPU).
__device__ DiagMode discretize_mode(double2 A, double dt, bool zoh) {
  DiagMode m;
  const double2 a = dt * A;
  if (zoh) {
    m.z = cexp(a);
    m.logz = a;
    double2 phi, dphi;
    if (hypot(a.x, a.y) < 1e-4) {
      phi = 1.0 + a / 2.0 + a * a / 6.0;
      dphi = 0.5 + a / 3.0 + a * a / 8.0;
    } else {
      phi = (m.z - cx(1.0)) / a;
      dphi = (m.z - phi) / a;
    }
    m.E = dt * phi;
    m.dz_dA = dt * m.z;
    m.dz_ddt = A * m.z;
    m.dE_dA = (dt * dt) * dphi;
    m.dE_ddt = m.z;
  } else {
    const double2 den = 1.0 - a / 2.0, den2 = den * den;
    m.z = (1.0 + a / 2.0) / den;
    m.logz = clog(m.z);
    m.E = dt / den;
    m.dz_dA = dt / den2;
    m.dz_ddt = A / den2;
    m.dE_dA = (dt * dt) / (2.0 * den2);
    m.dE_ddt = 1.0 / den2;
  }
  return m;
}

struct KernelArgs {
  int H, N2, L;
  bool zoh;
  const void* dt;
  const void* m0;  // A / Lambda
  const void* m1;  // B / P
  const void* m2;  // C / B
  const void* m3;  // Ct (DPLR)
  void* K;
  const void* dK;
  void* ddt;
  void* g0;
  void* g1;
  void* g2;
  void* g3;
  // scratch
  double2* sums;       // Vandermonde backward: (H * N2, 2)
  double2* spec;       // DPLR: (H, L/2 + 1)
  const double* greal; // DPLR backward with L == 1: dK in double
};

KernelArgs kernel_args(const S4KernelParams& p) {
  SSMT_CHECK(p.H < (int64_t{1} << 31) && p.L < (int64_t{1} << 31) && p.H * p.N2 < (int64_t{1} << 31),
             "S4 kernel generation: shape too large for the CUDA kernels");
  KernelArgs a{};
  a.H = static_cast<int>(p.H), a.N2 = static_cast<int>(p.N2), a.L = static_cast<int>(p.L);
  a.zoh = p.disc == S4Discretization::zoh;
  a.dt = p.dt;
  a.m0 = p.modes[0], a.m1 = p.modes[1], a.m2 = p.modes[2], a.m3 = p.modes[3];
  a.K = p.K, a.dK = p.dK, a.ddt = p.ddt;
  a.g0 = p.dmodes[0], a.g1 = p.dmodes[1], a.g2 = p.dmodes[2], a.g3 = p.dmodes[3];
  return a;
}

constexpr int kTaps = 4;  // consecutive taps per thread in the Vandermonde forward

// Grid (ceil(L / (kThreads * kTaps)), H). Dynamic shared memory: 3 * N2 double2.
template <typename T>
__global__ void __launch_bounds__(kThreads) vandermonde_fwd_kernel(KernelArgs a) {
  extern __shared__ double2 vsm[];
  double2* z = vsm;
  double2* logz = vsm + a.N2;
  double2* W = vsm + 2 * a.N2;
  const int h = blockIdx.y;
  const double dt = ld_d<T>(a.dt, h);
  for (int n = threadIdx.x; n < a.N2; n += blockDim.x) {
    const long long i = static_cast<long long>(h) * a.N2 + n;
    const DiagMode m = discretize_mode(ld_c<T>(a.m0, i), dt, a.zoh);
    z[n] = m.z, logz[n] = m.logz;
    W[n] = ld_c<T>(a.m2, i) * m.E * ld_c<T>(a.m1, i);
  }
  __syncthreads();
  const long long l0 = (static_cast<long long>(blockIdx.x) * blockDim.x + threadIdx.x) * kTaps;
  if (l0 >= a.L) return;
  double acc[kTaps];
#pragma unroll
  for (int j = 0; j < kTaps; ++j) acc[j] = 0;
  for (int n = 0; n < a.N2; ++n) {
    double2 q = W[n] * cexp(static_cast<double>(l0) * logz[n]);  // W z^l0
    const double2 zn = z[n];
#pragma unroll
    for (int j = 0; j < kTaps; ++j) {
      acc[j] += 2.0 * q.x;
      q = q * zn;
    }
  }
#pragma unroll
  for (int j = 0; j < kTaps; ++j)
    if (l0 + j < a.L) st<T>(a.K, static_cast<long long>(h) * a.L + l0 + j, acc[j]);
}

// One block per mode i = h * N2 + n: sums[2i] = sum_l g_l conj(z^l),
// sums[2i + 1] = sum_{l >= 1} l g_l conj(z^(l-1)).
template <typename T>
__global__ void __launch_bounds__(kThreads) vandermonde_bwd_sums_kernel(KernelArgs a) {
  __shared__ double red[32];
  const long long i = blockIdx.x;
  const int h = static_cast<int>(i / a.N2);
  const DiagMode m = discretize_mode(ld_c<T>(a.m0, i), ld_d<T>(a.dt, h), a.zoh);
  double2 s0 = cx(0), s1 = cx(0);
  const long long row = static_cast<long long>(h) * a.L;
  for (long long l0 = static_cast<long long>(threadIdx.x) * kTaps; l0 < a.L;
       l0 += static_cast<long long>(blockDim.x) * kTaps) {
    double2 p = cexp(static_cast<double>(l0) * m.logz);                                  // z^l0
    double2 prev = l0 > 0 ? cexp(static_cast<double>(l0 - 1) * m.logz) : cx(0);  // z^(l0-1)
#pragma unroll
    for (int j = 0; j < kTaps; ++j) {
      const long long l = l0 + j;
      if (l < a.L) {
        const double g = ld_d<T>(a.dK, row + l);
        s0 = s0 + g * cconj(p);
        if (l > 0) s1 = s1 + (g * static_cast<double>(l)) * cconj(prev);
      }
      prev = p;
      p = p * m.z;
    }
  }
  const double r0 = block_sum(s0.x, red), i0 = block_sum(s0.y, red);
  const double r1 = block_sum(s1.x, red), i1 = block_sum(s1.y, red);
  if (threadIdx.x == 0) {
    a.sums[2 * i] = cx(r0, i0);
    a.sums[2 * i + 1] = cx(r1, i1);
  }
}

// One thread per channel: the chain rule from (g_W, g_z) to dt, A, B, C (modes in order).
template <typename T>
__global__ void vandermonde_bwd_finish_kernel(KernelArgs a) {
  const int h = blockIdx.x * blockDim.x + threadIdx.x;
  if (h >= a.H) return;
  const double dt = ld_d<T>(a.dt, h);
  double gdt = 0;
  for (int n = 0; n < a.N2; ++n) {
    const long long i = static_cast<long long>(h) * a.N2 + n;
    const double2 A = ld_c<T>(a.m0, i), B = ld_c<T>(a.m1, i), C = ld_c<T>(a.m2, i);
    const DiagMode m = discretize_mode(A, dt, a.zoh);
    const double2 W = C * m.E * B;
    const double2 gW = 2.0 * a.sums[2 * i];
    const double2 gz = 2.0 * cconj(W) * a.sums[2 * i + 1];
    const double2 gE = cconj(C * B) * gW;
    if (a.g2) st_c<T>(a.g2, i, cconj(m.E * B) * gW);
    if (a.g1) st_c<T>(a.g1, i, cconj(C * m.E) * gW);
    if (a.g0) st_c<T>(a.g0, i, cconj(m.dz_dA) * gz + cconj(m.dE_dA) * gE);
    gdt += (cconj(gz) * m.dz_ddt).x + (cconj(gE) * m.dE_ddt).x;
  }
  if (a.ddt) st<T>(a.ddt, h, gdt);
}

// ---- DPLR (Cauchy + Woodbury) kernel generation ----

// A mode's eigenvalue and the weights of the four Cauchy sums (see s4_kernel.cpp).
struct DplrMode {
  double2 lam, v00, v01, v10;
  double v11;
};

template <typename T>
__device__ DplrMode load_dplr_mode(const KernelArgs& a, long long i) {
  const double2 P = ld_c<T>(a.m1, i), B = ld_c<T>(a.m2, i), Ct = ld_c<T>(a.m3, i);
  DplrMode m;
  m.lam = ld_c<T>(a.m0, i);
  m.v00 = Ct * B, m.v01 = Ct * P, m.v10 = cconj(P) * B, m.v11 = cnorm(P);
  return m;
}

struct DplrPoint {
  double2 w, a, b, k00, k01, k10, k11, q, Tq, F;
};

// Everything the forward computes at frequency k of a channel (dt, modes staged).
__device__ DplrPoint dplr_point(const DplrMode* modes, int N2, double dt, int k, int L) {
  DplrPoint p;
  double s, c;
  sincospi(-2.0 * static_cast<double>(k) / static_cast<double>(L), &s, &c);
  p.w = cx(c, s);
  p.a = 1.0 - p.w;
  p.b = (1.0 + p.w) * (dt / 2.0);
  p.k00 = p.k01 = p.k10 = p.k11 = cx(0);
  for (int n = 0; n < N2; ++n) {
    const DplrMode& m = modes[n];
    const double2 r = 1.0 / (p.a - p.b * m.lam), t = 1.0 / (p.a - p.b * cconj(m.lam));
    p.k00 = p.k00 + m.v00 * r + cconj(m.v00) * t;
    p.k01 = p.k01 + m.v01 * r + cconj(m.v01) * t;
    p.k10 = p.k10 + m.v10 * r + cconj(m.v10) * t;
    p.k11 = p.k11 + m.v11 * (r + t);
  }
  p.q = 1.0 + p.b * p.k11;
  p.Tq = p.k01 * p.k10 / p.q;
  p.F = dt * (p.k00 - p.b * p.Tq);
  return p;
}

// Grid (ceil((L/2 + 1) / 128), H), 128 threads; dynamic shared memory N2 DplrMode.
// spec[h, k] = F_k / L, imaginary part zeroed at k = 0 and k = L/2.
template <typename T>
__global__ void dplr_spectrum_kernel(KernelArgs a) {
  extern __shared__ DplrMode dsm[];
  const int h = blockIdx.y, half = a.L / 2;
  for (int n = threadIdx.x; n < a.N2; n += blockDim.x)
    dsm[n] = load_dplr_mode<T>(a, static_cast<long long>(h) * a.N2 + n);
  __syncthreads();
  const int k = blockIdx.x * blockDim.x + threadIdx.x;
  if (k > half) return;
  const DplrPoint p = dplr_point(dsm, a.N2, ld_d<T>(a.dt, h), k, a.L);
  double2 F = p.F / static_cast<double>(a.L);
  if (k == 0 || 2 * k == a.L) F.y = 0;
  a.spec[static_cast<long long>(h) * (half + 1) + k] = F;
}

// One block per channel h; dynamic shared memory: N2 DplrMode, then (warps, N2, 9) doubles
// of per-warp partial sums. spec holds G = FFT(dK[h]) (H, L/2 + 1), or greal dK itself
// for L == 1.
template <typename T>
__global__ void dplr_bwd_kernel(KernelArgs a) {
  extern __shared__ DplrMode dsm[];
  __shared__ double red[32];
  const int N2 = a.N2, L = a.L, half = L / 2;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
  DplrMode* modes = dsm;
  double* acc = reinterpret_cast<double*>(dsm + N2);  // acc[(warp * N2 + n) * 9 + j]
  const int h = blockIdx.x;
  for (int n = threadIdx.x; n < N2; n += blockDim.x) modes[n] = load_dplr_mode<T>(a, static_cast<long long>(h) * N2 + n);
  for (int j = threadIdx.x; j < warps * N2 * 9; j += blockDim.x) acc[j] = 0;
  __syncthreads();
  const double dt = ld_d<T>(a.dt, h);
  double gdt = 0;
  for (int k0 = 0; k0 <= half; k0 += blockDim.x) {
    const int k = k0 + threadIdx.x;
    const bool valid = k <= half;
    // Outside the spectrum: a = 1, b = 0 (finite r, s) and zero gradients.
    double2 w = cx(1), pa = cx(1), pb = cx(0);
    double2 gk00 = cx(0), gk01 = cx(0), gk10 = cx(0), gk11 = cx(0), gb = cx(0);
    if (valid) {
      const DplrPoint p = dplr_point(modes, N2, dt, k, L);
      w = p.w, pa = p.a, pb = p.b;
      const double c = (k == 0 || 2 * k == L) ? 1.0 : 2.0;
      const double2 G = a.greal ? cx(a.greal[h]) : a.spec[static_cast<long long>(h) * (half + 1) + k];
      const double2 gF = (c / static_cast<double>(L)) * G;
      // F = dt (k00 - b T), T = k01 k10 / q, q = 1 + b k11.
      gk00 = dt * gF;
      const double2 gT = -dt * cconj(p.b) * gF;
      gb = -dt * cconj(p.Tq) * gF;
      gdt += (cconj(gF) * (p.k00 - p.b * p.Tq)).x;
      gk01 = cconj(p.k10 / p.q) * gT;
      gk10 = cconj(p.k01 / p.q) * gT;
      const double2 gq = -(cconj(p.Tq / p.q) * gT);
      gk11 = cconj(p.b) * gq;
      gb = gb + cconj(p.k11) * gq;
    }
    for (int n = 0; n < N2; ++n) {
      const DplrMode& m = modes[n];
      const double2 r = 1.0 / (pa - pb * m.lam), s = 1.0 / (pa - pb * cconj(m.lam));
      const double2 gr = cconj(m.v00) * gk00 + cconj(m.v01) * gk01 + cconj(m.v10) * gk10 + m.v11 * gk11;
      const double2 gs = m.v00 * gk00 + m.v01 * gk01 + m.v10 * gk10 + m.v11 * gk11;
      const double2 c00 = cconj(r) * gk00 + s * cconj(gk00);
      const double2 c01 = cconj(r) * gk01 + s * cconj(gk01);
      const double2 c10 = cconj(r) * gk10 + s * cconj(gk10);
      const double c11 = (cconj(gk11) * (r + s)).x;
      const double2 cl = cconj(pb * r * r) * gr + pb * s * s * cconj(gs);
      gb = gb + cconj(m.lam * r * r) * gr + m.lam * cconj(s * s) * gs;
      double v[9] = {c00.x, c00.y, c01.x, c01.y, c10.x, c10.y, c11, cl.x, cl.y};
#pragma unroll
      for (int j = 0; j < 9; ++j) v[j] = warp_sum(v[j]);
      if (lane == 0) {
        double* dst = acc + (static_cast<long long>(warp) * N2 + n) * 9;
#pragma unroll
        for (int j = 0; j < 9; ++j) dst[j] += v[j];
      }
    }
    if (valid) gdt += (cconj(gb) * ((1.0 + w) / 2.0)).x;
  }
  __syncthreads();
  for (int n = threadIdx.x; n < N2; n += blockDim.x) {
    double g[9];
#pragma unroll
    for (int j = 0; j < 9; ++j) g[j] = 0;
    for (int wi = 0; wi < warps; ++wi) {
      const double* src = acc + (static_cast<long long>(wi) * N2 + n) * 9;
#pragma unroll
      for (int j = 0; j < 9; ++j) g[j] += src[j];
    }
    const double2 gv00 = cx(g[0], g[1]), gv01 = cx(g[2], g[3]), gv10 = cx(g[4], g[5]), glam = cx(g[7], g[8]);
    const double gv11 = g[6];
    const long long i = static_cast<long long>(h) * N2 + n;
    const double2 P = ld_c<T>(a.m1, i), B = ld_c<T>(a.m2, i), Ct = ld_c<T>(a.m3, i);
    if (a.g0) st_c<T>(a.g0, i, glam);
    if (a.g1) st_c<T>(a.g1, i, cconj(Ct) * gv01 + B * cconj(gv10) + (2.0 * gv11) * P);
    if (a.g2) st_c<T>(a.g2, i, cconj(Ct) * gv00 + P * gv10);
    if (a.g3) st_c<T>(a.g3, i, cconj(B) * gv00 + cconj(P) * gv01);
  }
  const double total = block_sum(gdt, red);
  if (threadIdx.x == 0 && a.ddt) st<T>(a.ddt, h, total);
}

void check_modes(const char* op, const S4KernelParams& p) {
  SSMT_CHECK(p.N2 <= kMaxModesCuda, op, ": N2 = ", p.N2, " modes per channel exceed the CUDA kernel's limit of ",
             kMaxModesCuda, " (run it on the CPU)");
  SSMT_CHECK(p.H <= 65535, op, ": H = ", p.H, " channels exceed the CUDA kernel's limit of 65535");
}

// Warps per block of the DPLR backward and its dynamic shared memory: up to 8 warps while
// the per-warp partials fit in ~96 KB (at least one warp).
std::pair<int, size_t> dplr_bwd_shape(int64_t N2) {
  auto bytes = [&](int warps) { return sizeof(DplrMode) * N2 + sizeof(double) * 9 * N2 * warps; };
  int warps = 8;
  while (warps > 1 && bytes(warps) > 96 * 1024) --warps;
  return {warps, bytes(warps)};
}

template <typename T>
void vandermonde_fwd(const S4KernelParams& p, int device) {
  KernelArgs a = kernel_args(p);
  cudaStream_t stream = stream_of(device);
  const size_t smem = 3 * sizeof(double2) * p.N2;
  allow_smem(vandermonde_fwd_kernel<T>, smem, device, "s4d_vandermonde_kernel");
  dim3 grid(static_cast<unsigned>((p.L + kThreads * kTaps - 1) / (kThreads * kTaps)), static_cast<unsigned>(p.H));
  vandermonde_fwd_kernel<T><<<grid, kThreads, smem, stream>>>(a);
  CUDA_CHECK_LAUNCH();
}

template <typename T>
void vandermonde_bwd(const S4KernelParams& p, int device) {
  KernelArgs a = kernel_args(p);
  cudaStream_t stream = stream_of(device);
  Tensor sums = Tensor::empty({p.H * p.N2, 2, 2}, DType::f64, Device::cuda(device));
  a.sums = reinterpret_cast<double2*>(sums.data<double>());
  if (p.N2 > 0) {
    vandermonde_bwd_sums_kernel<T><<<static_cast<unsigned>(p.H * p.N2), kThreads, 0, stream>>>(a);
    CUDA_CHECK_LAUNCH();
  }
  vandermonde_bwd_finish_kernel<T><<<grid_for(p.H, 128), 128, 0, stream>>>(a);
  CUDA_CHECK_LAUNCH();
}

template <typename T>
void dplr_fwd(const S4KernelParams& p, int device) {
  KernelArgs a = kernel_args(p);
  cudaStream_t stream = stream_of(device);
  const Device dev = Device::cuda(device);
  const int64_t L = p.L, nf = L / 2 + 1;
  Tensor spec = Tensor::empty({p.H, nf, 2}, DType::f64, dev);
  a.spec = reinterpret_cast<double2*>(spec.data<double>());
  const size_t smem = sizeof(DplrMode) * p.N2;
  allow_smem(dplr_spectrum_kernel<T>, smem, device, "s4_dplr_kernel");
  dim3 grid(static_cast<unsigned>((nf + 127) / 128), static_cast<unsigned>(p.H));
  dplr_spectrum_kernel<T><<<grid, 128, smem, stream>>>(a);
  CUDA_CHECK_LAUNCH();
  if (L == 1) {  // K_0 = Re(F_0): the real parts of the spectrum
    cast(spec.data<double>(), 2, static_cast<T*>(p.K), p.H, stream);
    return;
  }
  Tensor Kd = Tensor::empty({p.H, L}, DType::f64, dev);
  Fft<double>::inv(fft_plan(device, CUFFT_Z2D, L, p.H, FftLayout::rows),
                   reinterpret_cast<cufftDoubleComplex*>(spec.data<double>()), Kd.data<double>());
  cast(Kd.data<double>(), 1, static_cast<T*>(p.K), p.H * L, stream);
}

template <typename T>
void dplr_bwd(const S4KernelParams& p, int device) {
  KernelArgs a = kernel_args(p);
  cudaStream_t stream = stream_of(device);
  const Device dev = Device::cuda(device);
  const int64_t L = p.L, nf = L / 2 + 1;
  Tensor gK = Tensor::empty({p.H, L}, DType::f64, dev);
  cast(static_cast<const T*>(p.dK), 1, gK.data<double>(), p.H * L, stream);
  Tensor G;
  if (L == 1) {
    a.greal = gK.data<double>();
  } else {
    G = Tensor::empty({p.H, nf, 2}, DType::f64, dev);
    Fft<double>::fwd(fft_plan(device, CUFFT_D2Z, L, p.H, FftLayout::rows), gK.data<double>(),
                     reinterpret_cast<cufftDoubleComplex*>(G.data<double>()));
    a.spec = reinterpret_cast<double2*>(G.data<double>());
  }
  const auto [warps, smem] = dplr_bwd_shape(p.N2);
  allow_smem(dplr_bwd_kernel<T>, smem, device, "s4_dplr_kernel");
  dplr_bwd_kernel<T><<<static_cast<unsigned>(p.H), warps * 32, smem, stream>>>(a);
  CUDA_CHECK_LAUNCH();
}

template <typename Fn>
void dispatch_float(DType dt, const char* op, Fn&& fn) {
  switch (dt) {
    case DType::f32: fn(float{}); break;
    case DType::bf16: fn(bf16{}); break;
    case DType::f64: fn(double{}); break;
    default: throw UserError(detail::concat(op, ": expected a floating dtype (f32, bf16, f64), got ", dtype_name(dt)));
  }
}

}  // namespace

void fft_conv_fwd_cuda(const FftConvParams& p, int device) {
  if (p.B * p.L * p.H == 0) return;
  cuda_detail::DeviceGuard guard(device);
  dispatch_float(p.dtype, "fft_conv", [&](auto t) { fft_conv_forward_cuda<decltype(t)>(p, device); });
}

void fft_conv_bwd_cuda(const FftConvParams& p, int device) {
  cuda_detail::DeviceGuard guard(device);
  if (p.B == 0 && p.dK && p.H * p.L > 0) {  // an empty batch: dK is an empty sum
    auto stream = static_cast<cudaStream_t>(cuda::compute_stream(device));
    CUDA_CHECK(cudaMemsetAsync(p.dK, 0, static_cast<size_t>(p.H * p.L * dtype_size(p.dtype)), stream));
  }
  if (p.B * p.L * p.H == 0 || (!p.du && !p.dK)) return;
  dispatch_float(p.dtype, "fft_conv", [&](auto t) { fft_conv_backward_cuda<decltype(t)>(p, device); });
}

void s4d_vandermonde_fwd_cuda(const S4KernelParams& p, int device) {
  if (p.H * p.L == 0) return;
  check_modes("s4d_vandermonde_kernel", p);
  cuda_detail::DeviceGuard guard(device);
  dispatch_float(p.dtype, "s4d_vandermonde_kernel", [&](auto t) { vandermonde_fwd<decltype(t)>(p, device); });
}

void s4d_vandermonde_bwd_cuda(const S4KernelParams& p, int device) {
  if (p.H == 0) return;
  check_modes("s4d_vandermonde_kernel", p);
  cuda_detail::DeviceGuard guard(device);
  dispatch_float(p.dtype, "s4d_vandermonde_kernel", [&](auto t) { vandermonde_bwd<decltype(t)>(p, device); });
}

void s4_dplr_fwd_cuda(const S4KernelParams& p, int device) {
  if (p.H * p.L == 0) return;
  check_modes("s4_dplr_kernel", p);
  cuda_detail::DeviceGuard guard(device);
  dispatch_float(p.dtype, "s4_dplr_kernel", [&](auto t) { dplr_fwd<decltype(t)>(p, device); });
}

void s4_dplr_bwd_cuda(const S4KernelParams& p, int device) {
  if (p.H == 0) return;
  check_modes("s4_dplr_kernel", p);
  cuda_detail::DeviceGuard guard(device);
  dispatch_float(p.dtype, "s4_dplr_kernel", [&](auto t) { dplr_bwd<decltype(t)>(p, device); });
}

}  // namespace ssmtrain
