// The per-device state of the CUDA backend: one non-blocking compute stream, the cuBLAS and
// cuBLASLt handles bound to it with their workspace, and the device properties the kernels
// size themselves by (multiprocessor count, L2, shared-memory limit).
//
// Every kernel of core/cuda runs on the compute stream of its device, so work is ordered
// without events and the caching allocator can hand a freed block to the next request at
// once (stream order guarantees earlier kernels are done with it).
//
// The contexts are created on first use and deliberately never destroyed: tensors with
// static storage duration may outlive any static object of ours, and tearing down streams
// after the CUDA runtime has unloaded fails. The driver reclaims everything at exit.
#pragma once

#include <cublasLt.h>
#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <array>
#include <atomic>
#include <cstddef>
#include <mutex>

namespace ssmtrain::cuda_detail {

// RAII owners of the context's resources (used by DeviceContext only).
class StreamOwner {
 public:
  explicit StreamOwner(int device);
  ~StreamOwner();
  StreamOwner(const StreamOwner&) = delete;
  StreamOwner& operator=(const StreamOwner&) = delete;
  cudaStream_t get() const { return stream_; }

 private:
  cudaStream_t stream_ = nullptr;
};

class BlasOwner {
 public:
  BlasOwner(cudaStream_t stream, void* workspace, size_t workspace_bytes);
  ~BlasOwner();
  BlasOwner(const BlasOwner&) = delete;
  BlasOwner& operator=(const BlasOwner&) = delete;
  cublasHandle_t get() const { return handle_; }

 private:
  cublasHandle_t handle_ = nullptr;
};

class BlasLtOwner {
 public:
  BlasLtOwner();
  ~BlasLtOwner();
  BlasLtOwner(const BlasLtOwner&) = delete;
  BlasLtOwner& operator=(const BlasLtOwner&) = delete;
  cublasLtHandle_t get() const { return handle_; }

 private:
  cublasLtHandle_t handle_ = nullptr;
};

class DeviceMemoryOwner {
 public:
  explicit DeviceMemoryOwner(size_t nbytes);
  ~DeviceMemoryOwner();
  DeviceMemoryOwner(const DeviceMemoryOwner&) = delete;
  DeviceMemoryOwner& operator=(const DeviceMemoryOwner&) = delete;
  void* get() const { return ptr_; }
  size_t nbytes() const { return nbytes_; }

 private:
  void* ptr_ = nullptr;
  size_t nbytes_ = 0;
};

constexpr int kMaxDevices = 64;

// The object of `device` held in `slots`, made by make() on first use. Thread-safe; after
// the first call a lookup is one atomic load (per-device objects are asked for on every op).
// Never freed, like the contexts.
template <typename T, typename Make>
T& once_per_device(std::array<std::atomic<T*>, kMaxDevices>& slots, int device, Make make) {
  std::atomic<T*>& slot = slots.at(static_cast<size_t>(device));
  if (T* p = slot.load(std::memory_order_acquire)) return *p;
  static std::mutex mutex;
  std::lock_guard<std::mutex> lock(mutex);
  if (!slot.load(std::memory_order_relaxed)) slot.store(make(), std::memory_order_release);
  return *slot.load(std::memory_order_relaxed);
}

// Hopper's cuBLAS picks its fastest kernels only with a 32 MiB workspace.
constexpr size_t kBlasWorkspaceBytes = size_t{32} << 20;

struct DeviceContext {
  explicit DeviceContext(int device);

  int device;
  int sm_count = 0;
  size_t l2_bytes = 0;
  size_t smem_optin = 0;  // largest dynamic shared memory a block may opt into
  StreamOwner stream;
  DeviceMemoryOwner workspace;
  BlasOwner blas;
  BlasLtOwner blas_lt;
};

// The context of `device` (0 <= device < device_count()), created on first use.
DeviceContext& device_context(int device);

// Makes `device` current for the scope (restores the previous one), so a process can
// drive several GPUs from one thread.
class DeviceGuard {
 public:
  explicit DeviceGuard(int device);
  ~DeviceGuard();
  DeviceGuard(const DeviceGuard&) = delete;
  DeviceGuard& operator=(const DeviceGuard&) = delete;

 private:
  int previous_ = -1;
};

}  // namespace ssmtrain::cuda_detail
