// Holds the compute stream of a CUDA device until release(), so a test can see that the host
// goes on without waiting for the device: a host function queued on the stream spins until
// released (or until a timeout, so a host that does wait turns into a failed check rather
// than a hung test). Everything queued after it waits behind it.
#pragma once

#if defined(SSMTRAIN_WITH_CUDA)

#include <cuda_runtime.h>

#include <atomic>
#include <chrono>
#include <memory>
#include <thread>

#include "core/backend.h"

namespace testing {

class StreamBlock {
 public:
  explicit StreamBlock(int device, std::chrono::seconds timeout = std::chrono::seconds(20))
      : state_(std::make_shared<State>()) {
    state_->timeout = timeout;
    ssmtrain::backend(ssmtrain::Device::cuda(device));  // the context and its stream exist
    auto stream = static_cast<cudaStream_t>(ssmtrain::cuda::compute_stream(device));
    // The host function owns a reference, so the state outlives this object if need be.
    auto* ref = new std::shared_ptr<State>(state_);
    if (cudaLaunchHostFunc(stream, &StreamBlock::hold, ref) != cudaSuccess) {
      delete ref;
      state_->timed_out = true;
    }
  }
  ~StreamBlock() { release(); }
  StreamBlock(const StreamBlock&) = delete;
  StreamBlock& operator=(const StreamBlock&) = delete;

  void release() { state_->released = true; }
  // The block gave up on its own: something on the host waited for the device while held.
  bool timed_out() const { return state_->timed_out; }

 private:
  struct State {
    std::atomic<bool> released{false};
    std::atomic<bool> timed_out{false};
    std::chrono::seconds timeout{20};
  };
  static void CUDART_CB hold(void* p) {
    auto* ref = static_cast<std::shared_ptr<State>*>(p);
    State& s = **ref;
    const auto t0 = std::chrono::steady_clock::now();
    while (!s.released) {
      if (std::chrono::steady_clock::now() - t0 > s.timeout) {
        s.timed_out = true;
        break;
      }
      std::this_thread::sleep_for(std::chrono::microseconds(100));
    }
    delete ref;
  }
  std::shared_ptr<State> state_;
};

}  // namespace testing

#endif
