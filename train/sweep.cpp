#include "train/sweep.h"

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <limits>
#include <fstream>
#include <map>
#include <sstream>

#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>
#include <cerrno>
#include <csignal>
#include <cstring>

#include "core/error.h"
#include "train/config.h"
#include "train/json.h"
#include "train/metrics.h"
#include "train/signals.h"
#include "train/setup.h"
#include "train/trainer.h"

namespace fs = std::filesystem;

extern char** environ;

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

// Runs `<this executable> argv...` for every argv, at most `jobs` at a time, and waits for
// all. With `gpus`, the runs are spread over those GPUs: job slot k runs on gpus[k % n] (its
// child sees CUDA_VISIBLE_DEVICES=that id), so each GPU holds an equal share of the slots.
// On a stop request every running child is asked to stop too: each saves its checkpoint and
// exits, and no new one starts. UserError naming the runs that failed.
void run_children(const std::vector<std::vector<std::string>>& argvs, const std::vector<std::string>& names,
                  int jobs, const std::vector<std::string>& gpus) {
  std::error_code ec;
  const std::string exe = fs::read_symlink("/proc/self/exe", ec).string();
  SSMT_CHECK(!ec && !exe.empty(), "sweep --jobs: cannot find this program's path (/proc/self/exe)");
  install_stop_handlers();  // SIGINT/SIGTERM: stop starting runs, stop the running ones, wait
  // The environment of every child, less CUDA_VISIBLE_DEVICES when `gpus` sets it per child.
  std::vector<std::string> base_env;
  for (char** e = environ; *e; ++e)
    if (gpus.empty() || std::strncmp(*e, "CUDA_VISIBLE_DEVICES=", 21) != 0) base_env.emplace_back(*e);
  std::map<pid_t, std::pair<size_t, int>> running;  // pid -> (run, job slot)
  std::vector<bool> slot_busy(static_cast<size_t>(jobs), false);
  std::vector<std::string> failed;
  size_t next = 0, done = 0;
  bool forwarded = false;
  while (next < argvs.size() || !running.empty()) {
    while (next < argvs.size() && static_cast<int>(running.size()) < jobs && !stop_requested()) {
      const int slot = static_cast<int>(std::find(slot_busy.begin(), slot_busy.end(), false) - slot_busy.begin());
      std::vector<char*> argv = {const_cast<char*>(exe.c_str())};
      for (const std::string& a : argvs[next]) argv.push_back(const_cast<char*>(a.c_str()));
      argv.push_back(nullptr);
      std::vector<std::string> env = base_env;
      std::string where;
      if (!gpus.empty()) {
        const std::string& gpu = gpus[static_cast<size_t>(slot) % gpus.size()];
        env.push_back("CUDA_VISIBLE_DEVICES=" + gpu);
        where = " on GPU " + gpu;
      }
      std::vector<char*> envp;
      for (std::string& e : env) envp.push_back(e.data());
      envp.push_back(nullptr);
      pid_t pid = 0;
      const int err = posix_spawn(&pid, exe.c_str(), nullptr, nullptr, argv.data(), envp.data());
      SSMT_CHECK(err == 0, "sweep --jobs: cannot start the run '", names[next], "': ", std::strerror(err));
      std::fprintf(stderr, "sweep: run %zu of %zu started%s: %s (pid %d)\n", next + 1, argvs.size(), where.c_str(),
                   names[next].c_str(), static_cast<int>(pid));
      slot_busy[static_cast<size_t>(slot)] = true;
      running[pid] = {next++, slot};
    }
    if (running.empty()) break;  // stopped before every run started
    int status = 0;
    const pid_t pid = waitpid(-1, &status, 0);
    if (pid < 0) {
      SSMT_CHECK(errno == EINTR, "sweep --jobs: waitpid failed: ", std::strerror(errno));
      // A stop signal. Ctrl-C reaches the children through the process group, but `kill PID`
      // or a scheduler's SIGTERM may reach this process alone: pass it on as SIGTERM, which
      // asks a run to checkpoint and stop (a second SIGINT would abort it instead).
      if (stop_requested() && !forwarded) {
        for (const auto& entry : running) kill(entry.first, SIGTERM);
        forwarded = true;
      }
      continue;
    }
    auto it = running.find(pid);
    if (it == running.end()) continue;
    const size_t i = it->second.first;
    slot_busy[static_cast<size_t>(it->second.second)] = false;
    running.erase(it);
    ++done;
    const bool ok = WIFEXITED(status) && WEXITSTATUS(status) == 0;
    std::fprintf(stderr, "sweep: run %s %s (%zu of %zu done)\n", names[i].c_str(),
                 ok ? "finished" : "FAILED", done, argvs.size());
    if (!ok)
      failed.push_back(names[i] + (WIFEXITED(status) ? " (exit code " + std::to_string(WEXITSTATUS(status)) + ")"
                                                     : " (signal " + std::to_string(WTERMSIG(status)) + ")"));
  }
  std::string list;
  for (const std::string& f : failed) list += (list.empty() ? "" : ", ") + f;
  SSMT_CHECK(failed.empty(), "sweep: ", failed.size(), " run(s) failed: ", list,
             "; their train.log says why; fix it and repeat the command");
}

}  // namespace

std::vector<std::string> parse_sweep_gpus(const std::string& text) {
  std::vector<std::string> gpus;
  for (const std::string& g : split(text, ',')) {
    const std::string id = trim(g);
    SSMT_CHECK(!id.empty() && id.find_first_not_of("0123456789") == std::string::npos, "sweep: --gpus '", text,
               "' must list CUDA device ids, e.g. 0,1,2,3");
    gpus.push_back(id);
  }
  return gpus;
}

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

std::string sweep_family_key(const SweepOptions& options) {
  if (options.config_paths.size() > 1) {
    SSMT_CHECK(options.family_key.empty(), "sweep: --family '", options.family_key,
               "' with several config files: the families are the configs");
    return "";
  }
  if (options.family_key == "none") return "";
  auto in_grid = [&](const std::string& key) {
    for (const SweepAxis& axis : options.grid)
      if (axis.key == key) return true;
    return false;
  };
  if (options.family_key.empty()) return in_grid("model.mixer") ? "model.mixer" : "";
  SSMT_CHECK(in_grid(options.family_key), "sweep: --family '", options.family_key,
             "' is not a key of the --grid (families are the values of one grid key, or 'none')");
  return options.family_key;
}

std::vector<SweepRun> run_sweep(const SweepOptions& options) {
  const std::string family_key = sweep_family_key(options);
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
  // Several config files: each is a family (named by its file's stem), swept over the grid.
  const std::vector<std::string> paths =
      options.config_paths.empty() ? std::vector<std::string>{options.config_path} : options.config_paths;
  struct Planned {
    std::string family, path;
    std::vector<std::string> combo;
    Config config;
  };
  std::vector<Planned> plan;
  for (const std::string& path : paths) {
    const std::string stem = fs::path(path).stem().string();
    for (const Planned& p : plan)
      SSMT_CHECK(paths.size() == 1 || fs::path(p.path).stem().string() != stem, "sweep: the configs '", p.path,
                 "' and '", path, "' have the same name; the families of a sweep are named by their files");
    for (const auto& combo : combos) {
      std::vector<std::string> all = options.overrides;
      all.insert(all.end(), combo.begin(), combo.end());
      plan.push_back({paths.size() > 1 ? stem : "", path, combo, load_config(path, all)});
    }
  }
  fs::create_directories(options.dir);
  std::vector<SweepRun> runs;
  std::vector<Config> configs;
  for (size_t i = 0; i < plan.size(); ++i) {
    SweepRun run;
    run.overrides = plan[i].combo;
    run.family = plan[i].family;
    run.name = plan[i].family;
    for (const auto& o : plan[i].combo)
      if (!family_key.empty() && o.rfind(family_key + "=", 0) == 0) run.family = o.substr(family_key.size() + 1);
    for (const auto& o : plan[i].combo) run.name += (run.name.empty() ? "" : "__") + o;
    for (char& ch : run.name)
      if (ch == '=') ch = '-';
    Config config = plan[i].config;
    config.run.name = run.name;
    config.run.dir = options.dir + "/" + run.name;
    // A run directory left by an earlier sweep is reused only for the same resolved config:
    // other overrides (optim.lr, train.seq_len, ...) would otherwise silently reuse results
    // trained under different settings. Checked for every run before any trains.
    const std::string saved = config.run.dir + "/config.yaml";
    if (fs::exists(saved)) {
      std::string differs;
      for (const auto& d : config_differences(load_config(saved), config))
        if (d.rfind("run.", 0) != 0) differs += (differs.empty() ? "" : "; ") + d;
      SSMT_CHECK(differs.empty(), "sweep: run directory '", config.run.dir,
                 "' holds a run trained with another config (", differs,
                 "); remove it, or give this sweep another --run-dir");
    }
    runs.push_back(run);
    configs.push_back(config);
  }
  if (options.jobs > 1 && !options.fit_only) {
    // Start order: the grid's order with the families interleaved (plan is family-major), so
    // that the first runs started are the grid's first combination in every family; a grid
    // that lists its costliest value first (the largest budget.flops) starts its longest runs
    // first and the sweep does not wait on one family's long tail.
    std::vector<size_t> order;
    const size_t per_family = combos.size();
    for (size_t c = 0; c < per_family; ++c)
      for (size_t f = 0; f * per_family < plan.size(); ++f) order.push_back(f * per_family + c);
    std::vector<std::vector<std::string>> argvs;
    std::vector<std::string> names;
    for (size_t i : order) {
      // The same config the in-process run would train: the family's file, the sweep's
      // overrides, the combination's, and the run's name (run.* is not compared on reuse).
      std::vector<std::string> a = {"train", plan[i].path, "--run-dir", configs[i].run.dir, "--resume", "auto"};
      if (options.quiet) a.push_back("--quiet");
      a.insert(a.end(), options.overrides.begin(), options.overrides.end());
      a.insert(a.end(), plan[i].combo.begin(), plan[i].combo.end());
      a.push_back("run.name=" + runs[i].name);
      argvs.push_back(std::move(a));
      names.push_back(runs[i].name);
    }
    run_children(argvs, names, options.jobs, options.gpus);
    if (stop_requested()) {
      std::fprintf(stderr,
                   "sweep: stopped by signal; repeat the command to continue (finished runs are reused, the "
                   "others resume)\n");
      return {};
    }
  }
  for (size_t i = 0; i < plan.size(); ++i) {
    SweepRun& run = runs[i];
    const Config& config = configs[i];
    if (options.jobs <= 1 && !options.fit_only) {
      TrainOptions t;
      t.run_dir = config.run.dir;
      t.resume = "auto";
      t.quiet = options.quiet;
      std::fprintf(stderr, "sweep: run %zu of %zu: %s\n", i + 1, plan.size(), run.name.c_str());
      const int rc = run_training(config, t);
      SSMT_CHECK(rc == 0, "sweep: run '", t.run_dir, "' failed (exit code ", rc, "); fix it and repeat the command");
      if (stop_requested()) {
        // Ctrl-C / SIGTERM: the run saved a checkpoint and returned; the sweep stops too.
        std::fprintf(stderr,
                     "sweep: stopped by signal in run %zu of %zu (%s); repeat the command to continue (finished "
                     "runs are reused, this one resumes)\n",
                     i + 1, plan.size(), run.name.c_str());
        runs.resize(i);
        return runs;
      }
    }
    // N as the budget counts it, from the model the config builds.
    ModelSpec spec = model_spec(config);
    Generator gen(static_cast<uint64_t>(config.train.seed));
    auto model = build_language_model(spec, gen);
    ParamCounts counts = param_counts(spec, *model);
    run.params = static_cast<double>(config.budget.params == "total"    ? counts.total
                                     : config.budget.params == "active" ? counts.active
                                                                        : counts.non_embedding);
    std::tie(run.tokens, run.val_loss) = final_validation(config.run.dir);
    if (options.fit_only) {
      const Budget planned = compute_budget(counts, budget_spec(config), tokens_per_step(config, 1));
      SSMT_CHECK(run.tokens >= static_cast<double>(planned.tokens), "sweep --fit-only: run '", config.run.dir,
                 "' has its last validation record at ", static_cast<int64_t>(run.tokens), " tokens, before its budget's ",
                 planned.tokens, "; train it to the end first (the same command without --fit-only)");
    }
    run.budget_flops = config.budget.steps == 0 && config.budget.tokens == 0 ? config.budget.flops : 0.0;
  }
  std::string jsonl;
  for (const SweepRun& r : runs) {
    JsonLine j;
    j.add("name", r.name).add("params", r.params).add("tokens", r.tokens).add("val_loss", r.val_loss);
    j.add("compute", 6.0 * r.params * r.tokens);
    if (!r.family.empty()) j.add("family", r.family);
    if (r.budget_flops > 0) j.add("budget_flops", r.budget_flops);
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

std::vector<FamilyFit> fit_sweep(const std::vector<SweepRun>& runs, int bootstrap) {
  std::vector<FamilyFit> fits;
  for (const SweepRun& r : runs) {
    auto it = std::find_if(fits.begin(), fits.end(), [&](const FamilyFit& f) { return f.family == r.family; });
    if (it == fits.end()) {
      fits.push_back(FamilyFit{});
      fits.back().family = r.family;
      it = std::prev(fits.end());
    }
    it->points.push_back({r.params, r.tokens, r.val_loss});
    it->nominal.push_back({r.params, r.budget_flops > 0 ? r.budget_flops / (6 * r.params) : r.tokens, r.val_loss});
  }
  for (size_t i = 0; i < fits.size(); ++i) {
    FamilyFit& f = fits[i];
    f.problem = f.points.size() < 5 ? "fewer than 5 runs" : scaling_fit_problem(f.points);
    if (f.problem.empty()) {
      f.law = fit_scaling_law(f.points);
      f.fitted = true;
      f.warning = scaling_fit_warning(f.law);
      if (bootstrap > 0)
        f.ci = bootstrap_scaling_law(f.points, f.law, bootstrap, 0.9, 1 + 1000003 * static_cast<uint64_t>(i));
    }
    // IsoFLOP profiles where runs of equal compute allow them; the reason why not is kept
    // only for a family budgeted by compute (budget.flops): a sweep over tokens or steps that
    // forms no IsoFLOP group has nothing to explain.
    try {
      f.isoflop = fit_isoflop(f.nominal);
      f.has_isoflop = true;
    } catch (const UserError& e) {
      const bool by_flops = std::any_of(runs.begin(), runs.end(), [&](const SweepRun& r) {
        return r.family == f.family && r.budget_flops > 0;
      });
      if (by_flops) f.isoflop_problem = e.what();
    }
  }
  return fits;
}

std::string sweep_fit_json(const std::vector<FamilyFit>& fits) {
  Json root = Json::object();
  Json families = Json::array();
  for (const FamilyFit& f : fits) {
    Json j = Json::object();
    j["family"] = f.family;
    j["runs"] = f.points.size();
    if (f.fitted) {
      j["E"] = f.law.E, j["A"] = f.law.A, j["B"] = f.law.B, j["alpha"] = f.law.alpha, j["beta"] = f.law.beta;
      j["objective"] = f.law.objective;
      if (!f.warning.empty()) j["warning"] = f.warning;
      if (f.ci.used > 0) {
        auto pair = [](const ScalingInterval& v) { return Json::array({v.lo, v.hi}); };
        j["ci"] = {{"level", f.ci.level}, {"resamples", f.ci.resamples}, {"used", f.ci.used},
                   {"E", pair(f.ci.E)},     {"A", pair(f.ci.A)},           {"B", pair(f.ci.B)},
                   {"alpha", pair(f.ci.alpha)}, {"beta", pair(f.ci.beta)}, {"a", pair(f.ci.exponent)}};
      }
      if (f.law.alpha > 0 && f.law.beta > 0) {
        // The compute-optimal frontier over the family's compute range and two decades past it.
        double c_lo = std::numeric_limits<double>::infinity(), c_hi = 0;
        for (const auto& p : f.points) c_lo = std::min(c_lo, 6 * p.n * p.d), c_hi = std::max(c_hi, 6 * p.n * p.d);
        Json frontier = Json::array();
        for (int k = 0; k <= 24; ++k) {
          const double c = c_lo * std::pow(100 * c_hi / c_lo, k / 24.0);
          const double n = f.law.n_opt(c), d = f.law.d_opt(c);
          frontier.push_back(Json::array({c, n, d, f.law.loss(n, d)}));
        }
        j["frontier"] = frontier;
      }
    } else {
      j["problem"] = f.problem;
    }
    if (f.has_isoflop) {
      Json budgets = Json::array();
      for (const auto& b : f.isoflop.budgets) budgets.push_back(Json::array({b.flops, b.n_opt, b.loss_opt}));
      Json skipped = Json::array();
      for (const std::string& s : f.isoflop.skipped) skipped.push_back(s);
      j["isoflop"] = {{"k", f.isoflop.k}, {"a", f.isoflop.a}, {"budgets", budgets}, {"skipped", skipped}};
    } else if (!f.isoflop_problem.empty()) {
      j["isoflop_problem"] = f.isoflop_problem;
    }
    families.push_back(j);
  }
  if (fits.size() == 1 && fits[0].fitted) {
    const ScalingLaw& law = fits[0].law;
    root["E"] = law.E, root["A"] = law.A, root["B"] = law.B, root["alpha"] = law.alpha, root["beta"] = law.beta;
    root["objective"] = law.objective;
    root["runs"] = fits[0].points.size();
  }
  root["families"] = families;
  return root.dump(1) + "\n";
}

}  // namespace ssmtrain
