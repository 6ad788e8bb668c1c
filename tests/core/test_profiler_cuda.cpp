// The profiler on CUDA: device spans on their own track, kernel launches counted, no host
// wait inside a step, and a copy to the host counted as a copy and a sync. Skips visibly
// without a GPU.
#include <doctest/doctest.h>

#include <set>
#include <string>

#include "core/backend.h"
#include "core/profiler.h"
#include "gradcheck.h"
#include "profile_trace.h"
#include "user_error.h"

using namespace ssmtrain;
using namespace ssmtrain::testing;

TEST_CASE("on CUDA, device spans, launches and no syncs inside a step") {
  if (!cuda_test_device()) return;
  const Device dev = Device::cuda(0);
  profiled_step(dev);  // warm-up: the allocator's first cudaMallocs
  profiled_step(dev);
  const Json trace = parse_trace();
  const auto host = complete_events(trace, 1), device = complete_events(trace, 2);
  CHECK(host.size() == device.size());
  std::set<std::string> names;
  for (const Json* e : device) {
    names.insert((*e)["name"].string);
    CHECK((*e)["dur"].number >= 0);
    CHECK((*e)["tid"].number == 1);
  }
  for (const char* op : {"matmul", "exp", "sum", "matmul_backward", "step", "forward", "backward"})
    CHECK(names.count(op));
  check_nesting(device);
  const profiler::CounterTotals c = profiler::counters();
  CHECK(c.launches > 0);
  CHECK(c.syncs == 0);
  CHECK(c.device_mallocs == 0);
  const std::string table = profiler::summary_table(1);
  INFO(table);
  CHECK(testing::contains(table, "CUDA events"));

  // A copy to the host is a host copy and a sync.
  profiler::start(dev);
  Tensor t = Tensor::full({4}, 2.5, DType::f32, dev);
  CHECK(t.to(Device::cpu()).to_vector<float>() == std::vector<float>(4, 2.5f));
  profiler::stop();
  CHECK(profiler::counters().host_copies == 1);
  CHECK(profiler::counters().syncs == 1);
}
