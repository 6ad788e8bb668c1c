// The Mamba-1 family of blocks (Mamba, S6 without the gate, the block with an LTI SSM) on
// CUDA against the same block on the CPU in f64: output, input gradient and every
// parameter's gradient. The op tests check each CUDA op on its own; this checks each
// block's way of calling them (views, broadcasts, strides), which the LTI block's B and C
// (one vector expanded over batch and sequence) once got past the op tests.
//
// Tolerance: the block in f32 (TF32 off, the default, so cuBLAS computes true f32 products)
// is a chain of GEMMs (in_proj, x_proj, dt_proj, out_proj: sums of <= 2 d_inner = 32 terms,
// the weight gradients of <= B L = 74 rows), the depthwise conv (4 terms), the scan (74
// steps, each a product and a sum) and elementwise maps; each sum has error <= n eps relative
// to the sum of |terms| (eps = 6e-8): <= 74 x 6e-8 = 4.4e-6 for the longest, and the chain of
// about ten such steps stays below 2e-5 in the 2-norm. kF32 = {2e-5, 2e-4}, the bound of the
// scan op tests, applies (the worst element relative to max |ref| gets 10x). The gradients
// that sum over every position (biases, A_log, D, the LTI block's B and C) could cancel;
// measured with the same blocks in f32 on the CPU against f64, every output and gradient
// here is within 1e-6 in both measures, 20x inside the bound.
#include <doctest/doctest.h>

#include <string>
#include <utility>
#include <vector>

#include "core/autograd.h"
#include "core/ops.h"
#include "cuda_compare.h"
#include "ssm/mamba.h"

namespace ssmtrain {
namespace {

using namespace cuda_compare;

constexpr Tolerance kF32{2e-5, 2e-4};

struct BlockResult {
  Tensor y, dx;
  std::vector<std::pair<std::string, Tensor>> grads;
};

// The block of `kind` from a fixed seed, in f64 on the CPU or f32 on the device; the loss
// sum(y o w) with w rounded to f32 so that both sides weight the same values.
BlockResult run_mamba_block(const std::string& kind, Device device, const Tensor& x_values, const Tensor& w_values) {
  Generator gen(91);
  MambaOptions o;
  o.d_model = 8, o.d_state = 4, o.expand = 2, o.d_conv = 4;
  o.gated = kind != "s6";
  o.selective = kind != "mamba_lti";
  Mamba block(o, gen);
  const DType dtype = device.is_cpu() ? DType::f64 : DType::f32;
  block.to(dtype);
  block.to(device);
  clear_tape();
  Tensor x = x_values.to(dtype).to(device).detach();
  x.requires_grad_();
  const Tensor y = block.forward(x);
  backward(sum(mul(y, w_values.to(dtype).to(device))));
  BlockResult r;
  r.y = y.detach().to(Device::cpu()).to(DType::f64);
  r.dx = x.grad().to(Device::cpu()).to(DType::f64);
  for (const auto& p : block.named_parameters()) {
    const Tensor g = p.tensor.grad();
    REQUIRE_MESSAGE(g.defined(), "no gradient for ", p.name);
    r.grads.emplace_back(p.name, g.to(Device::cpu()).to(DType::f64));
  }
  return r;
}

}  // namespace

TEST_CASE("Mamba, S6 and LTI blocks on CUDA match the CPU in forward and backward") {
  if (!cuda_test_device()) return;
  for (const char* kind : {"mamba", "s6", "mamba_lti"}) {
    CAPTURE(kind);
    Generator gen(92);
    // Values representable in f32, so that both sides start from the same input and weights.
    const Tensor x = random_tensor({2, 37, 8}, gen, DType::f64).to(DType::f32).to(DType::f64);
    const Tensor w = random_tensor({2, 37, 8}, gen, DType::f64).to(DType::f32).to(DType::f64);
    const BlockResult ref = run_mamba_block(kind, Device::cpu(), x, w);
    const BlockResult dev = run_mamba_block(kind, Device::cuda(), x, w);
    expect_near(dev.y, ref.y, kF32, "y");
    expect_near(dev.dx, ref.dx, kF32, "dx");
    REQUIRE(dev.grads.size() == ref.grads.size());
    for (size_t i = 0; i < ref.grads.size(); ++i) {
      CHECK(dev.grads[i].first == ref.grads[i].first);
      expect_near(dev.grads[i].second, ref.grads[i].second, kF32, "d" + ref.grads[i].first);
    }
  }
}

}  // namespace ssmtrain
