// The profiler's CUDA events (see core/cuda/profiler_events.h). Events are created with
// timing enabled and never destroyed while their device is profiled: a recording reuses the
// events of the previous one, so the steady state creates none.
#include <algorithm>

#include "core/cuda/cuda_check.cuh"
#include "core/cuda/device.cuh"
#include "core/cuda/profiler_events.h"

namespace ssmtrain::cuda_detail {
namespace {

constexpr size_t kEventChunk = 1024;

struct EventPool {
  int device = -1;
  cudaStream_t stream = nullptr;
  std::vector<cudaEvent_t> events;
};

// Never destroyed, like the device contexts (device.cuh). Used under the profiler's lock.
EventPool& pool() {
  static EventPool* p = new EventPool;
  return *p;
}

void grow(EventPool& p, size_t count) {
  DeviceGuard guard(p.device);
  p.events.reserve(count);
  while (p.events.size() < count) {
    cudaEvent_t e = nullptr;
    CUDA_CHECK(cudaEventCreate(&e));
    p.events.push_back(e);
  }
}

}  // namespace

void profiler_events_begin(int device, size_t expected) {
  EventPool& p = pool();
  if (p.device != device) {
    for (cudaEvent_t e : p.events) cudaEventDestroy(e);
    p.events.clear();
    p.device = device;
    p.stream = device_context(device).stream.get();
  }
  grow(p, std::max(expected, kEventChunk));
  CUDA_CHECK(cudaStreamSynchronize(p.stream));
}

void profiler_event_record(size_t index, void* stream) {
  EventPool& p = pool();
  SSMT_ASSERT(p.device >= 0, "profiler event recorded before profiler_events_begin");
  if (index >= p.events.size()) grow(p, index + kEventChunk);
  CUDA_CHECK(cudaEventRecord(p.events[index], stream ? static_cast<cudaStream_t>(stream) : p.stream));
}

std::vector<double> profiler_events_elapsed_ms(size_t count) {
  EventPool& p = pool();
  std::vector<double> ms(count, 0.0);
  if (count == 0) return ms;
  SSMT_ASSERT(count <= p.events.size(), "profiler: ", count, " events asked for, ", p.events.size(), " exist");
  DeviceGuard guard(p.device);
  CUDA_CHECK(cudaDeviceSynchronize());  // events may be on other streams (StreamSpan)
  for (size_t i = 1; i < count; ++i) {
    float t = 0;
    CUDA_CHECK(cudaEventElapsedTime(&t, p.events[0], p.events[i]));
    ms[i] = t;
  }
  return ms;
}

}  // namespace ssmtrain::cuda_detail
