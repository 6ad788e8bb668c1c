// Selective scan: the fused op against the plain reference for every option, chaining a
// split sequence through h_last, the parallel linear-scan formulation, finite-difference
// gradients of every input (across checkpoint intervals too), lower precisions, and the
// argument errors.
#include <doctest/doctest.h>
#include <omp.h>

#include <cmath>
#include <cstring>
#include <functional>
#include <string>

#include "gradcheck.h"
#include "ssm/kernels/kernel_common.h"
#include "ssm/kernels/linear_scan.h"
#include "ssm/kernels/selective_scan.h"
#include "scan_variants.h"
#include "ssm_reference.h"
#include "user_error.h"

namespace ssmtrain {
using testing::check_scan_variants_bitwise;
using testing::contains;
using testing::user_error_of;
namespace {

struct ScanOptions {
  bool skip = false, gate = false, bias = false, softplus = false, initial = false;
};

struct ScanInputs {
  Tensor u, delta, A, Bm, Cm, Dskip, z, delta_bias, h0;
  bool softplus = false;
  std::vector<Tensor> all() const { return {u, delta, A, Bm, Cm, Dskip, z, delta_bias, h0}; }
};

// Fresh random inputs; sequence tensors in `dtype`, parameters in its compute dtype. dt
// lands in about (0.05, 1) with or without the softplus, A in (-1.5, -0.2).
ScanInputs make_inputs(int64_t B, int64_t L, int64_t D, int64_t N, int64_t G, const ScanOptions& o, Generator& gen,
                       DType dtype = DType::f64) {
  const DType pd = dtype == DType::f64 ? DType::f64 : DType::f32;
  ScanInputs in;
  in.softplus = o.softplus;
  in.u = random_tensor({B, L, D}, gen, dtype);
  in.delta = o.softplus ? random_tensor({B, L, D}, gen, dtype, Device::cpu(), -1.5, 0.5)
                        : random_tensor({B, L, D}, gen, dtype, Device::cpu(), 0.05, 0.6);
  in.A = random_tensor({D, N}, gen, pd, Device::cpu(), -1.5, -0.2);
  in.Bm = random_tensor({B, L, G, N}, gen, dtype);
  in.Cm = random_tensor({B, L, G, N}, gen, dtype);
  if (o.skip) in.Dskip = random_tensor({D}, gen, pd);
  if (o.gate) in.z = random_tensor({B, L, D}, gen, dtype, Device::cpu(), -2, 2);
  if (o.bias) in.delta_bias = random_tensor({D}, gen, pd, Device::cpu(), -0.3, 0.3);
  if (o.initial) in.h0 = random_tensor({B, D, N}, gen, pd);
  return in;
}

SelectiveScanResult run_fused(const ScanInputs& in) {
  return selective_scan(in.u, in.delta, in.A, in.Bm, in.Cm, in.Dskip, in.z, in.delta_bias, in.softplus, in.h0);
}

SelectiveScanResult run_reference(const ScanInputs& in) {
  return selective_scan_reference(in.u, in.delta, in.A, in.Bm, in.Cm, in.Dskip, in.z, in.delta_bias, in.softplus,
                                  in.h0);
}

ScanOptions options_from_mask(int mask) {
  return {(mask & 1) != 0, (mask & 2) != 0, (mask & 4) != 0, (mask & 8) != 0, (mask & 16) != 0};
}

double max_abs(const Tensor& t) {
  double m = 0;
  for (double v : t.to_vector<double>()) m = std::max(m, std::abs(v));
  return m;
}

}  // namespace

TEST_CASE("exp_vec is within 2 ulp of exp over the float range") {
  // The reduction x = k ln2 + r is exact (ln 2 in two parts, |k| <= 128), the scaling by 2^k
  // is exact for these outputs (all normal), and Cephes' polynomial for e^r, |r| <= ln2 / 2,
  // is within 1 ulp with its own roundings: 2 ulp bounds the whole.
  using math::exp_vec;
  double worst = 0;
  int checked = 0;
  for (float x = -87.3f; x <= 88.3f; x += 0.000731f * (1.0f + std::fabs(x))) {
    for (float v : {x, std::nextafter(x, 0.0f), -x * 1e-5f}) {
      const double exact = std::exp(static_cast<double>(v));
      const double ulp = std::ldexp(1.0, std::ilogb(static_cast<float>(exact)) - 23);
      worst = std::max(worst, std::fabs(exp_vec(v) - exact) / ulp);
      ++checked;
    }
  }
  CAPTURE(checked);
  CHECK(checked > 10000);
  CHECK(worst < 2.0);
  CHECK(exp_vec(0.0f) == 1.0f);
  CHECK(exp_vec(-88.0f) == 0.0f);
  CHECK(exp_vec(-1e30f) == 0.0f);
  CHECK(std::isinf(exp_vec(89.0f)));
  CHECK(std::isnan(exp_vec(std::nanf(""))));
  CHECK(exp_vec(-3.7) == std::exp(-3.7));  // f64 is the library's exp
}

TEST_CASE("selective_scan matches the reference for every option and group count") {
  Generator gen(11);
  for (int64_t G : {1, 2, 3}) {
    for (int mask = 0; mask < 32; ++mask) {
      CAPTURE(G);
      CAPTURE(mask);
      const ScanInputs in = make_inputs(2, 37, 6, 5, G, options_from_mask(mask), gen);
      const SelectiveScanResult fused = run_fused(in), ref = run_reference(in);
      check_close(fused.out, ref.out, 1e-11, 1e-12, "out");
      check_close(fused.h_last, ref.h_last, 1e-11, 1e-12, "h_last");
    }
  }
}

TEST_CASE("selective_scan in f32 and bf16 matches the double reference") {
  Generator gen(12);
  const ScanOptions all{true, true, true, true, true};
  {
    const ScanInputs in = make_inputs(2, 37, 6, 5, 2, all, gen, DType::f32);
    const SelectiveScanResult fused = run_fused(in), ref = run_reference(in);
    CHECK(fused.out.dtype() == DType::f32);
    check_close(fused.out, ref.out, 1e-5, 1e-5, "f32 out");
    check_close(fused.h_last, ref.h_last, 1e-5, 1e-5, "f32 h_last");
  }
  {
    // The reference reads the same bf16-rounded inputs, so only the fp32 arithmetic and the
    // final rounding of out to bf16 differ; the state stays f32.
    const ScanInputs in = make_inputs(2, 37, 6, 5, 2, all, gen, DType::bf16);
    const SelectiveScanResult fused = run_fused(in), ref = run_reference(in);
    CHECK(fused.out.dtype() == DType::bf16);
    CHECK(fused.h_last.dtype() == DType::f32);
    check_close(fused.out, ref.out, 8e-3, 1e-2, "bf16 out");
    check_close(fused.h_last, ref.h_last, 1e-5, 1e-5, "bf16 h_last");
  }
}

TEST_CASE("selective_scan over a split sequence chains through h_last") {
  Generator gen(13);
  const ScanInputs in = make_inputs(2, 37, 6, 5, 2, {true, true, true, true, true}, gen);
  const SelectiveScanResult whole = run_fused(in);
  // Time slices are strided views (batch stride L*D): they are used without copies.
  auto part = [&](int64_t start, int64_t len, const Tensor& h0) {
    return selective_scan(in.u.narrow(1, start, len), in.delta.narrow(1, start, len), in.A,
                          in.Bm.narrow(1, start, len), in.Cm.narrow(1, start, len), in.Dskip,
                          in.z.narrow(1, start, len), in.delta_bias, true, h0);
  };
  const SelectiveScanResult first = part(0, 20, in.h0);
  const SelectiveScanResult second = part(20, 17, first.h_last);
  check_close(first.out, whole.out.narrow(1, 0, 20), 1e-12, 1e-13, "first half");
  check_close(second.out, whole.out.narrow(1, 20, 17), 1e-12, 1e-13, "second half");
  check_close(second.h_last, whole.h_last, 1e-12, 1e-13, "final state");
}

TEST_CASE("selective_scan equals its parallel linear-scan formulation") {
  Generator gen(14);
  const int64_t B = 2, L = 37, D = 6, N = 5, G = 2;
  const ScanInputs in = make_inputs(B, L, D, N, G, {true, true, true, true, true}, gen);
  const auto u = in.u.to_vector<double>(), delta = in.delta.to_vector<double>(), A = in.A.to_vector<double>();
  const auto Bm = in.Bm.to_vector<double>(), Cm = in.Cm.to_vector<double>(), Dskip = in.Dskip.to_vector<double>();
  const auto z = in.z.to_vector<double>(), bias = in.delta_bias.to_vector<double>();
  // h_t = a_t h_{t-1} + b_t over the (d, n) channels, with a = exp(dt A) and b = dt B u.
  std::vector<double> a(B * L * D * N), b(B * L * D * N), dt(B * L * D);
  for (int64_t i = 0; i < B * L * D; ++i) {
    const double v = delta[i] + bias[i % D];
    dt[i] = v > 20 ? v : std::log1p(std::exp(v));
  }
  for (int64_t bt = 0; bt < B * L; ++bt)
    for (int64_t d = 0; d < D; ++d)
      for (int64_t n = 0; n < N; ++n) {
        const int64_t i = bt * D + d, g = d / (D / G);
        a[i * N + n] = std::exp(dt[i] * A[d * N + n]);
        b[i * N + n] = dt[i] * Bm[(bt * G + g) * N + n] * u[i];
      }
  const Tensor h = linear_scan(Tensor::from_vector(a, {B, L, D * N}), Tensor::from_vector(b, {B, L, D * N}),
                               in.h0.reshape({B, D * N}), /*chunk_len=*/5);
  const auto hv = h.to_vector<double>();
  std::vector<double> out(B * L * D);
  for (int64_t bt = 0; bt < B * L; ++bt)
    for (int64_t d = 0; d < D; ++d) {
      const int64_t i = bt * D + d, g = d / (D / G);
      double y = Dskip[d] * u[i];
      for (int64_t n = 0; n < N; ++n) y += Cm[(bt * G + g) * N + n] * hv[i * N + n];
      out[i] = y * z[i] / (1 + std::exp(-z[i]));
    }
  const SelectiveScanResult fused = run_fused(in);
  check_close(fused.out, Tensor::from_vector(out, {B, L, D}), 1e-11, 1e-12, "out");
  check_close(fused.h_last, h.narrow(1, L - 1, 1).reshape({B, D, N}), 1e-11, 1e-12, "h_last");
}

TEST_CASE("selective_scan gradients of every input match finite differences") {
  Generator gen(15);
  SUBCASE("all options, groups, initial state and h_last gradient") {
    ScanInputs in = make_inputs(2, 37, 6, 5, 2, {true, true, true, true, true}, gen);
    std::vector<Tensor> leaves = in.all();
    for (Tensor& t : leaves) t.requires_grad_();
    check_gradients(
        [](const std::vector<Tensor>& x) {
          const SelectiveScanResult r = selective_scan(x[0], x[1], x[2], x[3], x[4], x[5], x[6], x[7], true, x[8]);
          return cat({r.out.reshape({-1}), r.h_last.reshape({-1})}, 0);
        },
        leaves);
  }
  SUBCASE("no options, one group") {
    ScanInputs in = make_inputs(2, 37, 6, 5, 1, {}, gen);
    std::vector<Tensor> leaves = {in.u, in.delta, in.A, in.Bm, in.Cm};
    for (Tensor& t : leaves) t.requires_grad_();
    check_gradients(
        [](const std::vector<Tensor>& x) {
          const SelectiveScanResult r = selective_scan(x[0], x[1], x[2], x[3], x[4]);
          return cat({r.out.reshape({-1}), r.h_last.reshape({-1})}, 0);
        },
        leaves);
  }
}

// A_is_log: the scan takes log(-A) (Mamba's A_log) and applies -exp inside; outputs and every
// gradient are bitwise those of passing -exp(A_log) (the same std::exp, and dA * (-e) is
// (-dA) * e exactly), and the gradient of A_log matches finite differences in f64.
TEST_CASE("selective_scan with A given as log(-A) equals the composed -exp(A_log) bitwise") {
  Generator gen(16);
  for (DType dtype : {DType::f64, DType::f32, DType::bf16}) {
    CAPTURE(dtype_name(dtype));
    const ScanInputs in = make_inputs(2, 150, 6, 5, 2, {true, true, true, true, true}, gen, dtype);
    const DType pd = dtype == DType::f64 ? DType::f64 : DType::f32;
    const Tensor A_log = random_tensor({6, 5}, gen, pd, Device::cpu(), -1.5, 1.0);
    const Tensor w = random_tensor({2, 150, 6}, gen, pd);
    std::vector<Tensor> x = in.all();  // u, delta, A_log, Bm, Cm, D, z, bias, h0
    x[2] = A_log;
    check_scan_variants_bitwise(x, w, [](const std::vector<Tensor>& v, int fused) {
      return fused ? selective_scan(v[0], v[1], v[2], v[3], v[4], v[5], v[6], v[7], true, v[8], Tensor(), true)
                   : selective_scan(v[0], v[1], -exp(v[2]), v[3], v[4], v[5], v[6], v[7], true, v[8]);
    });
  }
  ScanInputs in = make_inputs(2, 37, 6, 5, 2, {true, true, true, true, true}, gen);
  std::vector<Tensor> leaves = in.all();
  leaves[2] = random_tensor({6, 5}, gen, DType::f64, Device::cpu(), -1.5, 1.0);
  for (Tensor& t : leaves) t.requires_grad_();
  check_gradients(
      [](const std::vector<Tensor>& x) {
        const SelectiveScanResult r =
            selective_scan(x[0], x[1], x[2], x[3], x[4], x[5], x[6], x[7], true, x[8], Tensor(), /*A_is_log=*/true);
        return cat({r.out.reshape({-1}), r.h_last.reshape({-1})}, 0);
      },
      leaves);
}

// recompute_delta: the node keeps no delta and its backward computes it again. Outputs and
// every gradient are bitwise those with delta kept (the same product in the same order), even
// with delta's storage overwritten by NaN after the forward, which a kept delta would read.
TEST_CASE("selective_scan with recompute_delta keeps no delta and gives the same gradients") {
  Generator gen(19);
  for (DType dtype : {DType::f64, DType::f32, DType::bf16}) {
    CAPTURE(dtype_name(dtype));
    const DType pd = dtype == DType::f64 ? DType::f64 : DType::f32;
    const ScanInputs in = make_inputs(2, 150, 6, 5, 2, {true, true, true, true, true}, gen, dtype);
    const Tensor dt_low = random_tensor({2, 150, 3}, gen, dtype, Device::cpu(), -1.0, 1.0);
    const Tensor w_dt = random_tensor({6, 3}, gen, pd, Device::cpu(), -0.5, 0.5);
    const Tensor w = random_tensor({2, 150, 6}, gen, pd);
    std::vector<Tensor> x = in.all();  // u, dt_low, A, Bm, Cm, D, z, bias, h0, w_dt
    x[1] = dt_low;
    x.push_back(w_dt);
    int calls = 0;
    check_scan_variants_bitwise(x, w, [&calls](const std::vector<Tensor>& v, int remat) {
      const Tensor delta = linear(v[1], v[9]);
      std::function<Tensor()> again;
      if (remat)
        again = [&calls, a = v[1].detach(), b = v[9].detach()] {
          ++calls;
          return linear(a, b);
        };
      SelectiveScanResult r =
          selective_scan(v[0], delta, v[2], v[3], v[4], v[5], v[6], v[7], true, v[8], Tensor(), false, again);
      if (remat) {
        CHECK(calls == 0);
        std::memset(delta.data_ptr(), 0xFF, delta.nbytes());  // all-ones bytes: NaN in every float type
      }
      return r;
    });
    CHECK(calls == 1);  // once, in the backward of the recomputing form
  }
}

TEST_CASE("selective_scan backward recomputes across checkpoint intervals") {
  // L = 150 spans three checkpoint intervals of 64, the last one partial.
  static_assert(kSelectiveScanCheckpointInterval == 64);
  Generator gen(16);
  ScanInputs in = make_inputs(1, 150, 3, 4, 3, {true, true, true, true, true}, gen);
  const SelectiveScanResult fused = run_fused(in), ref = run_reference(in);
  check_close(fused.out, ref.out, 1e-11, 1e-12, "out");
  check_close(fused.h_last, ref.h_last, 1e-11, 1e-12, "h_last");
  std::vector<Tensor> leaves = in.all();
  for (Tensor& t : leaves) t.requires_grad_();
  check_gradients(
      [](const std::vector<Tensor>& x) {
        const SelectiveScanResult r = selective_scan(x[0], x[1], x[2], x[3], x[4], x[5], x[6], x[7], true, x[8]);
        return cat({r.out.reshape({-1}), r.h_last.reshape({-1})}, 0);
      },
      leaves);
}

TEST_CASE("selective_scan f32 and bf16 gradients agree with f64") {
  Generator gen(17);
  const ScanOptions all{true, true, true, true, true};
  for (DType dtype : {DType::f32, DType::bf16}) {
    const std::string dtype_str = dtype_name(dtype);
    CAPTURE(dtype_str);
    const ScanInputs low = make_inputs(2, 37, 6, 5, 2, all, gen, dtype);
    std::vector<Tensor> low_leaves = low.all(), high_leaves;  // high: the same rounded values in f64
    for (const Tensor& t : low_leaves) high_leaves.push_back(t.to(DType::f64));
    for (Tensor& t : low_leaves) t.requires_grad_();
    for (Tensor& t : high_leaves) t.requires_grad_();
    auto run = [](const std::vector<Tensor>& x) {
      return selective_scan(x[0], x[1], x[2], x[3], x[4], x[5], x[6], x[7], true, x[8]).out;
    };
    Tensor seed = random_tensor({2, 37, 6}, gen, DType::f64);
    backward(run(low_leaves), seed.to(dtype));
    backward(run(high_leaves), seed);
    // bf16 gradients of sequence tensors are rounded to bf16 (relative 2^-8).
    const double tol = dtype == DType::f32 ? 1e-4 : 1.5e-2;
    const char* names[] = {"du", "ddelta", "dA", "dBm", "dCm", "dDskip", "dz", "ddelta_bias", "dh0"};
    for (int i = 0; i < 9; ++i) {
      REQUIRE(low_leaves[i].grad().defined());
      CHECK(low_leaves[i].grad().dtype() == low_leaves[i].dtype());
      const Tensor ref = high_leaves[i].grad();
      check_close(low_leaves[i].grad(), ref, tol, tol * max_abs(ref), names[i]);
    }
  }
}

TEST_CASE("selective_scan results do not depend on the thread count") {
  Generator gen(20);
  const ScanInputs in = make_inputs(2, 70, 6, 5, 2, {true, true, true, true, true}, gen, DType::f32);
  const Tensor seed = random_tensor({2, 70, 6}, gen);
  auto run_with = [&](int threads) {
    const int before = omp_get_max_threads();
    omp_set_num_threads(threads);
    std::vector<Tensor> leaves;
    for (const Tensor& t : in.all()) leaves.push_back(t.clone().detach().requires_grad_());
    const SelectiveScanResult r =
        selective_scan(leaves[0], leaves[1], leaves[2], leaves[3], leaves[4], leaves[5], leaves[6], leaves[7], true,
                       leaves[8]);
    backward(r.out, seed);
    omp_set_num_threads(before);
    std::vector<Tensor> out = {r.out, r.h_last};
    for (const Tensor& t : leaves) out.push_back(t.grad());
    return out;
  };
  const std::vector<Tensor> one = run_with(1), three = run_with(3);
  for (size_t i = 0; i < one.size(); ++i) {
    CAPTURE(i);
    check_close(three[i], one[i], 0, 0, "bitwise equal");
  }
}

TEST_CASE("selective_scan of an empty sequence returns the initial state") {
  Generator gen(21);
  ScanInputs in = make_inputs(2, 0, 4, 3, 2, {true, true, true, true, true}, gen);
  in.h0.requires_grad_();
  const SelectiveScanResult r = run_fused(in);
  CHECK(r.out.shape() == Dims{2, 0, 4});
  check_close(r.h_last, in.h0, 0, 0, "h_last");
  const Tensor seed = random_tensor({2, 4, 3}, gen, DType::f64);
  backward(r.h_last, seed);
  check_close(in.h0.grad(), seed, 0, 0, "dh0");
}

TEST_CASE("selective_scan without grad keeps no tape node") {
  Generator gen(18);
  ScanInputs in = make_inputs(1, 9, 4, 3, 1, {}, gen);
  clear_tape();
  run_fused(in);
  CHECK(tape_size() == 0);
  in.u.requires_grad_();
  {
    NoGradGuard no_grad;
    run_fused(in);
  }
  CHECK(tape_size() == 0);
  run_fused(in);
  CHECK(tape_size() == 1);
  clear_tape();
}

TEST_CASE("selective_scan names the offending argument") {
  Generator gen(19);
  const ScanInputs in = make_inputs(2, 16, 4, 8, 1, {}, gen, DType::f32);
  const Tensor bad_C = random_tensor({2, 16, 3, 8}, gen, DType::f32);
  CHECK(user_error_of([&] { selective_scan(in.u, in.delta, in.A, in.Bm, bad_C); }) ==
        "selective_scan: Cm (2, 16, 3, 8) f32 cpu: expected (B, L, G, N) = (2, 16, 1, 8)");
  const Tensor bad_A = random_tensor({4, 7}, gen, DType::f32);
  CHECK(user_error_of([&] { selective_scan(in.u, in.delta, bad_A, in.Bm, in.Cm); }) ==
        "selective_scan: Bm (2, 16, 1, 8) f32 cpu: expected (B, L, G, N) = (2, 16, 1, 7)");
  const Tensor three_groups = random_tensor({2, 16, 3, 8}, gen, DType::f32);
  CHECK(user_error_of([&] { selective_scan(in.u, in.delta, in.A, three_groups, three_groups); })
            .find("G = 3 must divide D = 4") != std::string::npos);
  const Tensor delta_f64 = in.delta.to(DType::f64);
  CHECK(user_error_of([&] { selective_scan(in.u, delta_f64, in.A, in.Bm, in.Cm); }) ==
        "selective_scan: delta (2, 16, 4) f64 cpu: expected dtype f32 (the dtype of u)");
  const Tensor bad_h0 = random_tensor({2, 4}, gen, DType::f32);
  CHECK(user_error_of([&] { selective_scan(in.u, in.delta, in.A, in.Bm, in.Cm, {}, {}, {}, false, bad_h0); }) ==
        "selective_scan: h0 (2, 4) f32 cpu: expected 3 dimensions (B, D, N)");
}

}  // namespace ssmtrain
