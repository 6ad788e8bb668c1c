// The per-device CudaBackend objects behind cuda::cuda_backend(), and synchronize().
#include <array>
#include <atomic>
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
  // Asked on every op: the lookup after the first is one atomic load, no lock.
  static std::array<std::atomic<cuda_detail::CudaBackend*>, 64> backends{};  // never freed, like the contexts
  SSMT_CHECK(device < static_cast<int>(backends.size()), "device cuda:", device, ": at most ", backends.size(),
             " devices are supported");
  std::atomic<cuda_detail::CudaBackend*>& slot = backends[device];
  if (cuda_detail::CudaBackend* b = slot.load(std::memory_order_acquire)) return *b;
  static std::mutex mutex;
  std::lock_guard<std::mutex> lock(mutex);
  if (!slot.load(std::memory_order_relaxed)) slot.store(new cuda_detail::CudaBackend(device), std::memory_order_release);
  return *slot.load(std::memory_order_relaxed);
}

}  // namespace cuda
}  // namespace ssmtrain
