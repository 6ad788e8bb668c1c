// Reading a few device values on the host without waiting for the device as a whole.
//
// AsyncRead(t) queues one copy of `t` into pinned host memory on the compute stream of t's
// device and records an event after it. ready() polls that event; wait() and value() wait on
// it alone, so work queued after the copy (the next step) never delays the read. This is how
// the trainer reads a step's loss and gradient norm one step late (DESIGN: "the host runs
// ahead of the device"). A CPU tensor is copied at once and is always ready.
//
// The source may be freed or overwritten after the constructor returns: the copy is queued
// before anything later on the stream.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>

#include "core/tensor.h"

namespace ssmtrain {

class AsyncRead {
 public:
  static constexpr size_t kMaxBytes = 256;

  AsyncRead() = default;
  // t: any shape of f32, f64, i32 or i64, at most kMaxBytes.
  explicit AsyncRead(const Tensor& t);

  bool defined() const { return impl_ != nullptr; }
  int64_t numel() const;
  // The copy has arrived (never waits).
  bool ready() const;
  // Waits for the copy (its event only). A real wait counts as a host sync for the profiler.
  void wait() const;
  // Element i (row-major) converted to double; waits first.
  double value(int64_t i) const;

 private:
  struct Impl;
  std::shared_ptr<Impl> impl_;
};

namespace cuda {
// The CUDA side of AsyncRead (core/cuda/device.cu): a pooled pinned block of
// AsyncRead::kMaxBytes with the event recorded after the copy into it.
struct PinnedRead;
PinnedRead* read_async(const void* device_src, size_t nbytes, int device);
bool read_done(PinnedRead* read);
const void* read_wait(PinnedRead* read);  // the copied bytes
void read_release(PinnedRead* read);      // back to the pool (reused once its copy is done)
}  // namespace cuda

}  // namespace ssmtrain
