// Storage lifetime: allocation goes to the device's allocator (core/cpu, core/cuda).
#include "core/storage.h"

#include "core/backend.h"

namespace ssmtrain {

Storage::Storage(size_t nbytes, Device device) : nbytes_(nbytes), device_(device) {
  if (device.is_cpu()) {
    data_ = cpu::allocate(nbytes);
  } else {
#if defined(SSMTRAIN_WITH_CUDA)
    backend(device);  // validates the device index with a clear message
    data_ = cuda::allocate(nbytes, device.index);
#else
    throw UserError("device " + device.str() + ": ssmtrain was built without CUDA");
#endif
  }
}

Storage::~Storage() {
  if (!data_) return;
  if (device_.is_cpu()) {
    cpu::deallocate(data_, nbytes_);
  } else {
#if defined(SSMTRAIN_WITH_CUDA)
    cuda::deallocate(data_, nbytes_, device_.index);
#endif
  }
}

MemoryStats memory_stats(Device device) {
  if (device.is_cpu()) return cpu::memory_stats();
#if defined(SSMTRAIN_WITH_CUDA)
  return cuda::memory_stats(device.index);
#else
  return {};
#endif
}

void reset_peak_memory(Device device) {
  if (device.is_cpu()) return cpu::reset_peak_memory();
#if defined(SSMTRAIN_WITH_CUDA)
  cuda::reset_peak_memory(device.index);
#endif
}

void empty_cache(Device device) {
#if defined(SSMTRAIN_WITH_CUDA)
  if (device.is_cuda()) cuda::empty_cache(device.index);
#endif
}

}  // namespace ssmtrain
