// ssmtrain-bench: one program, one workload family per source file.
//
//   ssmtrain-bench core [--json FILE] [--quick]   elementwise, GEMM, cross-entropy, rms_norm
//   ssmtrain-bench ssm  [--json FILE] [--quick]   selective_scan and SSD at the PERF.md shapes
//   ssmtrain-bench train [--json FILE] [--quick] [--profile]   whole training steps (bench/train.cpp)
//   ssmtrain-bench all  ...
//
// Each family prints a table and appends its rows to the JSON report (an array of objects
// with at least "bench", "shape", "ms" and, where PERF.md gives one, "target_ms"/"ratio").
#pragma once

#include <string>
#include <vector>

namespace ssmtrain::bench {

struct Options {
  std::string json_path;  // empty: no JSON file
  bool quick = false;     // fewer repetitions and smaller shapes (smoke runs)
  int device = 0;         // CUDA device index
  std::string only;       // non-empty: run only the rows whose name contains it
  bool profile = false;   // train: record two steps per row with the profiler, print its table
  bool unfused_head = false;  // train: full logits + cross_entropy instead of the fused head
  int ssd_chunk = 256;        // ssm: the SSD rows' chunk length (official figures only at 256)
};

// One measured row; `fields` are extra key/value pairs printed and written as JSON numbers.
struct Row {
  std::string bench;
  std::string shape;
  double ms = 0;
  std::vector<std::pair<std::string, double>> fields;
};

// The families. Each returns the rows it measured (empty when it cannot run, e.g. no GPU,
// after printing why).
std::vector<Row> run_core(const Options& options);
std::vector<Row> run_ssm(const Options& options);
std::vector<Row> run_train(const Options& options);

}  // namespace ssmtrain::bench
