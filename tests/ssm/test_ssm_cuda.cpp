// The SSM ops on CUDA against the CPU ops in double precision: selective scan (fused CUDA
// kernels), SSD (the composed chunked algorithm) and causal conv1d (direct kernels),
// forward and backward, f32 and bf16, on random data with odd sizes (L not a multiple of
// the 32-step tile or of the chunk, channel counts not a multiple of the 32-channel block).
// CUDA cases print a visible skip without a GPU. The composed SSD and conv, which are the
// CUDA algorithms of those ops, are also checked against the hand-written ops on the CPU,
// so that part runs everywhere.
//
// How the comparisons are set up: inputs are drawn in f64 on the host and rounded once to
// the device dtype; the CPU reference runs the op in f64 on exactly those rounded values
// (so input rounding is not part of the error). The loss is sum_i <cast(out_i, f32), W_i>
// with fixed random W_i that are representable in the output dtype, so the output
// gradients the backward sees are identical on both sides too.
//
// Tolerances. Two measures per tensor: the relative error in the 2-norm,
// |got - ref| / |ref|, and the largest elementwise error relative to max |ref| (which
// catches a few wrong elements that the norm would dilute).
//  - f32: the recurrences decay (|a| < 1), so a rounding error made at one step fades and the
//    error of a state stays a few ulp of its magnitude times the effective memory
//    1 / (1 - a) (< ~50 steps here); __expf adds ~2 ulp. The largest sums are the parameter
//    gradients (dA, dD, dbias over B*L <= 250 terms): worst case L*eps = 250 * 6e-8 = 1.5e-5,
//    typically sqrt(L)*eps. Bounds: 2e-5 relative norm, 2e-4 of max |ref| elementwise,
//    roughly 10x over those estimates, far below what a wrong index, factor or missing term
//    gives (O(1)).
//  - bf16: arithmetic is fp32 on both sides, so the difference is dominated by the final
//    rounding of bf16 outputs and sequence gradients: at most 2^-9 = 2e-3 relative per
//    element. Bounds: 6e-3 relative norm and 1.2e-2 of max |ref| elementwise (an element
//    near the max rounds by up to 2e-3 of it; the rest is fp32 noise and margin).
//  - SSD composed (f32 cuBLAS, TF32 off by default): the same fp32 analysis with sums over
//    a chunk (Q = 16) and exponentials of differences of chunk cumsums (|cumsum| < 25,
//    absolute exponent error 25 * 6e-8 = 1.5e-6): the f32 bounds above apply; bf16 inputs
//    are computed in f32 and only y is rounded, so the bf16 bounds apply.
#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <functional>
#include <initializer_list>
#include <sstream>
#include <string>
#include <vector>

#include "cuda_compare.h"
#include "scan_variants.h"
#include "ssd_packed_check.h"
#include "gradcheck.h"
#include "ssm/kernels/causal_conv1d.h"
#include "ssm_reference.h"
#include "ssm/kernels/selective_scan.h"
#include "ssm/kernels/gated_norm.h"
#include "ssm/kernels/ssd.h"
#include "ssm/kernels/ssd_composed.h"

namespace ssmtrain {
namespace {

using namespace cuda_compare;
using testing::check_scan_variants_bitwise;

constexpr Tolerance kF32{2e-5, 2e-4};
constexpr Tolerance kBf16{6e-3, 1.2e-2};
// The fused SSD kernels round the scaled operands of their products to bf16 (w o B, the
// masked score tiles, the states), as the official kernels do: unit roundoff u = 2^-8 =
// 3.9e-3 per rounded operand (8 significant bits), and a rounding error of RMS u / sqrt(3) =
// 2.3e-3 relative when the errors of the many elements are independent, as they are on
// random data. A gradient passes through at most three such roundings plus its own output
// rounding (e.g. dB: the score tile W rounded, the product with C, the states G_c, the bf16
// output), so its relative error in the 2-norm is about sqrt(4) x 2.3e-3 = 4.5e-3; the bound
// 1e-2 leaves about 2x. Elementwise, the worst element of a sum of hundreds of terms can
// reach several times the norm figure relative to max |ref|. Sums of a gradient over the
// sequence (ddt_bias) are checked by what the summands' bound implies (cuda_compare.h).
constexpr Tolerance kSsdFused{1e-2, 3e-2};
Tolerance tolerance_for(DType t) { return t == DType::bf16 ? kBf16 : kF32; }

// ---- selective scan ----

struct ScanShape {
  int64_t B, L, D, N, G;
  bool skip, gate, bias, softplus, initial;
};

std::vector<Arg> scan_args(const ScanShape& s, DType dtype, Generator& gen) {
  const int64_t B = s.B, L = s.L, D = s.D, N = s.N, G = s.G;
  std::vector<Arg> a;
  a.push_back({"u", random_tensor({B, L, D}, gen, DType::f64), dtype});
  a.push_back({"delta",
               s.softplus ? random_tensor({B, L, D}, gen, DType::f64, Device::cpu(), -1.5, 0.5)
                          : random_tensor({B, L, D}, gen, DType::f64, Device::cpu(), 0.05, 0.6),
               dtype});
  a.push_back({"A", random_tensor({D, N}, gen, DType::f64, Device::cpu(), -1.5, -0.2), DType::f32});
  a.push_back({"Bm", random_tensor({B, L, G, N}, gen, DType::f64), dtype});
  a.push_back({"Cm", random_tensor({B, L, G, N}, gen, DType::f64), dtype});
  a.push_back({"Dskip", s.skip ? random_tensor({D}, gen, DType::f64) : Tensor(), DType::f32});
  a.push_back({"z", s.gate ? random_tensor({B, L, D}, gen, DType::f64, Device::cpu(), -2, 2) : Tensor(), dtype});
  a.push_back({"delta_bias", s.bias ? random_tensor({D}, gen, DType::f64, Device::cpu(), -0.3, 0.3) : Tensor(),
               DType::f32});
  a.push_back({"h0", s.initial ? random_tensor({B, D, N}, gen, DType::f64) : Tensor(), DType::f32});
  return a;
}

OpFn scan_op(bool softplus) {
  return [softplus](const std::vector<Tensor>& v) {
    const SelectiveScanResult r = selective_scan(v[0], v[1], v[2], v[3], v[4], v[5], v[6], v[7], softplus, v[8]);
    return std::vector<Tensor>{r.out, r.h_last};
  };
}

// body(dtype, shape) for f32 and bf16 over `shapes`, both named in any failure.
template <typename Body>
void for_each_dtype_and_shape(const std::vector<ScanShape>& shapes, Body body) {
  for (DType dtype : {DType::f32, DType::bf16})
    for (const ScanShape& s : shapes) {
      CAPTURE(dtype_name(dtype));
      CAPTURE(s.L);
      CAPTURE(s.N);
      body(dtype, s);
    }
}

// ---- SSD ----

struct SsdShape {
  int64_t B, L, H, P, G, N, Q;
  bool options;         // D, dt_bias, softplus and h0
  bool rising = false;  // A in (-0.1, 0.1): heads whose cs rises (A > 0) beside falling ones
};

std::vector<Arg> ssd_args(const SsdShape& s, DType dtype, Generator& gen) {
  const int64_t B = s.B, L = s.L, H = s.H, P = s.P, G = s.G, N = s.N;
  std::vector<Arg> a;
  a.push_back({"x", random_tensor({B, L, H, P}, gen, DType::f64), dtype});
  a.push_back({"dt",
               s.options ? random_tensor({B, L, H}, gen, DType::f64, Device::cpu(), -1.5, 0.5)
                         : random_tensor({B, L, H}, gen, DType::f64, Device::cpu(), 0.05, 0.6),
               dtype});
  a.push_back({"A", random_tensor({H}, gen, DType::f64, Device::cpu(), s.rising ? -0.1 : -1.5, s.rising ? 0.1 : -0.2),
               DType::f32});
  if (s.rising) {  // the case is meant to hold heads of both signs
    const std::vector<double> A = a.back().values.to_vector<double>();
    REQUIRE((*std::min_element(A.begin(), A.end()) < 0 && *std::max_element(A.begin(), A.end()) > 0));
  }
  a.push_back({"Bm", random_tensor({B, L, G, N}, gen, DType::f64), dtype});
  a.push_back({"Cm", random_tensor({B, L, G, N}, gen, DType::f64), dtype});
  a.push_back({"D", s.options ? random_tensor({H}, gen, DType::f64) : Tensor(), DType::f32});
  a.push_back({"dt_bias", s.options ? random_tensor({H}, gen, DType::f64, Device::cpu(), -0.3, 0.3) : Tensor(),
               DType::f32, true, /*sum_of=*/1});  // ddt_bias = ddt summed over (B, L)
  a.push_back({"h0", s.options ? random_tensor({B, H, P, N}, gen, DType::f64) : Tensor(), DType::f32});
  return a;
}

OpFn ssd_op(bool softplus, int64_t Q) {
  return [softplus, Q](const std::vector<Tensor>& v) {
    const SsdResult r = ssd_chunked(v[0], v[1], v[2], v[3], v[4], v[5], v[6], softplus, Q, v[7]);
    return std::vector<Tensor>{r.y, r.h_last};
  };
}

// Packed documents: seq_idx (B, L) i32 on the CPU whose row b restarts at the positions
// starts[b % starts.size()] that lie inside the row.
Tensor packed_seq_idx(int64_t B, int64_t L, const std::vector<std::vector<int64_t>>& starts) {
  std::vector<int32_t> v;
  for (int64_t b = 0; b < B; ++b) {
    int32_t doc = static_cast<int32_t>(b);
    for (int64_t t = 0; t < L; ++t) {
      for (int64_t s : starts[b % starts.size()]) doc += s == t;
      v.push_back(doc);
    }
  }
  return Tensor::from_vector(v, {B, L});
}

OpFn ssd_packed_op(bool softplus, int64_t Q, const Tensor& seq_idx) {
  return [softplus, Q, seq_idx](const std::vector<Tensor>& v) {
    const SsdResult r =
        ssd_chunked(v[0], v[1], v[2], v[3], v[4], v[5], v[6], softplus, Q, v[7], seq_idx.to(v[0].device()));
    return std::vector<Tensor>{r.y, r.h_last};
  };
}

// ssd_chunked on CUDA against the CPU for each shape, its inputs in `dtype`; with `starts`,
// on packed documents restarting there.
void compare_ssd_with_cpu(std::initializer_list<SsdShape> shapes, DType dtype, const Tolerance& tol, Generator& gen,
                          const std::vector<std::vector<int64_t>>& starts = {}) {
  for (const SsdShape& s : shapes) {
    CAPTURE(s.L);
    CAPTURE(s.P);
    CAPTURE(s.N);
    CAPTURE(s.Q);
    const OpFn op = starts.empty() ? ssd_op(s.options, s.Q)
                                   : ssd_packed_op(s.options, s.Q, packed_seq_idx(s.B, s.L, starts));
    compare_with_cpu(op, ssd_args(s, dtype, gen), {"y", "h_last"}, tol, gen);
  }
}

// ---- causal conv ----

// x is taken as channels [3, 3 + C) of a wider (B, L, C + 5) tensor: strided batch and
// time axes, which the kernels read in place.
// x is a channel slice [offset, offset + C) of a (B, L, C + extra) tensor.
OpFn conv_op(int64_t C, bool silu, int64_t offset = 3) {
  return [C, silu, offset](const std::vector<Tensor>& v) {
    const CausalConv1dResult r = causal_conv1d(v[0].narrow(2, offset, C), v[1], v[2], silu, v[3]);
    return std::vector<Tensor>{r.out, r.final_state};
  };
}

std::vector<Arg> conv_args(int64_t B, int64_t L, int64_t C, int64_t K, bool bias, bool state, DType dtype,
                           Generator& gen, int64_t extra = 5) {
  std::vector<Arg> a;
  a.push_back({"x", random_tensor({B, L, C + extra}, gen, DType::f64), dtype});
  a.push_back({"weight", random_tensor({C, K}, gen, DType::f64), DType::f32});
  a.push_back({"bias", bias ? random_tensor({C}, gen, DType::f64) : Tensor(), DType::f32});
  a.push_back({"initial_state", state ? random_tensor({B, C, K - 1}, gen, DType::f64) : Tensor(), dtype});
  return a;
}

}  // namespace

// ---------------------------------------------------------------------------------------
// The composed algorithms (the CUDA paths of SSD and of the conv fallback) on the CPU, in
// f64 against the hand-written ops: both are exact algorithms, so they agree to rounding
// (1e-10 relative leaves 10^5 ulp of margin for the chunk sums, yet any algebra slip fails).

// expect_bias_gradient (cuda_compare.h) on host data, so that CI runs it: a cancelling sum of
// bf16-rounded summands with its exact f32 total passes; the same total with one summand
// left out, or off the reference by more than the summands' bound allows, fails.
namespace {
struct BiasCase {
  Tensor g, gb, g_ref, gb_ref;
};
BiasCase bias_case(Generator& gen) {
  const int64_t n = 600, C = 4;
  BiasCase c;
  c.g_ref = random_tensor({n, C}, gen, DType::f64);
  c.g = c.g_ref.to(DType::bf16);  // the device's summands, rounded
  c.gb_ref = sum(c.g_ref, {0});
  c.gb = sum(c.g_ref.to(DType::f32), {0}).to(DType::f64);  // summed before the rounding, in f32
  return c;
}
}  // namespace

TEST_CASE("the bias-gradient check passes an exact reduction of the summands") {
  Generator gen(530);
  const BiasCase c = bias_case(gen);
  expect_bias_gradient(c.gb, c.g, c.gb_ref, c.g_ref, kSsdFused.rel_norm, "dbias");
}

TEST_CASE("the bias-gradient check fails a reduction that drops a summand" * doctest::should_fail()) {
  Generator gen(530);
  BiasCase c = bias_case(gen);
  // A reduction that skips one 64-step tile: off by a sum of 64 uniform(-1, 1) values per
  // channel (standard deviation sqrt(64 / 3) = 4.6), where the identity's bound is
  // u sum |g| = 2^-8 x 600 x 0.5 = 1.2; the bound from the summands' check (7.0) does not
  // see it, the identity does.
  c.gb = sub(c.gb, sum(c.g_ref.narrow(0, 0, 64).to(DType::f32), {0}).to(DType::f64));
  expect_bias_gradient(c.gb, c.g, c.gb_ref, c.g_ref, kSsdFused.rel_norm, "dbias");
}

TEST_CASE("ssd composed chunked algorithm matches the hand-written op on the CPU") {
  Generator gen(501);
  for (bool options : {false, true}) {
    CAPTURE(options);
    const SsdShape s{2, 37, 4, 3, 2, 5, 8, options};
    std::vector<Arg> args = ssd_args(s, DType::f64, gen);
    std::vector<Tensor> a(args.size()), b(args.size());
    for (size_t i = 0; i < args.size(); ++i) {
      if (!args[i].values.defined()) continue;
      a[i] = args[i].values.clone().detach().requires_grad_();
      b[i] = args[i].values.clone().detach().requires_grad_();
    }
    // backward() consumes the whole tape: one forward and backward at a time.
    const SsdResult op = ssd_chunked(a[0], a[1], a[2], a[3], a[4], a[5], a[6], options, s.Q, a[7]);
    const Tensor wy = random_tensor(op.y.shape(), gen, DType::f64);
    const Tensor wh = random_tensor(op.h_last.shape(), gen, DType::f64);
    backward(add(sum(mul(op.y, wy)), sum(mul(op.h_last, wh))));
    const auto [y, h_last] = ssd_chunked_composed(b[0], b[1], b[2], b[3], b[4], b[5], b[6], options, s.Q, b[7]);
    backward(add(sum(mul(y, wy)), sum(mul(h_last, wh))));
    check_close(y, op.y, 1e-10, 1e-12, "y");
    check_close(h_last, op.h_last, 1e-10, 1e-12, "h_last");
    for (size_t i = 0; i < args.size(); ++i) {
      if (!a[i].defined()) continue;
      CAPTURE(args[i].name);
      check_close(b[i].grad(), a[i].grad(), 1e-10, 1e-12, "gradient");
    }
  }
}

TEST_CASE("causal conv composed form matches the hand-written op on the CPU") {
  Generator gen(502);
  for (int64_t K : {1, 2, 4}) {
    CAPTURE(K);
    const Tensor x = random_tensor({2, 11, 5}, gen, DType::f64), w = random_tensor({5, K}, gen, DType::f64);
    const Tensor bias = random_tensor({5}, gen, DType::f64);
    check_close(causal_conv1d_composed(x, w, bias, true), causal_conv1d(x, w, bias, true).out, 1e-12, 1e-13, "out");
  }
}

// ---------------------------------------------------------------------------------------
// Selective scan on CUDA.

TEST_CASE("selective_scan CUDA f32 matches the CPU in forward and backward") {
  if (!cuda_test_device()) return;
  Generator gen(511);
  // (B, L, D, N, G, options): L = 100 and 33 cross 32-step tiles with a tail; D = 40 in two
  // groups of 20 and D = 70 (blocks of 32, 32, 6) leave idle channels in a block; N = 1, 3,
  // 5, 16, 32 cover 1, 2 and 8 states per lane and padded lanes.
  const ScanShape shapes[] = {
      {2, 100, 40, 16, 2, true, true, true, true, true},   {1, 33, 70, 5, 1, false, false, false, false, false},
      {2, 45, 36, 32, 3, true, false, true, true, false},  {3, 64, 8, 1, 1, false, true, false, true, true},
      {1, 7, 50, 3, 5, true, true, true, false, true},
      // Few channels and long sequences: time segments scanned in parallel, with the carry
      // passes. L = 1700: 3 segments (576, 576, 548 steps) forward and backward; L = 1100:
      // 2 segments (576, 524) in the backward only (set_segments' cost model keeps one in
      // the forward, where a second would not pay for its summary pass).
      {1, 1700, 24, 16, 2, true, true, true, true, true},  {2, 1100, 8, 5, 1, false, false, false, false, false},
  };
  for (const ScanShape& s : shapes) {
    CAPTURE(s.L);
    CAPTURE(s.D);
    CAPTURE(s.N);
    CAPTURE(s.G);
    compare_with_cpu(scan_op(s.softplus), scan_args(s, DType::f32, gen), {"out", "h_last"}, kF32, gen);
  }
}

TEST_CASE("selective_scan CUDA bf16 matches the CPU in forward and backward") {
  if (!cuda_test_device()) return;
  Generator gen(512);
  for (const ScanShape& s : {ScanShape{2, 77, 44, 16, 2, true, true, true, true, true},
                             ScanShape{1, 1300, 16, 16, 1, true, true, true, true, true}}) {  // 2 backward segments
    CAPTURE(s.L);
    compare_with_cpu(scan_op(true), scan_args(s, DType::bf16, gen), {"out", "h_last"}, kBf16, gen);
  }
}

// B and C as column blocks of one wider (B, L, R + 2 G N) tensor, as Mamba takes them from
// its x_proj output: the kernels read them at that tensor's strides (no copy), and their
// gradients reach it through the split.
TEST_CASE("selective_scan CUDA reads B and C as strided views of a wider tensor") {
  if (!cuda_test_device()) return;
  Generator gen(514);
  for_each_dtype_and_shape(
      {ScanShape{2, 77, 44, 16, 2, true, true, true, true, true},
       ScanShape{1, 40, 36, 5, 1, false, false, false, false, false}},
      [&](DType dtype, const ScanShape& s) {
        const int64_t R = 7, GN = s.G * s.N;
        std::vector<Arg> args = scan_args(s, dtype, gen);
        // args: u, delta, A, Bm, Cm, Dskip, z, delta_bias, h0 -> Bm and Cm replaced by one wide tensor
        args[3] = {"wide", random_tensor({s.B, s.L, R + 2 * GN}, gen, DType::f64), dtype};
        args.erase(args.begin() + 4);
        const OpFn op = [s, R, GN](const std::vector<Tensor>& v) {
          auto parts = v[3].split({R, GN, GN}, -1);
          const Tensor Bm = parts[1].view({s.B, s.L, s.G, s.N}), Cm = parts[2].view({s.B, s.L, s.G, s.N});
          CHECK(!Bm.is_contiguous());
          const SelectiveScanResult r = selective_scan(v[0], v[1], v[2], Bm, Cm, v[4], v[5], v[6], s.softplus, v[7]);
          return std::vector<Tensor>{r.out, r.h_last};
        };
        compare_with_cpu(op, args, {"out", "h_last"}, tolerance_for(dtype), gen);
      });
}

// The inputs of args on the GPU, in their dtypes (undefined where args has none), and the
// shapes the bitwise scan-variant cases run: L = 1700 with 24 channels takes the segmented
// passes.
std::vector<Tensor> cuda_inputs(const std::vector<Arg>& args) {
  std::vector<Tensor> x;
  for (const Arg& a : args) x.push_back(a.values.defined() ? a.values.to(a.dtype).to(Device::cuda()) : Tensor());
  return x;
}
const std::vector<ScanShape> kVariantShapes = {ScanShape{2, 100, 40, 16, 2, true, true, true, true, true},
                                               ScanShape{1, 1700, 24, 16, 2, true, true, true, true, true}};

// A_is_log on the GPU: every kernel that reads A (forward, backward, both summary passes and
// the carry of time segments) applies -exp itself, and the dA reduction multiplies by A:
// bitwise the composed -exp(A_log) on the same device (expf in both), and within the usual
// tolerance of the CPU. L = 1700 with 24 channels takes the segmented passes.
TEST_CASE("selective_scan CUDA with A given as log(-A) equals the composed -exp(A_log) bitwise") {
  if (!cuda_test_device()) return;
  Generator gen(515);
  for_each_dtype_and_shape(
      kVariantShapes, [&](DType dtype, const ScanShape& s) {
        std::vector<Arg> args = scan_args(s, dtype, gen);
        args[2] = {"A_log", random_tensor({s.D, s.N}, gen, DType::f64, Device::cpu(), -1.5, 1.0), DType::f32};
        const OpFn fused = [softplus = s.softplus](const std::vector<Tensor>& v) {
          const SelectiveScanResult r =
              selective_scan(v[0], v[1], v[2], v[3], v[4], v[5], v[6], v[7], softplus, v[8], Tensor(), true);
          return std::vector<Tensor>{r.out, r.h_last};
        };
        compare_with_cpu(fused, args, {"out", "h_last"}, tolerance_for(dtype), gen);
        check_scan_variants_bitwise(
            cuda_inputs(args), random_tensor({s.B, s.L, s.D}, gen, DType::f32).to(Device::cuda()),
            [&](const std::vector<Tensor>& x, int fused_form) {
              return fused_form
                         ? selective_scan(x[0], x[1], x[2], x[3], x[4], x[5], x[6], x[7], s.softplus, x[8], Tensor(),
                                          true)
                         : selective_scan(x[0], x[1], -exp(x[2]), x[3], x[4], x[5], x[6], x[7], s.softplus, x[8]);
            });
      });
}

// recompute_delta on the GPU: the backward runs the dt_proj product again (cuBLAS, the same
// shapes and operands, hence the same algorithm and bits) instead of keeping delta; every
// output and gradient equals the run that keeps delta, bit for bit.
TEST_CASE("selective_scan CUDA with recompute_delta equals keeping delta bitwise") {
  if (!cuda_test_device()) return;
  Generator gen(516);
  for_each_dtype_and_shape(
      kVariantShapes, [&](DType dtype, const ScanShape& s) {
        std::vector<Arg> args = scan_args(s, dtype, gen);
        const int64_t R = 6;
        args[1] = {"dt_low", random_tensor({s.B, s.L, R}, gen, DType::f64, Device::cpu(), -1.0, 1.0), dtype};
        args.push_back({"w_dt", random_tensor({s.D, R}, gen, DType::f64, Device::cpu(), -0.5, 0.5), DType::f32});
        // args: u, dt_low, A, Bm, Cm, Dskip, z, delta_bias, h0, w_dt
        check_scan_variants_bitwise(
            cuda_inputs(args), random_tensor({s.B, s.L, s.D}, gen, DType::f32).to(Device::cuda()),
            [&](const std::vector<Tensor>& x, int remat) {
              std::function<Tensor()> again;
              if (remat) again = [a = x[1].detach(), b = x[9].detach()] { return linear(a, b); };
              return selective_scan(x[0], linear(x[1], x[9]), x[2], x[3], x[4], x[5], x[6], x[7], s.softplus, x[8],
                                    Tensor(), false, again);
            });
      });
}

// The LTI block (mixer mamba_lti) passes B and C as one (N) vector expanded over batch and
// sequence: strides 0, which the CUDA kernels' row reads cannot take as they are. In f32
// against the CPU; in both dtypes bitwise against the same values materialised densely.
// (bf16 is not held to the CPU here: the gradient of the broadcast rows is a sum over every
// position, which random data makes cancel; the per-position gradients are checked above.)
TEST_CASE("selective_scan CUDA takes B and C broadcast over batch and sequence") {
  if (!cuda_test_device()) return;
  Generator gen(517);
  for_each_dtype_and_shape(
      {ScanShape{2, 77, 44, 16, 1, true, true, true, true, true}, ScanShape{3, 40, 36, 5, 2, false, false, false, false, false}},
      [&](DType dtype, const ScanShape& s) {
        std::vector<Arg> args = scan_args(s, dtype, gen);
        // args: u, delta, A, Bm, Cm, Dskip, z, delta_bias, h0 -> Bm and Cm replaced by (G, N) rows
        args[3] = {"B_rows", random_tensor({s.G, s.N}, gen, DType::f64), dtype};
        args[4] = {"C_rows", random_tensor({s.G, s.N}, gen, DType::f64), dtype};
        auto run = [s](const std::vector<Tensor>& v, bool dense) {
          Tensor Bm = v[3].reshape({1, 1, s.G, s.N}).expand({s.B, s.L, s.G, s.N});
          Tensor Cm = v[4].reshape({1, 1, s.G, s.N}).expand({s.B, s.L, s.G, s.N});
          if (dense) Bm = Bm.contiguous(), Cm = Cm.contiguous();
          else CHECK(Bm.strides()[1] == 0);
          return selective_scan(v[0], v[1], v[2], Bm, Cm, v[5], v[6], v[7], s.softplus, v[8]);
        };
        if (dtype == DType::f32) {
          const OpFn op = [run](const std::vector<Tensor>& v) {
            const SelectiveScanResult r = run(v, false);
            return std::vector<Tensor>{r.out, r.h_last};
          };
          compare_with_cpu(op, args, {"out", "h_last"}, kF32, gen);
        }
        check_scan_variants_bitwise(cuda_inputs(args), random_tensor({s.B, s.L, s.D}, gen, DType::f32).to(Device::cuda()),
                                    [&](const std::vector<Tensor>& x, int dense) { return run(x, dense != 0); });
      });
}

TEST_CASE("selective_scan CUDA gradients are deterministic") {
  if (!cuda_test_device()) return;
  Generator gen(513);
  for (const ScanShape& s : {ScanShape{3, 70, 96, 16, 1, true, true, true, true, true},
                             ScanShape{1, 1100, 16, 16, 1, true, true, true, true, true}}) {  // 2 backward segments
    CAPTURE(s.L);
    const std::vector<Arg> args = scan_args(s, DType::f32, gen);
    std::vector<std::vector<double>> first;
    for (int run = 0; run < 2; ++run) {
      std::vector<Tensor> in(args.size());
      for (size_t i = 0; i < args.size(); ++i)
        in[i] = args[i].values.to(DType::f32).to(Device::cuda()).detach().requires_grad_();
      const std::vector<Tensor> out = scan_op(true)(in);
      backward(add(sum(out[0]), sum(mul(out[1], out[1]))));
      for (size_t i = 0; i < in.size(); ++i) {
        const std::vector<double> g = in[i].grad().to_vector<double>();
        if (run == 0) {
          first.push_back(g);
        } else {
          CAPTURE(args[i].name);
          CHECK(g == first[i]);  // bitwise: fixed reduction order, no atomics
        }
      }
    }
  }
}

TEST_CASE("selective_scan CUDA reports unsupported shapes and dtypes") {
  if (!cuda_test_device()) return;
  Generator gen(514);
  const Device dev = Device::cuda();
  auto run = [&](int64_t N, DType dtype) {
    const Tensor u = random_tensor({1, 5, 4}, gen, dtype, dev), A = random_tensor({4, N}, gen, DType::f32, dev);
    const Tensor Bm = random_tensor({1, 5, 1, N}, gen, dtype, dev);
    selective_scan(u, u, A, Bm, Bm);
  };
  CHECK(user_error_of([&] { run(33, DType::f32); }).find("N = 33") != std::string::npos);
  CHECK(user_error_of([&] { run(8, DType::f64); }).find("f32 or bf16") != std::string::npos);
}

TEST_CASE("selective_scan and ssd on CUDA pass the state through an empty sequence") {
  if (!cuda_test_device()) return;
  Generator gen(515);
  const Device dev = Device::cuda();
  {
    const Tensor u = Tensor::empty({2, 0, 5}, DType::f32, dev), Bm = Tensor::empty({2, 0, 1, 3}, DType::f32, dev);
    const Tensor A = random_tensor({5, 3}, gen, DType::f32, dev, -1.5, -0.2), h0 = random_tensor({2, 5, 3}, gen,
                                                                                                  DType::f32, dev);
    const SelectiveScanResult r = selective_scan(u, u, A, Bm, Bm, Tensor(), Tensor(), Tensor(), false, h0);
    CHECK(r.out.numel() == 0);
    CHECK(r.h_last.to(Device::cpu()).to_vector<float>() == h0.to(Device::cpu()).to_vector<float>());
  }
  {
    const Tensor x = Tensor::empty({2, 0, 4, 3}, DType::f32, dev), dt = Tensor::empty({2, 0, 4}, DType::f32, dev);
    const Tensor Bm = Tensor::empty({2, 0, 1, 2}, DType::f32, dev);
    const Tensor A = random_tensor({4}, gen, DType::f32, dev, -1.5, -0.2);
    const Tensor h0 = random_tensor({2, 4, 3, 2}, gen, DType::f32, dev);
    const SsdResult r = ssd_chunked(x, dt, A, Bm, Bm, Tensor(), Tensor(), false, 16, h0);
    CHECK(r.y.numel() == 0);
    CHECK(r.h_last.to(Device::cpu()).to_vector<float>() == h0.to(Device::cpu()).to_vector<float>());
  }
}

// ---------------------------------------------------------------------------------------
// SSD on CUDA (composed chunked algorithm).

TEST_CASE("ssd_chunked CUDA f32 matches the CPU in forward and backward") {
  if (!cuda_test_device()) return;
  Generator gen(521);
  // L = 45 with Q = 16: two full chunks and a tail of 13; H = 4 heads in G = 2 groups.
  compare_ssd_with_cpu({{2, 45, 4, 8, 2, 8, 16, true}, {1, 19, 3, 5, 1, 6, 32, false}}, DType::f32, kF32, gen);
}

TEST_CASE("ssd_chunked CUDA bf16 matches the CPU in forward and backward") {
  if (!cuda_test_device()) return;
  Generator gen(522);
  compare_ssd_with_cpu({{2, 40, 4, 8, 1, 8, 16, true}}, DType::bf16, kBf16, gen);
}

// The fused bf16 kernels (ssd_cuda.h) over the shapes that exercise their tiling: chunks of
// several 64-step tiles, Q not a multiple of 64, a tail shorter than Q, G = 2, headdim and
// d_state padded to the kernels' sizes (40 -> 64, 96 -> 128, 24 -> 64, 160 -> 256) and at
// their maxima, with and without D, dt_bias, softplus and h0.
TEST_CASE("ssd_chunked fused CUDA kernels (bf16) match the CPU over their tilings") {
  if (!cuda_test_device()) return;
  Generator gen(523);
  compare_ssd_with_cpu(
      {
          {2, 300, 4, 64, 2, 128, 256, true},  // 1 chunk + a tail of 44, 4 tiles per chunk, 2 groups (a head pair)
          {1, 200, 3, 40, 1, 24, 100, false},  // Q = 100: tiles of 64 + 36; P, N padded; a pair and a lone head
          {1, 130, 2, 128, 1, 256, 64, true},  // the largest headdim and state
          {2, 77, 4, 96, 2, 160, 128, true},   // a single short chunk; padded to 128 x 256
          // 8 heads in one group: dB, dC summed 8 heads a block, 2 at a time, final in the block (bf16)
          {1, 150, 8, 32, 1, 64, 128, false},
          {1, 90, 8, 64, 2, 128, 64, true},    // 4 heads per group, one block per group
          {1, 140, 12, 32, 1, 64, 128, true},  // 12 heads in one group: 6 a block, two f32 parts summed
          // headdim 128 at d_state 128: the mma.sync dB, dC kernels a head at a time
          {1, 200, 4, 128, 1, 128, 128, true},
          // A of either sign (and dt without softplus, > 0): heads whose cs rises have decays
          // above 1 off the diagonal, beside heads whose decays fall.
          {2, 300, 6, 64, 2, 128, 256, false, true},
      },
      DType::bf16, kSsdFused, gen);
}

// Packed documents (seq_idx): restarts at the second step, at the first and last step of a
// 64-step tile and of a chunk, mid-tile, one-step documents, and at the very last step,
// different in each row; the fused kernels (bf16) and the composed path (f32).
TEST_CASE("ssd_chunked CUDA with seq_idx matches the CPU in forward and backward") {
  if (!cuda_test_device()) return;
  Generator gen(526);
  const std::vector<std::vector<int64_t>> starts = {{1, 63, 64, 150, 151, 256, 299}, {10, 99, 100, 128, 255, 257}};
  compare_ssd_with_cpu(
      {
          {2, 300, 4, 64, 2, 128, 256, true},
          {2, 200, 3, 40, 1, 24, 100, false},
          {2, 77, 4, 96, 2, 160, 128, true},
      },
      DType::bf16, kSsdFused, gen, starts);
  compare_ssd_with_cpu({{2, 45, 4, 8, 2, 8, 16, true}}, DType::f32, kF32, gen, {{1, 16, 30, 31}, {15, 17, 44}});
}

// The packed entry point (Mamba-2's xBC) runs the same kernels as the sliced one, writing
// dx, dBm and dCm into one gradient: bitwise equal results on the fused bf16 path, mma.sync
// (N 128) and WMMA (N 160) backward, with and without seq_idx, and on the composed f32 path.
TEST_CASE("ssd_chunked_packed CUDA equals ssd_chunked on the slices, bitwise") {
  if (!cuda_test_device()) return;
  Generator gen(531);
  const Tensor seq = packed_seq_idx(2, 300, {{1, 63, 64, 150, 256}, {10, 100, 255, 257}});
  for (const testing::SsdPackedShape& s :
       {testing::SsdPackedShape{2, 300, 4, 64, 2, 128, 256}, testing::SsdPackedShape{2, 300, 4, 96, 1, 160, 128}}) {
    CAPTURE(s.N);
    testing::check_ssd_packed_matches_slices(s, DType::bf16, Device::cuda(), gen);
    testing::check_ssd_packed_matches_slices(s, DType::bf16, Device::cuda(), gen, seq);
  }
  testing::check_ssd_packed_matches_slices({2, 45, 4, 8, 2, 8, 16}, DType::f32, Device::cuda(), gen);
}

// Gated RMSNorm on CUDA: rows of 1 and 2 groups, widths below and above a block's 256
// threads, f32 and bf16 (the weight in f32, as Mamba2 passes it).
TEST_CASE("gated_rms_norm CUDA matches the CPU in forward and backward") {
  if (!cuda_test_device()) return;
  Generator gen(524);
  struct Shape {
    int64_t rows, D, gs;
  };
  for (DType dtype : {DType::f32, DType::bf16}) {
    for (const Shape& s : {Shape{37, 96, 96}, Shape{9, 600, 300}, Shape{70, 40, 10}}) {
      CAPTURE(dtype_name(dtype));
      CAPTURE(s.D);
      CAPTURE(s.gs);
      std::vector<Arg> a;
      a.push_back({"y", random_tensor({s.rows, s.D}, gen, DType::f64, Device::cpu(), -2, 2), dtype});
      a.push_back({"z", random_tensor({s.rows, s.D}, gen, DType::f64, Device::cpu(), -3, 3), dtype});
      a.push_back({"w", random_tensor({s.D}, gen, DType::f64, Device::cpu(), 0.5, 1.5), DType::f32});
      const int64_t gs = s.gs;
      compare_with_cpu([gs](const std::vector<Tensor>& v) { return std::vector<Tensor>{gated_rms_norm(v[0], v[1], v[2], gs, 1e-5)}; },
                       a, {"out"}, tolerance_for(dtype), gen);
    }
  }
}

// No rows: nothing is launched, and the weight gradient is an empty sum, zero as on the CPU
// (the gradient is allocated uninitialised, so the launcher must clear it).
TEST_CASE("gated_rms_norm CUDA of zero rows gives a zero weight gradient") {
  if (!cuda_test_device()) return;
  Generator gen(525);
  const Device dev = Device::cuda();
  Tensor y = Tensor::empty({0, 8}, DType::f32, dev).requires_grad_(), z = Tensor::empty({0, 8}, DType::f32, dev);
  Tensor w = random_tensor({8}, gen, DType::f32, dev, 0.5, 1.5).requires_grad_();
  const Tensor out = gated_rms_norm(y, z, w, 4, 1e-5);
  CHECK(out.shape() == Dims{0, 8});
  { const Tensor freed = random_tensor({8}, gen, DType::f32, dev, 1, 2); }  // leaves non-zero memory to reuse
  backward(out, Tensor::empty({0, 8}, DType::f32, dev));
  REQUIRE(w.grad().defined());
  CHECK(w.grad().to(Device::cpu()).to_vector<float>() == std::vector<float>(8, 0.0f));
  CHECK(y.grad().numel() == 0);
}

// ---------------------------------------------------------------------------------------
// Causal conv1d on CUDA.

TEST_CASE("causal_conv1d CUDA matches the CPU in forward and backward") {
  if (!cuda_test_device()) return;
  Generator gen(531);
  for (DType dtype : {DType::f32, DType::bf16}) {
    for (int64_t K : {1, 2, 3, 4}) {
      for (int variant = 0; variant < 2; ++variant) {
        const bool with_options = variant == 1;  // bias, silu and an initial state
        CAPTURE(dtype_name(dtype));
        CAPTURE(K);
        CAPTURE(with_options);
        const int64_t B = 2, L = 37, C = 45;
        const bool state = with_options && K > 1;
        compare_with_cpu(conv_op(C, with_options), conv_args(B, L, C, K, with_options, state, dtype, gen),
                         {"out", "final_state"}, tolerance_for(dtype), gen);
      }
    }
  }
}

TEST_CASE("causal_conv1d CUDA tiled kernels (aligned channel vectors) match the CPU over several time tiles") {
  if (!cuda_test_device()) return;
  Generator gen(534);
  // C and the slice offset multiples of 4 and a row stride of C + 8: the one-pass tiled
  // kernels; L = 150 spans five 32-step tiles, the last one partial, so the halo of dpre
  // between tiles, the initial state (tile 0) and the final-state gradient (last tile) are
  // all exercised. In each tile the backward takes 3 single steps, 7 groups of 4 steps
  // (loads first), then single steps again; the forward 8 groups; the last tile's 22 steps
  // end in a partial group. (The single-step form alone runs with seq_idx: the seq_idx cases.)
  for (DType dtype : {DType::f32, DType::bf16}) {
    for (int64_t K : {1, 2, 3, 4}) {
      for (int variant = 0; variant < 2; ++variant) {
        const bool with_options = variant == 1;
        CAPTURE(dtype_name(dtype));
        CAPTURE(K);
        CAPTURE(with_options);
        const int64_t B = 2, L = 150, C = 48;
        const bool state = with_options && K > 1;
        compare_with_cpu(conv_op(C, with_options, 4), conv_args(B, L, C, K, with_options, state, dtype, gen, 8),
                         {"out", "final_state"}, tolerance_for(dtype), gen);
      }
    }
  }
}

TEST_CASE("causal_conv1d CUDA with a sequence shorter than the kernel width") {
  if (!cuda_test_device()) return;
  Generator gen(532);
  // L = 2 < K - 1 = 3: the final state mixes the initial state and x.
  compare_with_cpu(conv_op(33, true), conv_args(3, 2, 33, 4, true, true, DType::f32, gen), {"out", "final_state"},
                   kF32, gen);
}

TEST_CASE("causal_conv1d_step on CUDA matches the CPU step") {
  if (!cuda_test_device()) return;
  Generator gen(533);
  const int64_t B = 2, C = 37, K = 4;
  const Tensor w = random_tensor({C, K}, gen, DType::f64), bias = random_tensor({C}, gen, DType::f64);
  Tensor state_cpu = random_tensor({B, C, K - 1}, gen, DType::f32);
  Tensor state_dev = state_cpu.to(Device::cuda());
  for (int step = 0; step < 3; ++step) {
    const Tensor x = random_tensor({B, C}, gen, DType::f32);
    const Tensor out_cpu = causal_conv1d_step(x, state_cpu, w.to(DType::f32), bias.to(DType::f32), true);
    const Tensor out_dev = causal_conv1d_step(x.to(Device::cuda()), state_dev, w.to(DType::f32).to(Device::cuda()),
                                              bias.to(DType::f32).to(Device::cuda()), true);
    expect_near(out_dev.to(Device::cpu()), out_cpu, kF32, "step out");
    // The state is a shifted window of inputs: copied exactly.
    CHECK(state_dev.to(Device::cpu()).to_vector<float>() == state_cpu.to_vector<float>());
  }
}

TEST_CASE("causal_conv1d CUDA reports unsupported widths and dtypes") {
  if (!cuda_test_device()) return;
  Generator gen(534);
  const Device dev = Device::cuda();
  const Tensor x = random_tensor({1, 5, 4}, gen, DType::f32, dev);
  CHECK(user_error_of([&] { causal_conv1d(x, random_tensor({4, 5}, gen, DType::f32, dev)); }).find("K = 5") !=
        std::string::npos);
  CHECK(user_error_of([&] {
          causal_conv1d(x.to(DType::f64), random_tensor({4, 3}, gen, DType::f64, dev));
        }).find("f32 or bf16") != std::string::npos);
}

// ---------------------------------------------------------------------------------------
// Gated RMSNorm on CUDA: the vector kernels (bf16 / f32 with D and group_size multiples of
// the 16-byte vector, D / vector <= 1024, 16-byte aligned row starts) and the generic
// fallback, on contiguous and strided y and z.
//
// Tolerances (against the CPU op in f64 on the same rounded inputs and output gradients):
//  - bf16: the math is f32 and out, dy, dz are rounded to bf16 once: at most 2^-8 = 3.9e-3
//    of each value (8 significant bits), about 2^-8 / sqrt(3) = 2.3e-3 in the relative
//    2-norm. Bounds: kBf16 (6e-3 in the norm, 1.2e-2 of max |ref| elementwise).
//  - f32 (and the f32 weight gradient of bf16): each element is a few f32 roundings after
//    the reductions (the group's sum of squares and dot product over group_size channels;
//    dw over the rows), whose relative error grows like sqrt(n) ulp for random data. Bound
//    in the norm: 8 ulp (2^-24 = 6e-8 each) x sqrt(n) for the longest reduction n, at least
//    kF32's 2e-5; 10x that elementwise (one element of a cancelling dot product, dv =
//    rstd (gn - n mean), can lose a digit against max |ref|).
//  - f64 (generic kernels): the harness casts the outputs to f32 in the device's loss, so
//    the device's output gradient is W rounded to f32 (2^-24 relative) where the reference
//    has W in f64; the gradients carry that rounding: kF32. (out itself agrees to ~1e-15.)

namespace {

struct GatedNormCase {
  int64_t B, L, D, gs;
  bool weight = true;
  int64_t y_extra = 0, y_off = 0;  // y: columns [y_off, y_off + D) of rows of D + y_extra
  int64_t z_extra = 0, z_off = 0;  // z: likewise
  bool grad_yz = true, grad_w = true;
};

std::vector<Arg> gated_norm_args(const GatedNormCase& c, DType dtype, Generator& gen) {
  std::vector<Arg> a;
  a.push_back({"y", random_tensor({c.B, c.L, c.D + c.y_extra}, gen, DType::f64, Device::cpu(), -2, 2), dtype,
               c.grad_yz});
  a.push_back({"z", random_tensor({c.B, c.L, c.D + c.z_extra}, gen, DType::f64, Device::cpu(), -3, 3), dtype,
               c.grad_yz});
  a.push_back({"w", c.weight ? random_tensor({c.D}, gen, DType::f64, Device::cpu(), 0.5, 1.5) : Tensor(),
               dtype == DType::f64 ? DType::f64 : DType::f32, c.grad_w});
  return a;
}

OpFn gated_norm_op(const GatedNormCase& c) {
  return [c](const std::vector<Tensor>& v) {
    const Tensor y = c.y_extra > 0 ? v[0].narrow(2, c.y_off, c.D) : v[0];
    const Tensor z = c.z_extra > 0 ? v[1].narrow(2, c.z_off, c.D) : v[1];
    return std::vector<Tensor>{gated_rms_norm(y, z, v[2], c.gs, 1e-5)};
  };
}

Tolerance gated_norm_tolerance(DType dtype, const GatedNormCase& c) {
  if (dtype == DType::bf16) return kBf16;
  if (dtype == DType::f64) return kF32;
  const double n = static_cast<double>(c.gs > c.B * c.L ? c.gs : c.B * c.L);
  const double norm = 8 * std::ldexp(1.0, -24) * std::sqrt(n);
  return norm > kF32.rel_norm ? Tolerance{norm, 10 * norm} : kF32;
}

void compare_gated_norm(const GatedNormCase& c, DType dtype, Generator& gen) {
  CAPTURE(dtype_name(dtype));
  CAPTURE(c.B * c.L);
  CAPTURE(c.D);
  CAPTURE(c.gs);
  CAPTURE(c.weight);
  CAPTURE(c.y_extra);
  CAPTURE(c.y_off);
  CAPTURE(c.z_extra);
  CAPTURE(c.z_off);
  CAPTURE(c.grad_yz);
  CAPTURE(c.grad_w);
  compare_with_cpu(gated_norm_op(c), gated_norm_args(c, dtype, gen), {"out"}, gated_norm_tolerance(dtype, c), gen);
}

}  // namespace

// Mamba2's width, D = 1536: one group, two groups (a group = 96 bf16 / 192 f32 threads,
// whole warps) and eight (24 bf16 threads: groups inside a warp and across warp
// boundaries), with and without the weight. 1000 rows: more than the backward's grid (a
// wave of blocks) takes at once, so blocks walk several rows and the next-row loads and the
// register partials of dw are exercised.
TEST_CASE("gated_rms_norm CUDA vector kernels at D = 1536 match the CPU") {
  if (!cuda_test_device()) return;
  Generator gen(526);
  for (DType dtype : {DType::bf16, DType::f32}) {
    compare_gated_norm({2, 500, 1536, 1536}, dtype, gen);
    compare_gated_norm({2, 500, 1536, 768}, dtype, gen);
    compare_gated_norm({2, 37, 1536, 192}, dtype, gen);
    compare_gated_norm({2, 500, 1536, 1536, false}, dtype, gen);
    compare_gated_norm({2, 37, 1536, 768, false}, dtype, gen);
  }
}

// Narrow and wide rows on the vector path, and shapes that take the generic kernels:
//  - D = 64 (bf16: 8 threads a row, 32 rows a block, groups of 2 threads; f32: 16 threads,
//    groups of 4);
//  - D = 48, group 12 (f32: 12 threads a row, 21 rows a block padded from 252 to 256
//    threads, groups of 3 threads straddling warps; bf16: 12 % 8 != 0, generic);
//  - D = 100 (bf16 generic; f32 vector with 25 threads a row) and D = 100, group 50
//    (generic for both);
//  - D = 2560 (bf16 320 threads; f32 640 threads: the 1024-thread variant without next-row
//    loads) and D = 4608 in two groups (bf16 576 threads, 1024-thread variant; f32 1152
//    vectors > 1024: generic).
TEST_CASE("gated_rms_norm CUDA narrow, wide and generic-path widths match the CPU") {
  if (!cuda_test_device()) return;
  Generator gen(527);
  for (DType dtype : {DType::bf16, DType::f32}) {
    compare_gated_norm({3, 41, 64, 16}, dtype, gen);
    compare_gated_norm({2, 45, 48, 12}, dtype, gen);
    compare_gated_norm({2, 37, 100, 100}, dtype, gen);
    compare_gated_norm({2, 37, 100, 50}, dtype, gen);
    compare_gated_norm({2, 37, 100, 100, false}, dtype, gen);
    compare_gated_norm({2, 150, 2560, 2560}, dtype, gen);
    compare_gated_norm({2, 150, 4608, 2304}, dtype, gen);
  }
}

// y and z as column slices of wider rows, read in place: row starts that keep 16-byte
// alignment (offsets and widths multiples of 8 elements: the vector kernels, as Mamba2's z
// slice of the projection) and ones that do not (the generic kernels with row strides).
TEST_CASE("gated_rms_norm CUDA with strided y and z matches the CPU") {
  if (!cuda_test_device()) return;
  Generator gen(528);
  for (DType dtype : {DType::bf16, DType::f32}) {
    compare_gated_norm({2, 300, 1536, 1536, true, 16, 8, 1536 + 136, 0}, dtype, gen);
    compare_gated_norm({2, 300, 1536, 768, false, 16, 8, 1536 + 136, 1536}, dtype, gen);
    compare_gated_norm({2, 37, 1536, 768, true, 5, 3, 7, 1}, dtype, gen);
    compare_gated_norm({2, 37, 1536, 1536, true, 0, 0, 3, 2}, dtype, gen);  // z alone misaligned
    compare_gated_norm({3, 41, 64, 16, true, 8, 8, 72, 64}, dtype, gen);
  }
}

// Some gradients not wanted (null outputs in the backward): only dw, or only dy and dz.
TEST_CASE("gated_rms_norm CUDA with some gradients not requested matches the CPU") {
  if (!cuda_test_device()) return;
  Generator gen(529);
  for (DType dtype : {DType::bf16, DType::f32}) {
    GatedNormCase only_w{2, 300, 1536, 1536};
    only_w.grad_yz = false;
    compare_gated_norm(only_w, dtype, gen);
    GatedNormCase only_yz{2, 300, 1536, 768, true, 16, 8, 136, 0};
    only_yz.grad_w = false;
    compare_gated_norm(only_yz, dtype, gen);
  }
}

// f64 takes the generic kernels; contiguous and strided rows.
TEST_CASE("gated_rms_norm CUDA in f64 matches the CPU") {
  if (!cuda_test_device()) return;
  Generator gen(530);
  compare_gated_norm({2, 37, 1536, 768}, DType::f64, gen);
  compare_gated_norm({2, 37, 96, 32, true, 5, 3, 8, 8}, DType::f64, gen);
}

}  // namespace ssmtrain
