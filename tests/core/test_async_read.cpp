// Host <-> device copies that do not wait for the device: staged host-to-device copies
// (cuda::memcpy_h2d through pinned buffers) and AsyncRead, checked for their values and,
// with the compute stream held, for returning without waiting.
#include <doctest/doctest.h>

#include <numeric>
#include <optional>

#include "core/async_read.h"
#include "core/backend.h"
#include "core/ops.h"
#include "cuda_stream_block.h"
#include "gradcheck.h"

using namespace ssmtrain;

TEST_CASE("AsyncRead of a CPU tensor is ready at once and converts to double") {
  AsyncRead f(Tensor::from_vector<float>({1.5f, -2.0f}, {2}));
  CHECK(f.ready());
  CHECK(f.numel() == 2);
  CHECK(f.value(1) == -2.0);
  AsyncRead i(Tensor::from_vector<int64_t>({7, 1LL << 40}, {2}));
  CHECK(i.value(1) == static_cast<double>(1LL << 40));
  // A strided view is made contiguous first.
  Tensor m = Tensor::from_vector<double>({1, 2, 3, 4, 5, 6}, {2, 3});
  AsyncRead column(m.transpose(0, 1).narrow(0, 1, 1));
  CHECK(column.value(0) == 2.0);
  CHECK(column.value(1) == 5.0);
}

TEST_CASE("staged host-to-device copies of every size arrive intact") {
  if (!cuda_test_device()) return;
  const Device gpu = Device::cuda(0);
  // Sizes across the staging buffers' growth and past the 16 MiB synchronous threshold; the
  // host vector is overwritten right after each copy returns.
  std::vector<Tensor> on_device;
  std::vector<std::vector<int32_t>> expected;
  for (int64_t n : {1LL, 3LL, 16384LL, 16385LL, 1LL << 20, (16LL << 20) / 4, (16LL << 20) / 4 + 1, 7LL}) {
    for (int rep = 0; rep < 40; ++rep) {  // more copies than the ring has buffers
      std::vector<int32_t> host(static_cast<size_t>(n));
      std::iota(host.begin(), host.end(), static_cast<int32_t>(n + rep));
      on_device.push_back(Tensor::from_vector(host, {n}, gpu));
      expected.push_back(host);
      std::fill(host.begin(), host.end(), -1);
      if (n > 100000 && rep >= 2) break;  // a few of the large ones suffice
    }
  }
  for (size_t k = 0; k < on_device.size(); ++k) {
    INFO("copy " << k << " of " << on_device[k].numel() << " values");
    CHECK(on_device[k].to_vector<int32_t>() == expected[k]);
  }
}

TEST_CASE("host-to-device copies and AsyncRead return while the device is held") {
#if defined(SSMTRAIN_WITH_CUDA)
  if (!cuda_test_device()) return;
  const Device gpu = Device::cuda(0);
  // Once unheld first: the context, the kernel's first launch (modules load lazily), the
  // allocator's cache and the pinned pools are set up as in a steady-state step.
  for (bool held : {false, true}) {
    INFO("held " << held);
    std::optional<testing::StreamBlock> block;
    if (held) block.emplace(0);
    std::vector<float> host(1000, 1.5f);
    Tensor d = Tensor::from_vector(host, {1000}, gpu);
    std::fill(host.begin(), host.end(), -7.0f);  // the source may be reused at once
    AsyncRead read(mul(d.narrow(0, 2, 4), 2.0));
    if (held) {
      CHECK_FALSE(read.ready());
      CHECK_FALSE(block->timed_out());
      block.reset();  // releases the stream
    }
    CHECK(read.value(3) == 3.0);
    CHECK(read.ready());
    CHECK(d.to_vector<float>() == std::vector<float>(1000, 1.5f));
  }
#else
  MESSAGE("CUDA tests skipped: built without CUDA");
#endif
}
