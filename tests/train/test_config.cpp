// Tests of the YAML configuration (train/config.h): defaults, round trips, the error
// messages for unknown keys, wrong types, out-of-range values and bad choices (each naming
// the key and the file line or the override), overrides, cross-key checks, the resolved_*
// helpers, and that docs/config.md carries the current generated reference. The mixer
// registry's own tests (a mixer registered by a test) are in tests/ssm/test_mixer_registry.cpp.
#include <doctest/doctest.h>
#include <unistd.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <functional>
#include <set>
#include <sstream>

#include "core/backend.h"
#include "core/error.h"
#include "ssm/mamba.h"
#include "ssm/mamba2.h"
#include "ssm/mlp_mixer.h"
#include "ssm/s4.h"
#include "train/config.h"
#include "train/setup.h"
#include "user_error.h"

using namespace ssmtrain;
using testing::contains;
using testing::user_error_of;

namespace {

// The smallest valid file: everything default but the training data.
const char* kMinimal = "data:\n  path: train.txt\n";

Config parse(const std::string& text, const std::vector<std::string>& overrides = {}) {
  return parse_config(text, "configs/x.yaml", overrides);
}

std::string parse_error(const std::string& text, const std::vector<std::string>& overrides = {}) {
  return user_error_of([&] { parse(text, overrides); });
}

Config defaults_with_path() {
  Config c;
  c.data.path = {"train.txt"};
  return c;
}

}  // namespace

TEST_CASE("config defaults come from an empty file plus the required data path") {
  CHECK(parse(kMinimal) == defaults_with_path());
  CHECK(parse("", {"data.path=train.txt"}) == defaults_with_path());
  // Empty sections are the defaults too.
  CHECK(parse("model:\noptim:\n", {"data.path=train.txt"}) == defaults_with_path());
  // The default data kind reads text files, so an empty file alone lacks data.path.
  const std::string msg = parse_error("");
  CHECK(contains(msg, "configs/x.yaml"));
  CHECK(contains(msg, "data.path is required"));
  // A synthetic task needs no files.
  Config synthetic = parse("data: {kind: synthetic}\n");
  CHECK(synthetic.data.kind == "synthetic");
  CHECK(synthetic.data.path.empty());
}

TEST_CASE("config values of every type are read") {
  const Config c = parse(R"(
model:
  mixer: mamba2
  d_model: 128
  n_layer: 3
  layers: [mamba2, s4d, mamba2]
  tie_embeddings: false
  dropout: 0.25
  moe:
    experts: 4
  s4:
    dt_min: 0.002
data:
  path: [a.txt, "b c.txt"]
optim:
  betas:
    - 0.8
    - 0.99
budget:
  tokens: 2e9
train:
  device: cuda:1
)");
  CHECK(c.model.mixer == "mamba2");
  CHECK(c.model.d_model == 128);
  CHECK(c.model.layers == std::vector<std::string>{"mamba2", "s4d", "mamba2"});
  CHECK_FALSE(c.model.tie_embeddings);
  CHECK(c.model.dropout == 0.25);
  CHECK(c.model.mixers.get<MoEOptions>().num_experts == 4);
  CHECK(c.model.mixers.get<S4Options>().dt_min == 0.002);
  CHECK(c.data.path == std::vector<std::string>{"a.txt", "b c.txt"});
  CHECK(c.optim.betas == std::vector<double>{0.8, 0.99});
  CHECK(c.budget.tokens == 2000000000);  // a whole number in exponent form is an integer
  CHECK(c.train.device == "cuda:1");
  // One path may be written without brackets.
  CHECK(parse("data:\n  path: /data/one.txt\n").data.path == std::vector<std::string>{"/data/one.txt"});
}

TEST_CASE("config round trip through to_yaml") {
  Config c = defaults_with_path();
  CHECK(parse(to_yaml(c)) == c);

  // Values that need quoting, exact doubles, lists and nested sections survive.
  c.run.name = "run: #1 \"quoted\" \\ back\n\ttab \x01 caf\xc3\xa9";
  c.run.dir = "";
  c.data.path = {"a b.txt", "-dash", "true", "null", "c,d.txt"};
  c.data.val_path = {"~"};
  c.optim.lr = 0.1 + 0.2;  // not a short decimal
  c.optim.betas = {1.0 / 3.0, 0.999};
  c.schedule.min_lr = 1e-5;
  c.model.layers = {"mamba", "mlp", "s4", "mamba"};
  c.model.mixers.get<MoEOptions>().every = 2;
  c.model.mixers.get<S4Options>().init = "real";
  c.model.mixers.get<Mamba2Options>().headdim = 32;
  c.model.tie_embeddings = false;
  c.train.device = "cuda:0";
  const Config back = parse(to_yaml(c));
  CHECK(config_differences(back, c).empty());
  CHECK(back == c);
}

TEST_CASE("config model sections written before the mixer registry read back the same") {
  // The model section as to_yaml wrote it (and checkpoints keep it) when the mixers' keys
  // were declared in train/config.h: another key order, the same keys.
  const std::string old_model = R"(model:
  mixer: mamba
  layers: [mamba, moe, mamba2, moe]
  d_model: 64
  n_layer: 4
  vocab_size: 256
  pad_vocab_multiple: 8
  d_state: 16
  d_conv: 4
  expand: 2
  dt_rank: 5
  headdim: 32
  ngroups: 2
  chunk_size: 128
  norm_eps: 1e-05
  tie_embeddings: true
  mlp_ratio: 3
  dropout: 0
  moe:
    every: 2
    experts: 4
    capacity_factor: 1.25
    d_ff: 96
    activation: relu
    aux_loss_coef: 0.02
    z_loss_coef: 0.001
  s4:
    kernel: diag
    init: lin
    discretization: zoh
    lr: 0.002
    dt_min: 0.001
    dt_max: 0.1
    l_max: 512
)";
  const Config c = parse(old_model + kMinimal);
  CHECK(c.model.layers == std::vector<std::string>{"mamba", "moe", "mamba2", "moe"});
  CHECK(c.model.d_model == 64);
  CHECK(c.model.mixers.get<MambaOptions>().dt_rank == 5);
  const Mamba2Options& m2 = c.model.mixers.get<Mamba2Options>();
  CHECK((m2.headdim == 32 && m2.ngroups == 2 && m2.chunk_size == 128));
  CHECK(c.model.mixers.get<MLPMixerOptions>().mlp_ratio == 3);
  const MoEOptions& moe = c.model.mixers.get<MoEOptions>();
  CHECK((moe.every == 2 && moe.num_experts == 4 && moe.capacity_factor == 1.25 && moe.d_ff == 96));
  CHECK((moe.activation == "relu" && moe.aux_loss_coef == 0.02 && moe.z_loss_coef == 0.001));
  const S4Options& s4 = c.model.mixers.get<S4Options>();
  CHECK((s4.kernel == "diag" && s4.init == "lin" && s4.discretization == "zoh" && s4.lr == 0.002));
  CHECK((s4.dt_min == 0.001 && s4.dt_max == 0.1 && s4.l_max == 512));
  // The current dump holds the same values.
  CHECK(parse(to_yaml(c)) == c);
}

TEST_CASE("config unknown keys are errors with did-you-mean and the line") {
  const std::string msg = parse_error("data:\n  path: a.txt\nmodel:\n  d_model: 64\n  d_modle: 32\n");
  CHECK(msg == "configs/x.yaml:5: unknown key 'model.d_modle' (did you mean 'model.d_model'?)");

  CHECK(parse_error("modle:\n  d_model: 4\n") == "configs/x.yaml:1: unknown key 'modle' (did you mean 'model'?)");
  // A key of another section is suggested where it lives.
  CHECK(contains(parse_error("optim:\n  d_model: 4\n"), "(did you mean 'model.d_model'?)"));
  CHECK(contains(parse_error("model:\n  moe:\n    expert: 4\n"),
                 ":3: unknown key 'model.moe.expert' (did you mean 'model.moe.experts'?)"));
  // Nothing close: no suggestion.
  const std::string far = parse_error("model:\n  zzzzzzzz: 1\n");
  CHECK(contains(far, "unknown key 'model.zzzzzzzz'"));
  CHECK_FALSE(contains(far, "did you mean"));
  // Duplicate keys are not silently merged.
  CHECK(contains(parse_error("model:\n  d_model: 4\n  d_model: 8\n"), ":3: duplicate key 'model.d_model'"));
}

TEST_CASE("config wrong types name the key and the line") {
  CHECK(parse_error(std::string(kMinimal) + "model:\n  n_layer: 2\n  d_model: abc\n") ==
        "configs/x.yaml:5: model.d_model: expected an integer, got 'abc'");
  CHECK(contains(parse_error("model:\n  d_model: 1.5\n"), ":2: model.d_model: expected an integer, got '1.5'"));
  CHECK(contains(parse_error("optim:\n  lr: fast\n"), ":2: optim.lr: expected a number, got 'fast'"));
  CHECK(contains(parse_error("optim:\n  lr: .nan\n"), "optim.lr: expected a number"));
  CHECK(contains(parse_error("model:\n  tie_embeddings: yes\n"), ":2: model.tie_embeddings: expected true or false"));
  CHECK(contains(parse_error("model:\n  d_model:\n"), ":2: model.d_model: expected an integer, got an empty value"));
  CHECK(contains(parse_error("model: 3\n"), ":1: model: expected a map of keys (a section), got '3'"));
  CHECK(contains(parse_error("model:\n  moe: [1, 2]\n"),
                 ":2: model.moe: expected a map of keys (a section), got a list"));
  CHECK(contains(parse_error("optim:\n  betas: {a: 1}\n"), ":2: optim.betas: expected a list, got a map"));
  CHECK(contains(parse_error("optim:\n  betas:\n    - 0.9\n    - x\n"),
                 ":4: optim.betas[1]: expected a number, got 'x'"));
  CHECK(contains(parse_error("run:\n  name: [a, b]\n"), ":2: run.name: expected a string, got a list"));
  CHECK(contains(parse_error("- model\n"), ":1: expected a map of sections"));
  CHECK(contains(parse_error("model:\n  d_model: [1\n"), "configs/x.yaml:"));
  CHECK(contains(parse_error("model:\n  d_model: [1\n"), "invalid YAML"));
}

TEST_CASE("config out-of-range values and bad choices") {
  CHECK(contains(parse_error("model:\n  d_model: 0\n"), ":2: model.d_model must be >= 1, got 0"));
  CHECK(contains(parse_error("optim:\n  lr: 0\n"), ":2: optim.lr must be > 0, got 0"));
  CHECK(contains(parse_error("model:\n  dropout: 1\n"), ":2: model.dropout must be >= 0 and < 1, got 1"));
  CHECK(contains(parse_error("optim:\n  betas: [0.9, 1.0]\n"), ":2: optim.betas[1] must be >= 0 and < 1, got 1"));
  CHECK(contains(parse_error("optim:\n  betas: [0.9]\n"), ":2: optim.betas must have 2 elements, got 1"));

  const std::string choice = parse_error("model:\n  mixer: mambo\n");
  CHECK(contains(choice,
                 ":2: model.mixer must be one of {mamba, s6, mamba_lti, mamba2, s4, s4d, mlp, moe, attention, h3, "
                 "hyena}, got 'mambo'"));
  CHECK(contains(choice, "did you mean 'mamba'?"));
  CHECK(contains(parse_error("model:\n  n_layer: 2\n  layers: [mamba, retnet]\n"),
                 ":3: model.layers[1] must be one of {mamba,"));
  CHECK(contains(parse_error("model:\n  n_layer: 2\n  layers:\n    - mamba\n    - retnet\n"), ":5: model.layers[1]"));
  CHECK(contains(parse_error("train:\n  device: gpu\n"), ":2: train.device: expected cpu, cuda or cuda:N"));
  CHECK(contains(parse_error("train:\n  device: cuda:x\n"), "train.device"));
}

TEST_CASE("config overrides of nested keys lists booleans and strings") {
  const Config c = parse(
      kMinimal, {"optim.lr=3e-4", "model.moe.every=2", "optim.betas=[0.9,0.99]", "model.layers=[mamba,s4,mamba,mlp]",
                 "model.tie_embeddings=false", "run.name=my run", "train.device=cuda:0", "data.path=/data/x.txt",
                 "model.s4={kernel: diag, lr: 0}", "data.val_path=[v1.txt, v2.txt]"});
  CHECK(c.optim.lr == 3e-4);
  CHECK(c.model.mixers.get<MoEOptions>().every == 2);
  CHECK(c.optim.betas == std::vector<double>{0.9, 0.99});
  CHECK(c.model.layers == std::vector<std::string>{"mamba", "s4", "mamba", "mlp"});
  CHECK_FALSE(c.model.tie_embeddings);
  CHECK(c.run.name == "my run");
  CHECK(c.train.device == "cuda:0");
  CHECK(c.data.path == std::vector<std::string>{"/data/x.txt"});
  const S4Options& s4 = c.model.mixers.get<S4Options>();
  CHECK(s4.kernel == "diag");
  CHECK(s4.lr == 0);
  CHECK(s4.init == "legs");  // a section override keeps the keys it does not name
  CHECK(c.data.val_path == std::vector<std::string>{"v1.txt", "v2.txt"});
  // Later overrides win; the file's values are overridden.
  CHECK(parse("optim:\n  lr: 0.01\n" + std::string(kMinimal), {"optim.lr=0.002", "optim.lr=0.003"}).optim.lr == 0.003);
  // An empty value clears a string or a list.
  CHECK(parse("run:\n  name: x\n" + std::string(kMinimal), {"run.name=", "data.val_path="}).run.name.empty());
}

TEST_CASE("config bad overrides") {
  CHECK(parse_error(kMinimal, {"optim.lr=-1"}) == "override 'optim.lr=-1': optim.lr must be > 0, got -1");
  CHECK(parse_error(kMinimal, {"model.d_modle=8"}) ==
        "override 'model.d_modle=8': unknown key 'model.d_modle' (did you mean 'model.d_model'?)");
  CHECK(parse_error(kMinimal, {"model.d_model=abc"}) ==
        "override 'model.d_model=abc': model.d_model: expected an integer, got 'abc'");
  CHECK(contains(parse_error(kMinimal, {"model.d_model=1.5"}), "expected an integer, got '1.5'"));
  CHECK(contains(parse_error(kMinimal, {"model.tie_embeddings=maybe"}), "expected true or false, got 'maybe'"));
  CHECK(contains(parse_error(kMinimal, {"model.d_model"}), "override 'model.d_model': expected key.path=value"));
  CHECK(contains(parse_error(kMinimal, {"=3"}), "the key before '=' is empty"));
  CHECK(contains(parse_error(kMinimal, {"optim.betas=[0.9,"}), "is not valid YAML"));
  CHECK(contains(parse_error(kMinimal, {"model=3"}), "model: expected a map of keys"));
  CHECK(contains(parse_error(kMinimal, {"model.mixer=transformer"}), "model.mixer must be one of"));
  CHECK(contains(parse_error(kMinimal, {"optim.betas=[0.9,0.99,0.999]"}), "optim.betas must have 2 elements, got 3"));
  CHECK(contains(parse_error(kMinimal, {"model.s4={kernal: diag}"}), "unknown key 'model.s4.kernal'"));
}

TEST_CASE("config cross-key checks") {
  CHECK(contains(parse_error(kMinimal, {"model.n_layer=4", "model.layers=[mamba,s4]"}),
                 "model.layers has 2 entries but model.n_layer is 4"));
  CHECK(contains(parse_error(kMinimal, {"optim.lr=1e-4", "schedule.min_lr=1e-3"}),
                 "schedule.min_lr (0.001) must not exceed optim.lr (0.0001)"));
  CHECK(contains(parse_error("data:\n  kind: shards\n"), "data.path is required when data.kind is shards"));
  CHECK(contains(parse_error(kMinimal, {"model.s4.dt_min=0.5", "model.s4.dt_max=0.1"}),
                 "model.s4.dt_min (0.5) must not exceed model.s4.dt_max (0.1)"));
  // mamba2: d_inner = 2 * 80 = 160 is not a multiple of headdim 64.
  CHECK(contains(parse_error(kMinimal, {"model.mixer=mamba2", "model.d_model=80"}),
                 "model.headdim (64) must divide d_inner = model.expand * model.d_model = 160"));
  // 192 / 48 = 4 heads, not divisible into 3 groups; a mamba2 layer in a mixed stack counts too.
  CHECK(contains(parse_error(kMinimal, {"model.d_model=96", "model.headdim=48", "model.ngroups=3", "model.n_layer=2",
                                        "model.layers=[mamba,mamba2]"}),
                 "model.ngroups (3) must divide the number of mamba2 heads"));
  // Without mamba2 layers the head geometry does not matter.
  CHECK_NOTHROW(parse(kMinimal, {"model.d_model=96", "model.ngroups=3"}));
  CHECK_NOTHROW(parse(kMinimal, {"model.mixer=mamba2", "model.d_model=96", "model.headdim=48", "model.ngroups=2"}));
  CHECK(contains(parse_error(kMinimal, {"model.moe.every=5"}), "model.moe.every is 5 but model.n_layer is only 4"));
  CHECK(contains(parse_error(kMinimal, {"budget.steps=10", "schedule.warmup_steps=20"}),
                 "schedule.warmup_steps (20) exceeds budget.steps (10)"));

  // validate() alone also applies the per-key rules.
  Config c = defaults_with_path();
  CHECK_NOTHROW(validate(c));
  c.train.batch_size = 0;
  CHECK(user_error_of([&] { validate(c); }) == "train.batch_size must be >= 1, got 0");
}

TEST_CASE("config load_config reads files and names them") {
  namespace fs = std::filesystem;
  const fs::path dir = fs::temp_directory_path() / ("ssmtrain_cfg_test_" + std::to_string(::getpid()));
  fs::create_directories(dir);
  const std::string file = (dir / "tiny.yaml").string();
  {
    std::ofstream out(file);
    out << "data:\n  kind: synthetic\nmodel:\n  d_model: 32\n  n_layr: 2\n";
  }
  const std::string msg = user_error_of([&] { load_config(file); });
  CHECK(msg == file + ":5: unknown key 'model.n_layr' (did you mean 'model.n_layer'?)");
  {
    std::ofstream out(file);
    out << "data:\n  kind: synthetic\nmodel:\n  d_model: 32\n";
  }
  const Config loaded = load_config(file, {"model.n_layer=2"});
  CHECK(loaded.model.d_model == 32);
  CHECK(loaded.model.n_layer == 2);
  CHECK(resolved_run_name(loaded, file) == "tiny");
  CHECK(resolved_run_dir(loaded, file) == "runs/tiny");
  CHECK(contains(user_error_of([&] { load_config((dir / "missing.yaml").string()); }), "missing.yaml"));
  fs::remove_all(dir);
}

TEST_CASE("config differences keys and resolved values") {
  Config a = defaults_with_path(), b = a;
  CHECK(config_differences(a, b).empty());
  b.optim.lr = 3e-4;
  b.model.layers = {"mamba", "s4"};
  const auto diff = config_differences(a, b);
  REQUIRE(diff.size() == 2);
  CHECK(diff[0] == "model.layers: [] vs [mamba, s4]");
  CHECK(diff[1] == "optim.lr: 0.001 vs 0.0003");

  const auto keys = config_keys();
  CHECK(keys.front() == "model.mixer");
  CHECK(std::find(keys.begin(), keys.end(), "model.moe.every") != keys.end());
  CHECK(std::find(keys.begin(), keys.end(), "train.threads") != keys.end());
  CHECK(std::find(keys.begin(), keys.end(), "model.moe") == keys.end());  // sections are not keys
  CHECK(std::set<std::string>(keys.begin(), keys.end()).size() == keys.size());

  // The layer rule (ssm/model.h) on the config's model section.
  ModelOptions m;
  m.n_layer = 5;
  m.mixers.get<MoEOptions>().every = 2;
  CHECK(layer_mixers(m) == std::vector<std::string>{"mamba", "moe", "mamba", "moe", "mamba"});
  m.layers = {"s4", "s4d", "mlp", "mamba2", "s6"};
  m.mixers.get<MoEOptions>().every = 3;
  CHECK(layer_mixers(m) == std::vector<std::string>{"s4", "s4d", "moe", "mamba2", "s6"});
  m.mixers.get<MoEOptions>().every = 0;
  CHECK(layer_mixers(m) == m.layers);

  Config c;
  c.optim.lr = 0.01;
  c.model.mixers.get<S4Options>().lr = 0.002;
  CHECK(resolved_ssm_lr(c) == 0.002);
  c.optim.ssm_lr = 0.005;
  CHECK(resolved_ssm_lr(c) == 0.005);
  c.optim.ssm_lr = 0;
  c.model.mixers.get<S4Options>().lr = 0;
  CHECK(resolved_ssm_lr(c) == 0.01);

  ScheduleSection s;
  s.warmup_fraction = 0.05;
  CHECK(resolved_warmup_steps(s, 1000) == 50);
  s.warmup_steps = 7;
  CHECK(resolved_warmup_steps(s, 1000) == 7);

  CHECK(resolved_eval_seq_len(c) == c.train.seq_len);
  c.data.eval_seq_len = 4096;
  CHECK(resolved_eval_seq_len(c) == 4096);

  CHECK(resolved_run_name(c, "configs/mamba_small.yaml") == "mamba_small");
  CHECK(resolved_run_dir(c, "configs/mamba_small.yaml") == "runs/mamba_small");
  c.run.name = "named";
  CHECK(resolved_run_dir(c, "configs/mamba_small.yaml") == "runs/named");
  c.run.dir = "/tmp/elsewhere";
  CHECK(resolved_run_dir(c, "configs/mamba_small.yaml") == "/tmp/elsewhere");

  CHECK(device_problem("cpu").empty());
  CHECK(device_problem("cuda").empty());
  CHECK(device_problem("cuda:3").empty());
  CHECK_FALSE(device_problem("cuda:").empty());
  CHECK_FALSE(device_problem("cuda:-1").empty());
  CHECK_FALSE(device_problem("tpu").empty());
  CHECK(std::find(mixer_names().begin(), mixer_names().end(), "retnet") == mixer_names().end());
}

TEST_CASE("config docs in docs/config.md match config_docs_markdown") {
  const std::string generated = config_docs_markdown();
  // Every key appears in the reference, with its section's table.
  for (const auto& key : config_keys()) CHECK_MESSAGE(contains(generated, "| `" + key + "` |"), key);
  CHECK(contains(generated, "### `model.moe`"));

  const std::string path = std::string(SSMTRAIN_SOURCE_DIR) + "/docs/config.md";
  std::ifstream in(path);
  REQUIRE_MESSAGE(in, "cannot read " << path);
  std::stringstream text;
  text << in.rdbuf();
  const std::string doc = text.str();
  const std::string begin = "<!-- BEGIN GENERATED -->\n", end = "<!-- END GENERATED -->";
  const size_t b = doc.find(begin), e = doc.find(end);
  REQUIRE_MESSAGE(b != std::string::npos, "docs/config.md lacks the line " << begin);
  REQUIRE_MESSAGE(e != std::string::npos, "docs/config.md lacks the line " << end);
  REQUIRE(b < e);
  const std::string in_doc = doc.substr(b + begin.size(), e - b - begin.size());
  if (in_doc != generated) {
    // The current reference goes next to the build for pasting between the markers.
    const std::string fresh = std::string(SSMTRAIN_BINARY_DIR) + "/config_reference.md";
    std::ofstream(fresh) << generated;
    FAIL_CHECK(
        "docs/config.md is out of date with the key declarations: run tools/regen_config_docs.sh, or replace "
        "the text between the markers with the output of `ssmtrain config --docs` (written to "
        << fresh << ")");
  }
}

TEST_CASE("train.tf32 is an opt-in applied with the compute settings") {
  const std::string yaml = "data:\n  kind: synthetic\n";
  Config off = parse_config(yaml, "t.yaml");
  CHECK_FALSE(off.train.tf32);
  Config on = parse_config(yaml, "t.yaml", {"train.tf32=true"});
  REQUIRE(on.train.tf32);
  apply_compute_settings(on);
  CHECK(allow_tf32());
  apply_compute_settings(off);
  CHECK_FALSE(allow_tf32());
  CHECK(contains(user_error_of([&] { parse_config(yaml, "t.yaml", {"train.tf32=maybe"}); }), "train.tf32"));
}
