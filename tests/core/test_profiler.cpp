// The profiler: op spans from the tape's marks, phase scopes, valid and properly nested
// Chrome trace JSON, the summary table, counters that count only while recording, atomic
// writing with errors that name the path (CUDA: test_profiler_cuda.cpp).
#include <doctest/doctest.h>

#include <filesystem>
#include <fstream>
#include <map>
#include <optional>
#include <set>
#include <sstream>
#include <string>

#include "core/profiler.h"
#include "profile_trace.h"
#include "temp_dir.h"
#include "user_error.h"

using namespace ssmtrain;
using namespace ssmtrain::testing;

TEST_CASE("a recorded forward and backward on the CPU gives a valid trace with op and phase spans") {
  profiled_step(Device::cpu());
  const Json trace = parse_trace();
  CHECK(trace["displayTimeUnit"].string == "ms");
  const auto host = complete_events(trace, 1);
  CHECK(complete_events(trace, 2).empty());  // no device track on the CPU
  std::map<std::string, const Json*> by_name;
  for (const Json* e : host) {
    for (const char* key : {"name", "cat", "ph", "ts", "dur", "pid", "tid", "args"}) CHECK(e->has(key));
    by_name[(*e)["name"].string] = e;
  }
  for (const char* op : {"matmul", "exp", "sum", "sum_backward", "exp_backward", "matmul_backward"}) {
    INFO("op " << op);
    REQUIRE(by_name.count(op));
    CHECK((*by_name[op])["cat"].string == "op");
    CHECK((*by_name[op])["dur"].number > 0);
    CHECK((*by_name[op])["args"]["step"].number == 1);
  }
  for (const char* phase : {"step", "forward", "backward"}) {
    INFO("phase " << phase);
    REQUIRE(by_name.count(phase));
    CHECK((*by_name[phase])["cat"].string == "phase");
  }
  // Forward ops lie in the forward phase, backward ops in the backward phase.
  auto inside = [&](const std::string& op, const std::string& phase) {
    const Json &o = *by_name[op], &p = *by_name[phase];
    return o["ts"].number >= p["ts"].number &&
           o["ts"].number + o["dur"].number <= p["ts"].number + p["dur"].number + 1e-3;
  };
  CHECK(inside("matmul", "forward"));
  CHECK(inside("sum", "forward"));
  CHECK(inside("matmul_backward", "backward"));
  CHECK(inside("sum_backward", "backward"));
  check_nesting(host);

  // Track names and the step marker.
  std::set<std::string> metadata, instants;
  for (const Json& e : trace["traceEvents"].array) {
    if (e["ph"].string == "M" && e["args"].has("name"))
      metadata.insert(e["name"].string + "=" + e["args"]["name"].string);
    if (e["ph"].string == "i") instants.insert(e["name"].string);
  }
  CHECK(metadata.count("process_name=host"));
  CHECK(metadata.count("thread_name=main thread"));
  CHECK(instants.count("step 1"));
}

TEST_CASE("the summary table lists the ops, the totals and the phase split") {
  profiled_step(Device::cpu());
  const std::string table = profiler::summary_table(1);
  INFO(table);
  for (const char* part :
       {"1 step(s) on cpu", "device times are host times", "matmul", "exp_backward",
        "device ms per step (sum of op spans)", "step wall ms", "host ms per step outside waits",
        "kernel launches per step", "host syncs per step", "cudaMallocs per step", "forward", "backward"})
    CHECK(testing::contains(table, part));
  CHECK_FALSE(testing::contains(table, "\nstep   "));  // the step span is a total, not a row
}

TEST_CASE("counters count only while recording") {
  profiler::start(Device::cpu());
  profiler::count_launch();
  profiler::count_launch();
  profiler::count_sync();
  profiler::count_device_malloc(2048);
  profiler::count_host_copy();
  { profiler::SyncWait wait; }
  profiler::stop();
  profiler::CounterTotals c = profiler::counters();
  CHECK(c.launches == 2);
  CHECK(c.syncs == 2);  // count_sync and the SyncWait
  CHECK(c.device_mallocs == 1);
  CHECK(c.device_malloc_bytes == 2048);
  CHECK(c.host_copies == 1);

  // Not recording: nothing moves.
  CHECK_FALSE(profiler::recording());
  profiler::count_launch();
  profiler::count_sync();
  profiler::count_device_malloc(1 << 20);
  profiler::count_host_copy();
  { profiler::SyncWait wait; }
  c = profiler::counters();
  CHECK(c.launches == 2);
  CHECK(c.syncs == 2);
  CHECK(c.device_mallocs == 1);
  CHECK(c.host_copies == 1);

  // A new recording starts from zero, and CPU ops count no launches, syncs or copies.
  profiled_step(Device::cpu());
  c = profiler::counters();
  CHECK(c.launches == 0);
  CHECK(c.syncs == 0);
  CHECK(c.device_mallocs == 0);
  CHECK(c.host_copies == 0);
}

TEST_CASE("work outside a recording leaves no trace and a scope outliving one is harmless") {
  profiled_step(Device::cpu());
  const std::string before = profiler::chrome_trace_json();
  {
    Tensor x = Tensor::ones({4}).requires_grad_();
    ProfileScope outside("outside");
    backward(sum(mul(x, x)));
  }
  CHECK(profiler::chrome_trace_json() == before);

  // A scope open when recording stops is closed at the stop; its destructor then does nothing.
  std::optional<ProfileScope> open;
  profiler::start(Device::cpu());
  open.emplace("left_open");
  profiler::stop();
  open.reset();
  const Json trace = parse_trace();
  bool found = false;
  for (const Json* e : complete_events(trace, 1)) found = found || (*e)["name"].string == "left_open";
  CHECK(found);
  CHECK_THROWS_AS(([] {
                    profiler::start(Device::cpu());
                    profiler::start(Device::cpu());
                  }()),
                  InternalError);
  profiler::stop();
}

TEST_CASE("write_chrome_trace writes atomically and names an unwritable path") {
  testing::TempDir dir("profiler");
  profiled_step(Device::cpu());
  const std::string path = dir.file("profile.json");
  profiler::write_chrome_trace(path);
  std::ifstream in(path);
  std::stringstream text;
  text << in.rdbuf();
  CHECK(text.str() == profiler::chrome_trace_json());
  CHECK_FALSE(std::filesystem::exists(path + ".tmp"));

  const std::string bad = dir.file("no/such/dir/profile.json");
  const std::string msg = testing::user_error_of([&] { profiler::write_chrome_trace(bad); });
  CHECK(testing::contains(msg, bad));
}

TEST_CASE("names are escaped in the trace") {
  profiler::start(Device::cpu());
  { ProfileScope odd("quote\" back\\slash\ttab", "custom"); }
  profiler::stop();
  const Json trace = parse_trace();
  bool found = false;
  for (const Json* e : complete_events(trace, 1))
    found = found || ((*e)["name"].string == "quote\" back\\slash\ttab" && (*e)["cat"].string == "custom");
  CHECK(found);
}
