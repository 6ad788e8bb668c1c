// The profiler's timing events (core/profiler.cpp), implemented in core/cuda/profiler.cu:
// a pool of CUDA events, created once and reused by every recording, recorded on the
// compute stream of the profiled device. Plain C++ so that profiler.cpp needs no CUDA header.
#pragma once

#include <cstddef>
#include <vector>

namespace ssmtrain::cuda_detail {

// Prepares a recording on `device`: at least `expected` events exist (so a recording as long
// as the last one creates none), and the compute stream has drained.
void profiler_events_begin(int device, size_t expected);

// Records event `index` (0, 1, 2, ... within a recording) on the compute stream, or on
// `stream` (a cudaStream_t of the same device) when given; creates more events when the
// pool is exhausted.
void profiler_event_record(size_t index, void* stream = nullptr);

// Waits for the device once (every stream); the times of events 0 .. count-1 in ms after event 0.
std::vector<double> profiler_events_elapsed_ms(size_t count);

}  // namespace ssmtrain::cuda_detail
