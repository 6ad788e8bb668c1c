// Module: dotted names, registration order, tags, counting, modes, moves.
#include <doctest/doctest.h>

#include "core/autograd.h"
#include "core/ops.h"
#include "nn/linear.h"
#include "nn/module.h"
#include "nn/norm.h"

using namespace ssmtrain;

namespace {

// A module with its own parameter registered before and after a child list.
struct Stack : Module {
  Tensor scale;
  std::shared_ptr<ModuleList> layers;
  std::shared_ptr<RMSNorm> norm;
  Stack(Generator& gen) {
    scale = register_parameter("scale", Tensor::ones({3}), {param_tag::no_decay});
    layers = register_module("layers", std::make_shared<ModuleList>());
    layers->push_back(std::make_shared<Linear>(3, 4, gen));
    layers->push_back(std::make_shared<Linear>(4, 3, gen, LinearOptions{.bias = false}));
    norm = register_module("norm", std::make_shared<RMSNorm>(3));
    register_buffer("table", Tensor::zeros({2}));
  }
};

struct Root : Module {
  std::shared_ptr<Stack> backbone;
  explicit Root(Generator& gen) { backbone = register_module("backbone", std::make_shared<Stack>(gen)); }
};

std::vector<std::string> names_of(const Module& m) {
  std::vector<std::string> out;
  for (auto& p : m.named_parameters()) out.push_back(p.name);
  return out;
}

}  // namespace

TEST_CASE("Module gives dotted names in registration order and names the tensors") {
  Generator gen(1);
  Stack s(gen);
  std::vector<std::string> expected = {"scale", "layers.0.weight", "layers.0.bias", "layers.1.weight", "norm.weight"};
  CHECK(names_of(s) == expected);
  for (auto& p : s.named_parameters()) {
    CHECK(p.tensor.name() == p.name);
    CHECK(p.tensor.requires_grad());
    CHECK(p.tensor.is_leaf());
  }
  CHECK(s.named_buffers().size() == 1);
  CHECK(s.named_buffers()[0].name == "table");
  CHECK_FALSE(s.named_buffers()[0].tensor.requires_grad());
}

TEST_CASE("Module nested under a root renames its tensors with the full path") {
  Generator gen(1);
  Root root(gen);
  CHECK(names_of(root).front() == "backbone.scale");
  CHECK(root.backbone->layers->at<Linear>(1)->weight().name() == "backbone.layers.1.weight");
  CHECK(root.backbone->path() == "backbone");
  CHECK(root.backbone->layers->at<Linear>(0)->path() == "backbone.layers.0");
  // A listing asked of the child is relative to the child.
  CHECK(names_of(*root.backbone).front() == "scale");
  CHECK(root.parameter("backbone.layers.0.bias").numel() == 4);
  auto modules = root.named_modules();
  CHECK(modules.size() == 6);  // root, backbone, layers, 0, 1, norm
  CHECK(modules[3].first == "backbone.layers.0");
}

TEST_CASE("Module errors name the parameter or module") {
  Generator gen(1);
  Root root(gen);
  try {
    root.parameter("backbone.layers.7.weight");
    FAIL("expected a UserError");
  } catch (const UserError& e) {
    CHECK(std::string(e.what()).find("backbone.layers.7.weight") != std::string::npos);
  }
  Module m;
  m.register_parameter("w", Tensor::zeros({2}));
  CHECK_THROWS_AS(m.register_parameter("w", Tensor::zeros({2})), UserError);
  CHECK_THROWS_AS(m.register_parameter("a.b", Tensor::zeros({2})), UserError);
  CHECK_THROWS_AS(m.register_parameter("ids", Tensor::zeros({2}, DType::i64)), UserError);
  CHECK_THROWS_AS(root.backbone->layers->at<RMSNorm>(0), UserError);
  // A forward on a wrong shape names the layer's path.
  auto lin = root.backbone->layers->at<Linear>(0);
  try {
    lin->forward(Tensor::zeros({2, 5}));
    FAIL("expected a UserError");
  } catch (const UserError& e) {
    CHECK(std::string(e.what()).find("backbone.layers.0") != std::string::npos);
  }
}

TEST_CASE("Module counts parameters and filters by tag") {
  Generator gen(1);
  Stack s(gen);
  // scale 3 + (4*3 + 4) + 3*4 + norm 3
  CHECK(s.num_parameters() == 3 + 16 + 12 + 3);
  CHECK(s.num_parameters([](const NamedParameter& p) { return p.has_tag(param_tag::no_decay); }) == 6);
  s.layers->at<Linear>(1)->tag_all_parameters(param_tag::expert);
  s.tag_parameter("scale", "custom");
  auto params = s.named_parameters();
  CHECK(params[3].has_tag(param_tag::expert));
  CHECK_FALSE(params[1].has_tag(param_tag::expert));
  CHECK(params[0].has_tag("custom"));
  CHECK(params[0].has_tag(param_tag::no_decay));
  CHECK_THROWS_AS(s.tag_parameter("missing", "x"), UserError);
  Generator g2(2);
  Embedding emb(10, 4, g2);
  CHECK(emb.named_parameters()[0].has_tag(param_tag::embedding));
}

TEST_CASE("Module train and eval reach every descendant") {
  Generator gen(1);
  Root root(gen);
  root.eval();
  for (auto& [name, m] : root.named_modules()) CHECK_FALSE(m->is_training());
  root.train();
  for (auto& [name, m] : root.named_modules()) CHECK(m->is_training());
}

TEST_CASE("Module to dtype rebinds the layer members and keeps names and tags") {
  Generator gen(1);
  Root root(gen);
  auto lin = root.backbone->layers->at<Linear>(0);
  std::vector<float> before = lin->weight().to_vector<float>();
  root.to(DType::f64);
  CHECK(lin->weight().dtype() == DType::f64);  // the member handle follows the move
  CHECK(lin->weight().name() == "backbone.layers.0.weight");
  CHECK(root.named_parameters()[0].has_tag(param_tag::no_decay));
  CHECK(root.named_parameters()[0].tensor.requires_grad());
  std::vector<double> after = lin->weight().to_vector<double>();
  for (size_t i = 0; i < before.size(); ++i) CHECK(after[i] == static_cast<double>(before[i]));
  CHECK(lin->forward(Tensor::ones({2, 3}, DType::f64)).dtype() == DType::f64);
}

TEST_CASE("Module zero_grad drops every gradient") {
  Generator gen(1);
  Stack s(gen);
  Tensor y = s.norm->forward(s.layers->at<Linear>(1)->forward(s.layers->at<Linear>(0)->forward(Tensor::ones({2, 3}))));
  backward(sum(mul(y, s.scale)));
  int with_grad = 0;
  for (auto& p : s.named_parameters()) with_grad += p.tensor.grad().defined();
  CHECK(with_grad == 5);
  s.zero_grad();
  for (auto& p : s.named_parameters()) CHECK_FALSE(p.tensor.grad().defined());
}
