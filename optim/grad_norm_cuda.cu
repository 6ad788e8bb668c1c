// Multi-tensor sum of squares (for the global gradient norm) and in-place scaling (for
// clipping), one launch each over all gradients of a device.
//
// The sum is deterministic: each chunk's block reduces in a fixed tree order into one f64
// partial, and a single block then sums the partials in a fixed order. No atomics.
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

__global__ void __launch_bounds__(multi_tensor::kThreads)
    sum_partials_kernel(const double* __restrict__ partials, int64_t n, double* __restrict__ out) {
  __shared__ double shared[cuda_detail::kWarp];
  double acc = 0.0;
  for (int64_t i = threadIdx.x; i < n; i += blockDim.x) acc += partials[i];
  double total = cuda_detail::block_allreduce(acc, Plus{}, shared);
  if (threadIdx.x == 0) *out = total;
}

__global__ void __launch_bounds__(multi_tensor::kThreads)
    scale_kernel(const VectorDesc* __restrict__ descs, const multi_tensor::Chunk* __restrict__ chunks, float factor) {
  const multi_tensor::Chunk c = chunks[blockIdx.x];
  const VectorDesc d = descs[c.tensor];
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
  auto ws = multi_tensor::upload(descs, numels, device, stream);
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

void scale_cuda(const std::vector<Tensor>& tensors, float factor) {
  if (tensors.empty()) return;
  const Device device = common_device(tensors, "scale_cuda");
  auto [descs, numels] = describe(tensors);
  cuda_detail::DeviceGuard guard(device.index);
  cudaStream_t stream = multi_tensor::stream_of(device);
  auto ws = multi_tensor::upload(descs, numels, device, stream);
  if (ws.num_chunks == 0) return;
  scale_kernel<<<static_cast<unsigned>(ws.num_chunks), multi_tensor::kThreads, 0, stream>>>(ws.descs, ws.chunks,
                                                                                            factor);
  CUDA_CHECK_LAUNCH();
}

}  // namespace ssmtrain
