// Elementwise ops against host references (f32, f64, bf16; broadcasting, strided and empty
// inputs) and their finite-difference gradients in f64.
#include <doctest/doctest.h>

#include <cmath>
#include <functional>
#include <string>

#include "core/ops.h"
#include "gradcheck.h"
#include "op_reference.h"

using namespace ssmtrain;

namespace {

struct UnaryCase {
  const char* name;
  std::function<Tensor(const Tensor&)> op;
  std::function<double(double)> reference;
  double lo, hi;               // input range (inside the op's domain)
  std::vector<double> kinks;   // non-differentiable points the gradient check must avoid
};

double gelu_tanh(double x) { return 0.5 * x * (1 + std::tanh(std::sqrt(2 / M_PI) * (x + 0.044715 * x * x * x))); }

std::vector<UnaryCase> unary_cases() {
  return {
      {"neg", [](const Tensor& x) { return neg(x); }, [](double x) { return -x; }, -2, 2, {}},
      {"exp", [](const Tensor& x) { return exp(x); }, [](double x) { return std::exp(x); }, -2, 2, {}},
      {"log", [](const Tensor& x) { return log(x); }, [](double x) { return std::log(x); }, 0.1, 3, {}},
      {"log1p", [](const Tensor& x) { return log1p(x); }, [](double x) { return std::log1p(x); }, -0.5, 2, {}},
      {"sqrt", [](const Tensor& x) { return sqrt(x); }, [](double x) { return std::sqrt(x); }, 0.1, 3, {}},
      {"rsqrt", [](const Tensor& x) { return rsqrt(x); }, [](double x) { return 1 / std::sqrt(x); }, 0.1, 3, {}},
      {"square", [](const Tensor& x) { return square(x); }, [](double x) { return x * x; }, -2, 2, {}},
      {"pow 2.5", [](const Tensor& x) { return pow(x, 2.5); }, [](double x) { return std::pow(x, 2.5); }, 0.1, 2, {}},
      {"pow 3", [](const Tensor& x) { return pow(x, 3); }, [](double x) { return x * x * x; }, -2, 2, {}},
      {"abs", [](const Tensor& x) { return abs(x); }, [](double x) { return std::abs(x); }, -2, 2, {0}},
      {"clamp", [](const Tensor& x) { return clamp(x, -0.5, 0.5); },
       [](double x) { return std::min(std::max(x, -0.5), 0.5); }, -1, 1, {-0.5, 0.5}},
      {"sigmoid", [](const Tensor& x) { return sigmoid(x); }, [](double x) { return 1 / (1 + std::exp(-x)); }, -4, 4,
       {}},
      {"softplus", [](const Tensor& x) { return softplus(x); },
       [](double x) { return x > 20 ? x : std::log1p(std::exp(x)); }, -4, 25, {20}},
      {"silu", [](const Tensor& x) { return silu(x); }, [](double x) { return x / (1 + std::exp(-x)); }, -4, 4, {}},
      {"gelu", [](const Tensor& x) { return gelu(x); }, gelu_tanh, -4, 4, {}},
      {"tanh", [](const Tensor& x) { return tanh(x); }, [](double x) { return std::tanh(x); }, -3, 3, {}},
      {"relu", [](const Tensor& x) { return relu(x); }, [](double x) { return x > 0 ? x : 0; }, -2, 2, {0}},
      {"sin", [](const Tensor& x) { return sin(x); }, [](double x) { return std::sin(x); }, -4, 4, {}},
      {"add scalar", [](const Tensor& x) { return x + 0.75; }, [](double x) { return x + 0.75; }, -2, 2, {}},
      {"sub scalar", [](const Tensor& x) { return x - 0.75; }, [](double x) { return x - 0.75; }, -2, 2, {}},
      {"mul scalar", [](const Tensor& x) { return x * -1.25; }, [](double x) { return x * -1.25; }, -2, 2, {}},
      {"div scalar", [](const Tensor& x) { return x / 4.0; }, [](double x) { return x / 4.0; }, -2, 2, {}},
      {"rsub", [](const Tensor& x) { return 2.0 - x; }, [](double x) { return 2.0 - x; }, -2, 2, {}},
      {"rdiv", [](const Tensor& x) { return 1.5 / x; }, [](double x) { return 1.5 / x; }, 0.2, 2, {}},
  };
}

// Values in [lo, hi) pushed at least `margin` away from every kink.
Tensor away_from_kinks(const Dims& shape, Generator& gen, double lo, double hi, const std::vector<double>& kinks,
                       DType dt = DType::f64, double margin = 0.05) {
  std::vector<double> v = ref::host(random_tensor(shape, gen, DType::f64, Device::cpu(), lo, hi));
  for (double& x : v)
    for (double k : kinks)
      if (std::abs(x - k) < margin) x = x >= k ? k + margin : k - margin;
  return ref::make(v, shape, dt);
}

std::vector<double> map(const std::vector<double>& v, const std::function<double(double)>& f) {
  std::vector<double> out;
  for (double x : v) out.push_back(f(x));
  return out;
}

}  // namespace

TEST_CASE("unary ops match the host reference in f32 f64 and bf16 on strided inputs") {
  Generator gen(1);
  for (const UnaryCase& c : unary_cases()) {
    for (DType dt : {DType::f32, DType::f64, DType::bf16}) {
      INFO(std::string(c.name), " ", std::string(dtype_name(dt)));
      // A transposed view and a narrowed view: the kernels read strided inputs directly.
      Tensor base = random_tensor({5, 7}, gen, dt, Device::cpu(), c.lo, c.hi);
      for (Tensor x : {base.transpose(0, 1), base.narrow(1, 2, 3), base}) {
        Tensor y = c.op(x);
        CHECK(y.shape() == x.shape());
        CHECK(y.dtype() == dt);
        CHECK(y.is_contiguous());
        ref::Tolerance tol = ref::forward_tolerance(dt);
        check_close(y, ref::make(map(ref::host(x), c.reference), x.shape()), tol.rtol, tol.atol, c.name);
      }
    }
  }
}

TEST_CASE("unary ops handle empty tensors") {
  Tensor x = Tensor::zeros({0, 3});
  for (const UnaryCase& c : unary_cases()) {
    Tensor y = c.op(x);
    CHECK(y.shape() == Dims{0, 3});
  }
}

TEST_CASE("unary op gradients match finite differences") {
  Generator gen(2);
  for (const UnaryCase& c : unary_cases()) {
    INFO(std::string(c.name));
    Tensor x = away_from_kinks({3, 4}, gen, c.lo, c.hi, c.kinks);
    x.requires_grad_();
    check_gradients([&](const std::vector<Tensor>& in) { return c.op(in[0]); }, {x});
  }
}

TEST_CASE("unary gradients through a strided leaf") {
  Generator gen(3);
  Tensor base = random_tensor({4, 5}, gen, DType::f64);
  Tensor x = base.transpose(0, 1).detach();  // a leaf whose storage is transposed
  x.requires_grad_();
  check_gradients([](const std::vector<Tensor>& in) { return tanh(in[0]) * in[0]; }, {x});
}

TEST_CASE("unary ops reject integer tensors naming the op") {
  Tensor i = Tensor::zeros({3}, DType::i64);
  CHECK_THROWS_WITH_AS(exp(i), doctest::Contains("exp"), UserError);
  CHECK_THROWS_WITH_AS(exp(i), doctest::Contains("floating"), UserError);
}

TEST_CASE("clamp rejects inverted bounds") {
  CHECK_THROWS_AS(clamp(Tensor::zeros({2}), 1.0, -1.0), UserError);
}

// ---- binary ----

namespace {

struct BinaryCase {
  const char* name;
  std::function<Tensor(const Tensor&, const Tensor&)> op;
  std::function<double(double, double)> reference;
};

std::vector<BinaryCase> arithmetic_cases() {
  return {
      {"add", [](const Tensor& a, const Tensor& b) { return a + b; }, [](double a, double b) { return a + b; }},
      {"sub", [](const Tensor& a, const Tensor& b) { return a - b; }, [](double a, double b) { return a - b; }},
      {"mul", [](const Tensor& a, const Tensor& b) { return a * b; }, [](double a, double b) { return a * b; }},
      {"div", [](const Tensor& a, const Tensor& b) { return a / b; }, [](double a, double b) { return a / b; }},
      {"maximum", [](const Tensor& a, const Tensor& b) { return maximum(a, b); },
       [](double a, double b) { return std::max(a, b); }},
      {"minimum", [](const Tensor& a, const Tensor& b) { return minimum(a, b); },
       [](double a, double b) { return std::min(a, b); }},
  };
}

std::vector<BinaryCase> comparison_cases() {
  return {
      {"eq", [](const Tensor& a, const Tensor& b) { return eq(a, b); }, [](double a, double b) { return a == b; }},
      {"ne", [](const Tensor& a, const Tensor& b) { return ne(a, b); }, [](double a, double b) { return a != b; }},
      {"lt", [](const Tensor& a, const Tensor& b) { return lt(a, b); }, [](double a, double b) { return a < b; }},
      {"le", [](const Tensor& a, const Tensor& b) { return le(a, b); }, [](double a, double b) { return a <= b; }},
      {"gt", [](const Tensor& a, const Tensor& b) { return gt(a, b); }, [](double a, double b) { return a > b; }},
      {"ge", [](const Tensor& a, const Tensor& b) { return ge(a, b); }, [](double a, double b) { return a >= b; }},
  };
}

// Shape pairs covering equal shapes, broadcasting both ways, scalars and empty dims.
std::vector<std::pair<Dims, Dims>> broadcast_pairs() {
  return {{{3, 4}, {3, 4}}, {{3, 1, 5}, {4, 1}}, {{5}, {2, 3, 5}}, {{}, {2, 3}},
          {{2, 3}, {}},     {{0, 3}, {3}},       {{4, 1}, {1, 0}}};
}

void check_binary(const BinaryCase& c, const Tensor& a, const Tensor& b, ref::Tolerance tol) {
  Dims shape = broadcast_shapes(a.shape(), b.shape(), c.name);
  std::vector<double> va = ref::broadcast(ref::host(a), a.shape(), shape),
                      vb = ref::broadcast(ref::host(b), b.shape(), shape), expect;
  for (size_t i = 0; i < va.size(); ++i) expect.push_back(c.reference(va[i], vb[i]));
  Tensor y = c.op(a, b);
  CHECK(y.dtype() == a.dtype());
  check_close(y, ref::make(expect, shape), tol.rtol, tol.atol, c.name);
}

}  // namespace

TEST_CASE("binary arithmetic matches the host reference with broadcasting") {
  Generator gen(4);
  for (const BinaryCase& c : arithmetic_cases())
    for (DType dt : {DType::f32, DType::f64, DType::bf16})
      for (auto& [sa, sb] : broadcast_pairs()) {
        INFO(std::string(c.name), " ", std::string(dtype_name(dt)), " ", sa.str(), " ", sb.str());
        Tensor a = random_tensor(sa, gen, dt, Device::cpu(), -2, 2);
        Tensor b = random_tensor(sb, gen, dt, Device::cpu(), 0.5, 2);  // away from 0 for div
        check_binary(c, a, b, ref::forward_tolerance(dt));
      }
}

TEST_CASE("binary ops read transposed and narrowed operands") {
  Generator gen(5);
  Tensor a = random_tensor({6, 4}, gen, DType::f32).transpose(0, 1);  // (4, 6) strided
  Tensor b = random_tensor({4, 9}, gen, DType::f32, Device::cpu(), 0.5, 2).narrow(1, 3, 6);
  for (const BinaryCase& c : arithmetic_cases()) {
    INFO(std::string(c.name));
    check_binary(c, a, b, ref::forward_tolerance(DType::f32));
  }
}

TEST_CASE("comparisons write 1 or 0 in the dtype of a") {
  Generator gen(6);
  // Small integers make ties frequent, so eq/le/ge are exercised on equal values.
  std::vector<double> va, vb;
  for (int i = 0; i < 12; ++i) va.push_back(static_cast<double>(gen.below(3)) - 1);
  for (int i = 0; i < 4; ++i) vb.push_back(static_cast<double>(gen.below(3)) - 1);
  for (DType dt : {DType::f32, DType::f64, DType::i64}) {
    Tensor a = ref::make(va, {3, 4}, dt), b = ref::make(vb, {4}, dt);
    for (const BinaryCase& c : comparison_cases()) {
      INFO(std::string(c.name), " ", std::string(dtype_name(dt)));
      check_binary(c, a, b, {0, 0});
      CHECK_FALSE(c.op(a, b).requires_grad());
    }
  }
}

TEST_CASE("comparisons record no tape node") {
  Tensor a = Tensor::ones({3}).requires_grad_();
  clear_tape();
  Tensor m = lt(a, Tensor::zeros({3}));
  CHECK(tape_size() == 0);
  CHECK_FALSE(m.requires_grad());
}

TEST_CASE("binary arithmetic gradients match finite differences with broadcasting") {
  Generator gen(7);
  for (const BinaryCase& c : arithmetic_cases())
    for (auto& [sa, sb] : broadcast_pairs()) {
      INFO(std::string(c.name), " ", sa.str(), " ", sb.str());
      Tensor a = grad_leaf(sa, gen, -2, 2), b = grad_leaf(sb, gen, 0.5, 2);
      if (std::string(c.name) == "maximum" || std::string(c.name) == "minimum") {
        // Keep every broadcast pair away from a tie (the kink of max/min).
        Dims shape = broadcast_shapes(sa, sb, "test");
        std::vector<double> va = ref::broadcast(ref::host(a), sa, shape), vb = ref::broadcast(ref::host(b), sb, shape);
        for (size_t i = 0; i < va.size(); ++i) REQUIRE(std::abs(va[i] - vb[i]) > 1e-4);
      }
      check_gradients([&](const std::vector<Tensor>& in) { return c.op(in[0], in[1]); }, {a, b});
    }
}

TEST_CASE("binary gradients when only one side requires grad") {
  Generator gen(8);
  Tensor a = grad_leaf({2, 3}, gen), b = random_tensor({3}, gen, DType::f64, Device::cpu(), 0.5, 2);
  for (const BinaryCase& c : arithmetic_cases()) {
    INFO(std::string(c.name));
    check_gradients([&](const std::vector<Tensor>& in) { return c.op(in[0], in[1]); }, {a, b});
    check_gradients([&](const std::vector<Tensor>& in) { return c.op(in[1], in[0]); }, {a, b});
    CHECK_FALSE(b.grad().defined());
  }
}

TEST_CASE("maximum and minimum send the gradient of a tie to a") {
  Tensor a = ref::make({1, 2, 3}, {3}).requires_grad_();
  Tensor b = ref::make({1, 5, 0}, {3}).requires_grad_();
  backward(sum(maximum(a, b)));
  CHECK(ref::host(a.grad()) == std::vector<double>{1, 0, 1});
  CHECK(ref::host(b.grad()) == std::vector<double>{0, 1, 0});
  a.zero_grad();
  b.zero_grad();
  backward(sum(minimum(a, b)));
  CHECK(ref::host(a.grad()) == std::vector<double>{1, 1, 0});
  CHECK(ref::host(b.grad()) == std::vector<double>{0, 0, 1});
}

TEST_CASE("broadcast gradients have the input shape and are contiguous") {
  Tensor a = Tensor::ones({3, 1}, DType::f32).requires_grad_();
  Tensor b = Tensor::ones({4}, DType::f32).requires_grad_();
  backward(sum(a * b));
  CHECK(a.grad().shape() == Dims{3, 1});
  CHECK(b.grad().shape() == Dims{4});
  CHECK(a.grad().is_contiguous());
  CHECK(ref::host(a.grad()) == std::vector<double>{4, 4, 4});
  CHECK(ref::host(b.grad()) == std::vector<double>{3, 3, 3, 3});
}

TEST_CASE("binary ops name both tensors on dtype and shape mismatches") {
  Tensor a = Tensor::zeros({4, 3}).set_name("a"), b = Tensor::zeros({4, 3}, DType::f64).set_name("b");
  CHECK_THROWS_WITH_AS(add(a, b), doctest::Contains("'a' (4, 3) f32 cpu"), UserError);
  CHECK_THROWS_WITH_AS(add(a, b), doctest::Contains("'b' (4, 3) f64 cpu"), UserError);
  CHECK_THROWS_WITH_AS(mul(a, Tensor::zeros({5})), doctest::Contains("cannot be broadcast"), UserError);
}

TEST_CASE("where and masked_fill select per element with broadcasting") {
  Generator gen(9);
  for (DType dt : {DType::f32, DType::f64, DType::bf16}) {
    Tensor cond = ref::make({1, 0, 0, 1}, {4}, DType::i64);
    Tensor a = random_tensor({3, 4}, gen, dt), b = random_tensor({3, 1}, gen, dt);
    std::vector<double> vc = ref::host(cond), va = ref::host(a), vb = ref::broadcast(ref::host(b), {3, 1}, {3, 4});
    std::vector<double> expect, filled;
    for (int i = 0; i < 12; ++i) {
      expect.push_back(vc[i % 4] ? va[i] : vb[i]);
      filled.push_back(vc[i % 4] ? -7.0 : va[i]);
    }
    check_close(where(cond, a, b), ref::make(expect, {3, 4}), 0, 0, "where");
    check_close(masked_fill(a, cond, -7.0), ref::make(filled, {3, 4}), 0, 0, "masked_fill");
  }
  CHECK_THROWS_AS(masked_fill(Tensor::zeros({4}), Tensor::zeros({3, 4}), 1.0), UserError);
}

TEST_CASE("where and masked_fill gradients flow to the chosen side") {
  Generator gen(10);
  Tensor cond = ref::make({1, 0, 1, 1, 0, 0}, {2, 3}, DType::f64);
  Tensor a = grad_leaf({2, 3}, gen), b = grad_leaf({3}, gen);
  check_gradients([&](const std::vector<Tensor>& in) { return where(cond, in[0], in[1]); }, {a, b});
  check_gradients([&](const std::vector<Tensor>& in) { return masked_fill(in[0], cond, 2.5) * in[0]; }, {a});
  backward(sum(masked_fill(a, cond, 2.5)));
  CHECK(ref::host(a.grad()) == std::vector<double>{0, 1, 0, 0, 1, 1});
}
