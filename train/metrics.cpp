#include "train/metrics.h"

#include <sys/ioctl.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <iostream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "core/error.h"

namespace ssmtrain {

namespace {

// A JSON string literal, by nlohmann-json's serializer; bytes that are not UTF-8 become
// U+FFFD, so a record stays valid JSON whatever a name holds.
std::string quoted(const std::string& s) {
  return nlohmann::json(s).dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
}

}  // namespace

void JsonLine::key(const std::string& k) {
  if (!body_.empty()) body_ += ", ";
  body_ += quoted(k) + ": ";
}

std::string JsonLine::text(const std::string& k) const {
  for (const auto& [name, v] : strings_)
    if (name == k) return v;
  return "";
}

JsonLine& JsonLine::add(const std::string& k, double v) {
  numbers_.emplace_back(k, v);
  key(k);
  if (!std::isfinite(v)) {
    body_ += std::isnan(v) ? "NaN" : (v > 0 ? "Infinity" : "-Infinity");
  } else {
    char buf[32];
    std::snprintf(buf, sizeof buf, "%.17g", v);
    body_ += buf;
  }
  return *this;
}

JsonLine& JsonLine::add(const std::string& k, int64_t v) {
  numbers_.emplace_back(k, static_cast<double>(v));
  key(k);
  body_ += std::to_string(v);
  return *this;
}

JsonLine& JsonLine::add(const std::string& k, const std::string& v) {
  strings_.emplace_back(k, v);
  key(k);
  body_ += quoted(v);
  return *this;
}

RunLog::RunLog(const std::string& run_dir, bool quiet) : enabled_(true), quiet_(quiet) {
  std::filesystem::create_directories(run_dir);
  run_dir_ = run_dir;
  metrics_path_ = run_dir + "/metrics.jsonl";
  metrics_.open(metrics_path_, std::ios::app);
  log_path_ = run_dir + "/train.log";
  log_.open(log_path_, std::ios::app);
  SSMT_CHECK(metrics_ && log_, "cannot write to run directory '", run_dir, "'");
  tty_ = isatty(STDOUT_FILENO) && !quiet;
}

void RunLog::metrics(const JsonLine& line) {
  if (!enabled_) return;
  metrics_ << line.str() << "\n";
  metrics_.flush();
  check_written(metrics_, metrics_path_, metrics_failed_);
  if (tensorboard_) {
    // The step is the x axis; everything else numeric is a scalar under the record's split.
    std::string split = line.text("split");
    if (split.empty()) split = "train";
    int64_t step = 0;
    std::vector<std::pair<std::string, float>> scalars;
    for (const auto& [k, v] : line.numbers()) {
      if (k == "step")
        step = static_cast<int64_t>(v);
      else
        scalars.emplace_back(split + "/" + k, static_cast<float>(v));
    }
    tensorboard_->scalars(step, scalars);
  }
}

void RunLog::enable_tensorboard(int64_t resumed_step) {
  if (!enabled_ || tensorboard_) return;
  tensorboard_ = std::make_unique<TensorBoardWriter>(run_dir_);
  if (resumed_step > 0) tensorboard_->session_start(resumed_step);
}

// A failed write (full or broken device) is reported once on stderr; training goes on and
// checkpoints are still saved (they are written, and checked, on their own).
void RunLog::check_written(std::ofstream& out, const std::string& path, bool& failed) {
  if (out || failed) return;
  failed = true;
  std::cerr << "warning: cannot write '" << path << "' (" << std::strerror(errno)
            << "); training goes on and checkpoints are still saved, but these records are lost" << std::endl;
}

void RunLog::info(const std::string& line) {
  if (!enabled_) return;
  log_ << line << "\n";
  log_.flush();
  check_written(log_, log_path_, log_failed_);
  if (quiet_) return;
  if (bar_shown_) std::cout << "\r\033[2K";
  std::cout << line << std::endl;
  bar_shown_ = false;
  if (!std::cout && !stdout_lost_) {
    // The terminal or pipe went away (SIGPIPE is ignored): say so once, keep training.
    stdout_lost_ = true;
    std::cerr << "warning: standard output is closed; the run goes on, logging to " << log_path_ << std::endl;
  }
}

void RunLog::info_or_file(const std::string& line) {
  if (!enabled_) return;
  if (!tty_) return info(line);
  log_ << line << "\n";
  log_.flush();
  check_written(log_, log_path_, log_failed_);
}

void RunLog::progress(int64_t step, int64_t total, double loss, double lr, double tps, double eta) {
  if (!tty_) return;
  char text[200];
  std::snprintf(text, sizeof text, "%lld/%lld loss %.4f lr %.2e %s tok/s ETA %s", static_cast<long long>(step),
                static_cast<long long>(total), loss, lr, format_count(tps).c_str(), format_duration(eta).c_str());
  // The bar fits the terminal: a line that wraps would leave one stale line per update.
  int cols = 80;
  winsize ws{};
  if (ioctl(STDOUT_FILENO, TIOCGWINSZ, &ws) == 0 && ws.ws_col > 0) cols = ws.ws_col;
  const int room = cols - 1 - static_cast<int>(std::strlen(text)) - 3;  // "[" bar "] "
  std::string line = text;
  if (room >= 8) {
    const int width = std::min(24, room);
    const int filled = total > 0 ? static_cast<int>(width * static_cast<double>(step) / total) : 0;
    line = "[" + std::string(filled, '#') + std::string(width - filled, '.') + "] " + line;
  }
  if (static_cast<int>(line.size()) >= cols) line.resize(static_cast<size_t>(std::max(cols - 1, 1)));
  std::cout << "\r\033[2K" << line << std::flush;
  bar_shown_ = true;
}

void RunLog::finish_progress() {
  if (bar_shown_) std::cout << "\n";
  bar_shown_ = false;
}

std::string format_count(double n) {
  char buf[32];
  const char* units[] = {"", "k", "M", "B", "T"};
  int u = 0;
  while (std::fabs(n) >= 1000 && u < 4) n /= 1000, ++u;
  std::snprintf(buf, sizeof buf, u == 0 ? "%.0f%s" : "%.3g%s", n, units[u]);
  return buf;
}

std::string format_duration(double s) {
  if (!std::isfinite(s) || s < 0) return "?";
  long t = std::lround(s);
  char buf[32];
  if (t >= 3600)
    std::snprintf(buf, sizeof buf, "%ldh%02ldm", t / 3600, (t % 3600) / 60);
  else if (t >= 60)
    std::snprintf(buf, sizeof buf, "%ldm%02lds", t / 60, t % 60);
  else
    std::snprintf(buf, sizeof buf, "%lds", t);
  return buf;
}

}  // namespace ssmtrain
