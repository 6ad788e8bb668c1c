// Fused ops (softmax, log_softmax, cross-entropy, RMSNorm, LayerNorm, embedding, dropout):
// forwards against host loops, gradients against finite differences, one tape node each.
#include <doctest/doctest.h>

#include <cmath>
#include <string>

#include "core/ops.h"
#include "gradcheck.h"
#include "op_reference.h"

using namespace ssmtrain;

namespace {

// Softmax (or log-softmax) of x along `axis` on the host.
Tensor softmax_reference(const Tensor& x, int axis, bool log) {
  std::vector<double> v = ref::host(x), out(v.size());
  Dims shape = x.shape();
  if (axis < 0) axis += shape.size();
  for (int64_t i = 0; i < shape.numel(); ++i) {
    std::vector<int64_t> idx = ref::unravel(i, shape);
    double m = -INFINITY, s = 0;
    for (int64_t j = 0; j < shape[axis]; ++j) {
      idx[axis] = j;
      m = std::max(m, v[ref::ravel(idx, shape)]);
    }
    for (int64_t j = 0; j < shape[axis]; ++j) {
      idx[axis] = j;
      s += std::exp(v[ref::ravel(idx, shape)] - m);
    }
    out[i] = log ? v[i] - m - std::log(s) : std::exp(v[i] - m) / s;
  }
  return ref::make(out, shape);
}

}  // namespace

TEST_CASE("softmax and log_softmax match host loops along every axis") {
  Generator gen(40);
  for (bool log : {false, true})
    for (DType dt : {DType::f32, DType::f64, DType::bf16})
      for (int axis : {0, 1, -1}) {
        INFO(std::string(log ? "log_softmax " : "softmax "), std::string(dtype_name(dt)), " axis ", axis);
        Tensor base = random_tensor({3, 5, 4}, gen, dt, Device::cpu(), -3, 3);
        for (Tensor x : {base, base.transpose(0, 2)}) {
          Tensor y = log ? log_softmax(x, axis) : softmax(x, axis);
          CHECK(y.is_contiguous());
          ref::Tolerance tol = ref::forward_tolerance(dt);
          check_close(y, softmax_reference(x, axis, log), tol.rtol, tol.atol, "softmax");
        }
      }
  // Large logits do not overflow: the row maximum is subtracted first.
  Tensor big = ref::make({1000, 1001, 999}, {3}, DType::f32);
  check_close(softmax(big), softmax_reference(big, 0, false), 1e-5, 1e-7, "softmax of large logits");
}

TEST_CASE("softmax and log_softmax gradients match finite differences") {
  Generator gen(41);
  for (bool log : {false, true})
    for (int axis : {0, 1, 2}) {
      INFO(std::string(log ? "log_softmax" : "softmax"), " axis ", axis);
      Tensor x = grad_leaf({3, 4, 2}, gen, -2, 2);
      check_gradients([&](const std::vector<Tensor>& in) { return log ? log_softmax(in[0], axis) : softmax(in[0], axis); },
                      {x});
    }
}

// ---- cross-entropy ----

namespace {

// Per-row loss lse(row) - row[target] (0 for ignored rows).
std::vector<double> cross_entropy_rows_reference(const Tensor& logits, const Tensor& targets, int64_t ignore) {
  std::vector<double> v = ref::host(logits);
  std::vector<int64_t> t = targets.to_vector<int64_t>();
  int64_t n_cls = logits.size(-1);
  std::vector<double> out;
  for (size_t r = 0; r < t.size(); ++r) {
    if (t[r] == ignore) {
      out.push_back(0);
      continue;
    }
    double m = -INFINITY, s = 0;
    for (int64_t c = 0; c < n_cls; ++c) m = std::max(m, v[r * n_cls + c]);
    for (int64_t c = 0; c < n_cls; ++c) s += std::exp(v[r * n_cls + c] - m);
    out.push_back(m + std::log(s) - v[r * n_cls + t[r]]);
  }
  return out;
}

Tensor targets_with_ignored(const Dims& shape, int64_t n_cls, Generator& gen, int64_t ignore) {
  std::vector<int64_t> t;
  for (int64_t i = 0; i < shape.numel(); ++i) t.push_back(i % 4 == 1 ? ignore : gen.below(n_cls));
  return Tensor::from_vector(t, shape);
}

}  // namespace

TEST_CASE("cross_entropy matches the mean NLL over counted targets") {
  Generator gen(42);
  for (DType dt : {DType::f32, DType::f64, DType::bf16}) {
    INFO(std::string(dtype_name(dt)));
    Tensor logits = random_tensor({2, 5, 7}, gen, dt, Device::cpu(), -4, 4);
    Tensor targets = targets_with_ignored({2, 5}, 7, gen, -100);
    std::vector<double> rows = cross_entropy_rows_reference(logits, targets, -100);
    double total = 0;
    int counted = 0;
    std::vector<int64_t> t = targets.to_vector<int64_t>();
    for (size_t i = 0; i < rows.size(); ++i) total += rows[i], counted += t[i] != -100;
    REQUIRE(counted == 7);

    Tensor loss = cross_entropy(logits, targets);
    CHECK(loss.dim() == 0);
    CHECK(loss.dtype() == (dt == DType::f64 ? DType::f64 : DType::f32));
    // Statistics are f32 even for bf16 logits, so only the bf16 inputs are rounded.
    double rtol = dt == DType::f64 ? 1e-12 : 1e-5;
    CHECK(loss.item<double>() == doctest::Approx(total / counted).epsilon(rtol));

    Tensor per_token = cross_entropy_per_token(logits, targets);
    CHECK(per_token.shape() == Dims{2, 5});
    check_close(per_token, ref::make(rows, {2, 5}), rtol, 1e-6, "cross_entropy_per_token");
  }
}

TEST_CASE("cross_entropy with a custom ignore index and with every target ignored") {
  Tensor logits = ref::make({0, 1, 2, 3, 4, 5}, {2, 3}, DType::f32);
  Tensor targets = Tensor::from_vector(std::vector<int64_t>{2, 0}, {2});
  double row0 = std::log(std::exp(0.0) + std::exp(1.0) + std::exp(2.0)) - 2.0;
  CHECK(cross_entropy(logits, targets, 0).item<double>() == doctest::Approx(row0).epsilon(1e-6));
  Tensor all_ignored = Tensor::from_vector(std::vector<int64_t>{-100, -100}, {2});
  Tensor leaf = logits.detach().requires_grad_();
  Tensor loss = cross_entropy(leaf, all_ignored);
  CHECK(loss.item<double>() == 0.0);  // 0, not 0/0
  backward(loss);
  CHECK(ref::host(leaf.grad()) == std::vector<double>(6, 0.0));
}

TEST_CASE("cross_entropy gradients match finite differences") {
  Generator gen(43);
  Tensor logits = grad_leaf({3, 4, 5}, gen, -2, 2);
  Tensor targets = targets_with_ignored({3, 4}, 5, gen, -1);
  check_gradients([&](const std::vector<Tensor>& in) { return cross_entropy(in[0], targets, -1); }, {logits});
  check_gradients([&](const std::vector<Tensor>& in) { return cross_entropy_per_token(in[0], targets, -1); },
                  {logits});
  // Strided logits are made contiguous inside.
  Tensor lt = random_tensor({5, 4}, gen, DType::f64).transpose(0, 1).detach().requires_grad_();
  Tensor t4 = Tensor::from_vector(std::vector<int64_t>{0, 4, 2, 3}, {4});
  check_gradients([&](const std::vector<Tensor>& in) { return cross_entropy(in[0], t4); }, {lt});
}

TEST_CASE("cross_entropy is one tape node and checks its arguments") {
  Tensor logits = Tensor::zeros({4, 3}).requires_grad_();
  Tensor targets = Tensor::from_vector(std::vector<int64_t>{0, 1, 2, 0}, {4});
  clear_tape();
  Tensor loss = cross_entropy(logits, targets);
  CHECK(tape_size() == 1);
  clear_tape();
  CHECK_THROWS_WITH_AS(cross_entropy(logits, Tensor::zeros({4}, DType::i32)), doctest::Contains("expected dtype i64"),
                       UserError);
  CHECK_THROWS_WITH_AS(cross_entropy(logits, Tensor::zeros({3}, DType::i64)),
                       doctest::Contains("expected targets of shape (4,)"), UserError);
  Tensor bad = Tensor::from_vector(std::vector<int64_t>{0, 7, 2, 0}, {4});
  CHECK_THROWS_AS(cross_entropy(logits, bad), UserError);
}

// ---- norms ----

namespace {

// RMSNorm / LayerNorm of the rows of x (.., D) on the host.
Tensor norm_reference(const Tensor& x, const Tensor& w, const Tensor& b, double eps, bool layer) {
  std::vector<double> v = ref::host(x), out(v.size());
  std::vector<double> vw = w.defined() ? ref::host(w) : std::vector<double>();
  std::vector<double> vb = b.defined() ? ref::host(b) : std::vector<double>();
  int64_t d = x.size(-1);
  for (size_t r = 0; r * d < v.size(); ++r) {
    double mean = 0, sq = 0;
    if (layer) {
      for (int64_t i = 0; i < d; ++i) mean += v[r * d + i];
      mean /= d;
    }
    for (int64_t i = 0; i < d; ++i) sq += (v[r * d + i] - mean) * (v[r * d + i] - mean);
    double rstd = 1 / std::sqrt(sq / d + eps);
    for (int64_t i = 0; i < d; ++i)
      out[r * d + i] = (v[r * d + i] - mean) * rstd * (w.defined() ? vw[i] : 1) + (b.defined() ? vb[i] : 0);
  }
  return ref::make(out, x.shape());
}

}  // namespace

TEST_CASE("rms_norm and layer_norm match host loops") {
  Generator gen(44);
  for (DType dt : {DType::f32, DType::f64, DType::bf16})
    for (bool affine : {true, false}) {
      INFO(std::string(dtype_name(dt)), " affine ", affine);
      Tensor x = random_tensor({2, 3, 8}, gen, dt, Device::cpu(), -2, 3);
      Tensor w = affine ? random_tensor({8}, gen, dt, Device::cpu(), 0.5, 1.5) : Tensor();
      Tensor b = affine ? random_tensor({8}, gen, dt) : Tensor();
      ref::Tolerance tol = ref::forward_tolerance(dt);
      check_close(rms_norm(x, w, 1e-5), norm_reference(x, w, Tensor(), 1e-5, false), tol.rtol, tol.atol, "rms_norm");
      check_close(layer_norm(x, w, b, 1e-5), norm_reference(x, w, b, 1e-5, true), tol.rtol, tol.atol, "layer_norm");
      // A strided x (a transposed view) is copied to rows first.
      Tensor xt = random_tensor({8, 5}, gen, dt).transpose(0, 1);
      check_close(rms_norm(xt, w, 1e-5), norm_reference(xt, w, Tensor(), 1e-5, false), tol.rtol, tol.atol,
                  "rms_norm of a strided x");
    }
}

TEST_CASE("norm gradients match finite differences") {
  Generator gen(45);
  for (bool affine : {true, false}) {
    INFO("affine ", affine);
    Tensor x = grad_leaf({3, 2, 6}, gen, -2, 2);
    Tensor w = affine ? grad_leaf({6}, gen, 0.5, 1.5) : Tensor();
    Tensor b = affine ? grad_leaf({6}, gen) : Tensor();
    if (affine) {
      check_gradients([](const std::vector<Tensor>& in) { return rms_norm(in[0], in[1], 1e-5); }, {x, w});
      check_gradients([](const std::vector<Tensor>& in) { return layer_norm(in[0], in[1], in[2], 1e-5); }, {x, w, b});
      check_gradients([](const std::vector<Tensor>& in) { return layer_norm(in[0], in[1], Tensor(), 1e-5); }, {x, w});
    } else {
      check_gradients([](const std::vector<Tensor>& in) { return rms_norm(in[0], Tensor(), 1e-5); }, {x});
      check_gradients([](const std::vector<Tensor>& in) { return layer_norm(in[0], Tensor(), Tensor(), 1e-5); }, {x});
    }
  }
}

TEST_CASE("norms check parameter shapes and handle empty batches") {
  CHECK_THROWS_WITH_AS(rms_norm(Tensor::zeros({2, 4}), Tensor::zeros({5})), doctest::Contains("expected w of shape (4,)"),
                       UserError);
  CHECK_THROWS_WITH_AS(layer_norm(Tensor::zeros({2, 4}), Tensor(), Tensor::zeros({3})),
                       doctest::Contains("expected b of shape (4,)"), UserError);
  Tensor w = Tensor::ones({4}).requires_grad_();
  Tensor x = Tensor::zeros({0, 4}).requires_grad_();
  Tensor y = rms_norm(x, w);
  CHECK(y.shape() == Dims{0, 4});
  backward(sum(y));
  CHECK(ref::host(w.grad()) == std::vector<double>(4, 0.0));
}

// ---- embedding ----

TEST_CASE("embedding looks up rows and accumulates repeated ids in the backward") {
  Generator gen(46);
  for (DType dt : {DType::f32, DType::f64, DType::bf16}) {
    Tensor weight = random_tensor({6, 3}, gen, dt);
    Tensor ids = Tensor::from_vector(std::vector<int64_t>{4, 0, 4, 5}, {2, 2});
    Tensor y = embedding(weight, ids);
    CHECK(y.shape() == Dims{2, 2, 3});
    std::vector<double> vw = ref::host(weight), expect;
    for (int64_t id : {4, 0, 4, 5})
      for (int c = 0; c < 3; ++c) expect.push_back(vw[id * 3 + c]);
    check_close(y, ref::make(expect, {2, 2, 3}), 0, 0, "embedding");
  }
  Tensor weight = grad_leaf({6, 3}, gen);
  Tensor ids = Tensor::from_vector(std::vector<int64_t>{4, 0, 4, 5, 4}, {5});
  check_gradients([&](const std::vector<Tensor>& in) { return embedding(in[0], ids); }, {weight});
  backward(sum(embedding(weight, ids)));
  CHECK(ref::host(weight.grad()) == std::vector<double>{1, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 3, 3, 3, 1, 1, 1});
  CHECK_THROWS_AS(embedding(weight, Tensor::zeros({2}, DType::i32)), UserError);
  CHECK_THROWS_AS(embedding(weight, Tensor::from_vector(std::vector<int64_t>{6}, {1})), UserError);
}

// ---- dropout ----

TEST_CASE("dropout keeps about 1 - p of the elements, scaled by 1 / (1 - p)") {
  Generator gen(47);
  Tensor x = Tensor::ones({100, 100});
  Tensor y = dropout(x, 0.3, gen, true);
  std::vector<double> v = ref::host(y);
  int kept = 0;
  for (double e : v) {
    CHECK((e == 0 || std::abs(e - 1 / 0.7) < 1e-6));
    kept += e != 0;
  }
  // 10000 Bernoulli(0.7) draws: standard deviation ~46, so +-300 is a >6 sigma bound.
  CHECK(std::abs(kept - 7000) < 300);
  CHECK(gen.offset() == 10000);
}

TEST_CASE("dropout is the identity when not training or p is 0 and zero at p 1") {
  Generator gen(48);
  Tensor x = random_tensor({4, 5}, gen, DType::f32);
  uint64_t before = gen.offset();
  CHECK(dropout(x, 0.5, gen, false).impl() == x.impl());
  CHECK(dropout(x, 0.0, gen, true).impl() == x.impl());
  CHECK(gen.offset() == before);
  CHECK(ref::host(dropout(x, 1.0, gen, true)) == std::vector<double>(20, 0.0));
  CHECK_THROWS_AS(dropout(x, 1.5, gen, true), UserError);
}

TEST_CASE("dropout masks are reproducible from the generator state and its gradient is the mask") {
  Generator g1(49, 1000), g2(49, 1000);
  Tensor x = Tensor::ones({64}, DType::f64).requires_grad_();
  Tensor y1 = dropout(x, 0.5, g1, true), y2 = dropout(x, 0.5, g2, true);
  CHECK(ref::host(y1) == ref::host(y2));
  backward(sum(y1));
  CHECK(ref::host(x.grad()) == ref::host(y1));  // x = 1, so y = mask = dy/dx
  Generator g4(49, 1000);
  Tensor bf = dropout(Tensor::ones({64}, DType::bf16), 0.5, g4, true);
  std::vector<double> vb = ref::host(bf), v1 = ref::host(y1);
  for (size_t i = 0; i < vb.size(); ++i) CHECK((vb[i] != 0) == (v1[i] != 0));  // same mask for bf16
}

TEST_CASE("dropout gradient matches finite differences for a fixed mask") {
  Generator gen(50);
  Tensor x = grad_leaf({4, 6}, gen);
  // The mask depends only on the generator state, so the function is fixed by resetting it.
  check_gradients(
      [](const std::vector<Tensor>& in) {
        Generator g(7);
        return dropout(in[0], 0.4, g, true);
      },
      {x});
}
