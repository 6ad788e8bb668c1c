#include "train/sweep.h"

#include <filesystem>
#include <fstream>
#include <sstream>

#include "core/error.h"
#include "train/config.h"
#include "train/json.h"
#include "train/metrics.h"
#include "train/signals.h"
#include "train/setup.h"
#include "train/trainer.h"

namespace fs = std::filesystem;

namespace ssmtrain {

namespace {

std::vector<std::string> split(const std::string& text, char sep) {
  std::vector<std::string> out;
  std::string cur;
  std::istringstream in(text);
  while (std::getline(in, cur, sep)) out.push_back(cur);
  return out;
}

std::string trim(const std::string& s) {
  const auto b = s.find_first_not_of(" \t"), e = s.find_last_not_of(" \t");
  return b == std::string::npos ? "" : s.substr(b, e - b + 1);
}

// The last validation record of a run: (tokens, loss).
std::pair<double, double> final_validation(const std::string& run_dir) {
  const std::string path = run_dir + "/metrics.jsonl";
  std::ifstream in(path);
  SSMT_CHECK(in.good(), "sweep: run '", run_dir, "' has no metrics.jsonl");
  double tokens = -1, loss = -1;
  int line_no = 0;
  for (std::string line; std::getline(in, line);) {
    ++line_no;
    if (line.find("\"val\"") == std::string::npos) continue;  // training records, quickly
    const std::string what = path + " line " + std::to_string(line_no);
    const Json r = parse_json(line, what);
    const Json *split = json_find(r, "split"), *t = json_find(r, "tokens"), *l = json_find(r, "loss");
    if (!split || *split != "val" || !t || !l) continue;
    tokens = json_number(*t, what + ": tokens");
    loss = json_number(*l, what + ": loss");
  }
  SSMT_CHECK(loss >= 0, "sweep: run '", run_dir,
             "' has no validation record (its data needs a validation split; train.eval_every 0 still evaluates "
             "at the end)");
  return {tokens, loss};
}

}  // namespace

std::vector<SweepAxis> parse_sweep_grid(const std::string& text) {
  std::vector<SweepAxis> axes;
  for (const std::string& part : split(text, ';')) {
    const std::string p = trim(part);
    if (p.empty()) continue;
    const auto eq = p.find('=');
    SSMT_CHECK(eq != std::string::npos && eq > 0, "--grid: '", p, "' is not key.path=v1,v2,...");
    SweepAxis axis{trim(p.substr(0, eq)), {}};
    for (const std::string& v : split(p.substr(eq + 1), ',')) {
      SSMT_CHECK(!trim(v).empty(), "--grid: '", p, "' has an empty value");
      axis.values.push_back(trim(v));
    }
    SSMT_CHECK(!axis.values.empty(), "--grid: '", p, "' lists no values");
    axes.push_back(axis);
  }
  SSMT_CHECK(!axes.empty(), "--grid: expects key.path=v1,v2[;key.path=...]");
  return axes;
}

std::vector<SweepRun> run_sweep(const SweepOptions& options) {
  // Every combination, first axis slowest; each is checked as a config before any training.
  std::vector<std::vector<std::string>> combos = {{}};
  for (const SweepAxis& axis : options.grid) {
    std::vector<std::vector<std::string>> next;
    for (const auto& c : combos)
      for (const auto& v : axis.values) {
        auto n = c;
        n.push_back(axis.key + "=" + v);
        next.push_back(n);
      }
    combos = next;
  }
  std::vector<Config> configs;
  for (const auto& combo : combos) {
    std::vector<std::string> all = options.overrides;
    all.insert(all.end(), combo.begin(), combo.end());
    configs.push_back(load_config(options.config_path, all));
  }
  fs::create_directories(options.dir);
  std::vector<SweepRun> runs;
  for (size_t i = 0; i < combos.size(); ++i) {
    SweepRun run;
    run.overrides = combos[i];
    for (const auto& o : combos[i]) run.name += (run.name.empty() ? "" : "__") + o;
    for (char& ch : run.name)
      if (ch == '=') ch = '-';
    Config config = configs[i];
    TrainOptions t;
    t.run_dir = options.dir + "/" + run.name;
    t.resume = "auto";
    t.quiet = options.quiet;
    config.run.name = run.name;
    config.run.dir = t.run_dir;
    // A run directory left by an earlier sweep is reused only for the same resolved config:
    // other overrides (optim.lr, train.seq_len, ...) would otherwise silently reuse results
    // trained under different settings.
    const std::string saved = t.run_dir + "/config.yaml";
    if (fs::exists(saved)) {
      std::string differs;
      for (const auto& d : config_differences(load_config(saved), config))
        if (d.rfind("run.", 0) != 0) differs += (differs.empty() ? "" : "; ") + d;
      SSMT_CHECK(differs.empty(), "sweep: run directory '", t.run_dir, "' holds a run trained with another config (",
                 differs, "); remove it, or give this sweep another --run-dir");
    }
    std::fprintf(stderr, "sweep: run %zu of %zu: %s\n", i + 1, combos.size(), run.name.c_str());
    const int rc = run_training(config, t);
    SSMT_CHECK(rc == 0, "sweep: run '", t.run_dir, "' failed (exit code ", rc, "); fix it and repeat the command");
    if (stop_requested()) {
      // Ctrl-C / SIGTERM: the run saved a checkpoint and returned; the sweep stops too.
      std::fprintf(stderr,
                   "sweep: stopped by signal in run %zu of %zu (%s); repeat the command to continue (finished runs "
                   "are reused, this one resumes)\n",
                   i + 1, combos.size(), run.name.c_str());
      return runs;
    }
    // N as the budget counts it, from the model the config builds.
    ModelSpec spec = model_spec(config);
    Generator gen(static_cast<uint64_t>(config.train.seed));
    auto model = build_language_model(spec, gen);
    ParamCounts counts = param_counts(spec, *model);
    run.params = static_cast<double>(config.budget.params == "total"    ? counts.total
                                     : config.budget.params == "active" ? counts.active
                                                                        : counts.non_embedding);
    std::tie(run.tokens, run.val_loss) = final_validation(t.run_dir);
    runs.push_back(run);
  }
  std::string jsonl;
  for (const SweepRun& r : runs) {
    JsonLine j;
    j.add("name", r.name).add("params", r.params).add("tokens", r.tokens).add("val_loss", r.val_loss);
    jsonl += j.str() + "\n";
  }
  const std::string path = options.dir + "/sweep.jsonl", tmp = path + ".tmp";
  {
    std::ofstream out(tmp, std::ios::trunc);
    SSMT_CHECK(out.good(), "sweep: cannot write '", tmp, "'");
    out << jsonl;
  }
  fs::rename(tmp, path);
  return runs;
}

}  // namespace ssmtrain
