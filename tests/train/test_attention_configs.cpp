// The attention configs under configs/ (docs/attention.md): they parse, stack the layers
// their comments describe and have the parameter counts they state; and a small
// Transformer++ trained on the CPU learns a task only attention can solve (copying).
#include <doctest/doctest.h>

#include <cmath>
#include <string>
#include <vector>

#include "core/autograd.h"
#include "optim/adamw.h"
#include "optim/param_groups.h"
#include "ssm/attention.h"
#include "ssm/mlp_mixer.h"
#include "ssm/model.h"
#include "train/config.h"

using namespace ssmtrain;

namespace {
std::string config_file(const std::string& name) { return std::string(SSMTRAIN_SOURCE_DIR) + "/configs/" + name; }
}  // namespace

TEST_CASE("configs/transformer_text.yaml: 4 Transformer++ blocks of attention and SwiGLU mlp layers") {
  const Config c = load_config(config_file("transformer_text.yaml"));
  const std::vector<std::string> expected = {"attention", "mlp", "attention", "mlp",
                                             "attention", "mlp", "attention", "mlp"};
  CHECK(layer_mixers(c.model) == expected);
  ModelSpec spec;
  spec.model = c.model;
  Generator gen(1);
  auto model = build_language_model(spec, gen);
  auto* attn = dynamic_cast<Attention*>(model->block(0)->mixer().get());
  REQUIRE(attn);
  CHECK(attn->heads() == 4);
  CHECK(attn->kv_heads() == 4);
  // Per block: attention 4 d^2 = 262,144, SwiGLU 3 d 704 = 540,672, two norms 512; plus the
  // embedding (256 x 256) and the final norm: against 3,569,920 for configs/mamba_text.yaml.
  const ParameterCounts n = model->parameter_counts();
  CHECK(n.total == 3279104);
  CHECK(n.embedding == 65536);
}

TEST_CASE("configs/jamba_text.yaml: one attention layer per 8 mixers, MLPs between, MoE in every second MLP") {
  const Config c = load_config(config_file("jamba_text.yaml"));
  const std::vector<std::string> expected = {"mamba",     "mlp", "mamba", "moe", "mamba", "mlp", "mamba", "moe",
                                             "attention", "mlp", "mamba", "moe", "mamba", "mlp", "mamba", "moe"};
  CHECK(layer_mixers(c.model) == expected);
  ModelSpec spec;
  spec.model = c.model;
  Generator gen(2);
  auto model = build_language_model(spec, gen);
  CHECK(model->n_layer() == 16);
  auto* attn = dynamic_cast<Attention*>(model->block(8)->mixer().get());
  REQUIRE(attn);
  CHECK(attn->kv_heads() == 2);
}

TEST_CASE("a small Transformer++ learns to copy: loss on the repeated half of a sequence falls far below chance") {
  // Rows of 2T tokens: T random tokens from [1, V), then the same T again. The second half
  // is predictable only by looking back T positions (an induction head across two attention
  // layers); the first half stays at chance, log(V - 1).
  const int64_t V = 16, T = 12, L = 2 * T, B = 16;
  ModelSpec spec;
  spec.model.mixer = "attention";
  spec.model.n_layer = 4, spec.model.d_model = 32, spec.model.vocab_size = V;
  spec.model.mixers.get<MLPMixerOptions>().mlp_every = 2;
  spec.model.mixers.get<AttentionOptions>().head_dim = 16;
  Generator gen(3);
  auto model = build_language_model(spec, gen);
  GroupRules rules;
  AdamW opt(make_param_groups(param_specs(model->named_parameters()), rules), 3e-3);
  Generator data(11);
  auto batch = [&](Tensor& ids, Tensor& targets) {
    std::vector<int64_t> x(static_cast<size_t>(B * L)), y(static_cast<size_t>(B * L), -100);
    for (int64_t b = 0; b < B; ++b) {
      for (int64_t t = 0; t < T; ++t)
        x[b * L + t] = x[b * L + T + t] = 1 + static_cast<int64_t>(data.uniform() * (V - 1));
      for (int64_t t = T - 1; t < L - 1; ++t) y[b * L + t] = x[b * L + t + 1];  // the repeated half only
    }
    ids = Tensor::from_vector(x, {B, L}), targets = Tensor::from_vector(y, {B, L});
  };
  double first = 0, last = 0;
  for (int step = 0; step < 300; ++step) {
    Tensor ids, targets;
    batch(ids, targets);
    const Tensor loss = model->forward_loss(ids, targets).loss;
    if (step == 0) first = loss.item<double>();
    last = loss.item<double>();
    backward(loss);
    opt.step();
    opt.zero_grad();
  }
  MESSAGE("copy loss: step 0 ", first, ", step 300 ", last, " (chance ", std::log(V - 1.0), ")");
  // Measured here: 2.78 at step 0 and 4.5e-4 after 300 steps. The bounds ask only that the
  // model starts near chance and ends having learned to copy (below a quarter of chance).
  CHECK(first > 0.8 * std::log(V - 1.0));
  CHECK(last < 0.25 * std::log(V - 1.0));
}
