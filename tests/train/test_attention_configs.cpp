// The attention configs under configs/ (docs/attention.md): they parse, stack the layers
// their comments describe and have the parameter counts they state.
#include <doctest/doctest.h>

#include <string>
#include <vector>

#include "ssm/attention.h"
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
