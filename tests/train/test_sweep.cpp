// Sweeps: grid parsing, every combination trained into its own run directory, the
// (N, D, loss) records, and a repeated sweep skipping finished runs.
#include <doctest/doctest.h>

#include <filesystem>
#include <fstream>
#include <sstream>

#include "core/error.h"
#include "temp_dir.h"
#include "train/signals.h"
#include "train/sweep.h"

using namespace ssmtrain;

namespace {

// A tiny Mamba on selective copying, written into dir as tiny.yaml (plus `extra` YAML lines).
std::string tiny_sweep_config(const testing::TempDir& dir, const std::string& extra = "") {
  const std::string cfg = dir.file("tiny.yaml");
  std::ofstream(cfg) << "model: {mixer: mamba, d_model: 8, n_layer: 1, d_state: 4, vocab_size: 16}\n"
                        "data: {kind: synthetic, task: selective_copy, task_vocab: 16, task_tokens: 4}\n"
                        "schedule: {warmup_steps: 1}\n"
                        "train: {batch_size: 2, seq_len: 16, eval_every: 0, eval_batches: 1, threads: 1}\n"
                     << extra;
  return cfg;
}

}  // namespace

TEST_CASE("sweep grids parse into axes and bad grids are named") {
  auto axes = parse_sweep_grid("model.d_model=8,16; budget.steps=4,8,12");
  REQUIRE(axes.size() == 2);
  CHECK(axes[0].key == "model.d_model");
  CHECK(axes[0].values == std::vector<std::string>{"8", "16"});
  CHECK(axes[1].values.size() == 3);
  CHECK_THROWS_WITH_AS(parse_sweep_grid("model.d_model"), doctest::Contains("'model.d_model'"), UserError);
  CHECK_THROWS_WITH_AS(parse_sweep_grid("a.b=1,,2"), doctest::Contains("empty value"), UserError);
  CHECK_THROWS_WITH_AS(parse_sweep_grid(" ; "), doctest::Contains("--grid"), UserError);
}

TEST_CASE("a sweep trains every combination once and records N D and the final loss") {
  testing::TempDir dir("sweep");
  const std::string cfg = tiny_sweep_config(dir);
  SweepOptions o;
  o.config_path = cfg;
  o.grid = parse_sweep_grid("model.d_model=8,16;budget.steps=2,4");
  o.dir = dir.file("sweep");
  std::vector<SweepRun> runs = run_sweep(o);
  REQUIRE(runs.size() == 4);
  CHECK(runs[0].name == "model.d_model-8__budget.steps-2");
  CHECK(runs[3].overrides == std::vector<std::string>{"model.d_model=16", "budget.steps=4"});
  // N grows with the width, D is steps x batch x seq_len, losses are real numbers.
  CHECK(runs[2].params > runs[0].params);
  CHECK(runs[0].params == runs[1].params);
  CHECK(runs[0].tokens == 2 * 2 * 16);
  CHECK(runs[1].tokens == 4 * 2 * 16);
  for (const auto& r : runs) CHECK((r.val_loss > 0 && r.val_loss < 10));
  for (const auto& r : runs) CHECK(std::filesystem::exists(o.dir + "/" + r.name + "/metrics.jsonl"));
  std::ifstream in(o.dir + "/sweep.jsonl");
  std::stringstream first;
  first << in.rdbuf();
  int lines = 0;
  for (char c : first.str()) lines += c == '\n';
  CHECK(lines == 4);
  // Repeating the sweep resumes finished runs (nothing retrains) and writes the same records.
  std::vector<SweepRun> again = run_sweep(o);
  REQUIRE(again.size() == 4);
  for (size_t i = 0; i < 4; ++i) CHECK(again[i].val_loss == runs[i].val_loss);
  std::ifstream in2(o.dir + "/sweep.jsonl");
  std::stringstream second;
  second << in2.rdbuf();
  CHECK(second.str() == first.str());
  // Other overrides on the same sweep directory do not reuse those runs: exit 2 naming the key.
  SweepOptions other = o;
  other.overrides = {"optim.lr=0.0123"};
  CHECK_THROWS_WITH_AS(run_sweep(other), doctest::Contains("optim.lr"), UserError);
}

TEST_CASE("a stop request ends a sweep after the run in flight; the same command then finishes it") {
  testing::TempDir dir("sweep_stop");
  const std::string cfg = tiny_sweep_config(dir, "budget: {steps: 3}\n");
  SweepOptions o;
  o.config_path = cfg;
  o.grid = parse_sweep_grid("model.d_model=8,16");
  o.dir = dir.file("sweep");
  request_stop();  // as Ctrl-C would: the first run stops after its first step, with a checkpoint
  std::vector<SweepRun> stopped = run_sweep(o);
  clear_stop_request();
  CHECK(stopped.empty());
  CHECK_FALSE(std::filesystem::exists(o.dir + "/sweep.jsonl"));
  std::vector<SweepRun> done = run_sweep(o);
  REQUIRE(done.size() == 2);
  CHECK(done[0].tokens == 3 * 2 * 16);  // the stopped run resumed to its full budget
  CHECK(std::filesystem::exists(o.dir + "/sweep.jsonl"));
}

// Families: two config files are two families, named by their files, fitted separately;
// fit_sweep recovers each family's law from runs drawn from it, groups IsoFLOP runs by their
// nominal budget.flops (their 6 N D differ by the rounding of D to whole steps), and
// sweep_fit_json lists every family.
TEST_CASE("a sweep of two configs trains and fits two families") {
  testing::TempDir dir("sweep_families");
  const std::string a = tiny_sweep_config(dir, "budget: {steps: 2}\n");
  const std::string b = dir.file("s6.yaml");
  {
    std::ifstream in(a);
    std::stringstream text;
    text << in.rdbuf();
    std::string t = text.str();
    t.replace(t.find("mixer: mamba"), 12, "mixer: s6");
    std::ofstream(b) << t;
  }
  SweepOptions o;
  o.config_paths = {a, b};
  o.grid = parse_sweep_grid("model.d_model=8,16");
  o.dir = dir.file("sweep");
  std::vector<SweepRun> runs = run_sweep(o);
  REQUIRE(runs.size() == 4);
  CHECK(runs[0].family == "tiny");
  CHECK(runs[0].name == "tiny__model.d_model-8");
  CHECK(runs[3].family == "s6");
  CHECK(runs[3].name == "s6__model.d_model-16");
  CHECK(runs[2].params != runs[0].params);  // another mixer, another count
  std::ifstream in(o.dir + "/sweep.jsonl");
  std::stringstream text;
  text << in.rdbuf();
  CHECK(text.str().find("\"family\": \"s6\"") != std::string::npos);
  // Families of a single config come from a grid key; a key outside the grid is refused.
  SweepOptions keyed;
  keyed.config_path = a;
  keyed.grid = parse_sweep_grid("model.mixer=mamba,s6;model.d_model=8");
  CHECK(sweep_family_key(keyed) == "model.mixer");
  keyed.family_key = "none";
  CHECK(sweep_family_key(keyed).empty());
  keyed.family_key = "optim.lr";
  CHECK_THROWS_WITH_AS(sweep_family_key(keyed), doctest::Contains("optim.lr"), UserError);
  SweepOptions both = o;
  both.family_key = "model.d_model";
  CHECK_THROWS_WITH_AS(sweep_family_key(both), doctest::Contains("the configs"), UserError);
}

TEST_CASE("fit_sweep fits each family's law and its IsoFLOP profiles") {
  // Two laws; runs at N x nominal budget C (D = C / 6N, then rounded up by up to 3% as whole
  // steps would), losses exact.
  ScalingLaw la, lb;
  la.E = 1.7, la.A = 400, la.B = 410, la.alpha = 0.34, la.beta = 0.28;
  lb.E = 1.9, lb.A = 300, lb.B = 900, lb.alpha = 0.30, lb.beta = 0.35;
  std::vector<SweepRun> runs;
  int k = 0;
  for (const auto& [family, law] : {std::pair{std::string("a"), la}, std::pair{std::string("b"), lb}})
    for (double c : {1e17, 1e18, 1e19, 1e20})
      for (double n : {3e7, 1e8, 3e8, 1e9, 3e9}) {
        SweepRun r;
        r.family = family;
        r.params = n;
        r.tokens = c / (6 * n) * (1 + 0.03 * ((k++ % 3) / 2.0));
        r.val_loss = law.loss(r.params, r.tokens);
        r.budget_flops = c;
        runs.push_back(r);
      }
  const std::vector<FamilyFit> fits = fit_sweep(runs, 20);
  REQUIRE(fits.size() == 2);
  for (const FamilyFit& f : fits) {
    const ScalingLaw& truth = f.family == "a" ? la : lb;
    INFO("family " << f.family);
    REQUIRE(f.fitted);
    CHECK(f.law.alpha == doctest::Approx(truth.alpha).epsilon(0.01));
    CHECK(f.law.beta == doctest::Approx(truth.beta).epsilon(0.01));
    CHECK(f.ci.used > 0);
    REQUIRE(f.has_isoflop);
    // Each law's optimum leaves the size grid (3e7-3e9) at one end of the budgets: at that
    // budget the lowest loss is at the grid's edge, so the budget is left out and named.
    CHECK(f.isoflop.budgets.size() == 3);
    REQUIRE(f.isoflop.skipped.size() == 1);
    CHECK(f.isoflop.skipped[0].find("do not bracket the minimum") != std::string::npos);
    for (const auto& b : f.isoflop.budgets) {
      CHECK(b.n_opt > 3e7);
      CHECK(b.n_opt < 3e9);
    }
  }
  const std::string json = sweep_fit_json(fits);
  CHECK(json.find("\"family\": \"a\"") != std::string::npos);
  CHECK(json.find("\"frontier\"") != std::string::npos);
  CHECK(json.find("\"isoflop\"") != std::string::npos);
  CHECK(json.find("\"skipped\"") != std::string::npos);
  CHECK(json.find("\"alpha\"") != std::string::npos);
}

TEST_CASE("fit_sweep says why there is no IsoFLOP fit only for runs that set budget.flops") {
  ScalingLaw law;
  law.E = 1.7, law.A = 400, law.B = 410, law.alpha = 0.34, law.beta = 0.28;
  auto runs_at = [&](double flops) {
    std::vector<SweepRun> runs;
    for (double n : {3e7, 1e8, 3e8, 1e9, 3e9}) {
      SweepRun r;
      r.params = n;
      r.tokens = 1e19 / (6 * n);
      r.val_loss = law.loss(r.params, r.tokens);
      r.budget_flops = flops;
      runs.push_back(r);
    }
    return runs;
  };
  // Budgets set by tokens (budget_flops 0): no IsoFLOP groups, nothing to explain.
  const std::vector<FamilyFit> by_tokens = fit_sweep(runs_at(0), 0);
  REQUIRE(by_tokens.size() == 1);
  CHECK(!by_tokens[0].has_isoflop);
  CHECK(by_tokens[0].isoflop_problem.empty());
  CHECK(sweep_fit_json(by_tokens).find("isoflop_problem") == std::string::npos);
  // One compute budget: IsoFLOP groups that cannot give N_opt ~ C^a; the reason is kept.
  const std::vector<FamilyFit> one_budget = fit_sweep(runs_at(1e19), 0);
  CHECK(!one_budget[0].has_isoflop);
  CHECK(one_budget[0].isoflop_problem.find("at least 2 compute budgets") != std::string::npos);
  CHECK(sweep_fit_json(one_budget).find("isoflop_problem") != std::string::npos);
}
