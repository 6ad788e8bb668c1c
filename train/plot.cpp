#include "train/plot.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <limits>

#include "core/error.h"
#include "train/json.h"
#include "train/metrics.h"
#include "train/scaling.h"

namespace fs = std::filesystem;

namespace ssmtrain {

namespace {

// matplotlib's tab10: ten colours that stay apart for colour-blind readers too.
const char* const kPalette[] = {"#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd",
                                "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf"};

// Runs take the palette in turn; a negative index is black, for what is not a run (the
// sweep's points and fitted law), so it never shares a colour with one.
const char* color_of(int index) { return index < 0 ? "#000000" : kPalette[static_cast<size_t>(index) % 10]; }

std::string xml_escape(const std::string& s) {
  std::string o;
  for (char c : s) {
    switch (c) {
      case '&':
        o += "&amp;";
        break;
      case '<':
        o += "&lt;";
        break;
      case '>':
        o += "&gt;";
        break;
      case '"':
        o += "&quot;";
        break;
      default:
        o += c;
    }
  }
  return o;
}

std::string num(double v) {
  char b[32];
  std::snprintf(b, sizeof b, "%.1f", v);
  return b;
}

// A tick label: 3 significant digits, with k/M/B for large values.
std::string tick_label(double v) {
  if (v == 0) return "0";
  const double a = std::fabs(v);
  if (a >= 1e3) return format_count(v);
  char b[32];
  std::snprintf(b, sizeof b, a < 1e-3 ? "%.0e" : "%.3g", v);
  return b;
}

struct Range {
  double lo = std::numeric_limits<double>::infinity(), hi = -std::numeric_limits<double>::infinity();
  void add(double v) { lo = std::min(lo, v), hi = std::max(hi, v); }
  bool empty() const { return !(lo <= hi); }
};

void render_panel(std::string& svg, const PlotPanel& p, double x0, double y0, double w, double h) {
  // The plot area inside the panel: room for tick labels on the left and below.
  const double L = x0 + 62, R = x0 + w - 14, T = y0 + 26, B = y0 + h - 42;
  svg += "<text x=\"" + num((L + R) / 2) + "\" y=\"" + num(y0 + 16) +
         "\" text-anchor=\"middle\" font-size=\"14\" font-weight=\"bold\">" + xml_escape(p.title) + "</text>\n";
  Range xr, yr;
  auto usable = [&](double x, double y) {
    return std::isfinite(x) && std::isfinite(y) && (!p.log_x || x > 0) && (!p.log_y || y > 0);
  };
  for (const auto& s : p.series)
    for (const auto& [x, y] : s.points)
      if (usable(x, y)) xr.add(x), yr.add(y);
  svg += "<rect x=\"" + num(L) + "\" y=\"" + num(T) + "\" width=\"" + num(R - L) + "\" height=\"" + num(B - T) +
         "\" fill=\"none\" stroke=\"#444\"/>\n";
  if (xr.empty()) {
    svg += "<text x=\"" + num((L + R) / 2) + "\" y=\"" + num((T + B) / 2) +
           "\" text-anchor=\"middle\" fill=\"#888\">no data</text>\n";
    return;
  }
  // Widen a degenerate range (one point, a constant learning rate) so it has a scale.
  auto widen = [](Range& r, bool log) {
    if (r.hi > r.lo) return;
    if (log)
      r.lo /= 2, r.hi *= 2;
    else if (r.lo == 0)
      r.lo = -1, r.hi = 1;
    else
      r.lo -= std::fabs(r.lo) * 0.1, r.hi += std::fabs(r.hi) * 0.1;
  };
  widen(xr, p.log_x);
  widen(yr, p.log_y);
  if (!p.log_y) {  // a little air above and below the curves
    const double pad = (yr.hi - yr.lo) * 0.05;
    yr.lo -= pad, yr.hi += pad;
  }
  auto tx = [&](double x) {
    return p.log_x ? L + (std::log10(x) - std::log10(xr.lo)) / (std::log10(xr.hi) - std::log10(xr.lo)) * (R - L)
                   : L + (x - xr.lo) / (xr.hi - xr.lo) * (R - L);
  };
  auto ty = [&](double y) {
    return p.log_y ? B - (std::log10(y) - std::log10(yr.lo)) / (std::log10(yr.hi) - std::log10(yr.lo)) * (B - T)
                   : B - (y - yr.lo) / (yr.hi - yr.lo) * (B - T);
  };
  for (double t : p.log_x ? log_ticks(xr.lo, xr.hi) : nice_ticks(xr.lo, xr.hi, 5)) {
    const double x = tx(t);
    svg += "<line x1=\"" + num(x) + "\" y1=\"" + num(T) + "\" x2=\"" + num(x) + "\" y2=\"" + num(B) +
           "\" stroke=\"#e4e4e4\"/>\n<text x=\"" + num(x) + "\" y=\"" + num(B + 15) +
           "\" text-anchor=\"middle\" font-size=\"11\">" + tick_label(t) + "</text>\n";
  }
  for (double t : p.log_y ? log_ticks(yr.lo, yr.hi) : nice_ticks(yr.lo, yr.hi, 5)) {
    const double y = ty(t);
    svg += "<line x1=\"" + num(L) + "\" y1=\"" + num(y) + "\" x2=\"" + num(R) + "\" y2=\"" + num(y) +
           "\" stroke=\"#e4e4e4\"/>\n<text x=\"" + num(L - 5) + "\" y=\"" + num(y + 4) +
           "\" text-anchor=\"end\" font-size=\"11\">" + tick_label(t) + "</text>\n";
  }
  svg += "<text x=\"" + num((L + R) / 2) + "\" y=\"" + num(B + 32) + "\" text-anchor=\"middle\" font-size=\"12\">" +
         xml_escape(p.x_label) + "</text>\n";
  svg += "<text transform=\"translate(" + num(x0 + 14) + "," + num((T + B) / 2) +
         ") rotate(-90)\" text-anchor=\"middle\" font-size=\"12\">" + xml_escape(p.y_label) + "</text>\n";
  for (const auto& s : p.series) {
    const char* color = color_of(s.color);
    std::string pts;
    int n = 0;
    for (const auto& [x, y] : s.points) {
      if (!usable(x, y)) continue;
      pts += (n++ ? " " : "") + num(tx(x)) + "," + num(ty(y));
    }
    if (n == 0) continue;
    if (s.line)
      svg += "<polyline fill=\"none\" stroke=\"" + std::string(color) + "\" stroke-width=\"1.6\"" +
             (s.dashed ? " stroke-dasharray=\"6,4\"" : "") + " points=\"" + pts + "\"/>\n";
    if (s.markers)
      for (const auto& [x, y] : s.points)
        if (usable(x, y))
          svg += "<circle cx=\"" + num(tx(x)) + "\" cy=\"" + num(ty(y)) + "\" r=\"3\" fill=\"" + color + "\"/>\n";
  }
}

struct RunMetrics {
  std::string name;
  std::vector<Json> train, val;
};

RunMetrics read_run_metrics(const std::string& dir) {
  const std::string path = (fs::path(dir) / "metrics.jsonl").string();
  SSMT_CHECK(fs::exists(path), "plot: '", dir,
             "' has no metrics.jsonl (nor sweep.jsonl): not a run or sweep directory");
  std::ifstream in(path);
  SSMT_CHECK(in.good(), "plot: cannot read '", path, "'");
  RunMetrics r;
  r.name = fs::path(dir).filename().string();
  if (r.name.empty()) r.name = fs::path(dir).parent_path().filename().string();
  int line_no = 0;
  for (std::string line; std::getline(in, line);) {
    ++line_no;
    if (line.empty()) continue;
    Json v = parse_json(line, path + " line " + std::to_string(line_no));
    const Json* split = json_find(v, "split");
    (split && *split == "val" ? r.val : r.train).push_back(std::move(v));
  }
  return r;
}

PlotSeries series_of(const std::vector<Json>& records, const char* x, const char* y, const std::string& label,
                     int color) {
  PlotSeries s;
  s.label = label;
  s.color = color;
  for (const Json& r : records) {
    const Json *xv = json_find(r, x), *yv = json_find(r, y);
    if (xv && yv && xv->is_number() && yv->is_number()) s.points.emplace_back(xv->get<double>(), yv->get<double>());
  }
  return s;
}

}  // namespace

std::vector<double> nice_ticks(double lo, double hi, int target) {
  std::vector<double> out;
  if (!(hi > lo) || target < 1) return out;
  const double raw = (hi - lo) / target, mag = std::pow(10.0, std::floor(std::log10(raw)));
  double step = mag;
  for (double m : {1.0, 2.0, 5.0, 10.0})
    if (m * mag >= raw) {
      step = m * mag;
      break;
    }
  for (double t = std::ceil(lo / step) * step; t <= hi + step * 1e-9; t += step)
    out.push_back(std::fabs(t) < step * 1e-9 ? 0.0 : t);
  return out;
}

std::vector<double> log_ticks(double lo, double hi) {
  std::vector<double> out;
  if (!(lo > 0 && hi > lo)) return out;
  for (double d = std::pow(10.0, std::ceil(std::log10(lo) - 1e-9)); d <= hi * (1 + 1e-9); d *= 10) out.push_back(d);
  if (out.size() >= 2) return out;
  // Less than two powers of ten in range: every integer multiple (losses between 2 and 5),
  // or 1-2-5 steps when that would crowd the axis.
  for (const std::vector<double>& mult :
       {std::vector<double>{1, 2, 3, 4, 5, 6, 7, 8, 9}, std::vector<double>{1, 2, 5}}) {
    out.clear();
    for (double d = std::pow(10.0, std::floor(std::log10(lo))); d <= hi * (1 + 1e-9); d *= 10)
      for (double m : mult)
        if (m * d >= lo * (1 - 1e-9) && m * d <= hi * (1 + 1e-9)) out.push_back(m * d);
    if (out.size() <= 8) break;
  }
  // Two or fewer ticks (losses between 1.3 and 3.1 give 2 and 3), or a range inside one step
  // of those (between 2.6 and 2.8): linear ticks, which a short log axis shows evenly enough.
  if (out.size() <= 2) return nice_ticks(lo, hi, 4);
  return out;
}

std::string render_svg(const std::string& title, const std::vector<PlotPanel>& panels, int columns,
                       const std::vector<std::pair<std::string, int>>& legend) {
  const double pw = 480, ph = 320;
  const int rows = (static_cast<int>(panels.size()) + columns - 1) / columns;
  // The legend wraps at the picture's width; every slot fits the longest label (about 7 px
  // per character at 12 px), so names are never cut.
  size_t longest = 1;
  for (const auto& [label, c] : legend) longest = std::max(longest, label.size());
  const double slot = 40 + 7.0 * static_cast<double>(longest);
  const int per_line = std::max(1, static_cast<int>((pw * columns - 20) / slot));
  const int legend_lines = (static_cast<int>(legend.size()) + per_line - 1) / per_line;
  const double top = 40 + 18.0 * legend_lines, width = pw * columns, height = top + ph * rows;
  std::string svg = "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"" +
                    num(width) + "\" height=\"" + num(height) + "\" viewBox=\"0 0 " + num(width) + " " + num(height) +
                    "\" font-family=\"DejaVu Sans, Helvetica, Arial, sans-serif\">\n";
  svg += "<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n";
  svg += "<text x=\"" + num(width / 2) + "\" y=\"24\" text-anchor=\"middle\" font-size=\"16\">" + xml_escape(title) +
         "</text>\n";
  for (size_t i = 0; i < legend.size(); ++i) {
    const double x = 20 + slot * static_cast<double>(i % static_cast<size_t>(per_line));
    const double y = 44 + 18.0 * static_cast<double>(i / static_cast<size_t>(per_line));
    const char* color = color_of(legend[i].second);
    const std::string& label = legend[i].first;
    svg += "<line x1=\"" + num(x) + "\" y1=\"" + num(y - 4) + "\" x2=\"" + num(x + 22) + "\" y2=\"" + num(y - 4) +
           "\" stroke=\"" + color + "\" stroke-width=\"3\"/>\n<text x=\"" + num(x + 28) + "\" y=\"" + num(y) +
           "\" font-size=\"12\">" + xml_escape(label) + "</text>\n";
  }
  for (size_t i = 0; i < panels.size(); ++i)
    render_panel(svg, panels[i], pw * static_cast<double>(i % static_cast<size_t>(columns)),
                 top + ph * static_cast<double>(i / static_cast<size_t>(columns)), pw, ph);
  return svg + "</svg>\n";
}

namespace {

struct SweepPoint {
  double n, d, loss;
  std::string family;
  double budget;  // the IsoFLOP group: budget.flops when the run had one, else 6 N D
};
struct FamilyLaw {
  std::string family;
  ScalingLaw law;
};
struct SweepData {
  std::vector<SweepPoint> points;
  std::vector<FamilyLaw> laws;        // fitted families (fit.json)
  std::vector<std::string> families;  // in order of first appearance ("" without families)
  std::vector<std::string> run_dirs;  // the runs' directories that hold metrics
  // Named families get a colour each; a sweep without families draws in black.
  bool named_families() const { return families.size() > 1 || (families.size() == 1 && !families[0].empty()); }
};

// sweep.jsonl and fit.json of a sweep directory.
SweepData read_sweep(const std::string& dir) {
  SweepData s;
  const std::string sweep_path = (fs::path(dir) / "sweep.jsonl").string();
  std::ifstream in(sweep_path);
  SSMT_CHECK(in.good(), "plot: cannot read '", sweep_path, "'");
  int line_no = 0;
  for (std::string line; std::getline(in, line);) {
    ++line_no;
    if (line.empty()) continue;
    const std::string what = sweep_path + " line " + std::to_string(line_no);
    Json v = parse_json(line, what);
    SSMT_CHECK(json_find(v, "params") && json_find(v, "tokens") && json_find(v, "val_loss") && json_find(v, "name"),
               what, ": expected name, params, tokens, val_loss");
    const std::string family = json_find(v, "family") ? json_string(v["family"], what + ": family") : "";
    const double n = json_number(v["params"], what), d = json_number(v["tokens"], what);
    const double budget = json_find(v, "budget_flops") ? json_number(v["budget_flops"], what) : 6 * n * d;
    s.points.push_back({n, d, json_number(v["val_loss"], what), family, budget});
    if (std::find(s.families.begin(), s.families.end(), family) == s.families.end()) s.families.push_back(family);
    const std::string run_dir = (fs::path(dir) / json_string(v["name"], what)).string();
    if (fs::exists(fs::path(run_dir) / "metrics.jsonl")) s.run_dirs.push_back(run_dir);
  }
  const std::string fit_path = (fs::path(dir) / "fit.json").string();
  if (fs::exists(fit_path)) {
    std::ifstream f(fit_path);
    std::string text((std::istreambuf_iterator<char>(f)), {});
    const Json v = parse_json(text, fit_path);
    auto law_of = [&](const Json& o) {
      auto number = [&](const char* key) { return json_find(o, key) ? json_number(o[key], fit_path) : 0.0; };
      ScalingLaw law;
      law.E = number("E"), law.A = number("A"), law.B = number("B");
      law.alpha = number("alpha"), law.beta = number("beta");
      return law;
    };
    if (const Json* fams = json_find(v, "families")) {
      for (const Json& o : json_array(*fams, fit_path + ": families")) {
        const std::string family = json_find(o, "family") ? json_string(o["family"], fit_path + ": family") : "";
        const ScalingLaw law = law_of(o);
        if (law.alpha > 0 && law.beta > 0) s.laws.push_back({family, law});
      }
    } else {  // a fit.json of an earlier version: one law at the top level
      const ScalingLaw law = law_of(v);
      if (law.alpha > 0 && law.beta > 0) s.laws.push_back({"", law});
    }
  }
  return s;
}

std::string family_label(const std::string& family) { return family.empty() ? "sweep runs" : family; }

// Final validation loss against compute: each family's runs as dots of its colour (black
// without families) and its fitted compute-optimal frontier dashed, over the sweep's own
// compute range (beyond it the law is an extrapolation).
PlotPanel scaling_panel(const SweepData& s, std::vector<std::pair<std::string, int>>& legend) {
  PlotPanel panel{"final validation loss against compute", "compute C = 6 N D (FLOPs)", "loss (nats/token)", true,
                  true, {}};
  double c_lo = std::numeric_limits<double>::infinity(), c_hi = 0;
  for (const auto& p : s.points) c_lo = std::min(c_lo, 6 * p.n * p.d), c_hi = std::max(c_hi, 6 * p.n * p.d);
  for (size_t k = 0; k < s.families.size(); ++k) {
    const int color = s.named_families() ? static_cast<int>(k) : -1;
    PlotSeries pts;  // dots only: runs of different sizes at similar compute are not one curve
    pts.label = family_label(s.families[k]);
    pts.markers = true;
    pts.line = false;
    pts.color = color;
    for (const auto& p : s.points)
      if (p.family == s.families[k]) pts.points.emplace_back(6 * p.n * p.d, p.loss);
    panel.series.push_back(pts);
    legend.emplace_back(pts.label + " (final validation loss)", color);
    for (const FamilyLaw& fl : s.laws) {
      if (fl.family != s.families[k]) continue;
      PlotSeries f;
      f.label = family_label(fl.family) + ": fitted L(N, D), compute-optimal";
      f.dashed = true;
      f.color = color;
      for (int i = 0; i <= 40; ++i) {
        const double c = c_lo * std::pow(c_hi / c_lo, i / 40.0);
        f.points.emplace_back(c, fl.law.loss(fl.law.n_opt(c), fl.law.d_opt(c)));
      }
      panel.series.push_back(f);
      legend.emplace_back(f.label, color);
    }
  }
  return panel;
}

// IsoFLOP profiles: for every family and compute budget (C to 1%) with runs at 3 or more
// sizes, loss against N through those runs. Empty when no budget has 3 sizes.
PlotPanel isoflop_panel(const SweepData& s, std::vector<std::pair<std::string, int>>& legend) {
  PlotPanel panel{"IsoFLOP profiles (runs of equal compute)", "parameters N", "loss (nats/token)", true, true, {}};
  for (size_t k = 0; k < s.families.size(); ++k) {
    std::vector<SweepPoint> pts;
    for (const auto& p : s.points)
      if (p.family == s.families[k]) pts.push_back(p);
    std::sort(pts.begin(), pts.end(), [](const SweepPoint& a, const SweepPoint& b) { return a.budget < b.budget; });
    bool labelled = false;
    for (size_t i = 0; i < pts.size();) {
      size_t j = i;
      while (j < pts.size() && pts[j].budget <= pts[i].budget * 1.01) ++j;
      if (j - i >= 3) {
        PlotSeries line;
        char buf[64];
        std::snprintf(buf, sizeof buf, "C = %.2g", pts[i].budget);
        line.label = family_label(s.families[k]) + ", " + buf;
        line.markers = true;
        line.color = s.named_families() ? static_cast<int>(k) : -1;
        std::vector<std::pair<double, double>> xy;
        for (size_t q = i; q < j; ++q) xy.emplace_back(pts[q].n, pts[q].loss);
        std::sort(xy.begin(), xy.end());
        line.points = xy;
        panel.series.push_back(line);
        if (!labelled) legend.emplace_back(family_label(s.families[k]) + " (one line per compute budget)", line.color);
        labelled = true;
      }
      i = j;
    }
  }
  return panel;
}

}  // namespace

std::string plot_runs_svg(const std::vector<std::string>& dirs) {
  SSMT_CHECK(!dirs.empty(), "plot: no run directory given");
  std::vector<RunMetrics> runs;
  std::vector<SweepData> sweeps;
  for (const std::string& dir : dirs) {
    SSMT_CHECK(fs::is_directory(dir), "plot: '", dir, "' is not a directory");
    if (!fs::exists(fs::path(dir) / "sweep.jsonl")) {
      runs.push_back(read_run_metrics(dir));
      continue;
    }
    // A sweep directory: every run below it, and its (N, D, final loss) points.
    sweeps.push_back(read_sweep(dir));
    for (const std::string& run_dir : sweeps.back().run_dirs) runs.push_back(read_run_metrics(run_dir));
  }

  PlotPanel loss{"training loss", "tokens", "loss (nats/token)", false, false, {}};
  PlotPanel val{"validation loss", "tokens", "loss (nats/token)", false, false, {}};
  PlotPanel lr{"learning rate", "step", "lr", false, false, {}};
  PlotPanel speed{"throughput", "step", "tokens/s", false, false, {}};
  // Synthetic tasks (selective copying, induction heads) record the answer accuracy with
  // each validation: a fifth panel, against step, when any run has it.
  PlotPanel acc{"validation accuracy", "step", "accuracy", false, false, {}};
  std::vector<std::pair<std::string, int>> legend;
  for (size_t i = 0; i < runs.size(); ++i) {
    const int c = static_cast<int>(i);
    legend.emplace_back(runs[i].name, c);
    loss.series.push_back(series_of(runs[i].train, "tokens", "loss", runs[i].name, c));
    PlotSeries v = series_of(runs[i].val, "tokens", "loss", runs[i].name, c);
    v.markers = true;
    val.series.push_back(v);
    lr.series.push_back(series_of(runs[i].train, "step", "lr", runs[i].name, c));
    speed.series.push_back(series_of(runs[i].train, "step", "tokens_per_s", runs[i].name, c));
    PlotSeries a = series_of(runs[i].val, "step", "acc", runs[i].name, c);
    a.markers = true;
    if (!a.points.empty()) acc.series.push_back(a);
  }
  std::vector<PlotPanel> panels;
  // Runs whose metrics hold only some kinds of record (e.g. only the evaluations kept from a
  // long run) get only the panels that have points; with no points at all, the four empty
  // panels say "no data".
  auto has_points = [](const PlotPanel& p) {
    return std::any_of(p.series.begin(), p.series.end(), [](const PlotSeries& s) { return !s.points.empty(); });
  };
  for (const PlotPanel* p : {&loss, &val, &lr, &speed})
    if (has_points(*p)) panels.push_back(*p);
  if (panels.empty()) panels = {loss, val, lr, speed};
  if (!acc.series.empty()) panels.push_back(acc);
  // With one sweep, its scaling panel (one sweep's families share the run colours' palette
  // only in scaling.svg, where no run curves are drawn).
  if (sweeps.size() == 1) {
    std::vector<std::pair<std::string, int>> ignored;
    PlotPanel p = scaling_panel(sweeps[0], ignored);
    for (auto& series : p.series) series.color = -1;  // black: the colours belong to the runs here
    panels.push_back(p);
    legend.emplace_back("sweep runs (final validation loss)", -1);
    if (!sweeps[0].laws.empty()) legend.emplace_back("fitted L(N, D), compute-optimal (dashed)", -1);
  }
  return render_svg("ssmtrain runs", panels, 2, legend);
}

std::string plot_sweep_svg(const std::string& dir) {
  SSMT_CHECK(fs::exists(fs::path(dir) / "sweep.jsonl"), "plot: '", dir, "' has no sweep.jsonl: not a sweep directory");
  const SweepData s = read_sweep(dir);
  std::vector<std::pair<std::string, int>> legend;
  std::vector<PlotPanel> panels = {scaling_panel(s, legend)};
  std::vector<std::pair<std::string, int>> iso_legend;
  PlotPanel iso = isoflop_panel(s, iso_legend);
  if (!iso.series.empty()) {
    panels.push_back(iso);
    legend.insert(legend.end(), iso_legend.begin(), iso_legend.end());
  }
  return render_svg("scaling: " + fs::path(dir).filename().string(), panels, static_cast<int>(panels.size()), legend);
}

}  // namespace ssmtrain
