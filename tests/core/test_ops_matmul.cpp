// matmul (NumPy semantics: 1-D promotion, batch broadcasting, strided operands, empty
// dimensions) and linear against host triple loops, with finite-difference gradients.
#include <doctest/doctest.h>

#include <cmath>
#include <string>

#include "core/ops.h"
#include "gradcheck.h"
#include "op_reference.h"

using namespace ssmtrain;

namespace {

// NumPy matmul on the host.
Tensor matmul_reference(const Tensor& a, const Tensor& b) {
  Dims sa = a.shape(), sb = b.shape();
  if (sa.size() == 1) sa.insert(0, 1);
  if (sb.size() == 1) sb.push_back(1);
  int64_t m = sa[sa.size() - 2], k = sa[sa.size() - 1], n = sb[sb.size() - 1];
  Dims ba(sa.begin(), sa.end() - 2), bb(sb.begin(), sb.end() - 2);
  Dims batch = broadcast_shapes(ba, bb, "reference");
  Dims full_a = batch, full_b = batch, out_shape = batch;
  full_a.push_back(m), full_a.push_back(k);
  full_b.push_back(k), full_b.push_back(n);
  std::vector<double> va = ref::broadcast(ref::host(a), sa, full_a), vb = ref::broadcast(ref::host(b), sb, full_b);
  std::vector<double> out;
  for (int64_t t = 0; t < batch.numel(); ++t)
    for (int64_t i = 0; i < m; ++i)
      for (int64_t j = 0; j < n; ++j) {
        double s = 0;
        for (int64_t l = 0; l < k; ++l) s += va[(t * m + i) * k + l] * vb[(t * k + l) * n + j];
        out.push_back(s);
      }
  if (a.dim() > 1) out_shape.push_back(m);
  if (b.dim() > 1) out_shape.push_back(n);
  return ref::make(out, out_shape);
}

struct MatmulCase {
  const char* what;
  Dims a, b;
};

std::vector<MatmulCase> shape_cases() {
  return {
      {"2d @ 2d", {4, 3}, {3, 5}},
      {"1d @ 2d", {3}, {3, 5}},
      {"2d @ 1d", {4, 3}, {3}},
      {"1d @ 1d", {3}, {3}},
      {"batched", {2, 4, 3}, {2, 3, 5}},
      {"batched @ shared matrix", {2, 3, 4, 3}, {3, 5}},
      {"shared matrix @ batched", {4, 3}, {2, 3, 5}},
      {"broadcast batch", {2, 1, 4, 3}, {3, 3, 5}},
      {"1d @ batched", {3}, {2, 3, 5}},
      {"batched @ 1d", {2, 4, 3}, {3}},
      {"odd sizes", {1, 7}, {7, 1}},
      {"empty inner", {4, 0}, {0, 5}},
      {"empty rows", {0, 3}, {3, 5}},
      {"empty batch", {0, 2, 3}, {3, 2}},
  };
}

// Strided variants of an operand: as is, a transposed copy viewed back (last-axis stride
// != 1), and a column range of a wider matrix (row stride > row length).
std::vector<Tensor> layouts(const Dims& shape, Generator& gen, DType dt) {
  std::vector<Tensor> out{random_tensor(shape, gen, dt)};
  if (shape.size() >= 2) {
    Dims swapped = shape;
    std::swap(swapped[swapped.size() - 1], swapped[swapped.size() - 2]);
    out.push_back(random_tensor(swapped, gen, dt).transpose(-1, -2));
    Dims wide = shape;
    wide[wide.size() - 1] += 3;
    out.push_back(random_tensor(wide, gen, dt).narrow(-1, 2, shape[shape.size() - 1]));
  }
  return out;
}

}  // namespace

TEST_CASE("matmul matches host loops for every shape rule and layout") {
  Generator gen(30);
  for (const MatmulCase& c : shape_cases())
    for (DType dt : {DType::f32, DType::f64, DType::bf16})
      for (const Tensor& a : layouts(c.a, gen, dt))
        for (const Tensor& b : layouts(c.b, gen, dt)) {
          INFO(std::string(c.what), " ", std::string(dtype_name(dt)), " a ", a.shape().str(), " strides ",
               a.strides().str(), " b strides ", b.strides().str());
          Tensor y = matmul(a, b);
          Tensor expect = matmul_reference(a, b);
          CHECK(y.shape() == expect.shape());
          CHECK(y.dtype() == dt);
          // bf16: inputs exact, products accumulated in f32, output rounded once.
          ref::Tolerance tol = ref::forward_tolerance(dt);
          check_close(y, expect, tol.rtol, dt == DType::bf16 ? 2e-2 : tol.atol * 10, c.what);
        }
}

TEST_CASE("matmul gradients match finite differences") {
  Generator gen(31);
  for (const MatmulCase& c : shape_cases()) {
    INFO(std::string(c.what));
    Tensor a = grad_leaf(c.a, gen), b = grad_leaf(c.b, gen);
    check_gradients([](const std::vector<Tensor>& in) { return matmul(in[0], in[1]); }, {a, b});
  }
}

TEST_CASE("matmul gradients through transposed operands") {
  Generator gen(32);
  Tensor a = grad_leaf({2, 3, 4}, gen), b = grad_leaf({5, 3}, gen);
  check_gradients(
      [](const std::vector<Tensor>& in) { return matmul(in[0].transpose(-1, -2), in[1].transpose(0, 1)); }, {a, b});
  // Strided leaves (not views on the tape) exercise the transpose flags in the backward.
  Tensor at = random_tensor({2, 4, 3}, gen, DType::f64).transpose(-1, -2).detach().requires_grad_();
  Tensor bt = random_tensor({3, 5}, gen, DType::f64).transpose(0, 1).detach().requires_grad_();
  check_gradients([](const std::vector<Tensor>& in) { return matmul(in[1], in[0]); }, {at, bt});
}

TEST_CASE("matmul names both operands when inner dimensions differ") {
  Tensor a = Tensor::zeros({4, 3}), b = Tensor::zeros({5, 2});
  CHECK_THROWS_WITH_AS(matmul(a, b),
                       "matmul: a tensor (4, 3) f32 cpu and b tensor (5, 2) f32 cpu: inner dimensions differ (3 vs 5)",
                       UserError);
  CHECK_THROWS_WITH_AS(matmul(Tensor::zeros({2, 4, 3}), Tensor::zeros({3, 3, 2})),
                       doctest::Contains("cannot be broadcast"), UserError);
  CHECK_THROWS_AS(matmul(Tensor::zeros({4, 3}), Tensor::zeros({3, 2}, DType::f64)), UserError);
  CHECK_THROWS_AS(matmul(Tensor::scalar(1), Tensor::zeros({3})), UserError);
}

// ---- linear ----

namespace {
Tensor linear_reference(const Tensor& x, const Tensor& w, const Tensor& b) {
  Tensor y = matmul_reference(x, w.transpose(0, 1).contiguous());
  if (!b.defined()) return y;
  std::vector<double> vy = ref::host(y), vb = ref::host(b);
  for (size_t i = 0; i < vy.size(); ++i) vy[i] += vb[i % vb.size()];
  return ref::make(vy, y.shape());
}
}  // namespace

TEST_CASE("linear matches x @ W^T + b") {
  Generator gen(33);
  for (DType dt : {DType::f32, DType::f64, DType::bf16})
    for (Dims xs : {Dims{6, 4}, Dims{2, 3, 4}, Dims{4}, Dims{0, 4}})
      for (bool with_bias : {true, false}) {
        INFO(std::string(dtype_name(dt)), " x ", xs.str(), " bias ", with_bias);
        Tensor x = random_tensor(xs, gen, dt), w = random_tensor({5, 4}, gen, dt);
        Tensor b = with_bias ? random_tensor({5}, gen, dt) : Tensor();
        Tensor y = linear(x, w, b);
        ref::Tolerance tol = ref::forward_tolerance(dt);
        check_close(y, linear_reference(x, w, b), tol.rtol, dt == DType::bf16 ? 2e-2 : tol.atol * 10, "linear");
        // A transposed weight (e.g. a tied embedding viewed as W^T^T) takes the same path.
        Tensor wt = w.transpose(0, 1).contiguous().transpose(0, 1);
        check_close(linear(x, wt, b), linear_reference(x, w, b), tol.rtol, dt == DType::bf16 ? 2e-2 : tol.atol * 10,
                    "linear with a strided weight");
      }
}

TEST_CASE("linear gradients match finite differences") {
  Generator gen(34);
  for (Dims xs : {Dims{6, 4}, Dims{2, 3, 4}, Dims{4}, Dims{0, 4}}) {
    INFO("x ", xs.str());
    Tensor x = grad_leaf(xs, gen), w = grad_leaf({5, 4}, gen), b = grad_leaf({5}, gen);
    check_gradients([](const std::vector<Tensor>& in) { return linear(in[0], in[1], in[2]); }, {x, w, b});
    check_gradients([](const std::vector<Tensor>& in) { return linear(in[0], in[1]); }, {x, w});
    // Non-contiguous x is copied into rows; W transposed goes through the gemm flags.
    check_gradients(
        [](const std::vector<Tensor>& in) { return linear(in[0], in[1].transpose(0, 1).contiguous().transpose(0, 1)); },
        {x, w});
  }
  Tensor xt = random_tensor({4, 6}, gen, DType::f64).transpose(0, 1).detach().requires_grad_();
  Tensor w = grad_leaf({3, 4}, gen);
  check_gradients([](const std::vector<Tensor>& in) { return linear(in[0], in[1]); }, {xt, w});
}

// bf16 activations with an f32 weight and bias (mixed precision): the forward and the input
// gradient are those of the product with the weight rounded to bf16 (the cast path, bitwise:
// the same GEMM on the same operands), and the weight and bias gradients come back in f32.
// The weight gradient is the exact product of the bf16 operands accumulated in f32: against
// the f64 product of the same bf16 values its error is at most about K f32 roundings
// (K = 64 rows here: 64 * 2^-24 < 4e-6 of the sum of |terms|), and rounded to bf16 it is the
// cast path's bf16 gradient, up to one bf16 ulp where the f32 sum lies within an f32
// rounding of a bf16 tie.
TEST_CASE("linear with bf16 x and f32 weight: the cast path's results, f32 weight gradients") {
  Generator gen(35);
  std::vector<Device> devices{Device::cpu()};
  if (cuda_available()) devices.push_back(Device::cuda(0));  // the same checks for cuBLAS's mixed GEMM
  for (Device dev : devices) {
    INFO(dev.str());
    Tensor x = random_tensor({4, 16, 24}, gen, DType::bf16), gy = random_tensor({4, 16, 10}, gen, DType::bf16);
    Tensor w = random_tensor({10, 24}, gen, DType::f32), b = random_tensor({10}, gen, DType::f32);
    Tensor xm = x.to(dev).detach().requires_grad_(), wm = w.to(dev).detach().requires_grad_();
    Tensor bm = b.to(dev).detach().requires_grad_();
    Tensor y = linear(xm, wm, bm);
    CHECK(y.dtype() == DType::bf16);
    backward(y, gy.to(dev));
    Tensor xc = x.to(dev).detach().requires_grad_(), wc = w.to(dev).detach().requires_grad_();
    Tensor bc = b.to(dev).detach().requires_grad_();
    Tensor yc = linear(xc, cast(wc, DType::bf16), cast(bc, DType::bf16));
    backward(yc, gy.to(dev));
    CHECK(ref::host(y) == ref::host(yc));
    CHECK(ref::host(xm.grad()) == ref::host(xc.grad()));
    REQUIRE(wm.grad().dtype() == DType::f32);
    REQUIRE(bm.grad().dtype() == DType::f32);
    // gW = gy^T x over the 64 rows, in f64 from the same bf16 values.
    std::vector<double> hx = ref::host(x), hg = ref::host(gy), gw = ref::host(wm.grad());
    std::vector<double> old = ref::host(wc.grad());
    int64_t off_by_ulp = 0;
    for (int64_t o = 0; o < 10; ++o)
      for (int64_t i = 0; i < 24; ++i) {
        double exact = 0, mag = 0;
        for (int64_t r = 0; r < 64; ++r) {
          exact += hg[r * 10 + o] * hx[r * 24 + i];
          mag += std::abs(hg[r * 10 + o] * hx[r * 24 + i]);
        }
        CHECK(std::abs(gw[o * 24 + i] - exact) <= 4e-6 * mag);
        const double rounded = static_cast<float>(bf16(static_cast<float>(gw[o * 24 + i])));
        if (rounded != old[o * 24 + i]) {
          ++off_by_ulp;
          CHECK(std::abs(rounded - old[o * 24 + i]) <= std::abs(old[o * 24 + i]) * std::ldexp(1.0, -7));
        }
      }
    CHECK(off_by_ulp <= 2);
    std::vector<double> gb = ref::host(bm.grad());
    for (int64_t o = 0; o < 10; ++o) {
      double exact = 0;
      for (int64_t r = 0; r < 64; ++r) exact += hg[r * 10 + o];
      CHECK(std::abs(gb[o] - exact) <= std::abs(exact) * std::ldexp(1.0, -8) + 1e-6);  // summed in bf16's dtype
    }
  }
}

// linear_split: the products with consecutive row blocks of W equal linear() of each block
// (the same GEMMs on the same operands: bitwise), its gradients match finite differences in
// f64 with every block's output in the loss at once (so the backward's accumulation of dx
// over the blocks is exercised), and a block of size 0 gives an empty output.
TEST_CASE("linear_split equals linear of each row block, with finite-difference gradients") {
  Generator gen(36);
  for (DType dt : {DType::f32, DType::f64, DType::bf16}) {
    INFO(std::string(dtype_name(dt)));
    Tensor x = random_tensor({2, 3, 6}, gen, dt), w = random_tensor({9, 6}, gen, dt);
    auto ys = linear_split(x, w, {4, 0, 5});
    REQUIRE(ys.size() == 3);
    CHECK(ys[0].shape() == Dims{2, 3, 4});
    CHECK(ys[1].shape() == Dims{2, 3, 0});
    CHECK(ref::host(ys[0]) == ref::host(linear(x, w.narrow(0, 0, 4))));
    CHECK(ref::host(ys[2]) == ref::host(linear(x, w.narrow(0, 4, 5))));
  }
  for (Dims xs : {Dims{5, 6}, Dims{2, 3, 6}, Dims{0, 6}}) {
    INFO("x ", xs.str());
    Tensor x = grad_leaf(xs, gen), w = grad_leaf({7, 6}, gen);
    check_gradients(
        [](const std::vector<Tensor>& in) {
          auto ys = linear_split(in[0], in[1], {3, 4});
          return cat({ys[0], ys[1]}, -1);
        },
        {x, w});
    // A block whose output is not used: its rows of dW are zero, dx comes from the others.
    check_gradients([](const std::vector<Tensor>& in) { return linear_split(in[0], in[1], {2, 5})[1]; }, {x, w});
  }
  CHECK_THROWS_WITH_AS(linear_split(Tensor::zeros({2, 4}), Tensor::zeros({5, 4}), {2, 2}),
                       doctest::Contains("sum to 4"), UserError);
}

// Mixed precision: bf16 x with an f32 W gives the cast path's products and input gradient
// bitwise, and f32 weight gradients equal to linear()'s mixed gradients of each block.
TEST_CASE("linear_split with bf16 x and f32 weight matches linear per block") {
  Generator gen(37);
  std::vector<Device> devices{Device::cpu()};
  if (cuda_available()) devices.push_back(Device::cuda(0));
  for (Device dev : devices) {
    INFO(dev.str());
    Tensor x = random_tensor({4, 16, 24}, gen, DType::bf16), w = random_tensor({20, 24}, gen, DType::f32);
    Tensor g0 = random_tensor({4, 16, 8}, gen, DType::bf16), g1 = random_tensor({4, 16, 12}, gen, DType::bf16);
    Tensor xs = x.to(dev).detach().requires_grad_(), ws = w.to(dev).detach().requires_grad_();
    auto ys = linear_split(xs, ws, {8, 12});
    backward({ys[0], ys[1]}, {g0.to(dev), g1.to(dev)});
    Tensor xl = x.to(dev).detach().requires_grad_(), wl = w.to(dev).detach().requires_grad_();
    Tensor y0 = linear(xl, wl.narrow(0, 0, 8)), y1 = linear(xl, wl.narrow(0, 8, 12));
    backward({y0, y1}, {g0.to(dev), g1.to(dev)});
    CHECK(ref::host(ys[0]) == ref::host(y0));
    CHECK(ref::host(ys[1]) == ref::host(y1));
    REQUIRE(ws.grad().dtype() == DType::f32);
    CHECK(ref::host(ws.grad()) == ref::host(wl.grad()));  // the same GEMM per block
    // dx = g0 W0 + g1 W1 with W rounded to bf16 (unit roundoff u = 2^-8). The first block's
    // product is stored in bf16 (at most u |p0|) and the second added onto it and rounded
    // once more (at most u (|p0| + |p1|) again, whether the backend adds in f32 or rounds
    // the product first: u |p1| + u |result|); the f32 sums add about K = 20 f32 roundings.
    // So |dx - exact| <= 2u (|p0| + |p1|) element by element, against the magnitudes of the
    // two partial products (the result itself may cancel to far less).
    std::vector<double> hg0 = ref::host(g0), hg1 = ref::host(g1), hw = ref::host(w.to(DType::bf16));
    std::vector<double> dx = ref::host(xs.grad());
    int64_t bad = 0;
    for (int64_t r = 0; r < 64; ++r)
      for (int64_t i = 0; i < 24; ++i) {
        double p0 = 0, p1 = 0;
        for (int64_t o = 0; o < 8; ++o) p0 += hg0[r * 8 + o] * hw[o * 24 + i];
        for (int64_t o = 0; o < 12; ++o) p1 += hg1[r * 12 + o] * hw[(8 + o) * 24 + i];
        if (std::abs(dx[r * 24 + i] - (p0 + p1)) > std::ldexp(1.0, -7) * (std::abs(p0) + std::abs(p1)) + 1e-6) ++bad;
      }
    CHECK(bad == 0);
  }
}

TEST_CASE("linear checks its argument shapes") {
  CHECK_THROWS_WITH_AS(linear(Tensor::zeros({2, 3}), Tensor::zeros({5, 4})), doctest::Contains("expected x (.., 4)"),
                       UserError);
  CHECK_THROWS_WITH_AS(linear(Tensor::zeros({2, 4}), Tensor::zeros({5, 4}), Tensor::zeros({4})),
                       doctest::Contains("bias"), UserError);
  CHECK_THROWS_AS(linear(Tensor::zeros({2, 4}), Tensor::zeros({4})), UserError);
}

TEST_CASE("linear records one tape node") {
  Tensor x = Tensor::ones({3, 4}), w = Tensor::ones({2, 4}).requires_grad_(), b = Tensor::zeros({2}).requires_grad_();
  clear_tape();
  Tensor y = linear(x, w, b);
  CHECK(tape_size() == 1);
  backward(sum(y));
  CHECK(ref::host(w.grad()) == std::vector<double>(8, 3.0));
  CHECK(ref::host(b.grad()) == std::vector<double>{3, 3});
  CHECK_FALSE(x.grad().defined());
}
