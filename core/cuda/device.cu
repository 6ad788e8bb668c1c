// Device contexts, the device count, the compute stream, and the copies between host and
// device declared in core/backend.h and core/async_read.h.
//
// Host-to-device copies do not wait for the device (DESIGN: the host runs ahead). The bytes
// are first copied into a pinned staging buffer, so the caller may free its memory as soon
// as memcpy_h2d returns; the DMA out of that buffer is queued on the compute stream with an
// event after it, and the buffer is handed out again only once its event has completed
// (normally long before: the ring holds the copies of a few steps). Copies larger than
// kStagedCopyMaxBytes (model loading) go straight from pageable memory and wait.
// Device-to-host copies wait, except the small pinned reads behind AsyncRead.
#include "core/cuda/device.cuh"

#include <cstring>
#include <memory>
#include <vector>

#include "core/async_read.h"
#include "core/backend.h"
#include "core/cuda/cuda_check.cuh"
#include "core/profiler.h"

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
  profiler::SyncWait wait;  // a copy waits for everything queued before it
  CUDA_CHECK(cudaStreamSynchronize(stream));
}

// An event recorded on the compute stream after an asynchronous copy, and whether it may
// still be pending.
struct CopyEvent {
  cudaEvent_t event = nullptr;
  bool in_flight = false;

  void create() { CUDA_CHECK(cudaEventCreateWithFlags(&event, cudaEventDisableTiming)); }
  void record(cudaStream_t stream) {
    CUDA_CHECK(cudaEventRecord(event, stream));
    in_flight = true;
  }
  // Never waits.
  bool done() {
    if (!in_flight) return true;
    const cudaError_t e = cudaEventQuery(event);
    if (e == cudaErrorNotReady) {
      cudaGetLastError();  // "not ready" is recorded as the last error: clear it for the next launch check
      return false;
    }
    CUDA_CHECK(e);
    in_flight = false;
    return true;
  }
  // Waits for this event alone (not the stream); a host wait for the profiler only when the
  // copy is not done yet.
  void wait() {
    if (done()) return;
    profiler::SyncWait wait;
    CUDA_CHECK(cudaEventSynchronize(event));
    in_flight = false;
  }
};

void* pinned_alloc(size_t nbytes) {
  void* p = nullptr;
  CUDA_CHECK(cudaHostAlloc(&p, nbytes, cudaHostAllocPortable));
  return p;
}

// ---- staged host-to-device copies ------------------------------------------------------

constexpr size_t kStagedCopyMaxBytes = size_t{16} << 20;
constexpr size_t kStagingMinBytes = size_t{64} << 10;
// Buffers per device, created as needed: enough for the copies of two steps in flight (the
// batch of every micro-batch, the optimizer's descriptor uploads) with room to spare, so a
// steady-state step never finds them all busy.
constexpr size_t kStagingBuffers = 64;

struct StagingBuffer {
  void* host = nullptr;  // pinned
  size_t capacity = 0;
  CopyEvent copied;  // after the last copy out of `host`
};

struct StagingRing {
  std::mutex mutex;
  std::vector<StagingBuffer> buffers;  // never freed, like the contexts (device.cuh)
  size_t next = 0;                     // the search starts after the buffer used last
};

StagingRing& staging_ring(int device) {
  static std::array<std::atomic<StagingRing*>, cuda_detail::kMaxDevices> rings{};
  return cuda_detail::once_per_device(rings, device, [] {
    auto* ring = new StagingRing;
    ring->buffers.reserve(kStagingBuffers);  // references into it stay valid
    return ring;
  });
}

void reserve(StagingBuffer& b, size_t nbytes) {
  SSMT_ASSERT(!b.copied.in_flight, "a staging buffer is resized while its copy may be pending");
  if (b.host) CUDA_CHECK(cudaFreeHost(b.host));
  b.capacity = kStagingMinBytes;
  while (b.capacity < nbytes) b.capacity *= 2;
  b.host = pinned_alloc(b.capacity);
}

// A buffer of at least `nbytes` whose last copy is done. Prefers a free buffer that fits,
// then a new one; only when all kStagingBuffers are busy does it wait, for the one next in
// turn. Called with the ring's mutex held and the device current.
StagingBuffer& acquire(StagingRing& ring, size_t nbytes) {
  const size_t n = ring.buffers.size();
  for (size_t i = 0; i < n; ++i) {
    const size_t k = (ring.next + i) % n;
    StagingBuffer& b = ring.buffers[k];
    if (b.capacity >= nbytes && b.copied.done()) {
      ring.next = (k + 1) % n;
      return b;
    }
  }
  if (n < kStagingBuffers) {
    StagingBuffer& b = ring.buffers.emplace_back();
    b.copied.create();
    reserve(b, nbytes);
    ring.next = 0;
    return b;
  }
  StagingBuffer& b = ring.buffers[ring.next];
  ring.next = (ring.next + 1) % n;
  b.copied.wait();
  if (b.capacity < nbytes) reserve(b, nbytes);
  return b;
}

// ---- pinned reads of small device values (AsyncRead) -----------------------------------

constexpr size_t kPinnedReadBytes = 256;

struct ReadPool {
  std::mutex mutex;
  std::vector<PinnedRead*> released;  // may still be in flight: reused once their copy is done
};

ReadPool& read_pool(int device) {
  static std::array<std::atomic<ReadPool*>, cuda_detail::kMaxDevices> pools{};
  return cuda_detail::once_per_device(pools, device, [] { return new ReadPool; });
}

}  // namespace

// One pinned block and the event after the copy into it; pooled per device, never freed.
struct PinnedRead {
  int device = 0;
  void* host = nullptr;
  CopyEvent copied;
};

void memcpy_h2d(void* dst, const void* src, size_t nbytes, int device) {
  if (nbytes == 0) return;
  if (nbytes > kStagedCopyMaxBytes) {
    copy_sync(dst, src, nbytes, cudaMemcpyHostToDevice, device);
    return;
  }
  cuda_detail::DeviceGuard guard(device);
  cudaStream_t stream = cuda_detail::device_context(device).stream.get();
  StagingRing& ring = staging_ring(device);
  std::lock_guard<std::mutex> lock(ring.mutex);
  StagingBuffer& b = acquire(ring, nbytes);
  std::memcpy(b.host, src, nbytes);
  CUDA_CHECK(cudaMemcpyAsync(dst, b.host, nbytes, cudaMemcpyHostToDevice, stream));
  b.copied.record(stream);
}
void memcpy_d2h(void* dst, const void* src, size_t nbytes, int device) {
  copy_sync(dst, src, nbytes, cudaMemcpyDeviceToHost, device);
}

PinnedRead* read_async(const void* src, size_t nbytes, int device) {
  SSMT_ASSERT(nbytes <= kPinnedReadBytes, "read_async: ", nbytes, " bytes is more than a pinned read holds");
  cuda_detail::DeviceGuard guard(device);
  cudaStream_t stream = cuda_detail::device_context(device).stream.get();
  ReadPool& pool = read_pool(device);
  PinnedRead* r = nullptr;
  {
    std::lock_guard<std::mutex> lock(pool.mutex);
    for (size_t i = 0; i < pool.released.size(); ++i) {
      if (pool.released[i]->copied.done()) {
        r = pool.released[i];
        pool.released.erase(pool.released.begin() + static_cast<std::ptrdiff_t>(i));
        break;
      }
    }
  }
  if (!r) {
    r = new PinnedRead;
    r->device = device;
    r->host = pinned_alloc(kPinnedReadBytes);
    r->copied.create();
  }
  if (nbytes > 0) CUDA_CHECK(cudaMemcpyAsync(r->host, src, nbytes, cudaMemcpyDeviceToHost, stream));
  r->copied.record(stream);
  return r;
}

bool read_done(PinnedRead* r) { return r->copied.done(); }

const void* read_wait(PinnedRead* r) {
  r->copied.wait();
  return r->host;
}

void read_release(PinnedRead* r) {
  if (!r) return;
  ReadPool& pool = read_pool(r->device);
  std::lock_guard<std::mutex> lock(pool.mutex);
  pool.released.push_back(r);
}

}  // namespace cuda
}  // namespace ssmtrain
