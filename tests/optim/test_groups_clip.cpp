// Parameter groups by names and tags; global-norm clipping.
#include <doctest/doctest.h>

#include <cmath>

#include "core/autograd.h"
#include "core/ops.h"
#include "gradcheck.h"
#include "optim/adamw.h"
#include "optim/clip.h"
#include "optim/param_groups.h"

using namespace ssmtrain;

namespace {

ParamSpec spec(const std::string& name, const Dims& shape, std::set<std::string> tags = {}) {
  Tensor t = Tensor::zeros(shape);
  t.requires_grad_().set_name(name);
  return ParamSpec{name, t, std::move(tags)};
}

std::vector<std::string> names(const ParamGroup& g) {
  std::vector<std::string> out;
  for (auto& p : g.params) out.push_back(p.name);
  return out;
}

// The fields nn's NamedParameter has, to show param_specs needs no knowledge of nn/.
struct FakeNamed {
  std::string name;
  Tensor tensor;
  std::set<std::string> tags;
};

}  // namespace

TEST_CASE("make_param_groups splits decay no_decay and ssm by names tags and rank") {
  std::vector<ParamSpec> params = {
      spec("embedding.weight", {16, 4}, {"embedding"}),
      spec("layers.0.norm.weight", {4}, {"no_decay"}),
      spec("layers.0.mixer.in_proj.weight", {16, 4}),
      spec("layers.0.mixer.conv1d.weight", {8, 1, 4}),
      spec("layers.0.mixer.conv1d.bias", {8}),
      spec("layers.0.mixer.A_log", {8, 16}, {"no_decay"}),
      spec("layers.0.mixer.D", {8}, {"no_decay"}),
      spec("layers.0.mixer.dt_proj.bias", {8}, {"no_decay"}),
      spec("layers.0.mixer.bias", {4, 4}),  // a 2-D tensor named bias
      spec("layers.1.s4.log_dt", {8}, {"ssm"}),
      spec("layers.1.s4.A_real", {8, 4}, {"ssm"}),
      spec("norm_f.weight", {4}, {"no_decay"}),
  };
  GroupRules rules;
  rules.weight_decay = 0.1;
  rules.ssm_lr = 1e-3;
  auto groups = make_param_groups(params, rules);
  REQUIRE(groups.size() == 3);
  CHECK(groups[0].name == "decay");
  CHECK(groups[0].weight_decay == 0.1);
  CHECK(names(groups[0]) ==
        std::vector<std::string>{"embedding.weight", "layers.0.mixer.in_proj.weight", "layers.0.mixer.conv1d.weight"});
  CHECK(groups[1].name == "no_decay");
  CHECK(groups[1].weight_decay == 0.0);
  CHECK(names(groups[1]) == std::vector<std::string>{"layers.0.norm.weight", "layers.0.mixer.conv1d.bias",
                                                     "layers.0.mixer.A_log", "layers.0.mixer.D",
                                                     "layers.0.mixer.dt_proj.bias", "layers.0.mixer.bias",
                                                     "norm_f.weight"});
  CHECK(groups[2].name == "ssm");
  CHECK(groups[2].weight_decay == 0.0);
  REQUIRE(groups[2].lr.has_value());
  CHECK(*groups[2].lr == 1e-3);
  CHECK(names(groups[2]) == std::vector<std::string>{"layers.1.s4.log_dt", "layers.1.s4.A_real"});

  // Not decaying the embedding moves it; empty groups disappear.
  rules.decay_embedding = false;
  auto g2 = make_param_groups({params[0], params[1]}, rules);
  REQUIRE(g2.size() == 1);
  CHECK(g2[0].name == "no_decay");
  CHECK(g2[0].params.size() == 2);
}

TEST_CASE("make_param_groups keeps a tied tensor once and param_specs converts records") {
  ParamSpec w = spec("embedding.weight", {8, 4}, {"embedding"});
  ParamSpec alias{"lm_head.weight", w.tensor, {}};
  auto groups = make_param_groups({w, alias}, GroupRules{});
  REQUIRE(groups.size() == 1);
  CHECK(names(groups[0]) == std::vector<std::string>{"embedding.weight"});

  std::vector<FakeNamed> named = {{"a.weight", Tensor::zeros({2, 2}), {"no_decay"}}};
  auto specs = param_specs(named);
  REQUIRE(specs.size() == 1);
  CHECK(specs[0].name == "a.weight");
  CHECK(specs[0].has_tag("no_decay"));
  CHECK(specs[0].tensor.impl() == named[0].tensor.impl());
}

TEST_CASE("clip_grad_norm measures the global norm and scales above max_norm") {
  Tensor a = Tensor::zeros({2}), b = Tensor::zeros({1}), c = Tensor::zeros({3});
  a.requires_grad_();
  b.requires_grad_();
  c.requires_grad_();  // no gradient: skipped
  a.set_grad(Tensor::from_vector<float>({3, 4}, {2}));
  b.set_grad(Tensor::from_vector<float>({12}, {1}));
  CHECK(grad_norm({a, b, c}) == doctest::Approx(13.0));
  ClipResult none = clip_grad_norm({a, b, c}, 20.0);
  CHECK(none.norm == doctest::Approx(13.0));
  CHECK_FALSE(none.clipped);
  CHECK(a.grad().to_vector<float>() == std::vector<float>{3, 4});

  ClipResult r = clip_grad_norm({a, b, c}, 6.5);
  CHECK(r.finite);
  CHECK(r.clipped);
  CHECK(r.norm == doctest::Approx(13.0));
  CHECK(r.scale == doctest::Approx(6.5 / (13.0 + 1e-6)));
  check_close(a.grad(), Tensor::from_vector<double>({1.5, 2.0}, {2}), 1e-6, 0, "clipped a");
  check_close(b.grad(), Tensor::from_vector<double>({6.0}, {1}), 1e-6, 0, "clipped b");
  CHECK(grad_norm({a, b}) == doctest::Approx(6.5).epsilon(1e-6));

  ClipResult measure = clip_grad_norm({a, b}, 0.0);  // max_norm <= 0: measure only
  CHECK_FALSE(measure.clipped);
  CHECK(measure.norm == doctest::Approx(6.5).epsilon(1e-6));
}

TEST_CASE("clip_grad_norm reports a non-finite norm and leaves gradients alone") {
  Tensor a = Tensor::zeros({2});
  a.requires_grad_();
  a.set_grad(Tensor::from_vector<float>({INFINITY, 1}, {2}));
  ClipResult r = clip_grad_norm({a}, 1.0);
  CHECK_FALSE(r.finite);
  CHECK_FALSE(r.clipped);
  CHECK(std::isinf(a.grad().to_vector<float>()[0]));
  CHECK(a.grad().to_vector<float>()[1] == 1.0f);
  a.set_grad(Tensor::from_vector<float>({NAN, 1}, {2}));
  CHECK_FALSE(clip_grad_norm({a}, 1.0).finite);
}

TEST_CASE("clip_grad_norm scales gradients shared between parameters once each") {
  // y = a + b: autograd may hand both leaves the same gradient tensor.
  Tensor a = Tensor::zeros({2}), b = Tensor::zeros({2});
  a.requires_grad_();
  b.requires_grad_();
  backward(sum(mul(add(a, b), Tensor::from_vector<float>({3, 4}, {2}))));
  CHECK(grad_norm({a, b}) == doctest::Approx(std::sqrt(50.0)));
  clip_grad_norm({a, b, a}, 1.0);  // `a` listed twice (a tied weight) still counts once
  double expected = 1.0 / (std::sqrt(50.0) + 1e-6);
  check_close(a.grad(), Tensor::from_vector<double>({3 * expected, 4 * expected}, {2}), 1e-6, 0, "a");
  check_close(b.grad(), Tensor::from_vector<double>({3 * expected, 4 * expected}, {2}), 1e-6, 0, "b");
}
