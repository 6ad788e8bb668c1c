// Pictures of runs (train/plot.h): tick positions, and the SVG of run and sweep directories
// (one polyline per run and panel, non-finite records left out, bad directories named).
#include <doctest/doctest.h>

#include <filesystem>
#include <fstream>
#include <sstream>

#include "temp_dir.h"
#include "train/plot.h"
#include "user_error.h"

using namespace ssmtrain;
using testing::contains;
using testing::user_error_of;

namespace {
size_t count(const std::string& text, const std::string& part) {
  size_t n = 0;
  for (size_t at = text.find(part); at != std::string::npos; at = text.find(part, at + 1)) ++n;
  return n;
}
void write(const std::string& path, const std::string& text) {
  std::filesystem::create_directories(std::filesystem::path(path).parent_path());
  std::ofstream(path) << text;
}
}  // namespace

TEST_CASE("plot: ticks are round numbers covering the range") {
  const std::vector<double> unit = nice_ticks(0, 1, 5);  // steps of 0.2, accumulated: compare approximately
  REQUIRE(unit.size() == 6);
  for (size_t i = 0; i < unit.size(); ++i) CHECK(unit[i] == doctest::Approx(0.2 * static_cast<double>(i)));
  CHECK(nice_ticks(1.7, 5.6, 5) == std::vector<double>{2, 3, 4, 5});
  CHECK(nice_ticks(0, 61440, 5) == std::vector<double>{0, 20000, 40000, 60000});
  CHECK(nice_ticks(3, 3, 5).empty());
  CHECK(log_ticks(3e9, 9e12) == std::vector<double>{1e10, 1e11, 1e12});
  CHECK(log_ticks(1.8, 4.5) == std::vector<double>{2, 3, 4});                          // within a decade: integer steps
  CHECK(log_ticks(1.7e9, 8.6e10) == std::vector<double>{2e9, 5e9, 1e10, 2e10, 5e10});  // else 1-2-5
  CHECK(log_ticks(2.6, 2.8).size() >= 3);  // inside one integer step: linear ticks
  CHECK(log_ticks(2.6, 2.8).front() >= 2.6);
  // Two integer ticks only (1.3 .. 3.1 holds 2 and 3): linear ticks instead, at least 3.
  const std::vector<double> short_range = log_ticks(1.3, 3.1);
  CHECK(short_range.size() >= 3);
  CHECK(short_range.front() >= 1.3);
  CHECK(short_range.back() <= 3.1);
  CHECK(log_ticks(2.6, 2.8).back() <= 2.8 + 1e-12);
}

TEST_CASE("plot: a run directory gives one curve per panel; a sweep adds its scaling panel") {
  testing::TempDir dir("plot");
  const std::string run = dir.str() + "/a";
  write(run + "/metrics.jsonl",
        "{\"step\": 1, \"tokens\": 100, \"loss\": 5.5, \"lr\": 0.001, \"grad_norm\": 1, \"tokens_per_s\": 10}\n"
        "{\"step\": 2, \"tokens\": 200, \"loss\": NaN, \"lr\": 0.002, \"grad_norm\": 1, \"tokens_per_s\": 11}\n"
        "{\"step\": 3, \"tokens\": 300, \"loss\": 4.5, \"lr\": 0.002, \"grad_norm\": 1, \"tokens_per_s\": 12}\n"
        "{\"step\": 3, \"tokens\": 300, \"split\": \"val\", \"loss\": 4.7, \"bpb\": 6.1}\n");
  const std::string svg = plot_runs_svg({run});
  CHECK(contains(svg, "<svg xmlns=\"http://www.w3.org/2000/svg\""));
  CHECK(count(svg, "<polyline") == 4);  // training loss, validation loss, lr, tokens/s
  CHECK(count(svg, "<circle") == 1);    // the one evaluation
  // The NaN loss is left out: the training-loss line has the two finite points only.
  const size_t first = svg.find("<polyline"), pts = svg.find("points=\"", first);
  CHECK(count(svg.substr(pts, svg.find('"', pts + 8) - pts), ",") == 2);
  CHECK(contains(svg, ">a</text>"));  // the legend names the run
  CHECK(!contains(svg, "validation accuracy"));  // no accuracy recorded: no accuracy panel

  // A synthetic task's run records the answer accuracy: a fifth panel, accuracy against step.
  const std::string task = dir.str() + "/task";
  std::string task_metrics;
  for (int step : {1, 2})  // a training record and a validation record with acc per step
    task_metrics += "{\"step\": " + std::to_string(step) + ", \"tokens\": " + std::to_string(100 * step) +
                    ", \"loss\": " + std::to_string(3.5 - step) + ", \"lr\": 0.001, \"tokens_per_s\": 10}\n" +
                    "{\"step\": " + std::to_string(step) + ", \"tokens\": " + std::to_string(100 * step) +
                    ", \"split\": \"val\", \"loss\": " + std::to_string(3.4 - step) +
                    ", \"acc\": " + std::to_string(0.5 * step - 0.25) + "}\n";
  write(task + "/metrics.jsonl", task_metrics);
  const std::string with_acc = plot_runs_svg({task});
  CHECK(contains(with_acc, "validation accuracy"));
  CHECK(count(with_acc, "<polyline") == 5);
  CHECK(count(with_acc, "<circle") == 4);  // two evaluations, in the loss and the accuracy panel
  // Only the evaluations kept (no training records): the panels without points are left out.
  const std::string evals = dir.str() + "/evals";
  std::string eval_metrics;
  std::istringstream lines(task_metrics);
  for (std::string line; std::getline(lines, line);)
    if (contains(line, "\"val\"")) eval_metrics += line + "\n";
  write(evals + "/metrics.jsonl", eval_metrics);
  const std::string only_evals = plot_runs_svg({evals});
  CHECK(contains(only_evals, "validation loss"));
  CHECK(contains(only_evals, "validation accuracy"));
  CHECK(!contains(only_evals, "training loss"));
  CHECK(!contains(only_evals, "no data"));
  CHECK(count(only_evals, "<polyline") == 2);

  // Two runs: two colours. A sweep directory: its runs plus the compute panel.
  const std::string sweep = dir.str() + "/sw";
  write(sweep + "/r1/metrics.jsonl", "{\"step\": 1, \"tokens\": 10, \"loss\": 3, \"lr\": 1, \"tokens_per_s\": 1}\n");
  write(sweep + "/sweep.jsonl",
        "{\"name\": \"r1\", \"params\": 1000, \"tokens\": 2000, \"val_loss\": 3.5}\n"
        "{\"name\": \"r2\", \"params\": 4000, \"tokens\": 8000, \"val_loss\": 3.0}\n");
  write(sweep + "/fit.json", "{\"E\": 1.5, \"A\": 40, \"alpha\": 0.3, \"B\": 60, \"beta\": 0.3}\n");
  const std::string both = plot_runs_svg({run, sweep});
  CHECK(contains(both, "stroke=\"#1f77b4\""));
  CHECK(contains(both, "stroke=\"#ff7f0e\""));
  CHECK(contains(both, "final validation loss against compute"));
  CHECK(contains(both, "fitted L(N, D), compute-optimal"));
  CHECK(count(both, "stroke-dasharray") == 1);
}

TEST_CASE("plot: directories without metrics are named") {
  testing::TempDir dir("plot_bad");
  CHECK(contains(user_error_of([&] { plot_runs_svg({dir.str() + "/none"}); }), "is not a directory"));
  CHECK(contains(user_error_of([&] { plot_runs_svg({dir.str()}); }), "has no metrics.jsonl"));
  write(dir.str() + "/metrics.jsonl", "{\"step\": 1}\n{oops\n");
  const std::string msg = user_error_of([&] { plot_runs_svg({dir.str()}); });
  CHECK(contains(msg, "metrics.jsonl line 2"));
}
