// Device contexts, the device count, the compute stream and the synchronous copies
// declared in core/backend.h.
#include "core/cuda/device.cuh"

#include <algorithm>
#include <array>
#include <atomic>
#include <cstring>
#include <memory>
#include <mutex>

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

namespace {
constexpr int kMaxDevices = 64;
std::mutex g_context_mutex;
std::array<std::atomic<DeviceContext*>, kMaxDevices> g_contexts{};  // never freed (see device.cuh)
}  // namespace

DeviceContext& device_context(int device) {
  SSMT_ASSERT(device >= 0 && device < kMaxDevices && device < cuda::device_count(), "device index ", device);
  std::atomic<DeviceContext*>& slot = g_contexts[device];
  if (DeviceContext* ctx = slot.load(std::memory_order_acquire)) return *ctx;
  std::lock_guard<std::mutex> lock(g_context_mutex);
  if (!slot.load(std::memory_order_relaxed)) {
    DeviceGuard guard(device);
    slot.store(new DeviceContext(device), std::memory_order_release);
  }
  return *slot.load(std::memory_order_relaxed);
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

// Small host-to-device copies (token batches, index lists, kernel argument tables) go
// through a ring of pinned staging buffers: the bytes are copied into a slot at once, so the
// caller may reuse its memory on return, and the device copy is queued on the compute stream
// without waiting for it. A copy from pageable memory could instead make the driver wait for
// the stream, stalling a launch-bound step once per copy. A slot is reused only after the
// copy queued from it kSlots uploads earlier has run (its event), which also keeps the host
// from running arbitrarily far ahead of the device.
constexpr size_t kStagedMaxBytes = size_t{4} << 20;  // larger copies are rare and synchronous
constexpr int kSlots = 16;

struct StagingRing {
  struct Slot {
    void* host = nullptr;  // pinned
    size_t capacity = 0;
    cudaEvent_t done = nullptr;
  };
  std::mutex mutex;
  std::array<Slot, kSlots> slots{};
  int next = 0;
};

StagingRing& staging_ring(int device) {
  static std::array<std::atomic<StagingRing*>, 64> rings{};  // never freed, like the contexts
  std::atomic<StagingRing*>& slot = rings.at(static_cast<size_t>(device));
  if (StagingRing* r = slot.load(std::memory_order_acquire)) return *r;
  static std::mutex mutex;
  std::lock_guard<std::mutex> lock(mutex);
  if (!slot.load(std::memory_order_relaxed)) slot.store(new StagingRing, std::memory_order_release);
  return *slot.load(std::memory_order_relaxed);
}

void copy_staged(void* dst, const void* src, size_t nbytes, int device) {
  cuda_detail::DeviceGuard guard(device);
  cudaStream_t stream = cuda_detail::device_context(device).stream.get();
  StagingRing& ring = staging_ring(device);
  std::lock_guard<std::mutex> lock(ring.mutex);
  StagingRing::Slot& s = ring.slots[static_cast<size_t>(ring.next)];
  ring.next = (ring.next + 1) % kSlots;
  if (s.done) {
    CUDA_CHECK(cudaEventSynchronize(s.done));  // the previous copy out of this slot has run
  } else {
    CUDA_CHECK(cudaEventCreateWithFlags(&s.done, cudaEventDisableTiming));
  }
  if (s.capacity < nbytes) {
    if (s.host) CUDA_CHECK(cudaFreeHost(s.host));
    s.host = nullptr;
    s.capacity = 0;
    size_t capacity = std::max<size_t>(nbytes, 64 << 10);
    CUDA_CHECK(cudaMallocHost(&s.host, capacity));
    s.capacity = capacity;
  }
  std::memcpy(s.host, src, nbytes);
  CUDA_CHECK(cudaMemcpyAsync(dst, s.host, nbytes, cudaMemcpyHostToDevice, stream));
  CUDA_CHECK(cudaEventRecord(s.done, stream));
}
}  // namespace

void memcpy_h2d(void* dst, const void* src, size_t nbytes, int device) {
  if (nbytes == 0) return;
  if (nbytes <= kStagedMaxBytes) {
    copy_staged(dst, src, nbytes, device);
  } else {
    copy_sync(dst, src, nbytes, cudaMemcpyHostToDevice, device);
  }
}
void memcpy_d2h(void* dst, const void* src, size_t nbytes, int device) {
  copy_sync(dst, src, nbytes, cudaMemcpyDeviceToHost, device);
}
void memcpy_d2d(void* dst, const void* src, size_t nbytes, int device) {
  copy_sync(dst, src, nbytes, cudaMemcpyDeviceToDevice, device);
}

}  // namespace cuda
}  // namespace ssmtrain
