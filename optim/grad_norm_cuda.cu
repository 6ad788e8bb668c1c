// Multi-tensor sum of squares (for the global gradient norm) and in-place scaling (for
// clipping), one launch each over all gradients of a device; and the deferred clip, whose
// last block turns the sum into the status the optimizer reads on the device.
//
// The sum is deterministic: each chunk's block reduces in a fixed tree order into one f64
// partial, and a single block then sums the partials in a fixed order. No atomics.
#include "optim/clip.h"
#include "optim/multi_tensor_apply_cuda.h"
#include "optim/multi_tensor_cuda.h"

namespace ssmtrain {

namespace {

struct Plus {
  __device__ double operator()(double a, double b) const { return a + b; }
};

struct VectorDesc {
  float* x;
  int64_t numel;
  int32_t vectorized;  // x is 16-byte aligned: threads move float4s
};

// Calls fn(element&) for every element of the block's chunk, with float4 loads when
// allowed; kWrite stores the elements back.
template <bool kWrite, typename Fn>
__device__ __forceinline__ void for_chunk(const VectorDesc& d, int64_t start, Fn&& fn) {
  const int64_t end = min(start + multi_tensor::kChunkElems, d.numel);
  int64_t scalar_from = start;
  if (d.vectorized) {
    const int64_t vec_end = start + (end - start) / 4 * 4;
    for (int64_t i = start + 4 * static_cast<int64_t>(threadIdx.x); i < vec_end; i += 4 * blockDim.x) {
      float4 v = *reinterpret_cast<float4*>(d.x + i);
      fn(v.x);
      fn(v.y);
      fn(v.z);
      fn(v.w);
      if (kWrite) *reinterpret_cast<float4*>(d.x + i) = v;
    }
    scalar_from = vec_end;
  }
  for (int64_t i = scalar_from + threadIdx.x; i < end; i += blockDim.x) {
    float v = d.x[i];
    fn(v);
    if (kWrite) d.x[i] = v;
  }
}

__global__ void __launch_bounds__(multi_tensor::kThreads)
    sum_of_squares_kernel(const VectorDesc* __restrict__ descs, const multi_tensor::Chunk* __restrict__ chunks,
                          double* __restrict__ partials) {
  __shared__ double shared[cuda_detail::kWarp];
  const multi_tensor::Chunk c = chunks[blockIdx.x];
  const VectorDesc d = descs[c.tensor];
  // 128 values per thread: an f32 running sum loses nothing that matters for a norm.
  float acc = 0.0f;
  for_chunk<false>(d, c.start, [&](float& x) { acc += x * x; });
  double total = cuda_detail::block_allreduce(static_cast<double>(acc), Plus{}, shared);
  if (threadIdx.x == 0) partials[blockIdx.x] = total;
}

// The partials summed in a fixed order by one block (every thread gets the total).
__device__ __forceinline__ double sum_partials(const double* __restrict__ partials, int64_t n, double* shared) {
  double acc = 0.0;
  for (int64_t i = threadIdx.x; i < n; i += blockDim.x) acc += partials[i];
  return cuda_detail::block_allreduce(acc, Plus{}, shared);
}

__global__ void __launch_bounds__(multi_tensor::kThreads)
    sum_partials_kernel(const double* __restrict__ partials, int64_t n, double* __restrict__ out) {
  __shared__ double shared[cuda_detail::kWarp];
  double total = sum_partials(partials, n, shared);
  if (threadIdx.x == 0) *out = total;
}

// One block: the total, then clip_grad_norm's arithmetic in the same order as on the host
// (optim/clip.cpp), so the norm and the factor have the same bits. IEEE double sqrt and
// division are correctly rounded on the device as on the host.
__global__ void __launch_bounds__(multi_tensor::kThreads)
    clip_status_kernel(const double* __restrict__ partials, int64_t n, double max_norm, const double* __restrict__ loss,
                       double* __restrict__ status) {
  __shared__ double shared[cuda_detail::kWarp];
  const double total = sum_partials(partials, n, shared);
  if (threadIdx.x != 0) return;
  const double norm = sqrt(total);
  const bool finite = isfinite(norm);
  double scale = 1.0, clipped = 0.0;
  if (finite && max_norm > 0) {
    const double coef = max_norm / (norm + 1e-6);
    if (coef < 1.0) {
      scale = coef;
      clipped = 1.0;
    }
  }
  const bool loss_finite = loss == nullptr || isfinite(*loss);
  status[kClipNorm] = norm;
  status[kClipScale] = scale;
  status[kClipSkip] = finite && loss_finite ? 0.0 : 1.0;
  status[kClipClipped] = clipped;
}

__global__ void __launch_bounds__(multi_tensor::kThreads)
    scale_kernel(const VectorDesc* __restrict__ descs, const multi_tensor::Chunk* __restrict__ chunks, float factor) {
  const multi_tensor::Chunk c = chunks[blockIdx.x];
  const VectorDesc d = descs[c.tensor];
  for_chunk<true>(d, c.start, [&](float& x) { x *= factor; });
}

// The factor read from a clip status, rounded to f32 as scale_cuda's caller does.
__global__ void __launch_bounds__(multi_tensor::kThreads)
    scale_by_status_kernel(const VectorDesc* __restrict__ descs, const multi_tensor::Chunk* __restrict__ chunks,
                           const double* __restrict__ status) {
  const multi_tensor::Chunk c = chunks[blockIdx.x];
  const VectorDesc d = descs[c.tensor];
  const float factor = static_cast<float>(status[kClipScale]);
  for_chunk<true>(d, c.start, [&](float& x) { x *= factor; });
}

Device common_device(const std::vector<Tensor>& tensors, const char* what) {
  SSMT_CHECK(!tensors.empty(), what, ": no tensors");
  Device device = tensors.front().device();
  SSMT_CHECK(device.is_cuda(), what, ": ", tensors.front().describe(), " is not on a CUDA device");
  for (const Tensor& t : tensors) multi_tensor::check_tensor(t, device, what);
  return device;
}

std::pair<std::vector<VectorDesc>, std::vector<int64_t>> describe(const std::vector<Tensor>& tensors) {
  std::vector<VectorDesc> descs;
  std::vector<int64_t> numels;
  for (const Tensor& t : tensors) {
    float* x = t.data<float>();
    descs.push_back(VectorDesc{x, t.numel(), cuda_detail::aligned_to(x, 16)});
    numels.push_back(t.numel());
  }
  return {descs, numels};
}

}  // namespace

Tensor sum_of_squares_cuda(const std::vector<Tensor>& tensors) {
  const Device device = common_device(tensors, "sum_of_squares_cuda");
  auto [descs, numels] = describe(tensors);
  cuda_detail::DeviceGuard guard(device.index);
  cudaStream_t stream = multi_tensor::stream_of(device);
  Tensor out = Tensor::empty({}, DType::f64, device);
  auto ws = multi_tensor::upload(descs, numels, device);
  if (ws.num_chunks == 0) {
    CUDA_CHECK(cudaMemsetAsync(out.data_ptr(), 0, sizeof(double), stream));
    return out;
  }
  Tensor partials = Tensor::empty({ws.num_chunks}, DType::f64, device);
  sum_of_squares_kernel<<<static_cast<unsigned>(ws.num_chunks), multi_tensor::kThreads, 0, stream>>>(
      ws.descs, ws.chunks, partials.data<double>());
  CUDA_CHECK_LAUNCH();
  sum_partials_kernel<<<1, multi_tensor::kThreads, 0, stream>>>(partials.data<double>(), ws.num_chunks,
                                                                 out.data<double>());
  CUDA_CHECK_LAUNCH();
  return out;
}

Tensor clip_status_cuda(const std::vector<Tensor>& grads, double max_norm, const Tensor& loss) {
  const Device device = common_device(grads, "clip_status_cuda");
  if (loss.defined())
    SSMT_CHECK(loss.device() == device && loss.dtype() == DType::f64 && loss.numel() == 1, "clip_status_cuda: loss ",
               loss.describe(), " must be one f64 value on ", device.str());
  auto [descs, numels] = describe(grads);
  cuda_detail::DeviceGuard guard(device.index);
  cudaStream_t stream = multi_tensor::stream_of(device);
  Tensor status = Tensor::empty({kClipStatusSize}, DType::f64, device);
  auto ws = multi_tensor::upload(descs, numels, device);
  Tensor partials;
  if (ws.num_chunks > 0) {
    partials = Tensor::empty({ws.num_chunks}, DType::f64, device);
    sum_of_squares_kernel<<<static_cast<unsigned>(ws.num_chunks), multi_tensor::kThreads, 0, stream>>>(
        ws.descs, ws.chunks, partials.data<double>());
    CUDA_CHECK_LAUNCH();
  }
  clip_status_kernel<<<1, multi_tensor::kThreads, 0, stream>>>(
      partials.defined() ? partials.data<double>() : nullptr, ws.num_chunks, max_norm,
      loss.defined() ? static_cast<const double*>(loss.data_ptr()) : nullptr, status.data<double>());
  CUDA_CHECK_LAUNCH();
  return status;
}

void scale_cuda(const std::vector<Tensor>& tensors, float factor) {
  if (tensors.empty()) return;
  const Device device = common_device(tensors, "scale_cuda");
  auto [descs, numels] = describe(tensors);
  cuda_detail::DeviceGuard guard(device.index);
  cudaStream_t stream = multi_tensor::stream_of(device);
  auto ws = multi_tensor::upload(descs, numels, device);
  if (ws.num_chunks == 0) return;
  scale_kernel<<<static_cast<unsigned>(ws.num_chunks), multi_tensor::kThreads, 0, stream>>>(ws.descs, ws.chunks,
                                                                                            factor);
  CUDA_CHECK_LAUNCH();
}

void scale_by_clip_status_cuda(const std::vector<Tensor>& tensors, const Tensor& status) {
  if (tensors.empty()) return;
  const Device device = common_device(tensors, "scale_by_clip_status_cuda");
  SSMT_CHECK(status.device() == device && status.dtype() == DType::f64 && status.numel() == kClipStatusSize &&
                 status.is_contiguous(),
             "scale_by_clip_status_cuda: status ", status.describe(), " must be a clip status on ", device.str());
  auto [descs, numels] = describe(tensors);
  cuda_detail::DeviceGuard guard(device.index);
  cudaStream_t stream = multi_tensor::stream_of(device);
  auto ws = multi_tensor::upload(descs, numels, device);
  if (ws.num_chunks == 0) return;
  scale_by_status_kernel<<<static_cast<unsigned>(ws.num_chunks), multi_tensor::kThreads, 0, stream>>>(
      ws.descs, ws.chunks, status.data<double>());
  CUDA_CHECK_LAUNCH();
}

}  // namespace ssmtrain
