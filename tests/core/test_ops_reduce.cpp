// Reductions (sum, mean, max, logsumexp over any axes, keepdim or not) and cumsum against
// host loops, plus their finite-difference gradients.
#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <functional>
#include <string>

#include "core/ops.h"
#include "gradcheck.h"
#include "op_reference.h"

using namespace ssmtrain;

namespace {

enum class Kind { sum, mean, max, logsumexp };

const char* kind_name(Kind k) {
  switch (k) {
    case Kind::sum: return "sum";
    case Kind::mean: return "mean";
    case Kind::max: return "max";
    case Kind::logsumexp: return "logsumexp";
  }
  return "?";
}

Tensor apply(Kind k, const Tensor& x, const Dims& axes, bool keepdim) {
  switch (k) {
    case Kind::sum: return sum(x, axes, keepdim);
    case Kind::mean: return mean(x, axes, keepdim);
    case Kind::max: return max(x, axes, keepdim);
    case Kind::logsumexp: return logsumexp(x, axes, keepdim);
  }
  return Tensor();
}

// The host reference: groups the elements of x by their index on the kept axes.
Tensor reference(Kind k, const Tensor& x, Dims axes, bool keepdim) {
  std::vector<double> v = ref::host(x);
  Dims shape = x.shape();
  if (axes.empty())
    for (int d = 0; d < shape.size(); ++d) axes.push_back(d);
  std::vector<bool> reduced(shape.size(), false);
  for (int64_t a : axes) reduced[a < 0 ? a + shape.size() : a] = true;
  Dims keep_shape, out_shape;
  for (int d = 0; d < shape.size(); ++d) {
    keep_shape.push_back(reduced[d] ? 1 : shape[d]);
    if (!reduced[d] || keepdim) out_shape.push_back(reduced[d] ? 1 : shape[d]);
  }
  std::vector<std::vector<double>> groups(static_cast<size_t>(keep_shape.numel()));
  for (int64_t i = 0; i < shape.numel(); ++i) {
    std::vector<int64_t> idx = ref::unravel(i, shape);
    for (int d = 0; d < shape.size(); ++d)
      if (reduced[d]) idx[d] = 0;
    groups[ref::ravel(idx, keep_shape)].push_back(v[i]);
  }
  std::vector<double> out;
  for (auto& g : groups) {
    double r = 0;
    if (k == Kind::sum || k == Kind::mean) {
      for (double e : g) r += e;
      if (k == Kind::mean) r /= static_cast<double>(g.size());
    } else if (k == Kind::max) {
      r = *std::max_element(g.begin(), g.end());
    } else {
      double m = *std::max_element(g.begin(), g.end()), s = 0;
      for (double e : g) s += std::exp(e - m);
      r = m + std::log(s);
    }
    out.push_back(r);
  }
  return ref::make(out, out_shape);
}

std::vector<Dims> axis_sets() { return {{}, {0}, {1}, {2}, {-1}, {0, 2}, {2, 0}, {0, 1, 2}}; }

}  // namespace

TEST_CASE("reductions match host loops over any axes with and without keepdim") {
  Generator gen(20);
  for (Kind k : {Kind::sum, Kind::mean, Kind::max, Kind::logsumexp})
    for (DType dt : {DType::f32, DType::f64, DType::bf16})
      for (const Dims& axes : axis_sets())
        for (bool keepdim : {false, true}) {
          INFO(std::string(kind_name(k)), " ", std::string(dtype_name(dt)), " axes ", axes.str(), " keepdim ",
               keepdim);
          Tensor base = random_tensor({5, 3, 4}, gen, dt);
          // Contiguous, and a permuted view with an odd stride pattern.
          for (Tensor x : {base, base.permute({2, 0, 1})}) {
            Tensor y = apply(k, x, axes, keepdim);
            Tensor expect = reference(k, x, axes, keepdim);
            CHECK(y.shape() == expect.shape());
            CHECK(y.dtype() == dt);
            // bf16 sums of 60 terms are rounded once from a float accumulator.
            ref::Tolerance tol = ref::forward_tolerance(dt);
            check_close(y, expect, tol.rtol, dt == DType::bf16 ? 5e-2 : tol.atol, kind_name(k));
          }
        }
}

TEST_CASE("reductions of scalars and over empty axes") {
  Tensor s = Tensor::scalar(2.5, DType::f64);
  CHECK(sum(s).item<double>() == 2.5);
  CHECK(max(s).item<double>() == 2.5);
  Tensor e = Tensor::zeros({3, 0});
  Tensor total = sum(e, {1});
  CHECK(total.shape() == Dims{3});
  CHECK(ref::host(total) == std::vector<double>{0, 0, 0});
  CHECK(sum(e, {0}).shape() == Dims{0});
  CHECK(sum(e).item<float>() == 0.0f);
  CHECK_THROWS_WITH_AS(max(e, {1}), doctest::Contains("empty axis"), UserError);
  CHECK_THROWS_AS(mean(e, {1}), UserError);
  CHECK_THROWS_WITH_AS(sum(Tensor::zeros({2, 3}), {2}), doctest::Contains("out of range"), UserError);
}

TEST_CASE("reduction gradients match finite differences") {
  Generator gen(21);
  for (Kind k : {Kind::sum, Kind::mean, Kind::max, Kind::logsumexp})
    for (const Dims& axes : axis_sets())
      for (bool keepdim : {false, true}) {
        INFO(std::string(kind_name(k)), " axes ", axes.str(), " keepdim ", keepdim);
        Tensor x = grad_leaf({3, 2, 4}, gen);  // distinct random values: no ties for max
        check_gradients([&](const std::vector<Tensor>& in) { return apply(k, in[0], axes, keepdim); }, {x});
      }
}

TEST_CASE("reduction gradients through a permuted view") {
  Generator gen(22);
  Tensor x = grad_leaf({3, 4, 2}, gen);
  for (Kind k : {Kind::sum, Kind::mean, Kind::max, Kind::logsumexp}) {
    INFO(std::string(kind_name(k)));
    check_gradients([&](const std::vector<Tensor>& in) { return apply(k, in[0].permute({1, 2, 0}), {0, 2}, false); },
                    {x});
  }
}

TEST_CASE("max splits the gradient equally among tied maxima") {
  Tensor x = ref::make({3, 1, 3, 3, 2, 0}, {2, 3}).requires_grad_();
  backward(sum(max(x, {1}) * ref::make({1, 6}, {2})));
  // Row 0 has two maxima (share 1/2 each); row 1 has one.
  CHECK(ref::host(x.grad()) == std::vector<double>{0.5, 0, 0.5, 6, 0, 0});
  x.zero_grad();
  backward(max(x));  // global max 3 appears three times
  std::vector<double> g = ref::host(x.grad());
  CHECK(g[0] == doctest::Approx(1.0 / 3));
  CHECK(g[3] == doctest::Approx(1.0 / 3));
  CHECK(g[1] == 0);
}

namespace {
Tensor cumsum_reference(const Tensor& x, int axis, bool reverse) {
  std::vector<double> v = ref::host(x), out(v.size());
  Dims shape = x.shape();
  if (axis < 0) axis += shape.size();
  for (int64_t i = 0; i < shape.numel(); ++i) {
    std::vector<int64_t> idx = ref::unravel(i, shape);
    double s = 0;
    int64_t pos = idx[axis];
    for (int64_t j = 0; j < shape[axis]; ++j) {
      idx[axis] = j;
      if (reverse ? j >= pos : j <= pos) s += v[ref::ravel(idx, shape)];
    }
    out[i] = s;
  }
  return ref::make(out, shape);
}
}  // namespace

TEST_CASE("cumsum matches host loops on every axis in both directions") {
  Generator gen(23);
  for (DType dt : {DType::f32, DType::f64, DType::bf16})
    for (int axis : {0, 1, 2, -1})
      for (bool reverse : {false, true}) {
        INFO(std::string(dtype_name(dt)), " axis ", axis, " reverse ", reverse);
        Tensor base = random_tensor({4, 7, 3}, gen, dt);
        for (Tensor x : {base, base.transpose(0, 2).transpose(0, 1).contiguous().transpose(0, 1)}) {
          Tensor y = cumsum(x, axis, reverse);
          CHECK(y.shape() == x.shape());
          CHECK(y.is_contiguous());
          ref::Tolerance tol = ref::forward_tolerance(dt);
          check_close(y, cumsum_reference(x, axis, reverse), tol.rtol, dt == DType::bf16 ? 3e-2 : tol.atol, "cumsum");
        }
      }
  CHECK(cumsum(Tensor::zeros({2, 0}), 1).shape() == Dims{2, 0});
}

TEST_CASE("cumsum gradients match finite differences") {
  Generator gen(24);
  for (int axis : {0, 1, -1})
    for (bool reverse : {false, true}) {
      INFO("axis ", axis, " reverse ", reverse);
      Tensor x = grad_leaf({3, 4, 2}, gen);
      check_gradients([&](const std::vector<Tensor>& in) { return cumsum(in[0], axis, reverse); }, {x});
    }
}
