// Activation recomputation (core/recompute.h): the loss and every gradient with recompute()
// are bitwise those of the plain graph (the recomputed forward repeats the same kernels on the
// same data); undefined outputs and inputs pass through; inputs without grad get none;
// recompute inside recompute; no-grad mode records nothing; the tape ends empty.
#include <doctest/doctest.h>

#include <string>

#include "core/autograd.h"
#include "core/ops.h"
#include "core/recompute.h"
#include "gradcheck.h"

using namespace ssmtrain;

namespace {

// The graph under test: x (B, D), z (B, H) -> {linear(tanh(linear(x, W1)), W2) (B, D),
// sum(tanh(linear(x, W1)) * z) + sum(x * x) (scalar)}. x is read twice, W1's product
// is used by both outputs.
std::vector<Tensor> graph(const std::vector<Tensor>& in, const Tensor& w1, const Tensor& w2) {
  Tensor a = tanh(linear(in[0], w1));
  Tensor out0 = linear(a, w2);
  Tensor out1 = add(sum(mul(a, in[1])), sum(mul(in[0], in[0])));
  return {out0, out1};
}

struct Leaves {
  Tensor x0, z, w1, w2;  // leaves; x = 1.5 * x0 is the (non-leaf) input of the graph
};

Leaves make_leaves(DType dt, uint64_t seed, bool z_grad = true) {
  Generator gen(seed);
  Leaves l{random_tensor({4, 6}, gen, dt), random_tensor({4, 5}, gen, dt), random_tensor({5, 6}, gen, dt),
           random_tensor({6, 5}, gen, dt)};
  l.x0.requires_grad_();
  if (z_grad) l.z.requires_grad_();
  l.w1.requires_grad_();
  l.w2.requires_grad_();
  return l;
}

struct Outcome {
  Tensor loss;
  std::vector<Tensor> grads;  // of x0, z, w1, w2 (undefined where none)
};

// The loss sum(out0 * r) + 0.5 * out1 (+ its extension `extra`), with the graph run plainly
// or through recompute (nested: the inner half recomputed inside the outer recomputation).
enum class Mode { plain, recompute, nested };

Outcome run(const Leaves& l, Mode mode) {
  clear_tape();
  Generator gen(77);
  Tensor r = random_tensor({4, 6}, gen, l.x0.dtype());
  Tensor x = mul(l.x0, 1.5);
  std::vector<Tensor> outs;
  const Tensor w1 = l.w1, w2 = l.w2;
  if (mode == Mode::plain) {
    outs = graph({x, l.z}, w1, w2);
  } else if (mode == Mode::recompute) {
    const size_t before = tape_size();
    outs = recompute(
        "test_graph", [w1, w2](const std::vector<Tensor>& in) { return graph(in, w1, w2); }, {x, l.z}, {w1, w2});
    CHECK(tape_size() == before + 1);  // fn's own ops are not recorded
  } else {
    // Outer recompute over the whole graph; its fn recomputes tanh(linear(x, W1)) again.
    auto outer = [w1, w2](const std::vector<Tensor>& in) {
      std::vector<Tensor> a = recompute(
          "inner", [w1](const std::vector<Tensor>& i) { return std::vector<Tensor>{tanh(linear(i[0], w1))}; },
          {in[0]}, {w1});
      Tensor out0 = linear(a[0], w2);
      Tensor out1 = add(sum(mul(a[0], in[1])), sum(mul(in[0], in[0])));
      return std::vector<Tensor>{out0, out1};
    };
    outs = recompute("outer", outer, {x, l.z}, {w1, w2});
  }
  Tensor loss = add(sum(mul(outs[0], r)), mul(outs[1], 0.5));
  backward(loss);
  CHECK(tape_size() == 0);
  return {loss.detach(), {l.x0.grad(), l.z.grad(), l.w1.grad(), l.w2.grad()}};
}

void check_same(const Outcome& got, const Outcome& want) {
  check_close(got.loss, want.loss, 0, 0, "loss");
  const char* names[] = {"grad x0", "grad z", "grad w1", "grad w2"};
  for (size_t i = 0; i < want.grads.size(); ++i) {
    INFO(std::string(names[i]));
    REQUIRE(got.grads[i].defined() == want.grads[i].defined());
    if (want.grads[i].defined()) check_close(got.grads[i], want.grads[i], 0, 0, names[i]);
  }
}

}  // namespace

TEST_CASE("recompute gives bitwise the loss and gradients of the plain graph") {
  for (DType dt : {DType::f64, DType::f32})
    for (Mode mode : {Mode::recompute, Mode::nested}) {
      const std::string how = mode == Mode::nested ? " nested" : " single";
      INFO(std::string(dtype_name(dt)), how);
      Leaves a = make_leaves(dt, 1), b = make_leaves(dt, 1);
      Outcome want = run(a, Mode::plain);
      Outcome got = run(b, mode);
      for (const Tensor& g : want.grads) REQUIRE(g.defined());
      check_same(got, want);
      // A second step accumulates onto the parameters' .grad exactly as the plain graph does.
      check_same(run(b, mode), run(a, Mode::plain));
    }
}

TEST_CASE("recompute returns fn's values and runs fn once forward and once backward") {
  Leaves l = make_leaves(DType::f64, 2);
  Tensor x = mul(l.x0, 1.5);
  int calls = 0;
  const Tensor w1 = l.w1, w2 = l.w2;
  std::vector<Tensor> want;
  {
    NoGradGuard no_grad;
    want = graph({x, l.z}, w1, w2);
  }
  std::vector<Tensor> outs = recompute(
      "counted",
      [&calls, w1, w2](const std::vector<Tensor>& in) {
        ++calls;
        return graph(in, w1, w2);
      },
      {x, l.z}, {w1, w2});
  CHECK(calls == 1);
  REQUIRE(outs.size() == 2);
  CHECK(outs[0].requires_grad());
  CHECK(outs[1].requires_grad());
  check_close(outs[0], want[0], 0, 0, "out0");
  check_close(outs[1], want[1], 0, 0, "out1");
  backward(add(sum(outs[0]), outs[1]));
  CHECK(calls == 2);
  CHECK(tape_size() == 0);
}

TEST_CASE("recompute passes undefined outputs and inputs through") {
  for (DType dt : {DType::f64, DType::f32}) {
    INFO(std::string(dtype_name(dt)));
    Leaves a = make_leaves(dt, 3), b = make_leaves(dt, 3);
    auto loss_of = [](const std::vector<Tensor>& outs) { return add(sum(outs[0]), sum(outs[2])); };
    // Plain.
    clear_tape();
    Tensor pa = tanh(linear(a.x0, a.w1));
    Tensor want_loss = loss_of({pa, Tensor(), mul(pa, a.z)});
    backward(want_loss);
    // fn takes an undefined second input and returns an undefined middle output.
    const Tensor w1 = b.w1;
    std::vector<Tensor> outs = recompute(
        "holes",
        [w1](const std::vector<Tensor>& in) {
          CHECK_FALSE(in[1].defined());
          Tensor p = tanh(linear(in[0], w1));
          return std::vector<Tensor>{p, Tensor(), mul(p, in[2])};
        },
        {b.x0, Tensor(), b.z}, {w1});
    REQUIRE(outs.size() == 3);
    CHECK_FALSE(outs[1].defined());
    REQUIRE(outs[0].defined());
    REQUIRE(outs[2].defined());
    Tensor got_loss = loss_of(outs);
    backward(got_loss);
    CHECK(tape_size() == 0);
    check_close(got_loss.detach(), want_loss.detach(), 0, 0, "loss");
    check_close(b.x0.grad(), a.x0.grad(), 0, 0, "grad x0");
    check_close(b.z.grad(), a.z.grad(), 0, 0, "grad z");
    check_close(b.w1.grad(), a.w1.grad(), 0, 0, "grad w1");
    CHECK_FALSE(b.w2.grad().defined());  // not used
  }
}

TEST_CASE("recompute: an input that does not require grad gets no gradient") {
  for (DType dt : {DType::f64, DType::f32})
    for (Mode mode : {Mode::recompute, Mode::nested}) {
      const std::string how = mode == Mode::nested ? " nested" : " single";
      INFO(std::string(dtype_name(dt)), how);
      Leaves a = make_leaves(dt, 4, /*z_grad=*/false), b = make_leaves(dt, 4, false);
      Outcome want = run(a, Mode::plain);
      Outcome got = run(b, mode);
      CHECK_FALSE(got.grads[1].defined());
      check_same(got, want);
    }
  // An output that depends only on inputs without grad, beside one that has a gradient.
  Leaves a = make_leaves(DType::f64, 5, false), b = make_leaves(DType::f64, 5, false);
  clear_tape();
  Tensor want_loss = add(sum(linear(a.x0, a.w1)), sum(square(a.z)));
  backward(want_loss);
  const Tensor w1 = b.w1;
  std::vector<Tensor> outs = recompute(
      "mixed",
      [w1](const std::vector<Tensor>& in) { return std::vector<Tensor>{linear(in[0], w1), square(in[1])}; },
      {b.x0, b.z}, {w1});
  Tensor got_loss = add(sum(outs[0]), sum(outs[1]));
  backward(got_loss);
  CHECK(tape_size() == 0);
  check_close(got_loss.detach(), want_loss.detach(), 0, 0, "loss");
  check_close(b.x0.grad(), a.x0.grad(), 0, 0, "grad x0");
  check_close(b.w1.grad(), a.w1.grad(), 0, 0, "grad w1");
  CHECK_FALSE(b.z.grad().defined());
}

TEST_CASE("recompute in no-grad mode returns fn's outputs and records nothing") {
  Leaves l = make_leaves(DType::f32, 6);
  const Tensor w1 = l.w1, w2 = l.w2;
  int calls = 0;
  auto fn = [&calls, w1, w2](const std::vector<Tensor>& in) {
    ++calls;
    return graph(in, w1, w2);
  };
  clear_tape();
  std::vector<Tensor> want, got;
  {
    NoGradGuard no_grad;
    want = graph({l.x0, l.z}, w1, w2);
    got = recompute("no_grad", fn, {l.x0, l.z}, {w1, w2});
    CHECK(tape_size() == 0);
  }
  CHECK(calls == 1);
  REQUIRE(got.size() == 2);
  for (size_t k = 0; k < 2; ++k) {
    CHECK_FALSE(got[k].requires_grad());
    check_close(got[k], want[k], 0, 0, "output");
  }
  // Grad mode on, but nothing requires grad: fn runs as is, nothing is recorded.
  Tensor x = l.x0.detach(), z = l.z.detach(), v1 = w1.detach(), v2 = w2.detach();
  std::vector<Tensor> plain = recompute(
      "nothing_trainable", [v1, v2](const std::vector<Tensor>& in) { return graph(in, v1, v2); }, {x, z}, {v1, v2});
  CHECK(tape_size() == 0);
  for (size_t k = 0; k < 2; ++k) {
    CHECK_FALSE(plain[k].requires_grad());
    check_close(plain[k], want[k], 0, 0, "output without trainable inputs");
  }
}

TEST_CASE("recompute leaves the tape empty after backward and keeps earlier and later nodes") {
  Leaves a = make_leaves(DType::f64, 7), b = make_leaves(DType::f64, 7);
  clear_tape();
  Outcome want = run(a, Mode::plain);
  // run() checks tape_size() == before + 1 around recompute and == 0 after backward; here also
  // the count of the whole forward: mul (x) + recompute + the loss's 4 nodes.
  Tensor x = mul(b.x0, 1.5);
  CHECK(tape_size() == 1);
  const Tensor w1 = b.w1, w2 = b.w2;
  std::vector<Tensor> outs = recompute(
      "test_graph", [w1, w2](const std::vector<Tensor>& in) { return graph(in, w1, w2); }, {x, b.z}, {w1, w2});
  CHECK(tape_size() == 2);
  Generator gen(77);
  Tensor r = random_tensor({4, 6}, gen, DType::f64);
  Tensor loss = add(sum(mul(outs[0], r)), mul(outs[1], 0.5));
  CHECK(tape_size() == 6);
  backward(loss);
  CHECK(tape_size() == 0);
  check_close(loss.detach(), want.loss, 0, 0, "loss");
  check_close(b.x0.grad(), want.grads[0], 0, 0, "grad x0");
  check_close(b.w1.grad(), want.grads[2], 0, 0, "grad w1");
}
