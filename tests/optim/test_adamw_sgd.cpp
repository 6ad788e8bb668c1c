// AdamW and SGD against hand-computed updates; state export and import.
#include <doctest/doctest.h>

#include "gradcheck.h"
#include "optim/adamw.h"
#include "optim/sgd.h"

using namespace ssmtrain;

namespace {

// Relative closeness (doctest's Approx alone has an absolute floor of epsilon).
doctest::Approx rel(double v, double eps = 1e-9) { return doctest::Approx(v).scale(0).epsilon(eps); }

Tensor param(const std::vector<float>& v, const std::string& name) {
  Tensor t = Tensor::from_vector(v, {static_cast<int64_t>(v.size())});
  t.requires_grad_();
  t.set_name(name);
  return t;
}

void set_grad(Tensor& p, const std::vector<float>& g) { p.set_grad(Tensor::from_vector(g, p.shape())); }

ParamGroup group(const std::string& name, std::vector<Tensor> ts, double wd) {
  ParamGroup g;
  g.name = name;
  g.weight_decay = wd;
  for (Tensor& t : ts) g.params.push_back(ParamSpec{t.name(), t, {}});
  return g;
}

}  // namespace

TEST_CASE("AdamW matches a hand-computed two-step update") {
  // lr 0.1, betas (0.9, 0.999), eps 1e-8, weight decay 0.01 on p, none on q.
  Tensor p = param({1.0f, -2.0f}, "p"), q = param({1.0f}, "q");
  AdamW opt({group("decay", {p}, 0.01), group("no_decay", {q}, 0.0)}, 0.1,
            AdamWOptions{.beta1 = 0.9, .beta2 = 0.999, .eps = 1e-8});
  // Step 1, g = (0.5, -0.1):
  //   m = 0.1 g = (0.05, -0.01)            v = 0.001 g^2 = (2.5e-4, 1e-5)
  //   m_hat = m / 0.1 = g                   v_hat = v / 0.001 = g^2
  //   p = p * (1 - 0.1 * 0.01) - 0.1 * m_hat / (|g| + 1e-8)
  //     = (0.999 - 0.1 * 0.99999998, -1.998 + 0.1 * 0.9999999) = (0.899000002, -1.89800001)
  set_grad(p, {0.5f, -0.1f});
  set_grad(q, {0.25f});
  opt.step();
  check_close(p, Tensor::from_vector<double>({0.899000002, -1.89800001}, {2}), 1e-6, 0, "p after step 1");
  // q: no decay, the first Adam step moves it by lr * sign(g) (up to eps): 1 - 0.1.
  check_close(q, Tensor::from_vector<double>({0.9}, {1}), 1e-6, 0, "q after step 1");
  // Step 2, g = (0.2, 0.3):
  //   m = 0.9 m + 0.1 g = (0.065, 0.021)   v = 0.999 v + 0.001 g^2 = (2.8975e-4, 9.999e-5)
  //   bias corrections 1 - 0.9^2 = 0.19 and 1 - 0.999^2 = 0.001999
  //   p = p * 0.999 - 0.1 * (m / 0.19) / (sqrt(v / 0.001999) + 1e-8) = (0.8082434839, -1.9455209911)
  const float q_after_first = q.item<float>();
  set_grad(p, {0.2f, 0.3f});
  q.zero_grad();  // no gradient: q is skipped and its step counter stays at 1
  opt.step();
  check_close(p, Tensor::from_vector<double>({0.8082434839, -1.9455209911}, {2}), 1e-6, 0, "p after step 2");
  CHECK(q.item<float>() == q_after_first);
  CHECK(opt.step_count() == 2);
  auto state = opt.export_state();
  REQUIRE(state.size() == 6);
  CHECK(state[0].param_name == "p");
  CHECK(state[0].kind == "step");
  CHECK(state[0].value.item<int64_t>() == 2);
  CHECK(state[1].kind == "exp_avg");
  check_close(state[1].value, Tensor::from_vector<double>({0.065, 0.021}, {2}), 1e-6, 0, "exp_avg");
  check_close(state[2].value, Tensor::from_vector<double>({2.8975e-4, 9.999e-5}, {2}), 1e-5, 0, "exp_avg_sq");
  CHECK(state[3].param_name == "q");
  CHECK(state[3].value.item<int64_t>() == 1);
}

TEST_CASE("AdamW group learning rates follow the schedule in proportion") {
  Tensor a = param({0.0f}, "a"), b = param({0.0f}, "b"), c = param({0.0f}, "c");
  ParamGroup ga = group("decay", {a}, 0.0), gb = group("scaled", {b}, 0.0), gc = group("ssm", {c}, 0.0);
  gb.lr_scale = 0.5;
  gc.lr = 1e-3;
  AdamW opt({ga, gb, gc}, 1e-2);
  CHECK(opt.group_lr(0) == rel(1e-2));
  CHECK(opt.group_lr(1) == rel(5e-3));
  CHECK(opt.group_lr(2) == rel(1e-3));
  opt.set_lr(5e-3);  // half the peak
  CHECK(opt.group_lr(0) == rel(5e-3));
  CHECK(opt.group_lr(1) == rel(2.5e-3));
  CHECK(opt.group_lr(2) == rel(5e-4));
  // The first Adam step moves each parameter by its group's lr.
  for (Tensor* t : {&a, &b, &c}) set_grad(*t, {1.0f});
  opt.step();
  CHECK(a.item<float>() == rel(-5e-3, 1e-5));
  CHECK(b.item<float>() == rel(-2.5e-3, 1e-5));
  CHECK(c.item<float>() == rel(-5e-4, 1e-5));
}

TEST_CASE("AdamW rejects parameters that are not f32 and duplicate names") {
  Tensor d = Tensor::zeros({2}, DType::f64);
  d.requires_grad_();
  CHECK_THROWS_AS(AdamW({group("g", {d}, 0.0)}, 1e-3), UserError);
  Tensor a = param({1.0f}, "same"), b = param({1.0f}, "same");
  CHECK_THROWS_AS(AdamW({group("g", {a, b}, 0.0)}, 1e-3), UserError);
  CHECK_THROWS_AS(AdamW({group("g", {a}, 0.0)}, 1e-3, AdamWOptions{.beta1 = 1.0}), UserError);
}

TEST_CASE("SGD with momentum and weight decay matches a hand-computed update") {
  // lr 0.1, momentum 0.9, coupled weight decay 0.1 (PyTorch SGD), p0 = 1, g = 0.5 each step.
  //   step 1: d = 0.5 + 0.1 * 1 = 0.6;       buf = 0.6;                 p = 1 - 0.06 = 0.94
  //   step 2: d = 0.5 + 0.1 * 0.94 = 0.594;  buf = 0.9*0.6 + 0.594 = 1.134;  p = 0.94 - 0.1134 = 0.8266
  Tensor p = param({1.0f}, "p");
  SGD opt({group("g", {p}, 0.1)}, 0.1, SGDOptions{.momentum = 0.9});
  set_grad(p, {0.5f});
  opt.step();
  CHECK(p.item<float>() == doctest::Approx(0.94).epsilon(1e-6));
  set_grad(p, {0.5f});
  opt.step();
  CHECK(p.item<float>() == doctest::Approx(0.8266).epsilon(1e-6));
  auto state = opt.export_state();
  REQUIRE(state.size() == 2);
  CHECK(state[1].kind == "momentum_buffer");
  CHECK(state[1].value.item<float>() == doctest::Approx(1.134).epsilon(1e-6));

  // Without momentum: plain gradient descent and no buffer.
  Tensor r = param({2.0f, 3.0f}, "r");
  SGD plain({group("g", {r}, 0.0)}, 0.5, SGDOptions{.momentum = 0.0});
  set_grad(r, {1.0f, -2.0f});
  plain.step();
  check_close(r, Tensor::from_vector<double>({1.5, 4.0}, {2}), 1e-7, 0, "plain sgd");
  CHECK(plain.export_state().size() == 1);
}

TEST_CASE("Optimizer state export and import resume exactly") {
  Generator gen(3);
  auto make = [&](uint64_t seed) {
    Generator g(seed);
    Tensor w = random_tensor({4, 3}, g), b = random_tensor({3}, g);
    w.requires_grad_().set_name("w");
    b.requires_grad_().set_name("b");
    return std::pair<Tensor, Tensor>{w, b};
  };
  auto [w1, b1] = make(7);
  auto [w2, b2] = make(7);
  AdamW first({group("decay", {w1}, 0.1), group("no_decay", {b1}, 0.0)}, 1e-2);
  std::vector<std::vector<Tensor>> grads;
  for (int s = 0; s < 3; ++s) grads.push_back({random_tensor({4, 3}, gen), random_tensor({3}, gen)});
  for (int s = 0; s < 2; ++s) {
    w1.set_grad(grads[s][0]);
    b1.set_grad(grads[s][1]);
    first.step();
  }
  // A fresh optimizer over parameters with the same values, given the exported state.
  {
    NoGradGuard ng;
    backend(Device::cpu()).copy(w1, w2);
    backend(Device::cpu()).copy(b1, b2);
  }
  AdamW second({group("decay", {w2}, 0.1), group("no_decay", {b2}, 0.0)}, 1e-2);
  std::vector<StateTensor> exported = first.export_state();
  for (StateTensor& e : exported) e.value = e.value.clone();  // as a checkpoint would hold them
  second.import_state(exported);
  CHECK(second.step_count() == 2);
  w1.set_grad(grads[2][0]);
  b1.set_grad(grads[2][1]);
  w2.set_grad(grads[2][0]);
  b2.set_grad(grads[2][1]);
  first.step();
  second.step();
  check_close(w2, w1, 0, 0, "resumed w");
  check_close(b2, b1, 0, 0, "resumed b");

  // Bad state is rejected with the parameter named, and leaves the optimizer untouched.
  std::vector<StateTensor> bad = exported;
  bad[0].param_name = "layers.9.w";
  try {
    second.import_state(bad);
    FAIL("expected a UserError");
  } catch (const UserError& e) {
    CHECK(std::string(e.what()).find("layers.9.w") != std::string::npos);
  }
  bad = exported;
  bad[1].value = Tensor::zeros({3, 4});
  CHECK_THROWS_AS(second.import_state(bad), UserError);
  bad = exported;
  bad.erase(bad.begin() + 2);  // w without exp_avg_sq
  CHECK_THROWS_AS(second.import_state(bad), UserError);
  CHECK(second.step_count() == 3);
}
