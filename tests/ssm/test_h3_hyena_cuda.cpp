// The H3 and Hyena mixers on CUDA against the same mixers on the CPU in f64: forward output,
// input gradient and every parameter gradient, on random data. Both mixers are compositions
// of ops with CUDA kernels (linear, causal_conv1d, s4d_vandermonde_kernel, fft_conv by cuFFT,
// sin and the elementwise ops), so these cases check the composition end to end: shapes
// (L not a power of two, the FFT path of the H3 shift for widths > 4, several heads, orders
// 1 to 3) and strided views between ops. Every case prints a visible skip without a GPU.
//
// Setup: two instances drawn from one seed in f32 (as in training); the reference is
// converted to f64 on the CPU (exactly the device's f32 values), the other moved to the
// GPU. The input is drawn in f64 and rounded once to the device dtype; the reference reads
// those rounded values. The loss is sum <cast(out, f32), W> with W representable in the
// output dtype, so both sides see identical output gradients. TF32 is off: f32 GEMMs round
// like the CPU's.
//
// Tolerances (relative 2-norm error, max error relative to max |ref|; cuda_compare.h):
//  - f32: every op of the chain rounds its result at 2^-24 = 6e-8 relative; the GEMMs over
//    D <= 16 terms and the kernel generation (double inside, one f32 rounding) stay near that,
//    and each f32 FFT convolution (n <= 200) adds eps log2(n) ~ 5e-7 of its output's norm
//    (test_s4_cuda.cpp). A mixer chains at most 3 convolutions (Hyena of order 3) and ~10
//    roundings; relative errors add through products and sums, ~3e-6 in the norm forward.
//    Backward runs the transposed chain once more and sums over B L <= 128 positions, where
//    cancellation of the sum can lift the relative error of a small gradient by ~sqrt(B L)
//    ~ 10: ~3e-5 in the worst parameter. Bounds 1e-4 norm, 1e-3 max (elementwise errors of
//    FFT-based results spread evenly, a few times the rms relative to max |ref|). The same
//    shapes run with the CPU in f32 as the "device" measured at most 3.3e-6 on both
//    measures, so the bounds hold >= 30x over rounding, while a wrong tap, head or sign is O(1).
//  - bf16 input: the projections and the short conv run in bf16 (each rounding 2^-9 = 2e-3 at
//    worst, ~1.1e-3 rms), the SSM part in f32. The longest path (backward through out_proj,
//    the gates, the convolutions, the short conv and in_proj, weights cast to bf16 included)
//    holds ~8 bf16 roundings in series: sqrt(8) * 1.1e-3 = 3e-3 rms; the SSM and filter
//    parameter gradients are sums over B L positions that cancel to about a third of their
//    terms' magnitude, which triples their relative error: ~1e-2. The CPU with bf16 inputs
//    as the "device" measured, over 6 seeds of these two shapes, at most 1.2e-2 norm and
//    1.5e-2 max (dlog_A_real, dA_imag, dlog_dt of H3; dshort_conv.weight of Hyena). Bounds
//    3e-2 norm, 5e-2 max: 2.5x and 3.4x over that.
#include <doctest/doctest.h>

#include <memory>
#include <string>
#include <vector>

#include "core/backend.h"
#include "cuda_compare.h"
#include "gradcheck.h"
#include "ssm/h3.h"
#include "ssm/hyena.h"

namespace ssmtrain {
namespace {

using namespace cuda_compare;

constexpr Tolerance kMixerF32{1e-4, 1e-3};
constexpr Tolerance kMixerBf16{3e-2, 5e-2};

struct MixerPair {
  std::shared_ptr<Mixer> ref, dev;
};

template <class M, class O>
MixerPair mixer_pair(const O& options, uint64_t seed) {
  Generator g1(seed), g2(seed);
  MixerPair p{std::make_shared<M>(options, g1), std::make_shared<M>(options, g2)};
  p.ref->to(DType::f64);
  p.dev->to(Device::cuda());
  return p;
}

void compare_mixers(const MixerPair& m, int64_t B, int64_t L, int64_t D, DType x_dtype, Tolerance tol, Generator& gen) {
  set_allow_tf32(false);
  const Tensor rounded = random_tensor({B, L, D}, gen, DType::f64).to(x_dtype);
  Tensor xr = rounded.to(DType::f64).detach(), xd = rounded.to(Device::cuda()).detach();
  xr.requires_grad_(), xd.requires_grad_();
  m.ref->zero_grad(), m.dev->zero_grad();
  clear_tape();
  const Tensor yd = m.dev->forward(xd);
  CHECK(yd.dtype() == x_dtype);
  const Tensor W = random_tensor(yd.shape(), gen, DType::f64).to(x_dtype).to(DType::f64);
  backward(sum(mul(cast(yd, DType::f32), W.to(DType::f32).to(Device::cuda()))));
  const Tensor yr = m.ref->forward(xr);
  backward(sum(mul(yr, W)));

  CHECK(yd.device().is_cuda());
  expect_near(yd.to(Device::cpu()), yr, tol, "out");
  expect_near(xd.grad().to(Device::cpu()), xr.grad(), tol, "dx");
  const auto pr = m.ref->named_parameters(), pd = m.dev->named_parameters();
  REQUIRE(pr.size() == pd.size());
  for (size_t i = 0; i < pr.size(); ++i) {
    INFO("parameter ", pr[i].name);
    REQUIRE(pr[i].tensor.grad().defined());
    REQUIRE(pd[i].tensor.grad().defined());
    expect_near(pd[i].tensor.grad().to(Device::cpu()), pr[i].tensor.grad(), tol, "d" + pr[i].name);
  }
}

H3Options h3_options(int64_t D, int64_t N, int64_t P, int64_t W) {
  H3Options o;
  o.d_model = D, o.d_state = N, o.head_dim = P, o.shift_width = W;
  return o;
}

HyenaOptions hyena_options(int64_t D, int64_t order, int64_t l_max) {
  HyenaOptions o;
  o.d_model = D, o.order = order, o.l_max = l_max, o.filter_emb_dim = 9, o.filter_width = 16;
  return o;
}

}  // namespace

TEST_CASE("h3 mixer CUDA f32 matches the CPU in forward and backward") {
  if (!cuda_test_device()) return;
  Generator gen(1701);
  struct Case {
    int64_t B, L, D, N, P, W;
  };
  // Elementwise heads on the causal conv shift; 2 and 4 heads; the FFT shift (W = 6, 40).
  for (const Case& c :
       {Case{2, 37, 8, 8, 1, 4}, Case{2, 64, 8, 16, 2, 3}, Case{1, 50, 16, 8, 4, 6}, Case{2, 33, 8, 4, 2, 40}}) {
    CAPTURE(c.L);
    CAPTURE(c.P);
    CAPTURE(c.W);
    compare_mixers(mixer_pair<H3>(h3_options(c.D, c.N, c.P, c.W), 11 + c.L), c.B, c.L, c.D, DType::f32, kMixerF32, gen);
  }
}

TEST_CASE("hyena mixer CUDA f32 matches the CPU in forward and backward") {
  if (!cuda_test_device()) return;
  Generator gen(1702);
  struct Case {
    int64_t B, L, D, order, l_max;
  };
  for (const Case& c : {Case{2, 37, 8, 2, 0}, Case{2, 64, 8, 1, 64}, Case{1, 45, 16, 3, 32}}) {
    CAPTURE(c.L);
    CAPTURE(c.order);
    compare_mixers(mixer_pair<Hyena>(hyena_options(c.D, c.order, c.l_max), 21 + c.L), c.B, c.L, c.D, DType::f32,
                   kMixerF32, gen);
  }
}

TEST_CASE("h3 and hyena mixers CUDA bf16 match the CPU in forward and backward") {
  if (!cuda_test_device()) return;
  Generator gen(1703);
  compare_mixers(mixer_pair<H3>(h3_options(16, 8, 2, 4), 31), 2, 40, 16, DType::bf16, kMixerBf16, gen);
  compare_mixers(mixer_pair<Hyena>(hyena_options(16, 2, 0), 32), 2, 40, 16, DType::bf16, kMixerBf16, gen);
}

// Generation on CUDA: the recurrent H3 step (f32 state, ~L roundings of a decaying sum) and
// the streaming Hyena step (direct sums over <= L taps) stay within the f32 bounds above.
TEST_CASE("h3 and hyena step on CUDA match the CPU step") {
  if (!cuda_test_device()) return;
  set_allow_tf32(false);
  Generator gen(1704);
  const int64_t B = 2, L = 20, D = 8;
  const std::vector<MixerPair> pairs = {mixer_pair<H3>(h3_options(D, 8, 2, 4), 41),
                                        mixer_pair<Hyena>(hyena_options(D, 2, 16), 42)};
  for (const MixerPair& m : pairs) {
    const Tensor x = random_tensor({B, L, D}, gen, DType::f64).to(DType::f32);
    auto sr = m.ref->init_state(B, Device::cpu(), DType::f64);
    auto sd = m.dev->init_state(B, Device::cuda(), DType::f32);
    std::vector<Tensor> yr, yd;
    for (int64_t t = 0; t < L; ++t) {
      const Tensor xt = x.select(1, t).contiguous();
      yr.push_back(m.ref->step(xt.to(DType::f64), *sr));
      yd.push_back(m.dev->step(xt.to(Device::cuda()), *sd).to(Device::cpu()));
    }
    expect_near(stack(yd, 1), stack(yr, 1), kMixerF32, "step outputs");
  }
}

}  // namespace ssmtrain
