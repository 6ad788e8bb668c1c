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
std::vector<SweepAxis> parse_sweep_grid(const std::string& text);

struct SweepRun {
  std::string name;                    // the run directory's name inside the sweep directory
  std::vector<std::string> overrides;  // the combination's overrides
  double params = 0;                   // N (the count budget.params names)
  double tokens = 0;                   // D, training tokens at the end
  double val_loss = 0;                 // the last validation loss
};

struct SweepOptions {
  std::string config_path;
  std::vector<std::string> overrides;  // applied to every run, before the grid's
  std::vector<SweepAxis> grid;
  std::string dir;                     // the sweep directory
  bool quiet = true;                   // runs print nothing; the sweep prints a table
};

// Trains every combination (in order), writes <dir>/sweep.jsonl (one record per run) and
// returns the runs. A failing run stops the sweep with its exit code in the exception. A
// stop request (Ctrl-C, SIGTERM: stop_requested()) ends the sweep after the run in flight
// saved its checkpoint: the finished runs are returned and sweep.jsonl is not written.
std::vector<SweepRun> run_sweep(const SweepOptions& options);

}  // namespace ssmtrain
