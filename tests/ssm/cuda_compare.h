// The CUDA-vs-CPU comparison harness of the SSM op tests (test_ssm_cuda.cpp,
// test_s4_cuda.cpp): inputs drawn in f64 on the host and rounded once to the device dtype;
// the reference is the CPU op in f64 on exactly those rounded values; the loss is
// sum_i <cast(out_i, f32), W_i> with fixed random W_i representable in the output dtype, so
// both sides see identical output gradients. Each test file states its tolerances.
#pragma once

#include <doctest/doctest.h>

#include <cmath>
#include <functional>
#include <sstream>
#include <string>
#include <vector>

#include "gradcheck.h"
#include "user_error.h"

namespace ssmtrain::cuda_compare {

using testing::user_error_of;

// Bounds on the relative error in the 2-norm and on the largest elementwise error
// relative to max |ref|.
struct Tolerance {
  double rel_norm, rel_max;
};

// |got - ref| / |ref| in the 2-norm and max |got - ref| / max |ref|; NaN never passes.
inline void expect_near(const Tensor& got, const Tensor& ref, Tolerance tol, const std::string& what) {
  INFO(what, ": ", got.describe(), " vs reference ", ref.describe());
  REQUIRE(got.defined());
  REQUIRE(ref.defined());
  REQUIRE(got.shape() == ref.shape());
  const std::vector<double> a = got.to_vector<double>(), b = ref.to_vector<double>();
  double diff2 = 0, ref2 = 0, max_diff = 0, max_ref = 0;
  int64_t worst = -1, nonfinite = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    if (!std::isfinite(a[i])) ++nonfinite;
    const double d = std::abs(a[i] - b[i]);
    diff2 += d * d, ref2 += b[i] * b[i];
    if (d > max_diff || worst < 0) max_diff = d, worst = static_cast<int64_t>(i);
    max_ref = std::max(max_ref, std::abs(b[i]));
  }
  const double rel = std::sqrt(diff2) / std::max(std::sqrt(ref2), 1e-30);
  const double rel_max = max_diff / std::max(max_ref, 1e-30);
  std::ostringstream os;
  os << what << ": relative norm error " << rel << " (bound " << tol.rel_norm << "), max error " << max_diff
     << " = " << rel_max << " of max |ref| " << max_ref << " (bound " << tol.rel_max << ")";
  if (worst >= 0) os << "; worst at " << index_str(got.shape(), worst) << ": " << a[worst] << " vs " << b[worst];
  CHECK_MESSAGE(nonfinite == 0, os.str());
  if (max_ref < 1e-12) {
    // An analytically zero result (da of a one-step scan without h0; ddt of a length-1
    // kernel): the f64 reference is 0 or a cancellation residue, so a relative bound is
    // meaningless. The device result is a sum of O(1) terms (random O(1) inputs) that cancel,
    // so its rounding error is below ~100 terms x f32 eps = 1e-5.
    CHECK_MESSAGE(max_diff <= 1e-5, os.str());
    return;
  }
  CHECK_MESSAGE(rel <= tol.rel_norm, os.str());
  CHECK_MESSAGE(rel_max <= tol.rel_max, os.str());
}

// One input: f64 host values, its device dtype, whether its gradient is checked.
struct Arg {
  std::string name;
  Tensor values;  // f64, host; undefined for an omitted optional input
  DType dtype = DType::f32;
  bool grad = true;
  // When >= 0: this input is added to input `sum_of` broadcast over its leading axes (a
  // bias of the last axis, as dt_bias of dt), so its gradient is that input's gradient
  // summed over every axis but the last. Such a sum can cancel heavily (sum |g| hundreds of
  // times |sum g| on random data), so a relative bound on it says nothing about the kernels;
  // it is checked by what follows from the summands' own check instead (see
  // expect_bias_gradient).
  int sum_of = -1;
};

// The gradient gb (C,) of a bias added over the leading axes of an input whose gradient g
// (..., C) is checked with `tol`. Per channel c, with n summands:
//  - against the reference: if g passes, its error e satisfies ||e||_2 <= tol.rel_norm
//    ||g_ref||_2 over all channels, so by Cauchy-Schwarz |sum_k e_kc| <= sqrt(n) ||e_.c||_2 <=
//    sqrt(n) tol.rel_norm ||g_ref||_2: the bound that the summands' check implies;
//  - on the device, the identity gb = sum_k g_k: the device sums its f32 summands before
//    rounding them to g's dtype (unit roundoff u: 2^-8 relative error each at most for bf16,
//    2^-24 for f32), so |gb - sum_k g_k| <= (u + (n + 1) 2^-24) sum_k |g_k|, the second term
//    for the device's f32 summation in any order. A reduction that summed the wrong values
//    fails this however the data cancel.
inline void expect_bias_gradient(const Tensor& gb, const Tensor& g_dev, const Tensor& gb_ref, const Tensor& g_ref,
                                 double rel_norm, const std::string& what) {
  const std::vector<double> b = gb.to_vector<double>(), br = gb_ref.to_vector<double>();
  const std::vector<double> gd = g_dev.to_vector<double>(), gr = g_ref.to_vector<double>();
  const size_t C = b.size(), n = gd.size() / C;
  REQUIRE(gd.size() == n * C);
  REQUIRE(gr.size() == n * C);
  const double u = g_dev.dtype() == DType::bf16 ? std::ldexp(1.0, -8) : std::ldexp(1.0, -24);
  double ref_norm2 = 0;
  for (double v : gr) ref_norm2 += v * v;
  for (size_t c = 0; c < C; ++c) {
    double sum = 0, sum_abs = 0;
    for (size_t k = 0; k < n; ++k) sum += gd[k * C + c], sum_abs += std::abs(gd[k * C + c]);
    const double bound_ref = std::sqrt(static_cast<double>(n)) * rel_norm * std::sqrt(ref_norm2);
    const double bound_sum = (u + static_cast<double>(n + 1) * std::ldexp(1.0, -24)) * sum_abs + 1e-30;
    INFO(what, "[", c, "]: ", b[c], " vs reference ", br[c], " (bound ", bound_ref, " from the summands' check); vs ",
         sum, " = the sum of the device's summands (bound ", bound_sum, ")");
    CHECK(std::isfinite(b[c]));
    CHECK(std::abs(b[c] - br[c]) <= bound_ref);
    CHECK(std::abs(b[c] - sum) <= bound_sum);
  }
}

using OpFn = std::function<std::vector<Tensor>(const std::vector<Tensor>&)>;

// Runs `op` on CUDA (inputs rounded to their dtype) and on the CPU in f64 (the same rounded
// values); compares every output and every requested input gradient.
inline void compare_with_cpu(const OpFn& op, const std::vector<Arg>& args, const std::vector<std::string>& out_names,
                      Tolerance tol, Generator& gen) {
  std::vector<Tensor> ref_in(args.size()), dev_in(args.size());
  for (size_t i = 0; i < args.size(); ++i) {
    if (!args[i].values.defined()) continue;
    const Tensor rounded = args[i].values.to(args[i].dtype);
    ref_in[i] = rounded.to(DType::f64).detach();
    dev_in[i] = rounded.to(Device::cuda()).detach();
    if (args[i].grad) ref_in[i].requires_grad_(), dev_in[i].requires_grad_();
  }
  // backward() consumes the whole tape: each side runs forward and backward in turn.
  clear_tape();
  const std::vector<Tensor> dev_out = op(dev_in);
  std::vector<Tensor> weights;
  Tensor dev_loss;
  for (const Tensor& out : dev_out) {
    weights.push_back(random_tensor(out.shape(), gen, DType::f64).to(out.dtype()).to(DType::f64));
    const Tensor d = sum(mul(cast(out, DType::f32), weights.back().to(DType::f32).to(Device::cuda())));
    dev_loss = dev_loss.defined() ? add(dev_loss, d) : d;
  }
  backward(dev_loss);
  const std::vector<Tensor> ref_out = op(ref_in);
  Tensor ref_loss;
  for (size_t k = 0; k < ref_out.size(); ++k) {
    const Tensor r = sum(mul(ref_out[k], weights[k]));
    ref_loss = ref_loss.defined() ? add(ref_loss, r) : r;
  }
  backward(ref_loss);

  REQUIRE(ref_out.size() == out_names.size());
  REQUIRE(dev_out.size() == out_names.size());
  for (size_t k = 0; k < dev_out.size(); ++k) {
    CHECK(dev_out[k].device().is_cuda());
    expect_near(dev_out[k].to(Device::cpu()), ref_out[k], tol, out_names[k]);
  }
  for (size_t i = 0; i < args.size(); ++i) {
    if (!args[i].values.defined() || !args[i].grad) continue;
    const Tensor gr = ref_in[i].grad(), gd = dev_in[i].grad();
    INFO("gradient of ", args[i].name);
    REQUIRE(gr.defined());
    REQUIRE(gd.defined());
    CHECK(gd.device().is_cuda());
    if (const int src = args[i].sum_of; src >= 0) {
      REQUIRE(ref_in[src].grad().defined());
      expect_bias_gradient(gd.to(Device::cpu()), dev_in[src].grad().to(Device::cpu()), gr, ref_in[src].grad(),
                           tol.rel_norm, "d" + args[i].name);
      continue;
    }
    expect_near(gd.to(Device::cpu()), gr, tol, "d" + args[i].name);
  }
}

}  // namespace ssmtrain::cuda_compare
