// The per-device CudaBackend objects behind cuda::cuda_backend(), and synchronize().
#include "core/cuda/backend_cuda.cuh"
#include "core/cuda/cuda_check.cuh"
#include "core/profiler.h"

namespace ssmtrain {
namespace cuda_detail {

void CudaBackend::synchronize() {
  DeviceGuard guard(device_);
  profiler::SyncWait wait;
  CUDA_CHECK(cudaStreamSynchronize(device_context(device_).stream.get()));
}

}  // namespace cuda_detail

namespace cuda {

Backend& cuda_backend(int device) {
  int n = device_count();
  SSMT_CHECK(n > 0, "device cuda:", device, ": no CUDA GPU is visible (CUDA_VISIBLE_DEVICES? driver?)");
  SSMT_CHECK(device >= 0 && device < n, "device cuda:", device, ": only ", n, " CUDA device(s) visible");
  SSMT_CHECK(device < cuda_detail::kMaxDevices, "device cuda:", device, ": at most ", cuda_detail::kMaxDevices,
             " devices are supported");
  static std::array<std::atomic<cuda_detail::CudaBackend*>, cuda_detail::kMaxDevices> backends{};
  return cuda_detail::once_per_device(backends, device, [device] { return new cuda_detail::CudaBackend(device); });
}

}  // namespace cuda
}  // namespace ssmtrain
