// Run outputs a person or a script reads while training: metrics.jsonl (one JSON object per
// log or eval step), train.log (every line printed), and the terminal display (a live bar on a
// TTY, one line per log interval otherwise).
#pragma once

#include <cstdint>
#include <fstream>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "train/tensorboard.h"

namespace ssmtrain {

// A flat JSON object built field by field; numbers are written with full precision (%.17g)
// so that two runs can be compared bitwise through their metrics files, and a non-finite
// value as Python's NaN / Infinity literal, which train/json.h reads back. (nlohmann-json
// would write null and lose it; it quotes the strings here.)
class JsonLine {
 public:
  JsonLine& add(const std::string& key, double v);
  JsonLine& add(const std::string& key, int64_t v);
  JsonLine& add(const std::string& key, const std::string& v);
  std::string str() const { return "{" + body_ + "}"; }
  // The numeric fields in the order added (integers too) and the string fields, for the
  // other writers of the same record (TensorBoard).
  const std::vector<std::pair<std::string, double>>& numbers() const { return numbers_; }
  std::string text(const std::string& key) const;  // "" when absent

 private:
  void key(const std::string& k);
  std::string body_;
  std::vector<std::pair<std::string, double>> numbers_;
  std::vector<std::pair<std::string, std::string>> strings_;
};

class RunLog {
 public:
  // Opens (appending) run_dir/metrics.jsonl and run_dir/train.log.
  explicit RunLog(const std::string& run_dir, bool quiet = false);
  // A log that records nothing: what the ranks other than the main one get, so the trainer
  // calls one logger everywhere instead of testing for one.
  static std::unique_ptr<RunLog> null() { return std::unique_ptr<RunLog>(new RunLog()); }
  bool enabled() const { return enabled_; }
  // Whether a write to metrics.jsonl / train.log has failed (reported once on stderr).
  bool metrics_failed() const { return metrics_failed_; }
  bool log_failed() const { return log_failed_; }
  // Writes the record to metrics.jsonl and, when enabled, its numbers to TensorBoard.
  void metrics(const JsonLine& line);
  // train.tensorboard: from now on every metrics record also goes to an event file in the
  // run directory (train/tensorboard.h) as scalars "<split>/<key>" at the record's step
  // (split "train", or the record's own, e.g. "val"). resumed_step > 0: the run resumed
  // there, which TensorBoard is told so that it drops the earlier files' later points.
  void enable_tensorboard(int64_t resumed_step);
  // A line for the log file and the terminal (clearing a live bar first).
  void info(const std::string& line);
  // The same, except that on a terminal (where the live bar carries the progress) the line
  // goes to the log file only.
  void info_or_file(const std::string& line);
  // The live bar on a TTY; on a pipe nothing (info() lines carry the progress).
  void progress(int64_t step, int64_t total, double loss, double lr, double tokens_per_s, double eta_s);
  void finish_progress();
  bool is_tty() const { return tty_; }

 private:
  RunLog() = default;
  std::ofstream metrics_, log_;
  static void check_written(std::ofstream& out, const std::string& path, bool& failed);
  bool enabled_ = false, tty_ = false, bar_shown_ = false, quiet_ = false, stdout_lost_ = false;
  bool metrics_failed_ = false, log_failed_ = false;
  std::string metrics_path_, log_path_, run_dir_;
  std::unique_ptr<TensorBoardWriter> tensorboard_;
};

std::string format_count(double n);     // 1.23M, 45.6k, 7.8B
std::string format_duration(double s);  // 1h02m, 3m05s, 12s

}  // namespace ssmtrain
