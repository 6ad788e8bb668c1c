// The subcommands of `ssmtrain` (train/cli.h): each turns parsed arguments into a call of
// the trainer, the evaluator, the generator or the data preparation.
#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <sstream>

#include "core/autograd.h"
#include "data/bpe_tokenizer.h"
#include "data/dataset.h"
#include "data/prepare.h"
#include "train/checkpoint.h"
#include "train/cli.h"
#include "train/generate.h"
#include "train/metrics.h"
#include "train/plot.h"
#include "train/safetensors.h"
#include "train/scaling.h"
#include "train/setup.h"
#include "train/signals.h"
#include "train/sweep.h"
#include "train/trainer.h"

namespace fs = std::filesystem;

namespace ssmtrain {

namespace {

// Positionals of the form key=value are overrides; the others are returned in order.
std::vector<std::string> split_overrides(const Args& args, std::vector<std::string>& overrides) {
  std::vector<std::string> plain;
  for (const auto& p : args.positionals) (p.find('=') != std::string::npos ? overrides : plain).push_back(p);
  return plain;
}

std::string one_positional(const Args& args, const std::vector<std::string>& plain, const char* what) {
  SSMT_CHECK(!plain.empty(), "ssmtrain ", args.command, ": missing ", what, " (see `ssmtrain ", args.command,
             " --help`)");
  SSMT_CHECK(plain.size() == 1, "ssmtrain ", args.command, ": unexpected argument '", plain[1],
             "' (overrides are written key.path=value)");
  return plain[0];
}

// A checkpoint's model, rebuilt from its own config (with `overrides` applied) on `device`.
struct LoadedCheckpoint {
  Config config;
  ModelSpec spec;
  std::shared_ptr<LanguageModel> model;
  TrainerState state;
};

LoadedCheckpoint load_checkpoint_model(const std::string& path, const std::vector<std::string>& overrides,
                                       const std::string& device_override) {
  SSMT_CHECK(fs::exists(path), "checkpoint '", path, "' does not exist");
  CheckpointReader reader(path);
  reader.verify();
  LoadedCheckpoint out;
  std::vector<std::string> all = overrides;
  if (!device_override.empty()) all.push_back("train.device=" + device_override);
  out.config = parse_config(read_config_text(reader), path, all);
  out.spec = model_spec(out.config);
  Generator gen(static_cast<uint64_t>(out.config.train.seed));
  out.model = build_language_model(out.spec, gen);
  Device device = train_device(out.config);
  if (!device.is_cpu()) out.model->to(device);
  load_model(reader, *out.model);
  out.state = read_trainer_state(reader);
  return out;
}

}  // namespace

int cmd_train(const Args& args) {
  std::vector<std::string> overrides;
  auto plain = split_overrides(args, overrides);
  const std::string path = one_positional(args, plain, "the config file");
  Config config = load_config(path, overrides);
  TrainOptions options;
  options.run_dir = args.has("--run-dir") ? args.get("--run-dir") : resolved_run_dir(config, path);
  // The saved config names its run explicitly, so a checkpoint read elsewhere keeps it.
  config.run.name = resolved_run_name(config, path);
  config.run.dir = options.run_dir;
  options.resume = args.get("--resume");
  options.init_from = args.get("--init-from");
  options.max_steps = args.get_int("--max-steps", 0);
  SSMT_CHECK(!args.has("--max-steps") || options.max_steps >= 1, "--max-steps: must be >= 1, got ", options.max_steps,
             " (leave it out to train the whole budget)");
  options.quiet = args.has("--quiet");
  if (args.has("--profile")) {
    options.profile_steps = args.get_int("--profile", 0);
    SSMT_CHECK(options.profile_steps >= 0, "--profile: must be >= 0, got ", options.profile_steps);
  }
  return run_training(config, options);
}

int cmd_eval(const Args& args) {
  std::vector<std::string> overrides;
  auto plain = split_overrides(args, overrides);
  const std::string path = one_positional(args, plain, "the checkpoint");
  LoadedCheckpoint ck = load_checkpoint_model(path, overrides, "");
  apply_compute_settings(ck.config);
  auto val = make_dataset(data_spec(ck.config, 0, 1), "val");
  const int64_t batches = args.get_int("--batches", ck.config.train.eval_batches);
  SSMT_CHECK(batches >= 1, "--batches: must be >= 1, got ", batches);
  const int64_t L = resolved_eval_seq_len(ck.config);
  check_pack_documents(ck.config, *ck.model);
  EvalResult r = evaluate(*ck.model, *val, batches, ck.config.train.batch_size, L, train_device(ck.config),
                          resolved_eot_token(ck.config, *val));
  std::printf("checkpoint   %s (step %lld, %s tokens)\n", path.c_str(), static_cast<long long>(ck.state.step),
              format_count(static_cast<double>(ck.state.tokens)).c_str());
  std::printf("data         %s\n", val->describe().c_str());
  std::printf("positions    %lld (%lld batches of %lld x %lld)\n", static_cast<long long>(r.targets),
              static_cast<long long>(batches), static_cast<long long>(ck.config.train.batch_size),
              static_cast<long long>(L));
  std::printf("loss         %.4f nats/token\n", r.loss);
  if (r.bits_per_byte >= 0) std::printf("bits/byte    %.4f\n", r.bits_per_byte);
  std::printf("accuracy     %.2f%%\n", 100.0 * r.accuracy);
  return 0;
}

int cmd_sample(const Args& args) {
  std::vector<std::string> overrides;
  auto plain = split_overrides(args, overrides);
  const std::string path = one_positional(args, plain, "the checkpoint");
  LoadedCheckpoint ck = load_checkpoint_model(path, overrides, args.get("--device"));
  apply_compute_settings(ck.config);
  SampleOptions so;
  so.tokens = args.get_int("--tokens", 200);
  so.temperature = args.get_double("--temperature", 0.8);
  so.top_k = args.get_int("--top-k", 0);
  so.top_p = args.get_double("--top-p", 1.0);
  SSMT_CHECK(so.tokens >= 0 && so.tokens <= kMaxSampleTokens, "--tokens: must be in [0, ", kMaxSampleTokens, "], got ",
             so.tokens);
  SSMT_CHECK(so.temperature >= 0, "--temperature: must be >= 0, got ", so.temperature);
  SSMT_CHECK(so.top_k >= 0, "--top-k: must be >= 0, got ", so.top_k);
  SSMT_CHECK(so.top_p > 0 && so.top_p <= 1, "--top-p: must be in (0, 1], got ", so.top_p);
  const int64_t vocab = ck.config.model.vocab_size;
  Generator gen(static_cast<uint64_t>(args.get_int("--seed", ck.config.train.seed)));
  if (args.has("--tokenizer")) {
    const BpeTokenizer tokenizer = BpeTokenizer::from_file(args.get("--tokenizer"));
    SSMT_CHECK(tokenizer.vocab_size() <= vocab, "--tokenizer: '", args.get("--tokenizer"), "' has ",
               tokenizer.vocab_size(), " tokens, more than the model's model.vocab_size ", vocab);
    const std::string prompt = args.get("--prompt");
    std::vector<int32_t> ids = tokenizer.encode(prompt);
    if (ids.empty()) {
      // A document's start: what the model saw before every document of its data.
      SSMT_CHECK(tokenizer.end_of_text() >= 0, "--prompt: required, since the tokenizer '", args.get("--tokenizer"),
                 "' has no <|endoftext|> to start from");
      ids.push_back(tokenizer.end_of_text());
    }
    std::vector<int32_t> out = generate(*ck.model, ids, vocab, so, gen);
    std::cout << prompt << tokenizer.decode(out) << std::endl;
    return 0;
  }
  const bool bytes = ck.config.data.kind == "text" || (ck.config.data.kind == "shards" && vocab == 256);
  std::string prompt = args.get("--prompt", bytes ? "\n" : "0");
  std::vector<int32_t> ids;
  if (bytes) {
    for (unsigned char c : prompt) ids.push_back(c);
  } else {
    // Token-id models take the prompt as space-separated ids.
    std::istringstream in(prompt);
    long long id;
    while (in >> id) ids.push_back(static_cast<int32_t>(id));
    SSMT_CHECK(!ids.empty(), "--prompt: this model reads token ids; write them space-separated, e.g. --prompt '3 1 4'",
               " (or give --tokenizer to write text)");
  }
  std::vector<int32_t> out = generate(*ck.model, ids, vocab, so, gen);
  if (bytes) {
    std::string text(prompt);
    for (int32_t b : out) text.push_back(static_cast<char>(b));
    std::cout << text << std::endl;
  } else {
    for (int32_t t : out) std::cout << t << ' ';
    std::cout << std::endl;
  }
  return 0;
}

int cmd_info(const Args& args) {
  std::vector<std::string> overrides;
  auto plain = split_overrides(args, overrides);
  const std::string path = one_positional(args, plain, "the checkpoint");
  SSMT_CHECK(overrides.empty(), "ssmtrain info takes no overrides");
  LoadedCheckpoint ck = load_checkpoint_model(path, {}, "cpu");
  ParamCounts counts = param_counts(ck.spec, *ck.model);
  CheckpointReader reader(path);
  std::printf("checkpoint   %s\n", path.c_str());
  std::printf("format       %s v%lld\n", reader.attr_string("/", "format").c_str(),
              static_cast<long long>(reader.attr_int("/", "format_version")));
  std::printf("step         %lld of %lld\n", static_cast<long long>(ck.state.step),
              static_cast<long long>(ck.state.total_steps));
  std::printf("tokens seen  %lld (%s)\n", static_cast<long long>(ck.state.tokens),
              format_count(static_cast<double>(ck.state.tokens)).c_str());
  std::printf("parameters   %lld total, %lld non-embedding, %lld active\n", static_cast<long long>(counts.total),
              static_cast<long long>(counts.non_embedding), static_cast<long long>(counts.active));
  std::printf("skipped      %lld non-finite steps\n", static_cast<long long>(ck.state.nonfinite_total));
  std::printf("\nconfig:\n%s", to_yaml(ck.config).c_str());
  return 0;
}

int cmd_prepare(const Args& args) {
  SSMT_CHECK(args.positionals.empty(), "ssmtrain prepare: unexpected argument '",
             args.positionals.empty() ? "" : args.positionals[0], "' (input files follow --input)");
  SSMT_CHECK(args.has("--input"), "ssmtrain prepare: --input FILE... is required");
  SSMT_CHECK(args.has("--output"), "ssmtrain prepare: --output DIR is required");
  // Each --input is a file, a directory (every regular file below it, in path order: a source
  // tree becomes one document per file) or @LIST (a file naming one input per line).
  std::vector<std::string> inputs;
  auto add = [&](const std::string& path) {
    std::error_code ec;
    if (!fs::is_directory(path, ec)) {
      inputs.push_back(path);
      return;
    }
    std::vector<std::string> files;
    for (auto it = fs::recursive_directory_iterator(path, fs::directory_options::skip_permission_denied, ec);
         !ec && it != fs::recursive_directory_iterator(); it.increment(ec))
      if (it->is_regular_file(ec)) files.push_back(it->path().string());
    SSMT_CHECK(!ec, "--input: cannot list the directory '", path, "': ", ec.message());
    SSMT_CHECK(!files.empty(), "--input: the directory '", path, "' holds no files");
    std::sort(files.begin(), files.end());
    inputs.insert(inputs.end(), files.begin(), files.end());
  };
  std::istringstream in(args.get("--input"));
  for (std::string line; std::getline(in, line);) {
    if (line.empty()) continue;
    if (line[0] != '@') {
      add(line);
      continue;
    }
    std::ifstream list(line.substr(1));
    SSMT_CHECK(list.good(), "--input: cannot read the list '", line.substr(1), "'");
    for (std::string path; std::getline(list, path);)
      if (!path.empty()) add(path);
  }
  SSMT_CHECK(!inputs.empty(), "--input: no input files");
  const int64_t shard_tokens = args.get_int("--shard-tokens", 100'000'000);
  SSMT_CHECK(shard_tokens >= 1, "--shard-tokens: must be >= 1, got ", shard_tokens);
  const double val_fraction = args.get_double("--val-fraction", 0.01);
  PrepareSummary summary;
  if (args.has("--tokenizer")) {
    const BpeTokenizer tokenizer = BpeTokenizer::from_file(args.get("--tokenizer"));
    summary = prepare_tokenized_shards(inputs, args.get("--output"), tokenizer, val_fraction, shard_tokens,
                                       args.get_int("--eot", -1));
  } else {
    summary = prepare_text_shards(inputs, args.get("--output"), val_fraction, shard_tokens, args.get_int("--eot", -1));
  }
  std::cout << summary.describe() << std::endl;
  return 0;
}

int cmd_sweep(const Args& args) {
  std::vector<std::string> overrides;
  auto plain = split_overrides(args, overrides);
  SweepOptions o;
  SSMT_CHECK(!plain.empty(), "ssmtrain sweep: expects one or more config files (each a model family)");
  o.config_paths = plain;
  o.config_path = plain.front();
  SSMT_CHECK(args.has("--grid"), "ssmtrain sweep: --grid \"key.path=v1,v2;...\" is required");
  o.grid = parse_sweep_grid(args.get("--grid"));
  o.overrides = overrides;
  std::string stems;
  for (const auto& path : o.config_paths) {
    if (!stems.empty()) stems += '+';
    stems += fs::path(path).stem().string();
  }
  o.dir = args.has("--run-dir") ? args.get("--run-dir") : "runs/" + stems + "-sweep";
  if (args.has("--family")) o.family_key = args.get("--family");
  const int64_t resamples = args.get_int("--bootstrap", 200);
  SSMT_CHECK(resamples >= 0 && resamples <= 100000, "ssmtrain sweep: --bootstrap ", resamples,
             " must be a whole number of resamples in [0, 100000]");
  const int bootstrap = static_cast<int>(resamples);
  const int64_t jobs = args.get_int("--jobs", 1);
  SSMT_CHECK(jobs >= 1 && jobs <= 256, "ssmtrain sweep: --jobs ", jobs, " must be a whole number of runs at once in [1, 256]");
  o.jobs = static_cast<int>(jobs);
  o.fit_only = args.has("--fit-only");
  if (args.has("--gpus")) {
    o.gpus = parse_sweep_gpus(args.get("--gpus"));
    SSMT_CHECK(o.jobs > 1, "ssmtrain sweep: --gpus spreads the runs of --jobs N (N > 1) over GPUs; give --jobs too");
  }
  sweep_family_key(o);  // a bad --family fails before any training
  std::vector<SweepRun> runs = run_sweep(o);
  if (stop_requested()) return 0;  // run_sweep said how to continue
  // The sweep's picture (its runs, loss against compute, the fit once fit.json exists) is
  // drawn whichever way this function returns; a failure costs the picture only.
  struct PlotAtEnd {
    std::string dir;
    ~PlotAtEnd() {
      try {
        write_file_atomically(dir + "/plot.svg", plot_runs_svg({dir}));
        write_file_atomically(dir + "/scaling.svg", plot_sweep_svg(dir));
        std::printf("(%s/plot.svg, %s/scaling.svg)\n", dir.c_str(), dir.c_str());
      } catch (const std::exception& e) {
        std::fprintf(stderr, "warning: no plots written to '%s': %s\n", dir.c_str(), e.what());
      }
    }
  } plot_at_end{o.dir};
  std::printf("%-60s %12s %12s %10s\n", "run", "N", "D", "val loss");
  for (const SweepRun& r : runs)
    std::printf("%-60s %12.4g %12.4g %10.4f\n", r.name.c_str(), r.params, r.tokens, r.val_loss);
  std::printf("(%s/sweep.jsonl)\n", o.dir.c_str());
  const std::vector<FamilyFit> fits = fit_sweep(runs, bootstrap);
  for (const FamilyFit& f : fits) {
    const std::string who = f.family.empty() ? "" : f.family + ": ";
    if (!f.fitted) {
      std::printf("\n%sno scaling-law fit: %s\n", who.c_str(), f.problem.c_str());
    } else {
      const ScalingLaw& law = f.law;
      std::printf("\n%sL(N, D) = %.4g + %.4g / N^%.4f + %.4g / D^%.4f   (%zu runs, Huber objective %.3g)\n",
                  who.c_str(), law.E, law.A, law.alpha, law.B, law.beta, f.points.size(), law.objective);
      if (!f.warning.empty()) std::printf("warning: %s\n", f.warning.c_str());
      if (f.ci.used > 0)
        std::printf("  %.0f%% bootstrap intervals (%d of %d resamples): E [%.4g, %.4g], alpha [%.3f, %.3f], beta "
                    "[%.3f, %.3f], N_opt ~ C^a with a [%.3f, %.3f] (fit: %.3f)\n",
                    100 * f.ci.level, f.ci.used, f.ci.resamples, f.ci.E.lo, f.ci.E.hi, f.ci.alpha.lo, f.ci.alpha.hi,
                    f.ci.beta.lo, f.ci.beta.hi, f.ci.exponent.lo, f.ci.exponent.hi, law.beta / (law.alpha + law.beta));
      if (law.alpha > 0 && law.beta > 0) {
        double c_max = 0;
        for (const auto& p : f.points) c_max = std::max(c_max, 6 * p.n * p.d);
        for (double c : {c_max, 10 * c_max, 100 * c_max})
          std::printf("  compute-optimal at C = %.3g FLOPs: N = %.4g, D = %.4g (%.1f tokens per parameter), L = %.4f\n",
                      c, law.n_opt(c), law.d_opt(c), law.d_opt(c) / law.n_opt(c),
                      law.loss(law.n_opt(c), law.d_opt(c)));
      }
    }
    if (f.has_isoflop) {
      std::printf("  IsoFLOP profiles (%zu budgets): N_opt = %.4g C^%.3f\n", f.isoflop.budgets.size(), f.isoflop.k,
                  f.isoflop.a);
      for (const std::string& s : f.isoflop.skipped) std::printf("    left out: %s\n", s.c_str());
    } else if (!f.isoflop_problem.empty()) {
      std::printf("  IsoFLOP profiles: not fitted: %s\n", f.isoflop_problem.c_str());
    }
  }
  // The fits beside the runs they came from, for the pictures and later comparison.
  const std::string path = o.dir + "/fit.json";
  write_file_atomically(path, sweep_fit_json(fits));
  std::printf("(%s)\n", path.c_str());
  return 0;
}

int cmd_config(const Args& args) {
  if (args.has("--docs")) {
    std::cout << config_docs_markdown();
    return 0;
  }
  std::vector<std::string> overrides;
  auto plain = split_overrides(args, overrides);
  const std::string path = one_positional(args, plain, "the config file (or --docs)");
  std::cout << to_yaml(load_config(path, overrides));
  return 0;
}

}  // namespace ssmtrain
