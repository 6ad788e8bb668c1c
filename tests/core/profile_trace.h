// Helpers of the profiler tests: a recorded forward and backward of a few ops, and readers
// of the Chrome trace it gives.
#pragma once

#include <doctest/doctest.h>

#include <string>
#include <vector>

#include "core/autograd.h"
#include "core/ops.h"
#include "core/profiler.h"
#include "json_scan.h"

namespace ssmtrain::testing {

// A forward and backward of a few ops inside a recorded step on `device`.
inline void profiled_step(Device device) {
  Tensor x = Tensor::ones({8, 16}, DType::f32, device);
  Tensor w = Tensor::full({16, 4}, 0.1, DType::f32, device).requires_grad_();
  profiler::start(device);
  profiler::step_boundary(1);
  {
    ProfileScope step("step");
    Tensor loss;
    {
      ProfileScope forward("forward");
      loss = sum(exp(matmul(x, w)));
    }
    {
      ProfileScope backward_scope("backward");
      backward(loss);
    }
  }
  profiler::stop();
  CHECK(w.grad().defined());
}

inline Json parse_trace() {
  Json trace;
  std::string error;
  const std::string text = profiler::chrome_trace_json();
  const bool ok = testing::JsonReader().parse(text, trace, error);
  REQUIRE_MESSAGE(ok, "the trace is not valid JSON: " << error);
  REQUIRE(trace.has("traceEvents"));
  REQUIRE(trace["traceEvents"].kind == Json::Kind::array);
  return trace;
}

// The complete ("X") events of a trace on process `pid`.
inline std::vector<const Json*> complete_events(const Json& trace, int pid) {
  std::vector<const Json*> out;
  for (const Json& e : trace["traceEvents"].array)
    if (e["ph"].string == "X" && e["pid"].number == pid) out.push_back(&e);
  return out;
}

// On each track, two spans are either disjoint or one holds the other (what trace viewers
// need to draw them as a stack).
inline void check_nesting(const std::vector<const Json*>& events) {
  const double slack = 1e-3;  // the trace's timestamps carry 3 decimals of a microsecond
  for (const Json* a : events)
    for (const Json* b : events) {
      if (a == b || (*a)["tid"].number != (*b)["tid"].number) continue;
      const double a0 = (*a)["ts"].number, a1 = a0 + (*a)["dur"].number;
      const double b0 = (*b)["ts"].number, b1 = b0 + (*b)["dur"].number;
      const bool disjoint = a1 <= b0 + slack || b1 <= a0 + slack;
      const bool a_in_b = a0 >= b0 - slack && a1 <= b1 + slack;
      const bool b_in_a = b0 >= a0 - slack && b1 <= a1 + slack;
      INFO((*a)["name"].string << " [" << a0 << ", " << a1 << "] and " << (*b)["name"].string << " [" << b0 << ", "
                               << b1 << "]");
      CHECK((disjoint || a_in_b || b_in_a));
    }
}

}  // namespace ssmtrain::testing
