// A profiler users switch on for a few training steps: host spans, device spans measured
// with CUDA events on the compute stream, and counters of kernel launches, host waits and
// cudaMallocs, written as a Chrome trace (Perfetto, chrome://tracing) and summarised as a
// per-op table (docs/training.md, "Profiling a run").
//
// Spans come from three places:
//  - ProfileScope: an RAII span ("phase" for forward/backward/optimizer/step, or any category);
//  - the tape's forward ops, as marks: each record() closes a span from the previous boundary
//    of this thread (the previous op, or the start or end of the nearest scope) to now, named
//    after the op. Ops launch their kernels before recording, so every kernel lands in the op
//    that launched it without touching any op;
//  - the tape's backward, which marks "<op>_backward" after each node ran.
// Every span boundary records one pooled CUDA event on the compute stream; stop() waits for
// the device once and converts the events into device times on the host clock (the first
// event is aligned with its host time). On the CPU the device times are the host times.
//
// When the profiler is not recording, a scope, a mark and a counter cost one relaxed atomic
// load and a branch. Recording is process-wide; spans are attributed to the thread that made
// them. Span names must stay valid until stop() (string literals are).
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <string>

namespace ssmtrain {

struct Device;

namespace profiler {
namespace detail {
extern std::atomic<bool> g_recording;
struct Counters {
  std::atomic<int64_t> launches{0};
  std::atomic<int64_t> syncs{0};
  std::atomic<int64_t> device_mallocs{0};
  std::atomic<int64_t> device_malloc_bytes{0};
  std::atomic<int64_t> host_copies{0};
};
extern Counters g_counters;
void mark_slow(const char* name, const char* category);
void reset_mark_slow();
}  // namespace detail

inline bool recording() { return detail::g_recording.load(std::memory_order_relaxed); }
}  // namespace profiler

// A span from construction to destruction; a no-op costing one branch when not recording.
class ProfileScope {
 public:
  explicit ProfileScope(const char* name, const char* category = "phase") {
    if (profiler::recording()) begin(name, category);
  }
  ~ProfileScope() {
    if (span_ >= 0) end();
  }
  ProfileScope(const ProfileScope&) = delete;
  ProfileScope& operator=(const ProfileScope&) = delete;

 private:
  void begin(const char* name, const char* category);
  void end();
  int64_t span_ = -1;  // index in the session's spans; -1 = not recording
  uint64_t session_ = 0;
};

// A span of work queued on another stream of the profiled device (the data-parallel
// communication stream): an event is recorded on `stream` (a cudaStream_t) at construction,
// before the work is queued, and another at destruction, after it. Such spans get their own
// device track in the trace and their own line in the summary, apart from the compute
// stream's ops. A no-op when not recording or when the recording is not on CUDA.
class StreamSpan {
 public:
  StreamSpan(const char* name, void* stream) {
    if (profiler::recording()) begin(name, stream);
  }
  ~StreamSpan() {
    if (span_ >= 0) end();
  }
  StreamSpan(const StreamSpan&) = delete;
  StreamSpan& operator=(const StreamSpan&) = delete;

 private:
  void begin(const char* name, void* stream);
  void end();
  int64_t span_ = -1;
  uint64_t session_ = 0;
  void* stream_ = nullptr;
};

namespace profiler {

// Begins recording (throws InternalError when already recording). `device` is where the
// compute stream is; on CUDA the device is synchronised first, so recording starts idle.
void start(Device device);
// Call at the start of each recorded step: an instant marker in the trace and the point
// where the per-step counters of the trace are cut.
void step_boundary(int64_t step);
// Ends recording: waits for the device once and resolves every event. No-op when idle.
void stop();

// The last recording as Chrome trace event JSON, written atomically (temporary file, fsync,
// rename); a UserError naming the path when it cannot be written.
void write_chrome_trace(const std::string& path);
std::string chrome_trace_json();
// The per-op table of the last recording, for `steps` recorded steps (<= 0: the number of
// step_boundary calls, at least 1).
std::string summary_table(int64_t steps);

// Counters, counted only while recording (the call sites: CUDA_CHECK_LAUNCH and cuBLAS
// calls; stream synchronisations; the caching allocator's cudaMallocs; copies between host
// and device in Tensor::to).
inline void count_launch() {
  if (recording()) detail::g_counters.launches.fetch_add(1, std::memory_order_relaxed);
}
inline void count_sync() {
  if (recording()) detail::g_counters.syncs.fetch_add(1, std::memory_order_relaxed);
}
inline void count_device_malloc(size_t bytes) {
  if (recording()) {
    detail::g_counters.device_mallocs.fetch_add(1, std::memory_order_relaxed);
    detail::g_counters.device_malloc_bytes.fetch_add(static_cast<int64_t>(bytes), std::memory_order_relaxed);
  }
}
inline void count_host_copy() {
  if (recording()) detail::g_counters.host_copies.fetch_add(1, std::memory_order_relaxed);
}

// The counters of the current (or last) recording, from its start.
struct CounterTotals {
  int64_t launches = 0, syncs = 0, device_mallocs = 0, device_malloc_bytes = 0, host_copies = 0;
  double wait_ms = 0;  // host time spent in SyncWait scopes
};
CounterTotals counters();

// Around a host wait for the device (a stream synchronisation): counts one sync and, while
// recording, times the wait (a "wait" span on the host track; subtracted from host busy time).
class SyncWait {
 public:
  SyncWait() {
    if (recording()) begin();
  }
  ~SyncWait() {
    if (begin_ns_ >= 0) end();
  }
  SyncWait(const SyncWait&) = delete;
  SyncWait& operator=(const SyncWait&) = delete;

 private:
  void begin();
  void end();
  int64_t begin_ns_ = -1;
  uint64_t session_ = 0;
};

// The tape's hooks (core/autograd.cpp). mark(): a span named `name` from this thread's
// previous boundary to now. reset_mark(): a boundary without a span, so the next mark does
// not take in what came before. backward_name("linear") is "linear_backward" (interned).
inline void mark(const char* name, const char* category = "op") {
  if (recording()) detail::mark_slow(name, category);
}
inline void reset_mark() {
  if (recording()) detail::reset_mark_slow();
}
const char* backward_name(const char* op);

}  // namespace profiler
}  // namespace ssmtrain
