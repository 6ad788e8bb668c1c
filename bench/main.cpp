// ssmtrain-bench entry point: parses the family and options, runs, writes JSON (bench/bench.h).
#include <cstdio>
#include <cstring>
#include <fstream>
#include <string>

#include "bench/bench.h"
#include "core/error.h"

using namespace ssmtrain;

namespace {

void write_json(const std::string& path, const std::vector<bench::Row>& rows) {
  std::ofstream out(path);
  if (!out) throw UserError("cannot write the benchmark report '" + path + "'");
  out << "[\n";
  for (size_t i = 0; i < rows.size(); ++i) {
    const bench::Row& r = rows[i];
    out << "  {\"bench\": \"" << r.bench << "\", \"shape\": \"" << r.shape << "\", \"ms\": " << r.ms;
    for (const auto& [key, value] : r.fields) out << ", \"" << key << "\": " << value;
    out << "}" << (i + 1 < rows.size() ? "," : "") << "\n";
  }
  out << "]\n";
}

int usage(FILE* to) {
  std::fprintf(to,
               "usage: ssmtrain-bench core|ssm|train|all [--json FILE] [--quick] [--device N] [--only TEXT] [--profile] [--unfused-head]\n"
               "       [--ssd-chunk Q]\n"
               "  core  elementwise GB/s vs copy, GEMM TFLOP/s vs cuBLAS, cross-entropy and rms_norm\n"
               "  ssm   selective_scan and SSD forward and forward+backward at the PERF.md shapes\n"
               "  train whole training steps of the 129M/370M Mamba ladder and the shipped configs: ms,\n"
               "        tokens/s, peak memory, MFU and the ratio to the official stack (PERF.md)\n"
               "  --quick     tiny shapes (CPU rows too); --profile  profiler table per train row\n"
               "  --unfused-head  train: full logits + cross-entropy (the form before the fused head)\n"
               "  --ssd-chunk Q   ssm: the SSD rows at chunk length Q (a multiple of 64; default 256, the\n"
               "                  official kernels' length, the only one with official figures)\n");
  return to == stderr ? 2 : 0;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2) return usage(stderr);
  std::string family = argv[1];
  if (family == "--help" || family == "-h") return usage(stdout);
  bench::Options options;
  for (int i = 2; i < argc; ++i) {
    std::string a = argv[i];
    if (a == "--json" && i + 1 < argc) options.json_path = argv[++i];
    else if (a == "--quick") options.quick = true;
    else if (a == "--device" && i + 1 < argc) options.device = std::atoi(argv[++i]);
    else if (a == "--only" && i + 1 < argc) options.only = argv[++i];
    else if (a == "--profile") options.profile = true;
    else if (a == "--unfused-head") options.unfused_head = true;
    else if (a == "--ssd-chunk" && i + 1 < argc) {
      options.ssd_chunk = std::atoi(argv[++i]);
      if (options.ssd_chunk < 64 || options.ssd_chunk % 64 != 0) {
        std::fprintf(stderr, "ssmtrain-bench: --ssd-chunk must be a positive multiple of 64, got %s\n", argv[i]);
        return 2;
      }
    }
    else {
      std::fprintf(stderr, "ssmtrain-bench: unknown argument '%s'\n", a.c_str());
      return usage(stderr);
    }
  }
  try {
    std::vector<bench::Row> rows;
    if (family == "core" || family == "all") {
      auto r = bench::run_core(options);
      rows.insert(rows.end(), r.begin(), r.end());
    }
    if (family == "ssm" || family == "all") {
      auto r = bench::run_ssm(options);
      rows.insert(rows.end(), r.begin(), r.end());
    }
    if (family == "train" || family == "all") {
      auto r = bench::run_train(options);
      rows.insert(rows.end(), r.begin(), r.end());
    }
    if (family != "core" && family != "ssm" && family != "train" && family != "all") {
      std::fprintf(stderr, "ssmtrain-bench: unknown family '%s'\n", family.c_str());
      return usage(stderr);
    }
    if (!options.json_path.empty()) write_json(options.json_path, rows);
    return 0;
  } catch (const UserError& e) {
    std::fprintf(stderr, "ssmtrain-bench: %s\n", e.what());
    return 2;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "ssmtrain-bench: %s\n", e.what());
    return 1;
  }
}
