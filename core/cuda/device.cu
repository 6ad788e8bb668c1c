// Device contexts, the device count, the compute stream and the synchronous copies
// declared in core/backend.h.
#include "core/cuda/device.cuh"

#include <memory>

#include "core/backend.h"
#include "core/cuda/cuda_check.cuh"

namespace ssmtrain {
namespace cuda_detail {

StreamOwner::StreamOwner(int device) {
  DeviceGuard guard(device);  // also correct when constructed on its own
  CUDA_CHECK(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking));
}
StreamOwner::~StreamOwner() {
  if (stream_) cudaStreamDestroy(stream_);  // errors at teardown are of no use to anyone
}

BlasOwner::BlasOwner(cudaStream_t stream, void* workspace, size_t workspace_bytes) {
  CUBLAS_CHECK(cublasCreate(&handle_));
  CUBLAS_CHECK(cublasSetStream(handle_, stream));
  // cuBLAS would otherwise allocate its own workspace behind the caching allocator's back.
  CUBLAS_CHECK(cublasSetWorkspace(handle_, workspace, workspace_bytes));
  // TF32 is chosen per call through the compute type (allow_tf32()); the handle's default
  // math mode keeps plain f32 products in full f32.
  CUBLAS_CHECK(cublasSetMathMode(handle_, CUBLAS_DEFAULT_MATH));
}
BlasOwner::~BlasOwner() {
  if (handle_) cublasDestroy(handle_);
}

BlasLtOwner::BlasLtOwner() { CUBLAS_CHECK(cublasLtCreate(&handle_)); }
BlasLtOwner::~BlasLtOwner() {
  if (handle_) cublasLtDestroy(handle_);
}

DeviceMemoryOwner::DeviceMemoryOwner(size_t nbytes) : nbytes_(nbytes) { CUDA_CHECK(cudaMalloc(&ptr_, nbytes)); }
DeviceMemoryOwner::~DeviceMemoryOwner() {
  if (ptr_) cudaFree(ptr_);
}

namespace {
int query_attribute(cudaDeviceAttr attr, int device) {
  int v = 0;
  CUDA_CHECK(cudaDeviceGetAttribute(&v, attr, device));
  return v;
}
}  // namespace

// Constructed by device_context() with `dev` current, so every resource lands on it.
DeviceContext::DeviceContext(int dev)
    : device(dev),
      sm_count(query_attribute(cudaDevAttrMultiProcessorCount, dev)),
      l2_bytes(static_cast<size_t>(query_attribute(cudaDevAttrL2CacheSize, dev))),
      smem_optin(static_cast<size_t>(query_attribute(cudaDevAttrMaxSharedMemoryPerBlockOptin, dev))),
      stream(dev),
      workspace(kBlasWorkspaceBytes),
      blas(stream.get(), workspace.get(), workspace.nbytes()) {}

DeviceContext& device_context(int device) {
  SSMT_ASSERT(device >= 0 && device < kMaxDevices && device < cuda::device_count(), "device index ", device);
  static std::array<std::atomic<DeviceContext*>, kMaxDevices> contexts{};  // never freed (see device.cuh)
  return once_per_device(contexts, device, [device] {
    DeviceGuard guard(device);
    return new DeviceContext(device);
  });
}

DeviceGuard::DeviceGuard(int device) {
  CUDA_CHECK(cudaGetDevice(&previous_));
  if (previous_ != device) {
    CUDA_CHECK(cudaSetDevice(device));
  } else {
    previous_ = -1;  // nothing to restore
  }
}

DeviceGuard::~DeviceGuard() {
  if (previous_ >= 0) cudaSetDevice(previous_);
}

}  // namespace cuda_detail

namespace cuda {

int device_count() {
  // Cached: backend(device) asks on every op, and the visible set cannot change while the
  // process runs. A missing driver or GPU reads as 0 devices.
  static const int count = [] {
    int n = 0;
    if (cudaGetDeviceCount(&n) != cudaSuccess) {
      cudaGetLastError();  // clear the error so later calls do not see it
      return 0;
    }
    return n;
  }();
  return count;
}

void* compute_stream(int device) { return cuda_detail::device_context(device).stream.get(); }

namespace {
void copy_sync(void* dst, const void* src, size_t nbytes, cudaMemcpyKind kind, int device) {
  if (nbytes == 0) return;
  cuda_detail::DeviceGuard guard(device);
  cudaStream_t stream = cuda_detail::device_context(device).stream.get();
  CUDA_CHECK(cudaMemcpyAsync(dst, src, nbytes, kind, stream));
  CUDA_CHECK(cudaStreamSynchronize(stream));
}

}  // namespace

void memcpy_h2d(void* dst, const void* src, size_t nbytes, int device) {
  copy_sync(dst, src, nbytes, cudaMemcpyHostToDevice, device);
}
void memcpy_d2h(void* dst, const void* src, size_t nbytes, int device) {
  copy_sync(dst, src, nbytes, cudaMemcpyDeviceToHost, device);
}
void memcpy_d2d(void* dst, const void* src, size_t nbytes, int device) {
  copy_sync(dst, src, nbytes, cudaMemcpyDeviceToDevice, device);
}

}  // namespace cuda
}  // namespace ssmtrain
