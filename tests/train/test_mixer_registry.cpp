// The mixer registry (ssm/mixer_registry.h) seen from everything that reads it. A mixer
// defined and registered in this file, with no other change anywhere, becomes a choice of
// model.mixer with its own config keys, rules, checks and reference rows, and is built and
// trained by the model builder and the trainer. Also: the built-in registrations, and the
// "0 = auto" mixer keys resolved by the layers the builder makes.
#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <filesystem>

#include "core/autograd.h"
#include "core/ops.h"
#include "fixed_batch.h"
#include "nn/init.h"
#include "nn/linear.h"
#include "ssm/mamba.h"
#include "ssm/mixer_util.h"
#include "ssm/mlp_mixer.h"
#include "ssm/s4.h"
#include "temp_dir.h"
#include "train/config.h"
#include "train/setup.h"
#include "train/trainer.h"
#include "user_error.h"

using namespace ssmtrain;
using testing::contains;
using testing::user_error_of;

namespace {

// ---- A trivial mixer: each position mixed with an earlier one, then a linear map ---------

struct ShiftOptions {
  double init_scale = 0.5;
  int64_t lag = 1;

  template <class V>
  void visit(V& v) {
    v.field("init_scale", init_scale, "shift: the projection is drawn uniform in +-init_scale / sqrt(d_model)", gt(0));
    v.field("lag", lag, "shift: how many positions back the mixed-in token is", ge(1));
  }
  void validate(const MixerContext& c) const {
    SSMT_CHECK(c.name.empty() || lag < 1000, c.key("lag"), " (", lag, ") is too long for a shift layer");
  }
  bool operator==(const ShiftOptions&) const = default;
};

// y_t = W (x_t + x_{t-lag}), causal (x before the sequence is 0).
class ShiftMixer : public Mixer {
 public:
  ShiftMixer(int64_t d_model, const ShiftOptions& o, Generator& gen) : options(o) {
    LinearOptions nobias;
    nobias.bias = false;
    proj = register_module("proj", std::make_shared<Linear>(d_model, d_model, gen, nobias));
    const double bound = o.init_scale / std::sqrt(static_cast<double>(d_model));
    init::uniform_(proj->weight(), gen, -bound, bound);
  }
  Tensor forward(const Tensor& x) override {
    const int64_t L = x.size(1);
    Tensor mixed = x;
    if (options.lag < L) {
      Tensor earlier = pad_sequence_start(x.narrow(1, 0, L - options.lag), options.lag);
      mixed = add(x, earlier);
    }
    return linear(mixed, as_dtype(proj->weight(), x.dtype()));
  }

  ShiftOptions options;
  std::shared_ptr<Linear> proj;

 private:
  // (B, L', D) -> (B, L' + n, D) with n zero positions in front.
  static Tensor pad_sequence_start(const Tensor& x, int64_t n) {
    Tensor zeros = Tensor::zeros({x.size(0), n, x.size(2)}, x.dtype(), x.device());
    return cat({zeros, x}, 1);
  }
};

std::shared_ptr<Mixer> build_shift(const ShiftOptions& o, const MixerContext& c, Generator& gen) {
  return std::make_shared<ShiftMixer>(c.d_model, o, gen);
}

// Registers "shift" for the lifetime of the object (the registration line of a new mixer).
struct ShiftRegistration {
  ShiftRegistration() {
    register_mixer(mixer_entry<ShiftOptions>({{"shift", "a test mixer"}}, build_shift, "shift", "A test mixer."));
  }
  ~ShiftRegistration() { unregister_mixer("shift"); }
};

const char* kShiftYaml = R"(
model: {mixer: shift, d_model: 16, n_layer: 2, vocab_size: 16, shift: {init_scale: 0.25, lag: 2}}
data: {kind: synthetic, task: selective_copy, task_vocab: 16, task_tokens: 4}
optim: {lr: 0.01}
budget: {steps: 4}
train: {batch_size: 2, seq_len: 16, log_every: 1, eval_every: 0, eval_batches: 1, sample_tokens: 0}
)";

}  // namespace

TEST_CASE("mixer registry: the built-in mixers and their options") {
  CHECK(mixer_names() ==
        std::vector<std::string>{"mamba", "s6", "mamba_lti", "mamba2", "s4", "s4d", "mlp", "moe", "attention", "h3",
                                 "hyena"});
  for (const auto& name : mixer_names()) {
    INFO(name);
    REQUIRE(find_mixer(name));
    CHECK(contains(mixer_summaries(), name + " ("));
  }
  CHECK(find_mixer("s6") == find_mixer("mamba"));  // one registration, one options struct
  CHECK_FALSE(find_mixer("retnet"));
  // Each registration's keys are config keys, under model or its section.
  const auto keys = config_keys();
  for (const char* key : {"model.dt_rank", "model.headdim", "model.mlp_ratio", "model.s4.kernel", "model.moe.every",
                          "model.mlp_every", "model.attention.kv_heads"})
    CHECK_MESSAGE(std::find(keys.begin(), keys.end(), key) != keys.end(), key);
  // A name no registration holds is refused by the builder too.
  ModelSpec spec;
  spec.model.mixer = "retnet";
  Generator gen(1);
  CHECK(contains(user_error_of([&] { build_language_model(spec, gen); }), "unknown mixer 'retnet'"));
}

TEST_CASE("mixer registry: a mixer registered in a test is a config choice with keys, checks and reference") {
  const ShiftRegistration registration;
  CHECK(mixer_names().back() == "shift");

  const Config c = parse_config(kShiftYaml, "shift.yaml");
  CHECK(c.model.mixer == "shift");
  CHECK(c.model.mixers.get<ShiftOptions>().init_scale == 0.25);
  CHECK(c.model.mixers.get<ShiftOptions>().lag == 2);
  CHECK(parse_config(to_yaml(c), "shift.yaml") == c);
  CHECK(parse_config(kShiftYaml, "shift.yaml", {"model.shift.lag=3"}).model.mixers.get<ShiftOptions>().lag == 3);

  // Keys, rules and the mixer's own check name the key.
  const auto keys = config_keys();
  CHECK(std::find(keys.begin(), keys.end(), "model.shift.lag") != keys.end());
  CHECK(user_error_of([&] { parse_config(kShiftYaml, "shift.yaml", {"model.shift.lag=0"}); }) ==
        "override 'model.shift.lag=0': model.shift.lag must be >= 1, got 0");
  CHECK(contains(user_error_of([&] { parse_config(kShiftYaml, "shift.yaml", {"model.shift.lga=3"}); }),
                 "unknown key 'model.shift.lga' (did you mean 'model.shift.lag'?)"));
  CHECK(user_error_of([&] { parse_config(kShiftYaml, "shift.yaml", {"model.shift.lag=5000"}); }) ==
        "shift.yaml (with overrides): model.shift.lag (5000) is too long for a shift layer");
  // The check runs for layers that use the mixer: with no shift layer the value is allowed.
  CHECK_NOTHROW(parse_config(kShiftYaml, "shift.yaml", {"model.shift.lag=5000", "model.mixer=mamba"}));
  CHECK(contains(user_error_of([&] { parse_config(kShiftYaml, "shift.yaml", {"model.mixer=shfit"}); }),
                 "model.mixer must be one of {mamba, s6, mamba_lti, mamba2, s4, s4d, mlp, moe, attention, h3, hyena, "
                 "shift}, got 'shfit' (did you mean 'shift'?)"));

  // The reference (ssmtrain config --docs).
  const std::string docs = config_docs_markdown();
  CHECK(contains(docs, "### `model.shift`\n\nA test mixer."));
  CHECK(contains(docs,
                 "| `model.shift.lag` | integer | `1` | >= 1 | shift: how many positions back the mixed-in "
                 "token is |"));
  CHECK(contains(docs, "shift (a test mixer)"));
}

TEST_CASE("mixer registry: a mixer registered in a test is built and trained by the model builder") {
  const ShiftRegistration registration;
  Config config = parse_config(kShiftYaml, "shift.yaml", {"model.layers=[shift, mamba]", "model.d_state=4"});
  Generator gen(static_cast<uint64_t>(config.train.seed));
  auto model = build_language_model(model_spec(config), gen);
  auto shift = std::dynamic_pointer_cast<ShiftMixer>(model->block(0)->mixer());
  REQUIRE(shift);
  CHECK(shift->options.lag == 2);
  CHECK(std::dynamic_pointer_cast<Mamba>(model->block(1)->mixer()));
  CHECK(model->block(0)->mixer()->parameter("proj.weight").shape() == Dims{16, 16});

  // A fixed batch is learned: the loss falls.
  auto optimizer = make_optimizer(config, *model);
  const auto [first, last] = testing::fit_fixed_batch(*model, *optimizer);
  CHECK(last < first - 0.5);

  // And the whole trainer runs it (checkpoint included), a shift-only stack.
  testing::TempDir dir("mixer_registry");
  TrainOptions options;
  options.run_dir = dir.str();
  options.quiet = true;
  CHECK(run_training(parse_config(kShiftYaml, "shift.yaml"), options) == 0);
  CHECK(std::filesystem::exists(dir.file("checkpoints/ckpt_00000004.h5")));
}

TEST_CASE("mixer registry: 0 = auto mixer keys are resolved by the layers the builder makes") {
  auto first_mixer = [](const std::vector<std::string>& overrides) {
    std::vector<std::string> all = {"model.d_model=100", "model.n_layer=1", "model.d_state=4", "train.seq_len=24"};
    all.insert(all.end(), overrides.begin(), overrides.end());
    Config config = parse_config("data: {kind: synthetic}\n", "auto.yaml", all);
    Generator gen(1);
    return build_language_model(model_spec(config), gen)->block(0)->mixer();
  };
  CHECK(std::dynamic_pointer_cast<Mamba>(first_mixer({}))->dt_rank() == 7);  // ceil(100 / 16)
  CHECK(std::dynamic_pointer_cast<Mamba>(first_mixer({"model.dt_rank=3"}))->dt_rank() == 3);
  // Expert FFNs: d_ff = 3 * d_model unless given.
  CHECK(first_mixer({"model.mixer=moe"})->parameter("experts.0.fc1.weight").shape() == Dims{300, 100});
  CHECK(first_mixer({"model.mixer=moe", "model.moe.d_ff=64"})->parameter("experts.0.fc1.weight").shape() ==
        Dims{64, 100});
  // The mlp mixer: hidden = round(mlp_ratio * d_model).
  CHECK(first_mixer({"model.mixer=mlp", "model.mlp_ratio=2.5"})->parameter("mlp.fc2.weight").shape() == Dims{100, 250});
  CHECK(mlp_hidden(MLPMixerOptions{.mlp_ratio = 2.5}, 100) == 250);
  // The dplr kernel length: model.s4.l_max, else train.seq_len.
  CHECK(std::dynamic_pointer_cast<S4>(first_mixer({"model.mixer=s4"}))->kernel_length() == 24);
  CHECK(std::dynamic_pointer_cast<S4>(first_mixer({"model.mixer=s4", "model.s4.l_max=40"}))->kernel_length() == 40);
  // s4d is always the diagonal kernel.
  CHECK_FALSE(std::dynamic_pointer_cast<S4>(first_mixer({"model.mixer=s4d"}))->is_dplr());
}
