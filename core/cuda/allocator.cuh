// Scratch memory for kernels that need temporary device buffers (partial sums, sort
// buffers). The memory comes from the caching allocator and returns to it at scope exit:
// that is safe even though the kernels using it may still be queued, because every later
// user of the block is queued behind them on the same compute stream.
#pragma once

#include <cstddef>

#include "core/storage.h"

namespace ssmtrain::cuda_detail {

class DeviceBuffer {
 public:
  DeviceBuffer(size_t nbytes, int device)
      : ptr_(nbytes ? cuda::allocate(nbytes, device) : nullptr), nbytes_(nbytes), device_(device) {}
  ~DeviceBuffer() {
    if (ptr_) cuda::deallocate(ptr_, nbytes_, device_);
  }
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;

  template <typename T> T* as() const { return static_cast<T*>(ptr_); }
  size_t nbytes() const { return nbytes_; }

 private:
  void* ptr_;
  size_t nbytes_;
  int device_;
};

}  // namespace ssmtrain::cuda_detail
