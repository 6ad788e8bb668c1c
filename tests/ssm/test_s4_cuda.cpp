// The S4 ops and the linear scan on CUDA against the CPU ops in double precision: fft_conv
// (cuFFT), s4d_vandermonde_kernel (ZOH and bilinear), s4_dplr_kernel (Cauchy + Woodbury +
// Z2D) and linear_scan (tiled warp scan), forward and backward, on random data with odd sizes:
// L prime or not a multiple of the 32-step tile, L = 1 and 2, L past the 1024 taps of one
// Vandermonde block, channel counts not a multiple of the 32-channel block, odd and even FFT
// lengths. Every case prints a visible skip without a GPU.
//
// Setup (as in test_ssm_cuda.cpp): inputs are drawn in f64 on the host and rounded once to
// the device dtype; the reference runs the CPU op in f64 on exactly those rounded values. The
// loss is sum_i <cast(out_i, f32), W_i> with fixed random W_i representable in the output
// dtype, so both sides see identical output gradients.
//
// Tolerances, on two measures: the relative error in the 2-norm and the largest elementwise
// error relative to max |ref|.
//  - Kernel generation computes in double on both sides from the same input values; the only
//    f32 error is the final rounding of K and of the gradients, at most 2^-24 = 6e-8 of each
//    element (so of max |ref| too). The double-precision differences (tree vs sequential sums
//    over <= 1500 taps, cuFFT vs kissfft, powers by exp vs running products) are ~1e-13
//    relative. Bound 1e-6 on both measures: 16x over the rounding, while a wrong sign, index or
//    term is O(1). bf16 outputs round by up to 2^-9 = 2e-3 of each element: bound 6e-3 norm,
//    1.2e-2 max (the shared bf16 bounds). f64: 1e-10 on both (the differences above).
//  - fft_conv in f32 (cuFFT R2C/C2R, n <= 225 here): FFT rounding grows like
//    eps log2(n) ~ 6e-8 * 8 = 5e-7 of the norm, plus the f32 rounding of the inputs to the
//    transform (exact here) and of the output (6e-8). Errors of an FFT spread evenly over the
//    elements, so the worst element is a few times the rms error relative to rms |ref| <=
//    max |ref|. Bounds 2e-5 norm, 2e-4 max: >= 10x margin. f64 (D2Z/Z2D vs Eigen): 1e-10.
//  - linear_scan in f32: a state is sum_s (prod a) b_s; the warp scan forms prefix products
//    of up to 32 factors (<= 31 roundings, 2e-6 relative in the worst case, ~3e-7 typical)
//    and chains tiles through the carry, over an effective memory 1 / (1 - a) <= 50 steps
//    (a in [0.3, 0.98]), where old terms have decayed: sum |terms| / |h| ~ sqrt(50) = 7 for
//    random signs gives ~2e-6 relative typical. Same f32 bounds (2e-5, 2e-4). The gradients
//    use the saved output h (each side its own): the same estimate. bf16: 2^-9 per element of
//    outputs and gradients (shared bf16 bounds); f64: the same count in units of 1.1e-16,
//    ~1e-14: bounds 1e-11 norm, 1e-10 max.
#include <doctest/doctest.h>

#include <cmath>
#include <functional>
#include <sstream>
#include <string>
#include <vector>

#include "cuda_compare.h"
#include "gradcheck.h"
#include "ssm/kernels/linear_scan.h"
#include "ssm/kernels/s4_kernel.h"

namespace ssmtrain {
namespace {

using namespace cuda_compare;

constexpr Tolerance kConvF32{2e-5, 2e-4};
constexpr Tolerance kGenF32{1e-6, 1e-6};
constexpr Tolerance kBf16{6e-3, 1.2e-2};
constexpr Tolerance kF64{1e-10, 1e-10};
constexpr Tolerance kScanF64{1e-11, 1e-10};

// (H, N2, 2) f64 with real parts in [re_lo, re_hi) and imaginary parts in [im_lo, im_hi).
Tensor complex_values(int64_t H, int64_t N2, Generator& gen, double re_lo, double re_hi, double im_lo, double im_hi) {
  std::vector<double> v(static_cast<size_t>(H * N2 * 2));
  for (size_t i = 0; i < v.size(); i += 2) {
    v[i] = re_lo + (re_hi - re_lo) * gen.uniform();
    v[i + 1] = im_lo + (im_hi - im_lo) * gen.uniform();
  }
  return Tensor::from_vector(v, {H, N2, 2});
}

// ---- fft_conv ----

// u is taken as channels [1, 1 + H) of a (B, L, H + 3) tensor (a strided input).
OpFn conv_op(int64_t H) {
  return [H](const std::vector<Tensor>& v) { return std::vector<Tensor>{fft_conv(v[0].narrow(2, 1, H), v[1])}; };
}

std::vector<Arg> conv_args(int64_t B, int64_t L, int64_t H, DType dtype, Generator& gen) {
  return {{"u", random_tensor({B, L, H + 3}, gen, DType::f64), dtype}, {"K", random_tensor({H, L}, gen, DType::f64), dtype}};
}

// ---- kernel generation ----

std::vector<Arg> vandermonde_args(int64_t H, int64_t N2, DType dtype, Generator& gen) {
  return {{"dt", random_tensor({H}, gen, DType::f64, Device::cpu(), 0.01, 0.1), dtype},
          {"A", complex_values(H, N2, gen, -1.0, -0.05, -4, 4), dtype},
          {"B", complex_values(H, N2, gen, -1, 1, -1, 1), dtype},
          {"C", complex_values(H, N2, gen, -1, 1, -1, 1), dtype}};
}

OpFn vandermonde_op(int64_t L, S4Discretization disc) {
  return [L, disc](const std::vector<Tensor>& v) {
    return std::vector<Tensor>{s4d_vandermonde_kernel(v[0], v[1], v[2], v[3], L, disc)};
  };
}

std::vector<Arg> dplr_args(int64_t H, int64_t N2, DType dtype, Generator& gen) {
  return {{"dt", random_tensor({H}, gen, DType::f64, Device::cpu(), 0.01, 0.2), dtype},
          {"Lambda", complex_values(H, N2, gen, -1.0, -0.1, -4, 4), dtype},
          {"P", complex_values(H, N2, gen, -0.5, 0.5, -0.5, 0.5), dtype},
          {"B", complex_values(H, N2, gen, -1, 1, -1, 1), dtype},
          {"Ct", complex_values(H, N2, gen, -1, 1, -1, 1), dtype}};
}

OpFn dplr_op(int64_t L) {
  return [L](const std::vector<Tensor>& v) { return std::vector<Tensor>{s4_dplr_kernel(v[0], v[1], v[2], v[3], v[4], L)}; };
}

// ---- linear scan ----

// a is taken as channels [2, 2 + C) of a (B, L, C + 4) tensor (strided rows, read in place).
OpFn scan_op(int64_t C, bool with_h0) {
  return [C, with_h0](const std::vector<Tensor>& v) {
    return std::vector<Tensor>{linear_scan(v[0].narrow(2, 2, C), v[1], with_h0 ? v[2] : Tensor())};
  };
}

std::vector<Arg> scan_args(int64_t B, int64_t L, int64_t C, bool with_h0, DType dtype, Generator& gen) {
  return {{"a", random_tensor({B, L, C + 4}, gen, DType::f64, Device::cpu(), 0.3, 0.98), dtype},
          {"b", random_tensor({B, L, C}, gen, DType::f64), dtype},
          {"h0", with_h0 ? random_tensor({B, C}, gen, DType::f64) : Tensor(), dtype}};
}

}  // namespace

// ---------------------------------------------------------------------------------------
// fft_conv

TEST_CASE("fft_conv CUDA f32 matches the CPU in forward and backward") {
  if (!cuda_test_device()) return;
  Generator gen(601);
  // (B, L, H): L = 37 -> n = 75 (odd length), L = 64 -> n = 128, L = 100 -> n = 200,
  // L = 1 (padded to n = 2), L = 2 -> n = 3; H = 33 spans two 32-wide transpose tiles.
  struct Shape {
    int64_t B, L, H;
  };
  for (const Shape& s : {Shape{2, 37, 5}, Shape{1, 64, 33}, Shape{3, 100, 7}, Shape{3, 1, 4}, Shape{2, 2, 3}}) {
    CAPTURE(s.B);
    CAPTURE(s.L);
    CAPTURE(s.H);
    compare_with_cpu(conv_op(s.H), conv_args(s.B, s.L, s.H, DType::f32, gen), {"y"}, kConvF32, gen);
  }
}

TEST_CASE("fft_conv CUDA bf16 and f64 match the CPU in forward and backward") {
  if (!cuda_test_device()) return;
  Generator gen(602);
  compare_with_cpu(conv_op(6), conv_args(2, 45, 6, DType::bf16, gen), {"y"}, kBf16, gen);
  compare_with_cpu(conv_op(5), conv_args(2, 51, 5, DType::f64, gen), {"y"}, kF64, gen);
}

TEST_CASE("fft_conv CUDA gradients are deterministic") {
  if (!cuda_test_device()) return;
  Generator gen(603);
  const Tensor u0 = random_tensor({4, 77, 9}, gen, DType::f32), K0 = random_tensor({9, 77}, gen, DType::f32);
  std::vector<float> first_du, first_dK;
  for (int run = 0; run < 2; ++run) {
    Tensor u = u0.to(Device::cuda()).detach().requires_grad_(), K = K0.to(Device::cuda()).detach().requires_grad_();
    const Tensor y = fft_conv(u, K);
    backward(sum(mul(y, y)));
    const std::vector<float> du = u.grad().to(Device::cpu()).to_vector<float>();
    const std::vector<float> dK = K.grad().to(Device::cpu()).to_vector<float>();
    if (run == 0) {
      first_du = du, first_dK = dK;
    } else {
      CHECK(du == first_du);  // bitwise: fixed-order batch sum, no atomics
      CHECK(dK == first_dK);
    }
  }
}

// ---------------------------------------------------------------------------------------
// Kernel generation

TEST_CASE("s4d_vandermonde_kernel CUDA matches the CPU in forward and backward") {
  if (!cuda_test_device()) return;
  Generator gen(611);
  for (S4Discretization disc : {S4Discretization::zoh, S4Discretization::bilinear}) {
    // L = 1500 spans two blocks of 1024 taps with a partial group of 4 at the end; L = 1 and
    // 37 leave most of a block idle; N2 = 7 and 1.
    struct Shape {
      int64_t H, N2, L;
    };
    for (const Shape& s : {Shape{5, 7, 37}, Shape{3, 7, 1500}, Shape{2, 1, 1}, Shape{4, 3, 130}}) {
      CAPTURE(s4_discretization_name(disc));
      CAPTURE(s.H);
      CAPTURE(s.N2);
      CAPTURE(s.L);
      compare_with_cpu(vandermonde_op(s.L, disc), vandermonde_args(s.H, s.N2, DType::f32, gen), {"K"}, kGenF32, gen);
    }
  }
}

TEST_CASE("s4d_vandermonde_kernel CUDA bf16 and f64 match the CPU") {
  if (!cuda_test_device()) return;
  Generator gen(612);
  compare_with_cpu(vandermonde_op(61, S4Discretization::zoh), vandermonde_args(3, 5, DType::bf16, gen), {"K"}, kBf16,
                   gen);
  compare_with_cpu(vandermonde_op(61, S4Discretization::bilinear), vandermonde_args(3, 5, DType::f64, gen), {"K"},
                   kF64, gen);
}

TEST_CASE("s4_dplr_kernel CUDA matches the CPU in forward and backward") {
  if (!cuda_test_device()) return;
  Generator gen(613);
  // Odd L (no Nyquist bin), even L (Nyquist bin with c = 1), L = 1 (no FFT), L = 2, and
  // L = 600 (301 frequencies: two passes of a 256-thread block, most threads of the second
  // idle); N2 = 6 and 1.
  struct Shape {
    int64_t H, N2, L;
  };
  for (const Shape& s : {Shape{3, 6, 37}, Shape{2, 6, 64}, Shape{3, 4, 1}, Shape{2, 1, 2}, Shape{2, 5, 600}}) {
    CAPTURE(s.H);
    CAPTURE(s.N2);
    CAPTURE(s.L);
    compare_with_cpu(dplr_op(s.L), dplr_args(s.H, s.N2, DType::f32, gen), {"K"}, kGenF32, gen);
  }
}

TEST_CASE("s4_dplr_kernel CUDA bf16 and f64 match the CPU") {
  if (!cuda_test_device()) return;
  Generator gen(614);
  compare_with_cpu(dplr_op(45), dplr_args(2, 4, DType::bf16, gen), {"K"}, kBf16, gen);
  compare_with_cpu(dplr_op(46), dplr_args(2, 4, DType::f64, gen), {"K"}, kF64, gen);
}

TEST_CASE("s4_dplr_kernel CUDA gradients are deterministic") {
  if (!cuda_test_device()) return;
  Generator gen(615);
  const std::vector<Arg> args = dplr_args(3, 8, DType::f32, gen);
  std::vector<std::vector<float>> first;
  for (int run = 0; run < 2; ++run) {
    std::vector<Tensor> in;
    for (const Arg& a : args) in.push_back(a.values.to(DType::f32).to(Device::cuda()).detach().requires_grad_());
    const Tensor K = s4_dplr_kernel(in[0], in[1], in[2], in[3], in[4], 100);
    backward(sum(mul(K, K)));
    for (size_t i = 0; i < in.size(); ++i) {
      const std::vector<float> g = in[i].grad().to(Device::cpu()).to_vector<float>();
      if (run == 0) {
        first.push_back(g);
      } else {
        CAPTURE(args[i].name);
        CHECK(g == first[i]);
      }
    }
  }
}

TEST_CASE("S4D convolution on CUDA: fft_conv of a generated kernel matches the CPU") {
  if (!cuda_test_device()) return;
  Generator gen(616);
  // The layer's core y = fft_conv(u, K(dt, A, B, C)): gradients flow through both ops.
  const int64_t Bt = 2, L = 53, H = 6, N2 = 4;
  std::vector<Arg> args = vandermonde_args(H, N2, DType::f32, gen);
  args.push_back({"u", random_tensor({Bt, L, H}, gen, DType::f64), DType::f32});
  const OpFn op = [L](const std::vector<Tensor>& v) {
    return std::vector<Tensor>{fft_conv(v[4], s4d_vandermonde_kernel(v[0], v[1], v[2], v[3], L, S4Discretization::zoh))};
  };
  compare_with_cpu(op, args, {"y"}, kConvF32, gen);
}

TEST_CASE("S4 kernel generation on CUDA reports too many modes") {
  if (!cuda_test_device()) return;
  Generator gen(617);
  const Device dev = Device::cuda();
  const Tensor dt = random_tensor({1}, gen, DType::f32, dev, 0.01, 0.1);
  const Tensor m = random_tensor({1, 1025, 2}, gen, DType::f32, dev);
  CHECK(user_error_of([&] { s4_dplr_kernel(dt, m, m, m, m, 4); }).find("1024") != std::string::npos);
  CHECK(user_error_of([&] { s4d_vandermonde_kernel(dt, m, m, m, 4, S4Discretization::zoh); }).find("1024") !=
        std::string::npos);
}

// ---------------------------------------------------------------------------------------
// linear_scan

TEST_CASE("linear_scan CUDA matches the CPU in forward and backward") {
  if (!cuda_test_device()) return;
  Generator gen(621);
  // L = 100: three full 32-step tiles and a tail of 4; L = 32 exactly one tile; L = 1;
  // C = 45: a second channel block with 13 live channels; C = 70: three blocks.
  struct Shape {
    int64_t B, L, C;
  };
  for (const Shape& s : {Shape{2, 100, 45}, Shape{1, 32, 70}, Shape{3, 1, 5}, Shape{2, 67, 32}}) {
    for (bool with_h0 : {true, false}) {
      CAPTURE(s.B);
      CAPTURE(s.L);
      CAPTURE(s.C);
      CAPTURE(with_h0);
      compare_with_cpu(scan_op(s.C, with_h0), scan_args(s.B, s.L, s.C, with_h0, DType::f32, gen), {"h"}, kConvF32,
                       gen);
    }
  }
}

TEST_CASE("linear_scan CUDA bf16 and f64 match the CPU") {
  if (!cuda_test_device()) return;
  Generator gen(622);
  compare_with_cpu(scan_op(37, true), scan_args(2, 75, 37, true, DType::bf16, gen), {"h"}, kBf16, gen);
  compare_with_cpu(scan_op(37, true), scan_args(2, 75, 37, true, DType::f64, gen), {"h"}, kScanF64, gen);
}

TEST_CASE("linear_scan CUDA carries the state across many tiles") {
  if (!cuda_test_device()) return;
  // a = 1, b = 1: h_t = t + 1 exactly in f32 for t < 2^24, through 63 tile carries.
  const int64_t L = 2000, C = 3;
  const Tensor ones = Tensor::from_vector(std::vector<double>(L * C, 1.0), {1, L, C}).to(DType::f32);
  const std::vector<float> h = linear_scan(ones.to(Device::cuda()), ones.to(Device::cuda())).to(Device::cpu()).to_vector<float>();
  bool exact = true;
  for (int64_t t = 0; t < L; ++t)
    for (int64_t c = 0; c < C; ++c) exact = exact && h[t * C + c] == static_cast<float>(t + 1);
  CHECK(exact);
}

TEST_CASE("linear_scan CUDA gradient of h0 through an empty sequence is zero") {
  if (!cuda_test_device()) return;
  Generator gen(623);
  const Device dev = Device::cuda();
  const Tensor a = Tensor::empty({2, 0, 3}, DType::f32, dev), b = Tensor::empty({2, 0, 3}, DType::f32, dev);
  Tensor h0 = random_tensor({2, 3}, gen, DType::f32, dev).detach().requires_grad_();
  const Tensor h = linear_scan(a, b, h0);
  CHECK(h.numel() == 0);
  backward(add(sum(h), sum(mul(h0, 0.0))));
  const std::vector<float> g = h0.grad().to(Device::cpu()).to_vector<float>();
  CHECK(g == std::vector<float>(6, 0.f));
}

}  // namespace ssmtrain
