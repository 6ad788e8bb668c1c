// The profiler on CUDA: device spans on their own track, kernel launches counted, no host
// wait inside a step, and a copy to the host counted as a copy and a sync. Skips visibly
// without a GPU.
#include <doctest/doctest.h>

#include <set>
#include <string>

#if defined(SSMTRAIN_WITH_CUDA)
#include <cuda_runtime.h>
#endif

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

// A StreamSpan around work on a second stream (as the data-parallel communication stream
// does): a device span on its own track named "communication stream", none on the host
// track, and its own summary line, with the ops' table and sums untouched.
TEST_CASE("on CUDA, a StreamSpan on another stream gets its own device track and summary line") {
  if (!cuda_test_device()) return;
#if defined(SSMTRAIN_WITH_CUDA)
  const Device dev = Device::cuda(0);
  cudaStream_t side = nullptr;
  REQUIRE(cudaStreamCreateWithFlags(&side, cudaStreamNonBlocking) == cudaSuccess);
  Tensor src = Tensor::full({1 << 22}, 1.5, DType::f32, dev), dst = Tensor::zeros({1 << 22}, DType::f32, dev);
  Tensor x = Tensor::ones({8, 16}, DType::f32, dev);
  Tensor w = Tensor::full({16, 4}, 0.1, DType::f32, dev).requires_grad_();
  backend(dev).synchronize();
  profiler::start(dev);
  profiler::step_boundary(1);
  {
    ProfileScope step("step");
    Tensor loss = sum(exp(matmul(x, w)));
    ProfileScope backward_scope("backward");
    {
      StreamSpan span("side copy", side);
      REQUIRE(cudaMemcpyAsync(dst.data_ptr(), src.data_ptr(), src.numel() * sizeof(float), cudaMemcpyDeviceToDevice,
                              side) == cudaSuccess);
    }
    backward(loss);
  }
  profiler::stop();
  REQUIRE(cudaStreamSynchronize(side) == cudaSuccess);
  CHECK(dst.to(Device::cpu()).to_vector<float>()[12345] == 1.5f);
  const Json trace = parse_trace();
  int side_spans = 0;
  for (const Json* e : complete_events(trace, 2))
    if ((*e)["name"].string == "side copy") {
      ++side_spans;
      CHECK((*e)["tid"].number == 2);
      CHECK((*e)["dur"].number > 0);  // 16 MiB copied: microseconds, not zero
    }
  CHECK(side_spans == 1);
  for (const Json* e : complete_events(trace, 1)) CHECK((*e)["name"].string != "side copy");
  bool named = false;
  for (const Json& e : trace["traceEvents"].array)
    if (e["ph"].string == "M" && e["pid"].number == 2 && e["tid"].number == 2)
      named = e["args"]["name"].string == "communication stream";
  CHECK(named);
  const std::string table = profiler::summary_table(1);
  INFO(table);
  CHECK(testing::contains(table, "communication stream ms per step"));
  CHECK_FALSE(testing::contains(table, "side copy"));
  REQUIRE(cudaStreamDestroy(side) == cudaSuccess);
#endif
}
