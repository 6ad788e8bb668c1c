#include "train/trainer.h"

#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <optional>
#include <sstream>

#include "core/autograd.h"
#include "core/ops.h"
#include "data/packing.h"
#include "data/sampler.h"
#include "optim/clip.h"
#include "train/checkpoint.h"
#include "train/dist.h"
#include "train/generate.h"
#include "train/grad_buckets.h"
#include "train/metrics.h"
#include "train/plot.h"
#include "train/profile_run.h"
#include "train/run_lock.h"
#include "train/setup.h"
#include "train/signals.h"
#include "train/step.h"
#include "train/zero.h"

namespace fs = std::filesystem;

namespace ssmtrain {

std::pair<Tensor, Tensor> batch_tensors(const Batch& batch, Device device) {
  const Dims shape{batch.batch, batch.seq_len};
  std::vector<int64_t> ids(batch.inputs.begin(), batch.inputs.end());
  std::vector<int64_t> targets(batch.targets.begin(), batch.targets.end());
  return {Tensor::from_vector<int64_t>(ids, shape, device), Tensor::from_vector<int64_t>(targets, shape, device)};
}

MicroBatch micro_batch(const Batch& batch, Device device, int64_t eot_token) {
  auto [ids, targets] = batch_tensors(batch, device);
  if (eot_token < 0) return MicroBatch(ids, targets);
  Tensor seq_idx = Tensor::from_vector<int32_t>(document_index(batch, eot_token), {batch.batch, batch.seq_len}, device);
  return MicroBatch(ids, targets, seq_idx);
}

EvalResult evaluate(LanguageModel& model, Dataset& data, int64_t batches, int64_t batch_size, int64_t seq_len,
                    Device device, int64_t eot_token) {
  NoGradGuard no_grad;
  const bool was_training = model.is_training();
  model.eval();
  data.rewind();
  double nll = 0;
  int64_t targets = 0, bytes = 0, correct = 0;
  for (int64_t i = 0; i < batches; ++i) {
    Batch b = data.next(batch_size, seq_len);
    const MicroBatch mb = micro_batch(b, device, eot_token);
    Tensor logits = model.forward(mb.ids, mb.seq_idx).logits;
    Tensor per_token = cross_entropy_per_token(logits, mb.targets);
    nll += sum(per_token).to(Device::cpu()).to(DType::f64).item<double>();
    targets += b.num_targets();
    bytes += b.num_target_bytes;
    // Accuracy: argmax over the unpadded vocabulary at the target positions (on the host;
    // evaluation batches are small).
    const int64_t V = logits.size(-1), vocab = data.vocab_size();
    std::vector<float> host = logits.to(Device::cpu()).to(DType::f32).contiguous().to_vector<float>();
    for (size_t p = 0; p < b.targets.size(); ++p) {
      if (b.targets[p] == kIgnoreIndex) continue;
      const float* row = host.data() + static_cast<int64_t>(p) * V;
      int64_t best = 0;
      for (int64_t v = 1; v < vocab; ++v)
        if (row[v] > row[best]) best = v;
      correct += best == b.targets[p];
    }
  }
  model.train(was_training);
  EvalResult r;
  r.targets = targets;
  r.loss = targets > 0 ? nll / static_cast<double>(targets) : 0.0;
  r.accuracy = targets > 0 ? static_cast<double>(correct) / static_cast<double>(targets) : 0.0;
  if (data.byte_level() && bytes > 0) r.bits_per_byte = nll / (std::log(2.0) * static_cast<double>(bytes));
  return r;
}

namespace {

void write_text_atomically(const std::string& path, const std::string& text) {
  const std::string tmp = path + ".tmp";
  {
    std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
    if (!out) throw UserError("cannot write '" + tmp + "': " + std::strerror(errno));
    out << text;
    if (!out.flush()) throw UserError("cannot write '" + tmp + "': disk full?");
  }
  fs::rename(tmp, path);
}

// metrics.jsonl records of steps after `step` were written by a run that stopped later
// than its last checkpoint; the resumed run writes them again, so they are dropped.
void drop_metrics_after(const std::string& path, int64_t step) {
  std::ifstream in(path);
  if (!in) return;
  std::string line, kept;
  while (std::getline(in, line)) {
    auto at = line.find("\"step\":");
    if (at != std::string::npos && std::stoll(line.substr(at + 7)) > step) continue;
    kept += line + "\n";
  }
  in.close();
  write_text_atomically(path, kept);
}

std::string fixed(double v, int digits) {
  char buf[64];
  std::snprintf(buf, sizeof buf, "%.*f", digits, v);
  return buf;
}

std::string sci(double v) {
  char buf[64];
  std::snprintf(buf, sizeof buf, "%.2e", v);
  return buf;
}

// Process exit codes of a run (trainer.h).
constexpr int kExitDone = 0;       // budget done, --max-steps reached or stopped by a signal
constexpr int kExitNonFinite = 1;  // the non-finite guard stopped the run

// What the host knows of a step once its scalars are in: what the logs show of it and what
// the non-finite guard decides on.
struct StepStats {
  int64_t step = 0;    // the step's number (1 = the first)
  int64_t tokens = 0;  // tokens trained on up to and including it, over all ranks
  double lr = 0;
  double loss = 0;
  bool finite = true;    // the loss was finite on every rank
  bool applied = false;  // the optimizer stepped (loss and gradient norm finite)
  double grad_norm = 0;  // before clipping

  std::optional<double> aux_loss;  // models with several experts
  std::optional<MoeSummary> moe;   // their usage since the previous logged step (logged steps)

  // The non-finite counters after it.
  int64_t nonfinite_total = 0, nonfinite_in_row = 0;

  double tokens_per_s = 0;  // over the steps since the last logged one
  double elapsed_s = 0;     // since this process began training
  double eta_s = 0;
  bool logged = false;  // it writes a metrics record and a log line
};

// A step in the run's outputs: the live bar, and on logged steps the metrics record and
// the log line (on a terminal the bar shows the step, so the line goes to train.log only).
void log_step(RunLog& log, const StepStats& s, int64_t total_steps) {
  log.progress(s.step, total_steps, s.loss, s.lr, s.tokens_per_s, s.eta_s);
  if (!s.logged) return;
  JsonLine j;
  j.add("step", s.step).add("tokens", s.tokens).add("loss", s.loss).add("lr", s.lr);
  j.add("grad_norm", s.grad_norm).add("tokens_per_s", s.tokens_per_s).add("elapsed_s", s.elapsed_s);
  if (s.aux_loss) {
    j.add("aux_loss", *s.aux_loss);
    if (s.moe) j.add("moe_dropped", s.moe->dropped).add("moe_max_load", s.moe->max_load);
  }
  if (s.nonfinite_total > 0) j.add("nonfinite_total", s.nonfinite_total);
  log.metrics(j);
  log.info_or_file("step " + std::to_string(s.step) + "/" + std::to_string(total_steps) + " | loss " +
                   fixed(s.loss, 4) + " | lr " + sci(s.lr) + " | grad norm " + fixed(s.grad_norm, 3) + " | " +
                   format_count(s.tokens_per_s) + " tok/s | ETA " + format_duration(s.eta_s));
}

class Run {
 public:
  Run(const Config& config, const TrainOptions& options) : config_(config), options_(options) {}

  int execute() {
    apply_compute_settings(config_);
    device_ = train_device(config_);
    // Under mpirun each process takes the GPU of its local rank when train.device is "cuda".
    if (device_.is_cuda() && dist_.active() && config_.train.device == "cuda")
      device_ = Device::cuda(dist_.local_rank());
    // One process per run directory, before anything there is read or written.
    if (dist_.is_main()) lock_.emplace(options_.run_dir);
    const std::string ckpt_dir = options_.run_dir + "/checkpoints";
    std::optional<std::string> resume_from = find_resume_checkpoint(ckpt_dir);
    config_yaml_ = to_yaml(config_);

    // Model: drawn on the CPU from the seed (identical on every device), then moved.
    spec_ = model_spec(config_);
    has_experts_ = moe_routing(spec_).second > 1;
    Generator init_gen(static_cast<uint64_t>(config_.train.seed));
    model_ = build_language_model(spec_, init_gen);
    check_pack_documents(config_, *model_);
    if (!device_.is_cpu()) model_->to(device_);
    optimizer_ = make_optimizer(config_, *model_);
    setup_data_parallel();

    train_data_ = make_dataset(data_spec(config_, dist_.rank(), dist_.world_size()), "train");
    if (dist_.is_main() && has_validation(data_spec(config_, 0, 1)))
      val_data_ = make_dataset(data_spec(config_, 0, 1), "val");
    SSMT_CHECK(train_data_->vocab_size() <= config_.model.vocab_size, "model.vocab_size: ", config_.model.vocab_size,
               " is smaller than the data's vocabulary of ", train_data_->vocab_size(), " (", train_data_->describe(),
               ")");
    eot_token_ = resolved_eot_token(config_, *train_data_);

    budget_ = compute_budget(param_counts(spec_, *model_), budget_spec(config_),
                             tokens_per_step(config_, dist_.world_size()));
    schedule_ = schedule_config(config_, budget_.steps);
    state_.total_steps = budget_.steps;
    state_.rng_seed = static_cast<uint64_t>(config_.train.seed);

    if (resume_from)
      restore(*resume_from);
    else if (!options_.init_from.empty())
      init_weights_from(options_.init_from);
    // Every check has passed: only now does the run touch its directory's files, so a
    // rejected resume leaves config.yaml and metrics.jsonl as they were.
    if (dist_.is_main()) {
      fs::create_directories(ckpt_dir);
      if (resume_from)
        drop_metrics_after(options_.run_dir + "/metrics.jsonl", checkpoint_step(*resume_from).value_or(0));
      log_ = std::make_unique<RunLog>(options_.run_dir, options_.quiet);
      if (config_.train.tensorboard) log_->enable_tensorboard(resume_from ? state_.step : 0);
      write_text_atomically(options_.run_dir + "/config.yaml", config_yaml_);
    } else {
      log_ = RunLog::null();  // only the main rank writes logs and metrics
    }
    for (const std::string& note : restore_notes_) log_->info(note);
    announce(resume_from);
    const int rc = loop();
    if (rc == kExitDone && config_.train.plot && dist_.is_main()) write_plot();
    return rc;
  }

 private:
  // Several ranks: the bucketed gradient path (dist.overlap) and ZeRO-1 (dist.zero), or
  // neither (Dist::average_gradients). A world of one never communicates.
  void setup_data_parallel() {
    const DistSection& dc = config_.dist;
    dist_.set_timeout(dc.timeout_s);
    if (!dist_.active() || (!dc.overlap && dc.zero == 0)) return;
    std::vector<ParamSpec> specs = param_specs(model_->named_parameters());
    std::reverse(specs.begin(), specs.end());  // the order in which the backward finishes them
    buckets_ = std::make_unique<GradBuckets>(dist_, std::move(specs), dc.bucket_mb, dtype_from_name(dc.grad_dtype),
                                             dc.zero == 1);
    if (dc.zero == 1) {
      const auto* adamw = dynamic_cast<const AdamW*>(optimizer_.get());
      SSMT_CHECK(adamw, "dist.zero: 1 needs optim.name=adamw");
      zero_ = std::make_unique<ZeroOptimizer>(*buckets_, *adamw);
    }
  }

  std::optional<std::string> find_resume_checkpoint(const std::string& dir) {
    if (options_.resume.empty()) {
      auto existing = list_checkpoints(dir);
      SSMT_CHECK(existing.empty(), "run directory '", options_.run_dir,
                 "' already holds checkpoints (newest: ", existing.empty() ? "" : existing.back(),
                 "); pass --resume auto to continue that run, or choose another --run-dir / run.name");
      return std::nullopt;
    }
    if (options_.resume == "auto") {
      std::vector<std::string> skipped;
      auto found = newest_valid_checkpoint(dir, &skipped);
      for (const auto& m : skipped) std::fprintf(stderr, "warning: skipping checkpoint: %s\n", m.c_str());
      if (!found)
        std::fprintf(
            stderr, "--resume auto: no valid checkpoint in '%s'; starting %s\n", dir.c_str(),
            options_.init_from.empty() ? "from scratch" : ("from the weights of " + options_.init_from).c_str());
      return found;
    }
    SSMT_CHECK(fs::exists(options_.resume), "--resume: checkpoint '", options_.resume, "' does not exist");
    CheckpointReader(options_.resume).verify();
    return options_.resume;
  }

  void restore(const std::string& path) {
    CheckpointReader reader(path);
    reader.verify();
    Config saved = parse_config(read_config_text(reader), path);
    for (const auto& d : config_differences(saved, config_))
      restore_notes_.push_back("note: config differs from the checkpoint's: " + d);
    load_model(reader, *model_);
    load_optimizer(reader, *optimizer_);
    if (zero_) zero_->load_state_from(*optimizer_);  // this rank's shard of the whole state
    TrainerState s = read_trainer_state(reader);
    SSMT_CHECK(s.step <= budget_.steps, "--resume: checkpoint '", path, "' is at step ", s.step,
               ", past this run's budget of ", budget_.steps, " steps");
    if (s.total_steps != budget_.steps)
      restore_notes_.push_back("note: the budget changed from " + std::to_string(s.total_steps) + " to " +
                               std::to_string(budget_.steps) + " steps; the schedule follows the new budget");
    train_data_->restore(DataCursor{s.data_kind, s.data_cursor});
    state_ = s;
    state_.total_steps = budget_.steps;
    resumed_step_ = s.step;
  }

  // The run's picture (train/plot.h) beside its metrics; a failure costs the picture only.
  void write_plot() {
    const std::string path = options_.run_dir + "/plot.svg";
    try {
      write_text_atomically(path, plot_runs_svg({options_.run_dir}));
    } catch (const std::exception& e) {
      std::fprintf(stderr, "warning: no plot written to '%s': %s\n", path.c_str(), e.what());
    }
  }

  // Weights only: the optimizer starts empty and the schedule, data and counters at step 0,
  // as a fresh run of this config would, so fine-tuning an imported model is a plain run.
  void init_weights_from(const std::string& path) {
    SSMT_CHECK(fs::exists(path), "--init-from: checkpoint '", path, "' does not exist");
    CheckpointReader reader(path);
    reader.verify();
    try {
      load_model(reader, *model_);
    } catch (const UserError& e) {
      throw UserError("--init-from '" + path + "': " + e.what() + " (`ssmtrain info " + path +
                      "` shows the model config it was saved with)");
    }
    restore_notes_.push_back("initialised the weights from " + path + " (fresh optimizer and schedule)");
  }

  void announce(const std::optional<std::string>& resume_from) {
    log_->info("ssmtrain: run '" + options_.run_dir + "' on " + device_.str() + ", model " + spec_.model.mixer + " x" +
               std::to_string(spec_.model.n_layer) + " (d_model " + std::to_string(spec_.model.d_model) + ")");
    log_->info("data: " + train_data_->describe());
    if (eot_token_ >= 0)
      log_->info("packed documents: each begins at token " + std::to_string(eot_token_) +
                 "; the mixers' state restarts there");
    log_->info("budget: " + budget_.summary());
    if (resume_from)
      log_->info("resumed from " + *resume_from + " at step " + std::to_string(state_.step) + " (" +
                 format_count(static_cast<double>(state_.tokens)) + " tokens)");
  }

  // A launched step whose scalars the host has not read yet, with what its record needs
  // from the time of its launch.
  struct InFlight {
    int64_t step = 0, tokens = 0;
    double lr = 0;
    PendingStep pending;
    AsyncRead moe;  // expert usage since the previous logged step, on its way to the host
  };

  // Expert usage since the last call, reduced on the device and copied home without
  // waiting (ssm/moe.h); read with the step's scalars. Undefined without experts.
  AsyncRead moe_fields() {
    if (!has_experts_) return AsyncRead();
    return moe_summary_read(*model_);
  }

  // Steps that write a metrics record and a log line: every log_every-th, the first, the last.
  bool log_due(int64_t step) const { return step % config_.train.log_every == 0 || step == budget_.steps || step == 1; }

  // The loop runs one step ahead of what it reports (docs/training.md, "What is logged
  // when"): it launches step k, then reads step k - 1's scalars, which the device has
  // finished by then or nearly, and logs them. At an eval, checkpoint, stop or the last step
  // it reads step k at once (settle), so the non-finite guard and the saved state see every
  // step. The guard therefore stops one launch later than it would synchronously (the extra
  // step is neither logged nor saved).
  int loop() {
    install_stop_handlers();
    const std::vector<Tensor> params = optimizer_->parameters();
    loop_start_ = window_start_ = std::chrono::steady_clock::now();
    window_tokens_ = 0;
    model_->train();

    ProfileRun profile(config_, options_, device_, state_.step, budget_.steps, *log_);
    while (state_.step < budget_.steps && !max_steps_reached()) {
      auto profiled_step = profile.step(state_.step);  // the "step" span while profiling
      InFlight launched = launch_step(params);
      if (!finish_in_flight()) return kExitNonFinite;  // the previous step, read one step late
      in_flight_.emplace(std::move(launched));

      const bool eval = eval_due(), checkpoint = checkpoint_due();
      if ((eval || checkpoint) && !settle()) return kExitNonFinite;
      if (eval) run_eval();
      const bool stop = stop_agreed();  // collective: every rank asks once per step
      if (stop && !settle()) return kExitNonFinite;
      if (checkpoint || stop) save();
      if (stop) {
        log_->finish_progress();
        log_->info("stopped by signal after step " + std::to_string(state_.step) +
                   "; continue with: " + resume_command());
        return kExitDone;
      }
    }
    // The loop ends after a step that was read at once (the last step, --max-steps).
    SSMT_ASSERT(!in_flight_, "the last step of the loop was not read");
    log_->finish_progress();
    if (state_.step < budget_.steps)
      log_->info("stopped at step " + std::to_string(state_.step) + " of " + std::to_string(budget_.steps) +
                 " (--max-steps); continue with: " + resume_command());
    else
      log_->info("done: " + std::to_string(state_.step) + " steps, " +
                 format_count(static_cast<double>(state_.tokens)) + " tokens");
    return kExitDone;
  }

  // Queues the next optimizer step at the schedule's learning rate and counts it as done;
  // its scalars are read later (finish_in_flight).
  InFlight launch_step(const std::vector<Tensor>& params) {
    const auto& tc = config_.train;
    const double lr = learning_rate(schedule_, state_.step);
    optimizer_->set_lr(lr);
    PendingStep pending = train_step(
        *model_, *optimizer_, params, dist_,
        [&] { return micro_batch(train_data_->next(tc.batch_size, tc.seq_len), device_, eot_token_); }, tc.grad_accum,
        config_.optim.grad_clip, tc.fused_head, DataParallelStep{buckets_.get(), config_.dist.overlap, zero_.get()});
    ++state_.step;
    state_.tokens += budget_.tokens_per_step;
    // The MoE usage accumulates on the device; a logged step queues its copy now, after
    // the step's forwards and before the next step's.
    return InFlight{state_.step, state_.tokens, lr, std::move(pending),
                    log_due(state_.step) ? moe_fields() : AsyncRead()};
  }

  // Reads the step in flight, if any (waiting for its scalars if need be), logs it and
  // applies the non-finite guard. Every step goes through here once. Returns false when the
  // guard stops the run.
  bool finish_in_flight() {
    if (!in_flight_) return true;
    const StepStats stats = resolve(*in_flight_);
    in_flight_.reset();
    log_step(*log_, stats, budget_.steps);
    return nonfinite_guard(stats);
  }

  // Reads the step in flight at once, with the optimizer's pending skip flags (exact step
  // counts for a checkpoint), so that an eval, a checkpoint or a stop sees every step.
  bool settle() {
    const bool go_on = finish_in_flight();
    optimizer_->resolve_pending();
    return go_on;
  }

  // A launched step's statistics. Its scalars update the non-finite counters; times are
  // taken when they are in, so they follow the device. Throughput is averaged over the
  // steps since the last logged one.
  StepStats resolve(InFlight& f) {
    const StepResult& r = f.pending.resolve();
    if (r.applied) {
      state_.nonfinite_in_row = 0;
    } else {
      ++state_.nonfinite_total;
      ++state_.nonfinite_in_row;
    }
    StepStats s;
    s.step = f.step;
    s.tokens = f.tokens;
    s.lr = f.lr;
    s.loss = r.loss;
    s.finite = r.finite;
    s.applied = r.applied;
    s.grad_norm = r.clip.norm;
    if (has_experts_) {
      s.aux_loss = r.aux_loss;
      if (f.moe.defined()) s.moe = moe_summary_of(f.moe);
    }
    s.nonfinite_total = state_.nonfinite_total;
    s.nonfinite_in_row = state_.nonfinite_in_row;
    s.logged = log_due(f.step);

    window_tokens_ += budget_.tokens_per_step;
    const auto now = std::chrono::steady_clock::now();
    s.elapsed_s = std::chrono::duration<double>(now - loop_start_).count();
    const double window_s = std::chrono::duration<double>(now - window_start_).count();
    s.tokens_per_s = window_s > 0 ? static_cast<double>(window_tokens_) / window_s : 0.0;
    const int64_t done_here = f.step - resumed_step_;
    s.eta_s = done_here > 0 ? s.elapsed_s / static_cast<double>(done_here) * static_cast<double>(budget_.steps - f.step)
                            : 0.0;
    if (s.logged) {
      window_start_ = now;
      window_tokens_ = 0;
    }
    return s;
  }

  // The non-finite guard: a skipped update is reported, and train.max_nonfinite of them in
  // a row stop the run with the last good checkpoint kept. Returns false to stop.
  bool nonfinite_guard(const StepStats& s) {
    if (s.nonfinite_in_row == 0) return true;
    log_->info("step " + std::to_string(s.step) + ": non-finite " + (s.finite ? "gradient" : "loss") + " (loss " +
               fixed(s.loss, 4) + ", grad norm " + sci(s.grad_norm) + "); update skipped (" +
               std::to_string(s.nonfinite_in_row) + " in a row)");
    const int64_t limit = config_.train.max_nonfinite;
    if (s.nonfinite_in_row < std::max<int64_t>(1, limit)) return true;
    log_->finish_progress();
    std::fprintf(stderr,
                 "ssmtrain: stopping: %lld consecutive steps had a non-finite loss or gradient "
                 "(train.max_nonfinite = %lld); the last good checkpoint in %s/checkpoints is kept. "
                 "Lower optim.lr or optim.grad_clip, or check the data.\n",
                 static_cast<long long>(s.nonfinite_in_row), static_cast<long long>(limit), options_.run_dir.c_str());
    return false;
  }

  bool max_steps_reached() const { return options_.max_steps > 0 && state_.step >= options_.max_steps; }

  // After the step just launched: every checkpoint_every-th step, the last and the last of
  // --max-steps save a checkpoint; every eval_every-th and the last evaluate (main rank).
  bool checkpoint_due() const {
    const int64_t every = config_.train.checkpoint_every;
    return (every > 0 && state_.step % every == 0) || state_.step == budget_.steps || max_steps_reached();
  }
  bool eval_due() const {
    const int64_t every = config_.train.eval_every;
    return val_data_ && ((every > 0 && state_.step % every == 0) || state_.step == budget_.steps);
  }

  // A stop signal on any rank stops every rank after the same step.
  bool stop_agreed() { return dist_.max(stop_requested() ? 1.0 : 0.0) > 0; }

  // The command that continues this run as it is: the run directory's config.yaml holds the
  // resolved config, overrides included, so it needs no overrides repeated.
  std::string resume_command() const {
    return "ssmtrain train " + options_.run_dir + "/config.yaml --run-dir " + options_.run_dir + " --resume auto";
  }

  void run_eval() {
    const auto& tc = config_.train;
    const int64_t L = resolved_eval_seq_len(config_);
    EvalResult r = evaluate(*model_, *val_data_, tc.eval_batches, tc.batch_size, L, device_, eot_token_);
    JsonLine j;
    j.add("step", state_.step).add("tokens", state_.tokens).add("split", std::string("val")).add("loss", r.loss);
    std::string line = "eval step " + std::to_string(state_.step) + " | val loss " + fixed(r.loss, 4);
    if (r.bits_per_byte >= 0) {
      j.add("bpb", r.bits_per_byte);
      line += " | " + fixed(r.bits_per_byte, 4) + " bits/byte";
    }
    if (config_.data.kind == "synthetic") {
      j.add("acc", r.accuracy);
      line += " | accuracy " + fixed(100.0 * r.accuracy, 2) + "%";
    }
    log_->metrics(j);
    log_->info(line);
    if (tc.sample_tokens > 0 && val_data_->byte_level()) {
      // The sample has its own generator, keyed by the step, so it never moves training RNG.
      Generator gen(derive_key(static_cast<uint64_t>(tc.seed), 0x53414d50ull + static_cast<uint64_t>(state_.step)));
      const std::string prompt = "The ";
      std::vector<int32_t> ids(prompt.begin(), prompt.end());
      SampleOptions so;
      so.tokens = tc.sample_tokens;
      so.temperature = 0.8;
      so.top_k = 40;
      std::vector<int32_t> out = generate(*model_, ids, val_data_->vocab_size(), so, gen);
      log_->info("sample: " + prompt + printable_bytes(out));
    }
  }

  void save() {
    if (zero_) zero_->gather_state_into(*optimizer_);  // collective: the main rank gets the whole state
    if (!dist_.is_main()) return;
    DataCursor c = train_data_->cursor();
    state_.data_kind = c.kind;
    state_.data_cursor = c.values;
    const std::string dir = options_.run_dir + "/checkpoints";
    const std::string path = checkpoint_path(dir, state_.step);
    save_checkpoint(path, *model_, optimizer_.get(), state_, config_yaml_);
    if (zero_) ZeroOptimizer::release(*optimizer_);
    auto pruned = prune_checkpoints(dir, config_.train.keep_last);
    log_->info("checkpoint " + path + (pruned.empty() ? "" : " (removed " + std::to_string(pruned.size()) + " older)"));
  }

  Config config_;
  TrainOptions options_;
  Dist& dist_ = Dist::get();
  Device device_;
  std::optional<RunDirLock> lock_;
  // On ranks other than the main one RunLog::null(), so that no call site tests for a log.
  std::unique_ptr<RunLog> log_;
  std::vector<std::string> restore_notes_;  // printed once restore has succeeded
  std::string config_yaml_;
  ModelSpec spec_;
  bool has_experts_ = false;  // MoE layers with several experts: their metrics are logged
  int64_t eot_token_ = -1;    // data.pack_documents: the token that begins each document; -1 = off
  std::shared_ptr<LanguageModel> model_;
  std::unique_ptr<Optimizer> optimizer_;
  std::unique_ptr<GradBuckets> buckets_;  // data parallelism's bucketed path, when on
  std::unique_ptr<ZeroOptimizer> zero_;   // dist.zero 1: this rank's shard of the AdamW state
  std::unique_ptr<Dataset> train_data_, val_data_;
  Budget budget_;
  ScheduleConfig schedule_;
  TrainerState state_;
  int64_t resumed_step_ = 0;
  std::optional<InFlight> in_flight_;  // the launched step not read yet
  // The throughput window runs from the last logged step.
  std::chrono::steady_clock::time_point loop_start_, window_start_;
  int64_t window_tokens_ = 0;
};

}  // namespace

int run_training(const Config& config, const TrainOptions& options) {
  Run run(config, options);
  return run.execute();
}

}  // namespace ssmtrain
