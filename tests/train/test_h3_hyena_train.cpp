// Language models built of H3 and Hyena layers (and a hybrid stack of both with Mamba) learn:
// on a fixed batch of a periodic sequence the loss falls within 20 AdamW steps, through the
// config, the model builder and the optimizer groups (the filters' and SSMs' ssm-tagged
// parameters at their own lr). Then the trainer runs the hyena config end to end.
#include <doctest/doctest.h>

#include <filesystem>
#include <string>
#include <vector>

#include "core/autograd.h"
#include "data/synthetic.h"
#include "fixed_batch.h"
#include "ssm/h3.h"
#include "ssm/hyena.h"
#include "temp_dir.h"
#include "train/config.h"
#include "train/setup.h"
#include "train/trainer.h"

using namespace ssmtrain;

namespace {

const char* kYaml = R"(
model: {mixer: hyena, d_model: 16, n_layer: 2, d_state: 8, vocab_size: 16}
data: {kind: synthetic, task: selective_copy, task_vocab: 16, task_tokens: 4}
optim: {lr: 0.01}
budget: {steps: 4}
train: {batch_size: 2, seq_len: 16, log_every: 1, eval_every: 0, eval_batches: 1, sample_tokens: 0}
)";

// The loss of the first and the 20th step of AdamW on one fixed batch.
std::pair<double, double> fit_fixed_batch(const Config& config) {
  Generator gen(static_cast<uint64_t>(config.train.seed));
  auto model = build_language_model(model_spec(config), gen);
  auto optimizer = make_optimizer(config, *model);
  return testing::fit_fixed_batch(*model, *optimizer);
}

}  // namespace

TEST_CASE("h3, hyena and a hybrid stack learn a fixed batch") {
  for (const std::vector<std::string>& overrides :
       {std::vector<std::string>{"model.mixer=h3"}, std::vector<std::string>{"model.mixer=h3", "model.h3.head_dim=4"},
        std::vector<std::string>{"model.mixer=hyena"}, std::vector<std::string>{"model.hyena.order=3"},
        std::vector<std::string>{"model.n_layer=3", "model.layers=[hyena, mamba, h3]"}}) {
    INFO(overrides.back());
    const Config config = parse_config(kYaml, "h3_hyena.yaml", overrides);
    const auto [first, last] = fit_fixed_batch(config);
    // ln 16 = 2.8 at the start; a period-7 sequence is learned far below it.
    CHECK(last < first - 0.5);
  }
}

// Multi-query associative recall (SPECS section 7), the task H3's shift-and-diagonal SSM pair
// was designed for: keys from [1, 8), values from [8, 16), 4 pairs in 32 tokens, fresh
// batches every step. At the answers the loss starts near ln 16 = 2.77 (the untrained
// model's ~2.3 already favours the frequent tokens); knowing that a value follows a queried
// key gives ln 8 = 2.08, which both mixers reach within 150 steps. Recall itself (below
// ln 8) takes longer training than a unit test affords and is not asserted here.
TEST_CASE("h3 and hyena learn the layout of associative recall (mqar): the loss falls") {
  for (const char* mixer : {"h3", "hyena"}) {
    INFO(mixer);
    const Config config = parse_config(kYaml, "h3_hyena.yaml",
                                       {std::string("model.mixer=") + mixer, "model.d_model=32", "optim.lr=0.005"});
    Generator gen(7);
    auto model = build_language_model(model_spec(config), gen);
    auto optimizer = make_optimizer(config, *model);
    model->train();
    SyntheticDataset data(SyntheticTask::mqar, 16, 4, 11, false, 0, 1);
    double first = 0, last = 0;
    const int steps = 150, window = 15;
    for (int step = 0; step < steps; ++step) {
      const Batch b = data.next(16, 32);
      std::vector<int64_t> ids(b.inputs.begin(), b.inputs.end()), tg(b.targets.begin(), b.targets.end());
      optimizer->zero_grad();
      LMLoss out =
          model->forward_loss(Tensor::from_vector(ids, {16, 32}), Tensor::from_vector(tg, {16, 32}), kIgnoreIndex);
      backward(out.loss);
      optimizer->step();
      if (step < window) first += out.loss.item<double>() / window;
      if (step >= steps - window) last += out.loss.item<double>() / window;
    }
    MESSAGE(std::string(mixer), ": mqar loss ", first, " -> ", last);
    CHECK(last < first - 0.1);
    CHECK(last < 2.2);
  }
}

TEST_CASE("the trainer runs a hyena model end to end") {
  testing::TempDir dir("h3_hyena_train");
  TrainOptions options;
  options.run_dir = dir.str();
  options.quiet = true;
  CHECK(run_training(parse_config(kYaml, "h3_hyena.yaml"), options) == 0);
  CHECK(std::filesystem::exists(dir.file("checkpoints/ckpt_00000004.h5")));
}

TEST_CASE("h3 and hyena config keys are checked and named") {
  CHECK_THROWS_AS(parse_config(kYaml, "h3_hyena.yaml", {"model.mixer=h3", "model.h3.head_dim=3"}), UserError);
  CHECK_THROWS_AS(parse_config(kYaml, "h3_hyena.yaml", {"model.hyena.filter_emb_dim=4"}), UserError);
  CHECK_THROWS_AS(parse_config(kYaml, "h3_hyena.yaml", {"model.hyena.short_width=5"}), UserError);
  const Config c = parse_config(kYaml, "h3_hyena.yaml", {"model.hyena.order=3", "model.h3.shift_width=8"});
  CHECK(c.model.mixers.get<HyenaOptions>().order == 3);
  CHECK(c.model.mixers.get<H3Options>().shift_width == 8);
}

TEST_CASE("configs/h3_text.yaml and configs/hyena_text.yaml load and build") {
  for (const char* name : {"h3_text.yaml", "hyena_text.yaml"}) {
    INFO(name);
    // A CPU copy at a short length: the builder makes every layer of the recipe.
    const Config c = load_config(std::string(SSMTRAIN_SOURCE_DIR) + "/configs/" + name,
                                 {"train.device=cpu", "train.precision=fp32", "train.seq_len=32"});
    CHECK(c.model.n_layer == 10);
    Generator gen(1);
    auto model = build_language_model(model_spec(c), gen);
    CHECK(model->n_layer() == 10);
  }
}
