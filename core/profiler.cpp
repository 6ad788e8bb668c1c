// The recorder behind core/profiler.h. While recording it keeps raw boundaries (a host time
// and, on CUDA, one event each), spans as pairs of boundaries, host waits and step marks;
// stop() resolves them into host and device times of the last recording, from which the
// Chrome trace and the summary table are made.
#include "core/profiler.h"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <mutex>
#include <nlohmann/json.hpp>
#include <unordered_map>
#include <vector>

#include "core/dtype.h"
#include "core/error.h"

#if defined(SSMTRAIN_WITH_CUDA)
#include "core/cuda/profiler_events.h"
#endif

namespace ssmtrain {
namespace profiler {
namespace detail {
std::atomic<bool> g_recording{false};
Counters g_counters;
}  // namespace detail

namespace {

int64_t now_ns() {
  using namespace std::chrono;
  return duration_cast<nanoseconds>(steady_clock::now().time_since_epoch()).count();
}

// ---- raw records, while recording ----------------------------------------------------

struct RawSpan {
  const char* name;
  const char* category;
  int32_t begin, end;  // boundary indices; end -1 while open
  int32_t tid;
  bool side = false;  // a StreamSpan: its boundaries are events on another stream
};
struct RawWait {
  int64_t begin_ns, end_ns;
  int32_t tid;
};
struct StepMark {
  int64_t step;
  int32_t boundary;
  CounterTotals at;  // counters when the step began
};

// ---- the resolved last recording (times in ns after its start) -------------------------
// Integer nanoseconds, shared by the spans that share a boundary, keep nested spans exactly
// nested in the trace.

struct Span {
  std::string name, category;
  int32_t tid;
  bool side;     // on another stream than the compute stream (StreamSpan)
  int64_t step;  // the step it began in; -1 before the first step_boundary
  int64_t host_begin, host_end, dev_begin, dev_end;
  int64_t host_dur() const { return host_end - host_begin; }
  int64_t dev_dur() const { return dev_end - dev_begin; }
};
struct Wait {
  int64_t begin, end;
  int32_t tid;
};
struct Step {
  int64_t step;
  int64_t host_begin;
  CounterTotals counts;  // counted during this step (to the next step or the stop)
};

struct Profile {
  bool valid = false;
  bool on_cuda = false;
  std::string device;
  int32_t main_tid = 0;
  int64_t host_end = 0;  // when stop() was called
  std::vector<Span> spans;
  std::vector<Wait> waits;
  std::vector<Step> steps;
  CounterTotals totals;
};

struct Recorder {
  std::mutex mutex;                  // guards everything below
  std::atomic<uint64_t> session{0};  // 1, 2, ...: a scope begun in one recording never ends in another
  bool on_cuda = false;
  std::string device;
  int32_t main_tid = 0;
  std::vector<int64_t> boundary_ns;
  std::vector<RawSpan> spans;
  std::vector<RawWait> waits;
  std::vector<StepMark> steps;
  std::atomic<int64_t> wait_ns{0};
  size_t last_boundaries = 0;  // of the previous recording: the events to have ready
  Profile last;
};

// Never destroyed: scopes may end in static destructors.
Recorder& recorder() {
  static Recorder* r = new Recorder;
  return *r;
}

// Per thread: its track id and its latest boundary (the begin of its next op mark).
struct ThreadState {
  uint64_t session = 0;
  int32_t mark = -1;
  int32_t tid = 0;
};
thread_local ThreadState t_state;
std::atomic<int32_t> g_next_tid{1};

int32_t thread_id() {
  if (t_state.tid == 0) t_state.tid = g_next_tid.fetch_add(1);
  return t_state.tid;
}

CounterTotals snapshot(const Recorder& r) {
  const auto& c = detail::g_counters;
  CounterTotals t;
  t.launches = c.launches.load(std::memory_order_relaxed);
  t.syncs = c.syncs.load(std::memory_order_relaxed);
  t.device_mallocs = c.device_mallocs.load(std::memory_order_relaxed);
  t.device_malloc_bytes = c.device_malloc_bytes.load(std::memory_order_relaxed);
  t.host_copies = c.host_copies.load(std::memory_order_relaxed);
  t.wait_ms = static_cast<double>(r.wait_ns.load(std::memory_order_relaxed)) * 1e-6;
  return t;
}

CounterTotals minus(const CounterTotals& a, const CounterTotals& b) {
  CounterTotals d;
  d.launches = a.launches - b.launches;
  d.syncs = a.syncs - b.syncs;
  d.device_mallocs = a.device_mallocs - b.device_mallocs;
  d.device_malloc_bytes = a.device_malloc_bytes - b.device_malloc_bytes;
  d.host_copies = a.host_copies - b.host_copies;
  d.wait_ms = a.wait_ms - b.wait_ms;
  return d;
}

// A new boundary (lock held): the host time, then the event, so an end boundary's host time
// does not include the cost of recording the event. It becomes this thread's mark.
int32_t new_boundary(Recorder& r) {
  const auto index = static_cast<int32_t>(r.boundary_ns.size());
  r.boundary_ns.push_back(now_ns());
#if defined(SSMTRAIN_WITH_CUDA)
  if (r.on_cuda) cuda_detail::profiler_event_record(static_cast<size_t>(index));
#endif
  t_state.session = r.session.load(std::memory_order_relaxed);
  t_state.mark = index;
  return index;
}

// A boundary whose event goes on `stream` (a StreamSpan's); the thread's mark stays.
int32_t new_stream_boundary(Recorder& r, void* stream) {
  const auto index = static_cast<int32_t>(r.boundary_ns.size());
  r.boundary_ns.push_back(now_ns());
#if defined(SSMTRAIN_WITH_CUDA)
  cuda_detail::profiler_event_record(static_cast<size_t>(index), stream);
#else
  (void)stream;
#endif
  return index;
}

// Turns the raw records into the last recording (lock held; `stop_boundary` closes spans
// still open). On CUDA this is the one wait for the device.
void resolve(Recorder& r, int32_t stop_boundary) {
  Profile p;
  p.valid = true;
  p.on_cuda = r.on_cuda;
  p.device = r.device;
  p.main_tid = r.main_tid;
  const size_t n = r.boundary_ns.size();
  const int64_t t0 = r.boundary_ns[0];
  std::vector<int64_t> host(n), dev(n);
  for (size_t i = 0; i < n; ++i) host[i] = r.boundary_ns[i] - t0;
  dev = host;
#if defined(SSMTRAIN_WITH_CUDA)
  if (r.on_cuda) {
    // Event 0 was recorded on an idle stream right after host time 0: device time 0 = host time 0.
    std::vector<double> ms = cuda_detail::profiler_events_elapsed_ms(n);
    for (size_t i = 0; i < n; ++i) dev[i] = std::llround(ms[i] * 1e6);
  }
#endif
  p.host_end = host[static_cast<size_t>(stop_boundary)];
  p.totals = snapshot(r);

  for (size_t k = 0; k < r.steps.size(); ++k) {
    const StepMark& m = r.steps[k];
    const CounterTotals& next = k + 1 < r.steps.size() ? r.steps[k + 1].at : p.totals;
    p.steps.push_back({m.step, host[static_cast<size_t>(m.boundary)], minus(next, m.at)});
  }
  p.spans.reserve(r.spans.size());
  for (const RawSpan& s : r.spans) {
    const auto b = static_cast<size_t>(s.begin);
    const auto e = static_cast<size_t>(s.end >= 0 ? s.end : stop_boundary);
    // The step a span began in: the last step mark at or before its begin boundary.
    auto it = std::upper_bound(r.steps.begin(), r.steps.end(), s.begin,
                               [](int32_t v, const StepMark& m) { return v < m.boundary; });
    const int64_t step = it == r.steps.begin() ? -1 : std::prev(it)->step;
    p.spans.push_back({s.name, s.category, s.tid, s.side, step, host[b], std::max(host[b], host[e]), dev[b],
                       std::max(dev[b], dev[e])});
  }
  for (const RawWait& w : r.waits) p.waits.push_back({w.begin_ns - t0, w.end_ns - t0, w.tid});
  r.last_boundaries = n;
  r.last = std::move(p);
}

// ---- output helpers --------------------------------------------------------------------

// A JSON string literal by nlohmann-json's serializer (bytes that are not UTF-8 become U+FFFD).
std::string json_string(const std::string& s) {
  return nlohmann::json(s).dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
}

// Nanoseconds as the trace's microseconds, exactly.
std::string us(int64_t ns) {
  ns = std::max<int64_t>(ns, 0);
  char buf[64];
  std::snprintf(buf, sizeof buf, "%lld.%03lld", static_cast<long long>(ns / 1000), static_cast<long long>(ns % 1000));
  return buf;
}

constexpr int kHostPid = 1, kDevicePid = 2, kStreamTid = 1, kSideStreamTid = 2;

std::string complete_event(const std::string& name, const std::string& category, int64_t ts, int64_t dur, int pid,
                           int32_t tid, const std::string& args) {
  return "{\"name\":" + json_string(name) + ",\"cat\":" + json_string(category) + ",\"ph\":\"X\",\"ts\":" + us(ts) +
         ",\"dur\":" + us(dur) + ",\"pid\":" + std::to_string(pid) + ",\"tid\":" + std::to_string(tid) + ",\"args\":{" +
         args + "}}";
}

std::string metadata_event(const char* what, int pid, int32_t tid, const std::string& key, const std::string& value) {
  return std::string("{\"name\":\"") + what + "\",\"ph\":\"M\",\"pid\":" + std::to_string(pid) +
         ",\"tid\":" + std::to_string(tid) + ",\"args\":{\"" + key + "\":" + value + "}}";
}

std::string counter_args(const CounterTotals& c) {
  return "\"launches\":" + std::to_string(c.launches) + ",\"syncs\":" + std::to_string(c.syncs) +
         ",\"cudaMallocs\":" + std::to_string(c.device_mallocs) + ",\"host_copies\":" + std::to_string(c.host_copies);
}

}  // namespace

// ---- recording -------------------------------------------------------------------------

void start(Device device) {
  Recorder& r = recorder();
  std::lock_guard<std::mutex> lock(r.mutex);
  SSMT_ASSERT(!recording(), "profiler::start while already recording");
  if (device.is_cuda()) {
#if defined(SSMTRAIN_WITH_CUDA)
    cuda_detail::profiler_events_begin(device.index, r.last_boundaries + 64);
#else
    throw UserError("profiler: device " + device.str() + ": ssmtrain was built without CUDA");
#endif
  }
  r.session.fetch_add(1);
  r.on_cuda = device.is_cuda();
  r.device = device.str();
  r.main_tid = thread_id();
  r.boundary_ns.clear();
  r.spans.clear();
  r.waits.clear();
  r.steps.clear();
  r.boundary_ns.reserve(r.last_boundaries + 64);
  r.spans.reserve(r.last_boundaries / 2 + 64);
  auto& c = detail::g_counters;
  for (auto* a : {&c.launches, &c.syncs, &c.device_mallocs, &c.device_malloc_bytes, &c.host_copies}) a->store(0);
  r.wait_ns.store(0);
  new_boundary(r);  // boundary 0: time 0 on both clocks
  detail::g_recording.store(true, std::memory_order_release);
}

void step_boundary(int64_t step) {
  if (!recording()) return;
  Recorder& r = recorder();
  std::lock_guard<std::mutex> lock(r.mutex);
  if (!recording()) return;
  const int32_t b = new_boundary(r);
  r.steps.push_back({step, b, snapshot(r)});
}

void stop() {
  if (!recording()) return;
  Recorder& r = recorder();
  std::lock_guard<std::mutex> lock(r.mutex);
  if (!recording()) return;
  const int32_t last = new_boundary(r);
  detail::g_recording.store(false, std::memory_order_release);
  resolve(r, last);
}

CounterTotals counters() { return snapshot(recorder()); }

namespace detail {

void mark_slow(const char* name, const char* category) {
  Recorder& r = recorder();
  std::lock_guard<std::mutex> lock(r.mutex);
  if (!recording()) return;
  const int32_t previous = t_state.session == r.session.load(std::memory_order_relaxed) ? t_state.mark : -1;
  const int32_t b = new_boundary(r);
  if (previous >= 0) r.spans.push_back({name, category, previous, b, thread_id()});
}

void reset_mark_slow() {
  Recorder& r = recorder();
  std::lock_guard<std::mutex> lock(r.mutex);
  if (recording()) new_boundary(r);
}

}  // namespace detail

const char* backward_name(const char* op) {
  static std::mutex mutex;
  static auto* names = new std::unordered_map<std::string, std::string>;  // never freed; values never move
  std::lock_guard<std::mutex> lock(mutex);
  auto it = names->find(op);
  if (it == names->end()) it = names->emplace(op, std::string(op) + "_backward").first;
  return it->second.c_str();
}

void SyncWait::begin() {
  session_ = recorder().session.load(std::memory_order_relaxed);
  begin_ns_ = now_ns();
}

void SyncWait::end() {
  const int64_t end_ns = now_ns();
  Recorder& r = recorder();
  std::lock_guard<std::mutex> lock(r.mutex);
  if (!recording() || session_ != r.session.load(std::memory_order_relaxed)) return;
  detail::g_counters.syncs.fetch_add(1, std::memory_order_relaxed);
  r.wait_ns.fetch_add(end_ns - begin_ns_, std::memory_order_relaxed);
  r.waits.push_back({begin_ns_, end_ns, thread_id()});
}

// ---- output ----------------------------------------------------------------------------

std::string chrome_trace_json() {
  Recorder& r = recorder();
  std::lock_guard<std::mutex> lock(r.mutex);
  const Profile& p = r.last;
  std::vector<std::string> events;
  events.push_back(metadata_event("process_name", kHostPid, 0, "name", "\"host\""));
  events.push_back(metadata_event("process_sort_index", kHostPid, 0, "sort_index", "0"));
  std::vector<int32_t> tids;
  for (const Span& s : p.spans) tids.push_back(s.tid);
  for (const Wait& w : p.waits) tids.push_back(w.tid);
  tids.push_back(p.main_tid);
  std::sort(tids.begin(), tids.end());
  tids.erase(std::unique(tids.begin(), tids.end()), tids.end());
  for (int32_t tid : tids)
    events.push_back(
        metadata_event("thread_name", kHostPid, tid, "name",
                       json_string(tid == p.main_tid ? std::string("main thread") : "thread " + std::to_string(tid))));
  if (p.on_cuda) {
    events.push_back(metadata_event("process_name", kDevicePid, 0, "name", json_string("device " + p.device)));
    events.push_back(metadata_event("process_sort_index", kDevicePid, 0, "sort_index", "1"));
    events.push_back(metadata_event("thread_name", kDevicePid, kStreamTid, "name", "\"compute stream\""));
    if (std::any_of(p.spans.begin(), p.spans.end(), [](const Span& s) { return s.side; }))
      events.push_back(metadata_event("thread_name", kDevicePid, kSideStreamTid, "name", "\"communication stream\""));
  }

  // Spans in begin order, enclosing spans first, so that viewers nest them as recorded.
  std::vector<size_t> order(p.spans.size());
  for (size_t i = 0; i < order.size(); ++i) order[i] = i;
  auto sorted_by = [&](auto begin, auto dur) {
    std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) {
      const Span &x = p.spans[a], &y = p.spans[b];
      if (begin(x) != begin(y)) return begin(x) < begin(y);
      return dur(x) > dur(y);
    });
  };
  auto args_of = [](const Span& s) { return s.step >= 0 ? "\"step\":" + std::to_string(s.step) : std::string(); };
  sorted_by([](const Span& s) { return s.host_begin; }, [](const Span& s) { return s.host_dur(); });
  for (size_t i : order) {
    const Span& s = p.spans[i];
    if (s.side) continue;  // device work only: its host times are when it was queued
    events.push_back(complete_event(s.name, s.category, s.host_begin, s.host_dur(), kHostPid, s.tid, args_of(s)));
  }
  for (const Wait& w : p.waits)
    events.push_back(complete_event("wait for device", "wait", w.begin, w.end - w.begin, kHostPid, w.tid, ""));
  for (const Step& st : p.steps) {
    events.push_back("{\"name\":" + json_string("step " + std::to_string(st.step)) +
                     ",\"cat\":\"step\",\"ph\":\"i\",\"s\":\"g\",\"ts\":" + us(st.host_begin) +
                     ",\"pid\":" + std::to_string(kHostPid) + ",\"tid\":" + std::to_string(p.main_tid) +
                     ",\"args\":{\"step\":" + std::to_string(st.step) + "}}");
    events.push_back("{\"name\":\"per step\",\"ph\":\"C\",\"ts\":" + us(st.host_begin) +
                     ",\"pid\":" + std::to_string(kHostPid) + ",\"args\":{" + counter_args(st.counts) + "}}");
  }
  if (p.on_cuda) {
    sorted_by([](const Span& s) { return s.dev_begin; }, [](const Span& s) { return s.dev_dur(); });
    for (size_t i : order) {
      const Span& s = p.spans[i];
      events.push_back(complete_event(s.name, s.category, s.dev_begin, s.dev_dur(), kDevicePid,
                                      s.side ? kSideStreamTid : kStreamTid, args_of(s)));
    }
  }

  std::string out = "{\"traceEvents\":[\n";
  for (size_t i = 0; i < events.size(); ++i) out += events[i] + (i + 1 < events.size() ? ",\n" : "\n");
  out += "],\"displayTimeUnit\":\"ms\",\"otherData\":{\"device\":" + json_string(p.device) +
         ",\"steps\":" + std::to_string(p.steps.size()) + "}}\n";
  return out;
}

void write_chrome_trace(const std::string& path) {
  const std::string text = chrome_trace_json();
  const std::string tmp = path + ".tmp";
  auto fail = [&](const char* what, int err, bool remove_tmp) {
    if (remove_tmp) ::unlink(tmp.c_str());
    throw UserError(
        ::ssmtrain::detail::concat("cannot write the profile trace '", path, "': ", what, ": ", std::strerror(err)));
  };
  const int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) fail(("cannot create '" + tmp + "'").c_str(), errno, false);
  size_t done = 0;
  while (done < text.size()) {
    const ssize_t w = ::write(fd, text.data() + done, text.size() - done);
    if (w < 0 && errno == EINTR) continue;
    if (w < 0) {
      const int err = errno;
      ::close(fd);
      fail("write failed", err, true);
    }
    done += static_cast<size_t>(w);
  }
  if (::fsync(fd) != 0) {
    const int err = errno;
    ::close(fd);
    fail("fsync failed", err, true);
  }
  if (::close(fd) != 0) fail("close failed", errno, true);
  if (::rename(tmp.c_str(), path.c_str()) != 0) fail("rename failed", errno, true);
}

std::string summary_table(int64_t steps) {
  Recorder& r = recorder();
  std::lock_guard<std::mutex> lock(r.mutex);
  const Profile& p = r.last;
  if (!p.valid) return "profile: nothing was recorded\n";
  const double n = steps > 0 ? static_cast<double>(steps) : static_cast<double>(std::max<size_t>(1, p.steps.size()));
  const double ms = 1e-6;  // ns -> ms

  struct Row {
    std::string name;
    bool op = false;
    int64_t calls = 0;
    double dev = 0, host = 0;  // ns, all steps
  };
  std::vector<Row> rows, phases;
  std::unordered_map<std::string, size_t> row_of, phase_of;
  double op_dev = 0, step_host = 0, step_dev = 0;  // ns
  double side_dev = 0, side_in_backward = 0;       // ns: other-stream spans, and their overlap with the backward
  bool any_side = false;
  bool any_step = false;
  for (const Span& s : p.spans) {
    if (s.side) {
      any_side = true;
      side_dev += static_cast<double>(s.dev_dur());
      for (const Span& b : p.spans)
        if (!b.side && b.category == "phase" && b.name == "backward")
          side_in_backward += static_cast<double>(
              std::max<int64_t>(0, std::min(s.dev_end, b.dev_end) - std::max(s.dev_begin, b.dev_begin)));
      continue;
    }
    const bool phase = s.category == "phase";
    if (phase && s.name == "step") {
      any_step = true;
      step_host += static_cast<double>(s.host_dur());
      step_dev += static_cast<double>(s.dev_dur());
      continue;
    }
    auto& table = phase ? phases : rows;
    auto& index = phase ? phase_of : row_of;
    auto [it, fresh] = index.emplace(s.name, table.size());
    if (fresh) table.push_back({s.name, s.category == "op"});
    Row& row = table[it->second];
    ++row.calls;
    row.dev += static_cast<double>(s.dev_dur());
    row.host += static_cast<double>(s.host_dur());
    if (s.category == "op") op_dev += static_cast<double>(s.dev_dur());
  }
  if (!any_step) step_host = step_dev = static_cast<double>(p.host_end);
  std::stable_sort(rows.begin(), rows.end(), [](const Row& a, const Row& b) { return a.dev > b.dev; });

  size_t width = 24;
  for (const Row& row : rows) width = std::max(width, std::min<size_t>(row.name.size(), 60));
  auto line = [](const char* fmt, auto... args) {
    char buf[512];
    std::snprintf(buf, sizeof buf, fmt, args...);
    return std::string(buf);
  };
  const int w = static_cast<int>(width);
  std::string out;
  out += "profile: " + std::to_string(static_cast<int64_t>(n)) + " step(s) on " + p.device +
         (p.on_cuda ? "; device times from CUDA events on the compute stream"
                    : "; a CPU run: device times are host times") +
         "; all figures per step\n";
  out += line("%-*s %9s %11s %9s %11s\n", w, "op", "calls", "device ms", "device %", "host ms");
  for (const Row& row : rows) {
    const std::string name = row.name.size() > width ? row.name.substr(0, width - 3) + "..." : row.name;
    out += line("%-*s %9.1f %11.3f %8.1f%% %11.3f\n", w, name.c_str(), static_cast<double>(row.calls) / n,
                row.dev * ms / n, op_dev > 0 ? 100.0 * row.dev / op_dev : 0.0, row.host * ms / n);
  }
  const CounterTotals& c = p.totals;
  const double wall = step_host * ms / n, waits = c.wait_ms / n;
  out += std::string(static_cast<size_t>(w) + 45, '-') + "\n";
  out += line("%-40s %11.3f\n", "device ms per step (sum of op spans)", op_dev * ms / n);
  out += line("%-40s %11.3f\n", "step wall ms", wall);
  out += line("%-40s %11.3f  (waiting for the device: %.3f ms)\n", "host ms per step outside waits",
              std::max(0.0, wall - waits), waits);
  if (any_side)
    out += line("%-40s %11.3f  (while the backward ran: %.3f ms)\n", "communication stream ms per step",
                side_dev * ms / n, side_in_backward * ms / n);
  out += line("%-40s %11.1f\n", "kernel launches per step", static_cast<double>(c.launches) / n);
  out += line("%-40s %11.1f\n", "host syncs per step", static_cast<double>(c.syncs) / n);
  out += line("%-40s %11.1f\n", "host<->device copies per step", static_cast<double>(c.host_copies) / n);
  out += line("%-40s %11.1f  (%.2f MiB)\n", "cudaMallocs per step", static_cast<double>(c.device_mallocs) / n,
              static_cast<double>(c.device_malloc_bytes) / n / (1024.0 * 1024.0));
  if (!phases.empty()) {
    std::string split;
    double covered = 0;
    auto add = [&](const std::string& name, double dev) {
      split += line("%s%s %.3f (%.1f%%)", split.empty() ? "" : " | ", name.c_str(), dev * ms / n,
                    step_dev > 0 ? 100.0 * dev / step_dev : 0.0);
    };
    for (const Row& ph : phases) {
      covered += ph.dev;
      add(ph.name, ph.dev);
    }
    if (any_step && step_dev > covered) add("other", step_dev - covered);
    out += "phases (device ms per step, share of the step): " + split + "\n";
  }
  return out;
}

}  // namespace profiler

// ---- scopes ----------------------------------------------------------------------------

void ProfileScope::begin(const char* name, const char* category) {
  auto& r = profiler::recorder();
  std::lock_guard<std::mutex> lock(r.mutex);
  if (!profiler::recording()) return;
  const int32_t b = profiler::new_boundary(r);
  span_ = static_cast<int64_t>(r.spans.size());
  session_ = r.session.load(std::memory_order_relaxed);
  r.spans.push_back({name, category, b, -1, profiler::thread_id()});
}

void StreamSpan::begin(const char* name, void* stream) {
  auto& r = profiler::recorder();
  std::lock_guard<std::mutex> lock(r.mutex);
  if (!profiler::recording() || !r.on_cuda) return;
  const int32_t b = profiler::new_stream_boundary(r, stream);
  span_ = static_cast<int64_t>(r.spans.size());
  session_ = r.session.load(std::memory_order_relaxed);
  stream_ = stream;
  r.spans.push_back({name, "stream", b, -1, profiler::thread_id(), true});
}

void StreamSpan::end() {
  auto& r = profiler::recorder();
  std::lock_guard<std::mutex> lock(r.mutex);
  if (!profiler::recording() || session_ != r.session.load(std::memory_order_relaxed)) return;
  r.spans[static_cast<size_t>(span_)].end = profiler::new_stream_boundary(r, stream_);
}

void ProfileScope::end() {
  auto& r = profiler::recorder();
  std::lock_guard<std::mutex> lock(r.mutex);
  if (!profiler::recording() || session_ != r.session.load(std::memory_order_relaxed)) return;
  r.spans[static_cast<size_t>(span_)].end = profiler::new_boundary(r);
}

}  // namespace ssmtrain
