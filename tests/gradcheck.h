// Shared test utilities for every test folder: a finite-difference gradient check in f64,
// random tensors drawn on the host (identical for every device), an elementwise closeness
// check that reports the worst element, and the visible skip of CUDA-only cases.
//
// Header-only; include after <doctest/doctest.h> is available (tests/main.cpp holds main).
#pragma once

#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <functional>
#include <sstream>
#include <string>
#include <vector>

#include "core/autograd.h"
#include "core/backend.h"
#include "core/ops.h"
#include "core/tensor.h"

namespace ssmtrain {

// "(i, j, k)" of the flat row-major index `flat` in `shape`.
inline std::string index_str(const Dims& shape, int64_t flat) {
  std::vector<int64_t> idx(shape.size());
  for (int d = shape.size() - 1; d >= 0; --d) {
    int64_t n = std::max<int64_t>(shape[d], 1);
    idx[d] = flat % n;
    flat /= n;
  }
  std::ostringstream os;
  os << "(";
  for (size_t d = 0; d < idx.size(); ++d) os << (d ? ", " : "") << idx[d];
  os << ")";
  return os.str();
}

// Uniform values in [lo, hi) drawn on the host from `gen` (one counter per element, like
// Tensor::rand), converted to `dtype` and copied to `device`: the same data on every device.
inline Tensor random_tensor(const Dims& shape, Generator& gen, DType dtype = DType::f32,
                            Device device = Device::cpu(), double lo = -1, double hi = 1) {
  std::vector<double> v(static_cast<size_t>(shape.numel()));
  for (double& x : v) x = lo + (hi - lo) * static_cast<double>(gen.uniform());
  return Tensor::from_vector(v, shape).to(dtype).to(device);
}

// Host tensor of `dtype` from doubles.
inline Tensor host_tensor(const std::vector<double>& v, const Dims& shape, DType dtype = DType::f64) {
  return Tensor::from_vector(v, shape).to(dtype);
}

// Elementwise |a - b| <= atol + rtol * |b| (b is the reference), as doubles on the host.
// Equal infinities and NaN against NaN pass. One assertion; on failure the message names
// `what`, the worst element and both values.
inline void check_close(const Tensor& a, const Tensor& b, double rtol, double atol, const char* what) {
  INFO(std::string(what), ": ", a.describe(), " vs reference ", b.describe());
  REQUIRE(a.shape() == b.shape());
  std::vector<double> va = a.to_vector<double>(), vb = b.to_vector<double>();
  int64_t worst = -1, failures = 0;
  double worst_excess = -1;
  for (size_t i = 0; i < va.size(); ++i) {
    double x = va[i], y = vb[i];
    bool ok;
    double excess = 0;
    if (std::isnan(x) || std::isnan(y)) {
      ok = std::isnan(x) && std::isnan(y);
      excess = ok ? 0 : INFINITY;
    } else if (std::isinf(x) || std::isinf(y)) {
      ok = x == y;
      excess = ok ? 0 : INFINITY;
    } else {
      double tol = atol + rtol * std::abs(y);
      excess = std::abs(x - y) / std::max(tol, 1e-300);
      ok = std::abs(x - y) <= tol;
    }
    if (!ok) ++failures;
    if (excess > worst_excess) worst_excess = excess, worst = static_cast<int64_t>(i);
  }
  std::ostringstream os;
  if (worst >= 0)
    os << failures << " of " << va.size() << " elements out of tolerance (rtol " << rtol << ", atol " << atol
       << "); worst at " << index_str(a.shape(), worst) << ": " << va[worst] << " vs " << vb[worst];
  CHECK_MESSAGE(failures == 0, os.str());
}

// Checks the analytic gradient of every input that requires grad against central finite
// differences, for L(x) = sum(f(x) * w) with a fixed random weight w in [-1, 1): a weighted
// sum, unlike a plain sum, is sensitive to sign errors and to gradients routed to the wrong
// output element. Inputs that require grad must be f64 CPU leaves (any strides, but no
// broadcast views); other inputs (indices, constants) are passed through unchanged.
//
// Tolerances: the central difference (L(x + eps) - L(x - eps)) / 2eps has truncation error
// eps^2 / 6 * L''' and rounding error about 1e-16 * |L| / eps. With eps = 1e-6 and O(1)
// values both are near 1e-10..1e-12, so analytic and numeric agree to ~1e-9 relative; rtol
// 1e-5 leaves a wide safety margin yet catches any real error (a wrong factor, sign, index
// or a missing term is off by far more). The difference is taken output by output, sum_k
// w_k (y+_k - y-_k), so large sums do not cancel catastrophically. atol covers gradients
// that are exactly zero.
inline void check_gradients(std::function<Tensor(const std::vector<Tensor>&)> f, std::vector<Tensor> inputs,
                            double eps = 1e-6, double rtol = 1e-5, double atol = 1e-7) {
  for (size_t i = 0; i < inputs.size(); ++i) {
    INFO("gradcheck input ", i, ": ", inputs[i].describe());
    if (!inputs[i].defined() || !inputs[i].requires_grad()) continue;  // e.g. indices, constants
    REQUIRE(inputs[i].dtype() == DType::f64);
    REQUIRE(inputs[i].device().is_cpu());
    REQUIRE(inputs[i].is_leaf());
    for (int d = 0; d < inputs[i].dim(); ++d) REQUIRE((inputs[i].strides()[d] != 0 || inputs[i].size(d) <= 1));
    inputs[i].zero_grad();
  }
  clear_tape();
  Tensor y = f(inputs);
  REQUIRE(y.dtype() == DType::f64);
  std::vector<double> w(static_cast<size_t>(y.numel()));
  Generator gen(0x5eed);
  for (double& v : w) v = 2.0 * gen.uniform() - 1.0;
  Tensor loss = sum(mul(y, Tensor::from_vector(w, y.shape())));
  backward(loss);
  REQUIRE(tape_size() == 0);

  auto evaluate = [&]() {
    NoGradGuard no_grad;
    return f(inputs).to_vector<double>();
  };
  for (size_t i = 0; i < inputs.size(); ++i) {
    const Tensor& x = inputs[i];
    if (!x.defined() || !x.requires_grad()) continue;
    Tensor g = x.grad();
    std::vector<double> analytic = g.defined() ? g.to_vector<double>() : std::vector<double>(x.numel(), 0.0);
    REQUIRE(static_cast<int64_t>(analytic.size()) == x.numel());
    double* base = x.data<double>();
    int64_t failures = 0, worst = -1;
    double worst_excess = -1, worst_a = 0, worst_n = 0;
    for (int64_t flat = 0; flat < x.numel(); ++flat) {
      int64_t rem = flat, offset = 0;  // strided position of element `flat`
      for (int d = x.dim() - 1; d >= 0; --d) {
        offset += (rem % x.size(d)) * x.strides()[d];
        rem /= x.size(d);
      }
      double* p = base + offset;
      double orig = *p;
      *p = orig + eps;
      std::vector<double> plus = evaluate();
      *p = orig - eps;
      std::vector<double> minus = evaluate();
      *p = orig;
      double numeric = 0;
      for (size_t k = 0; k < w.size(); ++k) numeric += w[k] * (plus[k] - minus[k]);
      numeric /= 2 * eps;
      double a = analytic[flat];
      double tol = atol + rtol * std::max(std::abs(a), std::abs(numeric));
      double excess = std::isfinite(a) ? std::abs(a - numeric) / std::max(tol, 1e-300) : INFINITY;
      if (!(std::abs(a - numeric) <= tol)) ++failures;
      if (excess > worst_excess) worst_excess = excess, worst = flat, worst_a = a, worst_n = numeric;
    }
    std::ostringstream os;
    os << "input " << i << " " << x.describe() << ": " << failures << " of " << x.numel()
       << " gradient elements out of tolerance";
    if (worst >= 0)
      os << "; worst at element " << index_str(x.shape(), worst) << ": analytic " << worst_a << ", numeric "
         << worst_n;
    CHECK_MESSAGE(failures == 0, os.str());
  }
  for (Tensor& x : inputs)
    if (x.defined()) x.zero_grad();
}

// Leaves of f64 CPU data that require grad, for check_gradients.
inline Tensor grad_leaf(const Dims& shape, Generator& gen, double lo = -1, double hi = 1) {
  Tensor t = random_tensor(shape, gen, DType::f64, Device::cpu(), lo, hi);
  t.requires_grad_();
  return t;
}

// True when a CUDA GPU is usable; otherwise prints a visible skip message.
inline bool cuda_test_device() {
  if (!cuda_available()) {
    MESSAGE("CUDA tests skipped: no GPU");
    return false;
  }
  return true;
}

}  // namespace ssmtrain
