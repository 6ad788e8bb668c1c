// The per-device CudaBackend objects behind cuda::cuda_backend(), and synchronize().
#include <array>
#include <mutex>

#include "core/cuda/backend_cuda.cuh"
#include "core/cuda/cuda_check.cuh"

namespace ssmtrain {
namespace cuda_detail {

void CudaBackend::synchronize() {
  DeviceGuard guard(device_);
  CUDA_CHECK(cudaStreamSynchronize(device_context(device_).stream.get()));
}

}  // namespace cuda_detail

namespace cuda {

Backend& cuda_backend(int device) {
  int n = device_count();
  SSMT_CHECK(n > 0, "device cuda:", device, ": no CUDA GPU is visible (CUDA_VISIBLE_DEVICES? driver?)");
  SSMT_CHECK(device >= 0 && device < n, "device cuda:", device, ": only ", n, " CUDA device(s) visible");
  static std::mutex mutex;
  static std::array<cuda_detail::CudaBackend*, 64> backends{};  // never freed, like the contexts
  std::lock_guard<std::mutex> lock(mutex);
  if (!backends.at(device)) backends[device] = new cuda_detail::CudaBackend(device);
  return *backends[device];
}

}  // namespace cuda
}  // namespace ssmtrain
