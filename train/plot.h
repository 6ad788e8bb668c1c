// Pictures of runs for `ssmtrain plot` (docs/training.md#plots): line charts written as
// SVG, a text format any browser shows and any converter (rsvg-convert, ImageMagick,
// Inkscape) turns into PNG, so no plotting library or Python is needed to look at a run.
//
// A run directory gives four panels: training loss and validation loss against tokens
// (several runs overlaid, one colour each), the learning rate and tokens/s against steps. A
// sweep directory (sweep.jsonl) adds its runs' final validation loss against compute
// C = 6 N D on log-log axes, with the fitted law's compute-optimal frontier when fit.json
// exists (docs/scaling.md).
#pragma once

#include <string>
#include <utility>
#include <vector>

namespace ssmtrain {

struct PlotSeries {
  std::string label;
  std::vector<std::pair<double, double>> points;  // (x, y); non-finite points are skipped
  bool markers = false;                           // a dot at every point (few points: evaluations)
  bool line = true;                               // false: dots only (points that are not a curve)
  bool dashed = false;
  int color = 0;  // index into the palette
};

struct PlotPanel {
  std::string title, x_label, y_label;
  bool log_x = false, log_y = false;
  std::vector<PlotSeries> series;
};

// About `target` round tick positions (1, 2 or 5 times a power of ten apart) covering
// [lo, hi]; for a log axis, the powers of ten in it (or 1-2-5 steps within one decade).
std::vector<double> nice_ticks(double lo, double hi, int target);
std::vector<double> log_ticks(double lo, double hi);

// The panels on a grid of `columns`, with a legend of (label, color) pairs under `title`.
std::string render_svg(const std::string& title, const std::vector<PlotPanel>& panels, int columns,
                       const std::vector<std::pair<std::string, int>>& legend);

// The picture of these run or sweep directories; UserError naming a directory that has no
// metrics.jsonl (nor sweep.jsonl), or a line of it that is not JSON.
std::string plot_runs_svg(const std::vector<std::string>& dirs);

// The scaling picture of a sweep directory (scaling.svg): final validation loss against
// compute per model family (one colour each) with each fitted family's compute-optimal
// frontier, and the IsoFLOP profiles (loss against N for each compute budget that has runs at
// 3 or more sizes) when there are any.
std::string plot_sweep_svg(const std::string& dir);

}  // namespace ssmtrain
