// Tape mechanics: accumulation, shared inputs, no-grad, tape lifetime, unused branches,
// error messages, gradients through every view, and a small end-to-end training run.
#include <doctest/doctest.h>

#include <string>

#include "core/ops.h"
#include "gradcheck.h"
#include "mlp_training.h"
#include "op_reference.h"

using namespace ssmtrain;

TEST_CASE("gradients accumulate across two backward calls") {
  Tensor x = ref::make({1, 2, 3}, {3}).requires_grad_();
  backward(sum(x * 2.0));
  CHECK(ref::host(x.grad()) == std::vector<double>{2, 2, 2});
  backward(sum(x * x));
  CHECK(ref::host(x.grad()) == std::vector<double>{4, 6, 8});
  x.zero_grad();
  CHECK_FALSE(x.grad().defined());
}

TEST_CASE("an input used twice receives both contributions") {
  Tensor x = ref::make({1, -2, 3}, {3}).requires_grad_();
  backward(sum(x * x + x));  // d/dx = 2x + 1
  CHECK(ref::host(x.grad()) == std::vector<double>{3, -3, 7});
  x.zero_grad();
  Tensor y = exp(x);
  backward(sum(y * y + y));  // the intermediate y is shared by two nodes
  std::vector<double> vx = ref::host(x), g = ref::host(x.grad());
  for (int i = 0; i < 3; ++i) CHECK(g[i] == doctest::Approx(2 * std::exp(2 * vx[i]) + std::exp(vx[i])));
}

TEST_CASE("NoGradGuard records nothing and nests") {
  Tensor x = Tensor::ones({2, 2}).requires_grad_();
  clear_tape();
  CHECK(grad_enabled());
  {
    NoGradGuard outer;
    {
      NoGradGuard inner;
      CHECK_FALSE(grad_enabled());
    }
    CHECK_FALSE(grad_enabled());
    Tensor y = matmul(exp(x), x.transpose(0, 1)).reshape({4});
    CHECK_FALSE(y.requires_grad());
    CHECK(y.is_leaf());
    CHECK(tape_size() == 0);
  }
  CHECK(grad_enabled());
  CHECK(exp(x).requires_grad());
  CHECK(tape_size() == 1);
  clear_tape();
}

TEST_CASE("the tape is empty after backward and saved tensors are released") {
  Tensor x = Tensor::ones({3}).requires_grad_();
  clear_tape();
  long users_before = x.storage().use_count();
  Tensor loss = sum(exp(x) * x);
  CHECK(tape_size() == 3);
  CHECK(x.storage().use_count() > users_before);  // saved by exp and mul
  backward(loss);
  CHECK(tape_size() == 0);
  CHECK(x.storage().use_count() == users_before);
  // clear_tape drops an unfinished graph (e.g. an evaluation forward with grad on).
  Tensor unused = sum(exp(x));
  CHECK(tape_size() == 2);
  clear_tape();
  CHECK(tape_size() == 0);
  CHECK(x.storage().use_count() == users_before);
}

TEST_CASE("inputs and branches that do not reach the loss get no gradient") {
  Tensor a = ref::make({1, 2}, {2}).requires_grad_();
  Tensor b = ref::make({3, 4}, {2}).requires_grad_();
  Tensor c = ref::make({5, 6}, {2});  // not trainable
  Tensor unused_branch = exp(b);    // recorded, never used by the loss
  backward(sum(a * c * 3.0));
  CHECK(ref::host(a.grad()) == std::vector<double>{15, 18});
  CHECK_FALSE(b.grad().defined());
  CHECK_FALSE(c.grad().defined());
  // Intermediate (non-leaf) tensors do not keep gradients.
  Tensor mid = a * 2.0;
  backward(sum(mid));
  CHECK_FALSE(mid.grad().defined());
}

TEST_CASE("an unused piece of a split gets a zero gradient slice") {
  Tensor x = ref::make({1, 2, 3, 4, 5, 6}, {6}).requires_grad_();
  std::vector<Tensor> parts = x.split({2, 3, 1}, 0);
  backward(sum(parts[1] * 2.0));
  CHECK(ref::host(x.grad()) == std::vector<double>{0, 0, 2, 2, 2, 0});
}

TEST_CASE("backward with an explicit seed gradient") {
  Tensor x = ref::make({1, 2, 3}, {3}).requires_grad_();
  Tensor y = x * 3.0;
  backward(y, ref::make({1, 0, -1}, {3}));
  CHECK(ref::host(x.grad()) == std::vector<double>{3, 0, -3});
}

TEST_CASE("autograd errors name the tensors involved") {
  Tensor x = Tensor::zeros({2, 3}).set_name("layer.weight");
  Tensor bad = Tensor::zeros({3}, DType::f64).set_name("g");
  CHECK_THROWS_WITH_AS(x.set_grad(bad), doctest::Contains("'g' (3,) f64 cpu"), UserError);
  CHECK_THROWS_WITH_AS(x.set_grad(bad), doctest::Contains("'layer.weight' (2, 3) f32 cpu"), UserError);
  CHECK_THROWS_WITH_AS(x.set_grad(Tensor::zeros({2, 3}, DType::f64)), doctest::Contains("'layer.weight'"), UserError);
  x.set_grad(Tensor::ones({2, 3}));
  CHECK(x.grad().defined());

  Tensor leaf = Tensor::ones({2}).requires_grad_();
  CHECK_THROWS_WITH_AS(backward(leaf * 2.0), doctest::Contains("not a single element"), UserError);
  CHECK_THROWS_WITH_AS(backward(Tensor::ones({1})), doctest::Contains("does not require grad"), UserError);
  CHECK_THROWS_AS(backward(sum(leaf), Tensor::ones({}, DType::f64)), UserError);
  CHECK_THROWS_AS(Tensor::zeros({2}, DType::i64).requires_grad_(), UserError);
  CHECK_THROWS_AS((leaf * 2.0).requires_grad_(), UserError);  // not a leaf
  clear_tape();
}

TEST_CASE("gradients flow through every view") {
  Generator gen(70);
  Tensor x = grad_leaf({2, 3, 4}, gen);
  using Fn = std::function<Tensor(const std::vector<Tensor>&)>;
  std::vector<std::pair<const char*, Fn>> views = {
      {"reshape", [](const std::vector<Tensor>& in) { return in[0].reshape({4, -1}) * 2.0; }},
      {"reshape of a strided view", [](const std::vector<Tensor>& in) { return in[0].transpose(0, 2).reshape({-1}); }},
      {"flatten", [](const std::vector<Tensor>& in) { return exp(in[0].flatten(1)); }},
      {"narrow", [](const std::vector<Tensor>& in) { return in[0].narrow(2, 1, 2) * 3.0; }},
      {"select", [](const std::vector<Tensor>& in) { return in[0].select(1, -1) * in[0].select(1, 0); }},
      {"permute", [](const std::vector<Tensor>& in) { return tanh(in[0].permute({2, 0, 1})); }},
      {"transpose", [](const std::vector<Tensor>& in) { return matmul(in[0], in[0].transpose(1, 2)); }},
      {"expand", [](const std::vector<Tensor>& in) { return in[0].unsqueeze(0).expand({3, 2, 3, 4}) * 1.0; }},
      {"expand of a size-1 axis", [](const std::vector<Tensor>& in) { return in[0].narrow(1, 0, 1).expand({2, 5, 4}) * 1.0; }},
      {"split", [](const std::vector<Tensor>& in) {
         std::vector<Tensor> p = in[0].split({1, 3}, 2);
         return p[0] * p[1];
       }},
      {"chunk", [](const std::vector<Tensor>& in) {
         std::vector<Tensor> p = in[0].chunk(2, -1);
         return p[0] - p[1] * 2.0;
       }},
      {"unsqueeze and squeeze", [](const std::vector<Tensor>& in) { return in[0].unsqueeze(1).squeeze(1) * 2.0; }},
      {"clone and contiguous", [](const std::vector<Tensor>& in) { return in[0].transpose(0, 1).contiguous().clone(); }},
  };
  for (auto& [name, fn] : views) {
    INFO(std::string(name));
    check_gradients(fn, {x});
  }
}

TEST_CASE("gradients through dtype casts arrive in the leaf dtype") {
  Tensor x = ref::make({1, 2, 3}, {3}, DType::f32).requires_grad_();
  Tensor y = x.to(DType::f64) * ref::make({1, 2, 3}, {3});
  backward(sum(y));
  CHECK(x.grad().dtype() == DType::f32);
  CHECK(ref::host(x.grad()) == std::vector<double>{1, 2, 3});
  Tensor xb = ref::make({1, 2}, {2}, DType::bf16).requires_grad_();
  backward(sum(xb.to(DType::f32) * 3.0));
  CHECK(xb.grad().dtype() == DType::bf16);
  CHECK(ref::host(xb.grad()) == std::vector<double>{3, 3});
}

TEST_CASE("a 3-layer MLP trained with SGD lowers the loss by a large factor") {
  mlp_test::MlpRun run = mlp_test::train_mlp(Device::cpu());
  REQUIRE(run.losses.size() == 200);
  INFO("loss ", run.losses.front(), " -> ", run.losses.back());
  // About 80x on this data; 20x leaves margin yet fails for a broken gradient.
  CHECK(run.losses.back() < run.losses.front() / 20);
  CHECK(tape_size() == 0);
}

TEST_CASE("the grad-ready hook reports each leaf once, after its last accumulation") {
  // a is used by the first and the last op, b only by the middle one: the reverse loop
  // finishes b first, a only at the end, and w (never reached) is not reported.
  Tensor a = ref::make({1, 2}, {2}).requires_grad_();
  Tensor b = ref::make({3, 4}, {2}).requires_grad_();
  Tensor w = ref::make({5, 6}, {2}).requires_grad_();
  Tensor y = a * 2.0;
  Tensor z = y * b;
  Tensor loss = sum(z * a);
  std::vector<std::string> order;
  std::vector<std::vector<double>> grads_seen;
  backward({loss}, {Tensor()}, [&](const AutogradMeta& leaf) {
    Tensor g(leaf.grad);
    grads_seen.push_back(ref::host(g));
    order.push_back(&leaf == a.impl()->autograd.get() ? "a" : &leaf == b.impl()->autograd.get() ? "b" : "other");
  });
  REQUIRE(order == std::vector<std::string>{"b", "a"});
  // The gradient at the report is the final one: loss = sum(2 a^2 b), d/da = 4 a b, d/db = 2 a^2.
  CHECK(grads_seen[0] == std::vector<double>{2, 8});
  CHECK(grads_seen[1] == std::vector<double>{12, 32});
  CHECK(ref::host(a.grad()) == grads_seen[1]);
  CHECK_FALSE(w.grad().defined());
}

// take_input_grad: a closure gets the gradient accumulated so far for an input only when the
// tape made it and nothing else holds it or its storage; it returns it with its own part added.
TEST_CASE("a backward closure takes an input's gradient so far only when nothing else holds it") {
  CHECK_FALSE(take_input_grad(0, Dims{3}, DType::f64).defined());  // outside a closure
  Tensor a = ref::make({1, -2, 3}, {3}).requires_grad_();
  Tensor k = ref::make({4, 5}, {2}).requires_grad_();
  // probe(x) = x, recorded by hand: its closure reports what take_input_grad gave it.
  struct Seen {
    bool took = false;
    std::vector<double> value;
  };
  auto probe = [](const Tensor& x, Seen& seen) {
    Tensor p;
    {
      NoGradGuard ng;
      p = x * 1.0;
    }
    const Dims shape = x.shape();
    const DType dtype = x.dtype();
    record("probe", {x}, {p}, [&seen, shape, dtype](const std::vector<Tensor>& g) -> std::vector<Tensor> {
      Tensor acc = take_input_grad(0, shape, dtype);
      seen.took = acc.defined();
      if (!seen.took) return {g[0]};
      seen.value = ref::host(acc);
      return {add(acc, g[0])};
    });
    return p;
  };
  SUBCASE("a fresh gradient of an intermediate is handed over") {
    Seen seen;
    Tensor h = a * 2.0;
    Tensor p = probe(h, seen);  // recorded first, so its closure runs after the mul's
    Tensor u = h * 3.0;
    backward(sum(p) + sum(u));
    CHECK(seen.took);
    CHECK(seen.value == std::vector<double>{3, 3, 3});
    CHECK(ref::host(a.grad()) == std::vector<double>{8, 8, 8});  // 2 (3 + 1)
  }
  SUBCASE("a gradient that shares its storage (a cat's backward views) is not") {
    Seen seen;
    Tensor h = a * 2.0;
    Tensor p = probe(h, seen);
    Tensor c = cat({h, k * 1.0}, 0);  // its backward gives h and k views of one buffer
    backward(sum(p) + sum(c * 3.0));
    CHECK_FALSE(seen.took);
    CHECK(ref::host(a.grad()) == std::vector<double>{8, 8, 8});
    CHECK(ref::host(k.grad()) == std::vector<double>{3, 3});
  }
  SUBCASE("a leaf's gradient is never handed over") {
    Seen seen;
    backward(sum(a * 5.0));  // a.grad = 5 from an earlier backward
    Tensor p = probe(a, seen);
    Tensor u = a * 3.0;
    backward(sum(p) + sum(u));
    CHECK_FALSE(seen.took);
    CHECK(ref::host(a.grad()) == std::vector<double>{9, 9, 9});  // 5 + 3 + 1
  }
}

// linear's backward adds gy W into x's gradient so far inside the GEMM when the tape hands it
// over (x's other consumer ran first in the backward), else returns it for the tape to add:
// the same gradient either way, here against its closed form in f64.
TEST_CASE("linear's input gradient is right whether or not it is accumulated in the GEMM") {
  Generator gen(3101);
  const Tensor W = random_tensor({5, 4}, gen, DType::f64).requires_grad_();
  const Tensor R = random_tensor({3, 5}, gen, DType::f64), S = random_tensor({3, 4}, gen, DType::f64);
  // d/da [sum(linear(a, W) o R) + sum(a o S)] = R W + S
  std::vector<double> want = ref::host(matmul(R, W.detach()) + S);
  for (bool linear_first : {true, false}) {
    CAPTURE(linear_first);
    Tensor a = random_tensor({3, 4}, gen, DType::f64).requires_grad_();
    Tensor h = a * 1.0;  // an intermediate: its gradient is the tape's to hand over
    Tensor loss;
    if (linear_first) {  // recorded first: the mul's closure runs first, linear takes its gradient
      Tensor y = linear(h, W);
      Tensor m = h * S;
      Tensor l1 = sum(m);
      Tensor l2 = sum(y * R);
      loss = l1 + l2;
    } else {  // linear's closure runs first and finds no gradient of h yet
      Tensor m = h * S;
      Tensor y = linear(h, W);
      Tensor l1 = sum(m);
      Tensor l2 = sum(y * R);
      loss = l1 + l2;
    }
    backward(loss);
    const std::vector<double> got = ref::host(a.grad());
    REQUIRE(got.size() == want.size());
    for (size_t i = 0; i < got.size(); ++i) CHECK(got[i] == doctest::Approx(want[i]).epsilon(1e-12));
  }
}
