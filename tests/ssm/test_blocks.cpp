// The SSM blocks as mixers: Mamba (and its S6 and LTI variants), Mamba-2 and the Switch
// MoE layer. Each block's recurrent step reproduces its full-sequence output position by
// position, its gradients (input and every parameter, dt_bias and the router included)
// match central finite differences in f64, and the MoE routing, capacity and load-balancing
// loss match a direct computation. Blocks are drawn in f32 (as in training) and converted
// to f64, so the checks run at f64 precision on realistic initialisations.
#include <doctest/doctest.h>

#include <cmath>
#include <memory>
#include <vector>

#include "core/autograd.h"
#include "core/ops.h"
#include "gradcheck.h"
#include "ssm/attention.h"
#include "ssm/mamba.h"
#include "ssm/mamba2.h"
#include "ssm/model.h"
#include "ssm/moe.h"

using namespace ssmtrain;

namespace {

// A small block of `kind` initialised from `seed`, in f64.
std::shared_ptr<Mixer> make_block(const std::string& kind, uint64_t seed) {
  Generator gen(seed);
  std::shared_ptr<Mixer> block;
  if (kind == "mamba2") {
    Mamba2Options o;
    o.d_model = 4, o.d_state = 3, o.expand = 2, o.headdim = 4, o.ngroups = 1, o.chunk_size = 2, o.d_conv = 3;
    block = std::make_shared<Mamba2>(o, gen);  // 2 heads of 4, chunks of 2 over L = 5
  } else if (kind == "moe") {
    MoEOptions o;
    o.d_model = 4, o.num_experts = 3, o.d_ff = 5, o.capacity_factor = 1.0;
    block = std::make_shared<SwitchMoE>(o, gen);
  } else {
    MambaOptions o;
    o.d_model = 4, o.d_state = 3, o.expand = 2, o.d_conv = 3;
    o.gated = kind != "s6";
    o.selective = kind != "mamba_lti";
    block = std::make_shared<Mamba>(o, gen);
  }
  block->to(DType::f64);
  return block;
}

// (B, L, D) f64 input drawn in [-1, 1).
Tensor block_input(int64_t B, int64_t L, int64_t D, uint64_t seed) {
  Generator gen(seed);
  return random_tensor({B, L, D}, gen, DType::f64);
}

}  // namespace

TEST_CASE("SSM blocks: step by step equals the full sequence") {
  for (const char* kind : {"mamba", "s6", "mamba_lti", "mamba2", "moe"}) {
    INFO("block ", kind);
    auto block = make_block(kind, 11);
    block->eval();  // the MoE layer drops nothing in eval mode, like generation
    NoGradGuard no_grad;
    const int64_t B = 2, L = 5, D = 4;
    Tensor x = block_input(B, L, D, 3);
    Tensor full = block->forward(x);
    REQUIRE(block->supports_step());
    auto state = block->init_state(B, Device::cpu(), DType::f64);
    std::vector<Tensor> steps;
    for (int64_t t = 0; t < L; ++t) steps.push_back(block->step(x.select(1, t).contiguous(), *state).unsqueeze(1));
    // Both are exact f64 evaluations of the same recurrence in different orders: 1e-10.
    check_close(cat(steps, 1), full, 1e-10, 1e-12, "stepped vs full output");
  }
}

TEST_CASE("SSM blocks: a split sequence continues through the recurrent state") {
  // Steps over the first half, then the second: equals the full forward's second half.
  for (const char* kind : {"mamba", "mamba2"}) {
    INFO("block ", kind);
    auto block = make_block(kind, 5);
    NoGradGuard no_grad;
    Tensor x = block_input(1, 6, 4, 9);
    Tensor full = block->forward(x);
    auto state = block->init_state(1, Device::cpu(), DType::f64);
    for (int64_t t = 0; t < 3; ++t) block->step(x.select(1, t).contiguous(), *state);
    Tensor last = block->step(x.select(1, 3).contiguous(), *state);
    check_close(last, full.select(1, 3).contiguous(), 1e-10, 1e-12, "position 3 after three steps");
  }
}

TEST_CASE("SSM blocks: gradients of the input and every parameter match finite differences") {
  for (const char* kind : {"mamba", "s6", "mamba_lti", "mamba2", "moe"}) {
    INFO("block ", kind);
    auto block = make_block(kind, 21);
    Tensor x = block_input(2, 5, 4, 17);
    x.requires_grad_();
    std::vector<Tensor> inputs{x};
    for (const auto& p : block->named_parameters()) {
      INFO("parameter ", p.name);
      REQUIRE(p.tensor.requires_grad());
      inputs.push_back(p.tensor);
    }
    // The MoE output is piecewise smooth (top-1 routing); with random weights no router
    // logit pair is within 1e-6 of a tie, so the central differences stay on one piece.
    check_gradients([&](const std::vector<Tensor>& in) { return block->forward(in[0]); }, inputs);
    block->take_aux_loss();
  }
}

TEST_CASE("Switch MoE routes top-1, drops tokens over capacity and computes the balancing loss") {
  Generator gen(7);
  MoEOptions o;
  o.d_model = 4, o.num_experts = 3, o.d_ff = 5, o.capacity_factor = 0.5, o.aux_loss_coef = 0.01;
  SwitchMoE moe(o, gen);
  moe.to(DType::f64);
  moe.train();
  const int64_t T = 12;
  Tensor x = block_input(1, T, 4, 2);
  Tensor y = moe.forward(x).reshape({T, 4});
  Tensor aux = moe.take_aux_loss();
  REQUIRE(aux.defined());

  // Reference routing: softmax of the router logits, argmax per token, first-come capacity
  // floor(0.5 * 12 / 3) = 2 per expert, in token order.
  NoGradGuard no_grad;
  Tensor xf = x.reshape({T, 4});
  Tensor router_w;
  for (const auto& p : moe.named_parameters())
    if (p.name == "router.weight") router_w = p.tensor;
  REQUIRE(router_w.defined());
  std::vector<double> probs = softmax(matmul(xf, router_w.transpose(0, 1)), -1).to_vector<double>();
  std::vector<int64_t> taken(3, 0), routed(3, 0);
  int64_t dropped = 0, kept = 0;
  std::vector<double> out = y.to_vector<double>();
  std::vector<double> mean_p(3, 0.0);
  for (int64_t t = 0; t < T; ++t) {
    int64_t best = 0;
    for (int64_t e = 1; e < 3; ++e)
      if (probs[t * 3 + e] > probs[t * 3 + best]) best = e;
    ++routed[best];
    for (int64_t e = 0; e < 3; ++e) mean_p[e] += probs[t * 3 + e] / T;
    double norm = 0;
    for (int64_t d = 0; d < 4; ++d) norm += std::fabs(out[t * 4 + d]);
    if (taken[best] < 2) {
      ++taken[best], ++kept;
      CHECK(norm > 0);  // a kept token gets its expert's (gated) output
    } else {
      ++dropped;
      CHECK(norm == 0);  // a dropped token contributes nothing; the residual carries it
    }
  }
  CHECK(dropped > 0);  // the test exercises the capacity limit
  const ExpertUsage usage = moe.usage();
  CHECK(usage.tokens == T);
  CHECK(usage.assignments == T);
  CHECK(usage.dropped == dropped);
  CHECK(usage.tokens_routed == routed);
  // alpha * E * sum_i f_i P_i with f the routed share and P the mean router probability.
  double balance = 0;
  for (int64_t e = 0; e < 3; ++e) balance += static_cast<double>(routed[e]) / T * mean_p[e];
  balance *= 3;
  CHECK(usage.aux_loss == doctest::Approx(balance).epsilon(1e-12));
  CHECK(aux.item<double>() == doctest::Approx(0.01 * balance).epsilon(1e-6));
  // In eval mode nothing is dropped (every token gets its expert's output) and the
  // training usage is left as it was.
  moe.eval();
  Tensor y_eval = moe.forward(x).reshape({T, 4});
  std::vector<double> out_eval = y_eval.to_vector<double>();
  for (int64_t t = 0; t < T; ++t) {
    double norm = 0;
    for (int64_t d = 0; d < 4; ++d) norm += std::fabs(out_eval[t * 4 + d]);
    CHECK(norm > 0);
  }
  CHECK(moe.usage().dropped == dropped);
  CHECK(moe.usage().tokens == T);
}

TEST_CASE("the model factory builds every mixer and mixed stacks with the expected layers") {
  for (const std::string& mixer : mixer_names()) {
    INFO("mixer ", mixer);
    ModelSpec spec;
    spec.model.mixer = mixer;
    spec.model.vocab_size = 10, spec.model.d_model = 8, spec.model.n_layer = 2, spec.model.d_state = 4;
    spec.model.mixers.get<Mamba2Options>().headdim = 4;
    spec.model.mixers.get<Mamba2Options>().chunk_size = 4;
    spec.model.mixers.get<AttentionOptions>().head_dim = 4;
    Generator gen(1);
    auto model = build_language_model(spec, gen);
    Tensor ids = Tensor::from_vector<int64_t>({1, 2, 3, 4, 5, 6}, {1, 6});
    LMOutput out = model->forward(ids);
    CHECK(out.logits.shape() == Dims{1, 6, 16});  // vocab 10 padded to a multiple of 8
    CHECK(std::isfinite(sum(out.logits).item<float>()));
  }
  // MoE-Mamba alternation: layers 1 and 3 are Switch layers.
  ModelSpec spec;
  spec.model.mixer = "mamba", spec.model.n_layer = 4, spec.model.d_model = 8, spec.model.vocab_size = 10;
  spec.model.mixers.get<MoEOptions>().every = 2;
  spec.model.mixers.get<MoEOptions>().num_experts = 4;
  CHECK(layer_mixers(spec.model) == std::vector<std::string>{"mamba", "moe", "mamba", "moe"});
  Generator gen(2);
  auto model = build_language_model(spec, gen);
  CHECK(moe_usage(*model).size() == 2);
  CHECK(moe_routing(spec) == std::pair<int, int>{1, 4});
  // A mixed stack by name.
  ModelSpec mixed;
  mixed.model.layers = {"mamba", "s4d", "mamba2"};
  mixed.model.n_layer = 3, mixed.model.d_model = 8, mixed.model.vocab_size = 10, mixed.model.d_state = 4;
  mixed.model.mixers.get<Mamba2Options>().headdim = 4;
  CHECK(layer_mixers(mixed.model)[1] == "s4d");
  Generator gen2(3);
  CHECK(build_language_model(mixed, gen2)->n_layer() == 3);
}
