// Storage: one owned allocation on one device, shared by every tensor view of it.
//
// CPU memory is 64-byte aligned. CUDA memory comes from the caching allocator
// (core/cuda/allocator.cu): freed blocks go back to a size-binned cache and are reused in
// stream order, so a steady-state training step performs no cudaMalloc/cudaFree.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>

#include "core/dtype.h"

namespace ssmtrain {

class Storage {
 public:
  Storage(size_t nbytes, Device device);
  ~Storage();
  Storage(const Storage&) = delete;
  Storage& operator=(const Storage&) = delete;

  void* data() const { return data_; }
  size_t nbytes() const { return nbytes_; }
  Device device() const { return device_; }

 private:
  void* data_ = nullptr;
  size_t nbytes_ = 0;
  Device device_;
};

// Memory counters of the allocator of one device (bytes).
struct MemoryStats {
  int64_t in_use = 0;        // bytes held by live tensors
  int64_t peak_in_use = 0;   // max of in_use since the last reset
  int64_t reserved = 0;      // bytes obtained from the driver (in_use + cached)
  int64_t device_allocs = 0; // number of cudaMalloc calls so far
  int64_t device_frees = 0;  // number of cudaFree calls so far
};
MemoryStats memory_stats(Device device);
void reset_peak_memory(Device device);
void empty_cache(Device device);  // returns cached CUDA blocks to the driver

// Backend hooks, implemented in core/cpu and core/cuda.
namespace cpu {
void* allocate(size_t nbytes);
void deallocate(void* p, size_t nbytes);
MemoryStats memory_stats();
void reset_peak_memory();
}  // namespace cpu
namespace cuda {
void* allocate(size_t nbytes, int device);
void deallocate(void* p, size_t nbytes, int device);
MemoryStats memory_stats(int device);
void reset_peak_memory(int device);
void empty_cache(int device);
}  // namespace cuda

}  // namespace ssmtrain
