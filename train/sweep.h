// Scaling sweeps: one base config trained over the Cartesian product of override lists,
// each combination a normal run directory, followed by the Approach-3 fit of the final
// validation losses (train/scaling.h, docs/scaling.md).
//
//   ssmtrain sweep CONFIG.yaml --grid "model.d_model=64,128,256;budget.tokens=2e6,8e6" [--run-dir DIR]
//
// Finished runs are resumed (`--resume auto`), which returns at once, so an interrupted sweep
// is continued by repeating the command.
#pragma once

#include <string>
#include <utility>
#include <vector>

#include "train/scaling.h"

namespace ssmtrain {

struct SweepAxis {
  std::string key;                  // a config key path
  std::vector<std::string> values;  // its values, as override texts
};

// "a.b=1,2;c.d=x,y" -> axes; UserError naming the offending part.
// "--gpus 0,1,2,3": CUDA device ids; UserError naming --gpus on anything else.
std::vector<std::string> parse_sweep_gpus(const std::string& text);
std::vector<SweepAxis> parse_sweep_grid(const std::string& text);

struct SweepRun {
  std::string name;                    // the run directory's name inside the sweep directory
  std::vector<std::string> overrides;  // the combination's overrides
  std::string family;                  // its value of the sweep's family key ("" without one)
  double params = 0;                   // N (the count budget.params names)
  double tokens = 0;                   // D, training tokens at the end
  double val_loss = 0;                 // the last validation loss
  double budget_flops = 0;             // its budget.flops (0: the budget was not set by compute)
};

struct SweepOptions {
  std::string config_path;                // the config (when config_paths is empty)
  std::vector<std::string> config_paths;   // several configs: each a family, named by its file's stem
  std::vector<std::string> overrides;  // applied to every run, before the grid's
  std::vector<SweepAxis> grid;
  std::string dir;                     // the sweep directory
  // The grid key whose values name model families (runs fitted separately, one curve each
  // in the pictures): "" = model.mixer when the grid varies it, else one family; "none" =
  // one family whatever the grid.
  std::string family_key;
  bool quiet = true;                   // runs print nothing; the sweep prints a table
  // Runs trained at once: 1 trains them one after another in this process; N > 1 starts each
  // run as its own `ssmtrain train` process, N at a time (small models leave a GPU mostly
  // idle; several of them share it, best under CUDA MPS: docs/scaling.md).
  int jobs = 1;
  // With jobs > 1: the GPUs (CUDA device ids) to spread the runs over, job slot k on
  // gpus[k % n] through CUDA_VISIBLE_DEVICES; empty = every child sees the same devices.
  std::vector<std::string> gpus;
  // Train nothing: gather and fit the runs already in `dir` (each must have finished: its last
  // validation record at the tokens its budget plans), e.g. when their checkpoints were not kept.
  bool fit_only = false;
};

// The family key a sweep uses (see SweepOptions::family_key); UserError when the key named is
// not one of the grid's.
std::string sweep_family_key(const SweepOptions& options);

// Trains every combination (in order; with jobs > 1 as child processes), writes <dir>/sweep.jsonl (one record per run) and
// returns the runs. A failing run stops the sweep with its exit code in the exception. A
// stop request (Ctrl-C, SIGTERM: stop_requested()) ends the sweep after the run in flight
// saved its checkpoint: the finished runs are returned and sweep.jsonl is not written.
std::vector<SweepRun> run_sweep(const SweepOptions& options);

// The laws of one family of a sweep's runs (docs/scaling.md).
struct FamilyFit {
  std::string family;  // "" for a sweep without families
  std::vector<ScalingPoint> points;
  std::vector<ScalingPoint> nominal;  // the points with D = budget.flops / (6 N) where set (IsoFLOP groups)
  bool fitted = false;  // Approach 3 ran; else `problem` says why not
  std::string problem, warning;
  ScalingLaw law;
  ScalingBootstrap ci;  // bootstrap intervals of the law (ci.used == 0: none)
  bool has_isoflop = false;  // Approach 2 ran; else `isoflop_problem` says why (empty: no run set budget.flops)
  std::string isoflop_problem;
  IsoFlopFit isoflop;
};

// Groups the runs by family (in order of first appearance) and fits each: Approach 3 when
// its runs identify the law (at least 5, with 3 distinct N and D), with `bootstrap`
// resamples for its intervals; Approach 2 when its runs form IsoFLOP groups: runs with a
// budget.flops are grouped by that nominal budget (their D is rounded up to whole steps, so
// their 6 N D differ by a few percent), others by 6 N D to 1%.
std::vector<FamilyFit> fit_sweep(const std::vector<SweepRun>& runs, int bootstrap);

// fit.json: {"families": [{"family", "runs", "E", "A", "B", "alpha", "beta", "objective",
// "ci": {"level", "used", "E": [lo, hi], ...}, "frontier": [[C, N_opt, D_opt, L], ...],
// "isoflop": {"k", "a", "budgets": [[C, N_opt, L_opt], ...]}}, ...]}; with one family its law
// also at the top level (E, A, B, alpha, beta, objective, runs), as earlier versions wrote.
std::string sweep_fit_json(const std::vector<FamilyFit>& fits);

}  // namespace ssmtrain
