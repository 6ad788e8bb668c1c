// The training configuration: one typed struct per YAML section (model, data, optim,
// schedule, budget, train, run), each declaring its keys exactly once in `visit()`
// (core/options.h):
//
//   v.field("d_model", d_model, "width of the residual stream", ge(1));
//
// The model section is ssm/model.h's ModelOptions: the keys of the model itself, then those
// of every registered mixer (ssm/mixer_registry.h), each declared by the mixer's own options
// struct. So a mixer's keys, checks and reference come with the mixer.
//
// Every use of the keys is a visitor over these declarations (train/config.cpp): reading
// YAML files and key.path=value overrides, range and choice checks, dumping the resolved
// config, listing the keys for did-you-mean suggestions, and the reference in
// docs/config.md. Adding a key is one line in its struct plus its use elsewhere; nothing
// else needs to learn about it.
//
// Values marked "0 = auto" (dt_rank, d_ff, ssm_lr, ...) stay 0 in the config so that a
// changed d_model still derives them; the layers (model keys) and the resolved_* helpers at
// the end (the others) compute them.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "core/options.h"
#include "ssm/model.h"

namespace ssmtrain {

// "" for "cpu", "cuda" and "cuda:N"; otherwise what is wrong with `device`.
std::string device_problem(const std::string& device);

struct DataSection {
  std::string kind = "text";
  std::vector<std::string> path;
  std::vector<std::string> val_path;
  double val_fraction = 0.01;
  std::string task = "selective_copy";
  int64_t task_vocab = 16;
  int64_t task_tokens = 16;
  int64_t eval_seq_len = 0;
  bool pack_documents = false;
  int64_t eot_token = -1;

  template <class V>
  void visit(V& v) {
    v.field("kind", kind,
            "text: byte-level tokens of text files; shards: llm.c token shards; synthetic: a generated task",
            one_of({"text", "shards", "synthetic"}));
    v.field("path", path,
            "training data, required unless kind is synthetic: text files (plain or .gz) for text; shard "
            "files, directories or globs for shards; one path may be written without brackets");
    v.field("val_path", val_path,
            "validation data in the same form; empty = hold out val_fraction of the training data");
    v.field("val_fraction", val_fraction, "share of the training data held out for validation when val_path is empty",
            ge(0).lt(1));
    v.field("task", task, "synthetic task: selective copying, induction heads, or multi-query associative recall",
            one_of({"selective_copy", "induction", "mqar"}));
    v.field("task_vocab", task_vocab, "synthetic vocabulary size (special tokens included)", ge(4));
    v.field("task_tokens", task_tokens,
            "selective_copy: data tokens to copy (M); mqar: key-value pairs; induction: unused", ge(1));
    v.field("eval_seq_len", eval_seq_len,
            "sequence length of evaluation, e.g. longer than training to test extrapolation; 0 = train.seq_len", ge(0));
    v.field("pack_documents", pack_documents,
            "rows hold several documents, each begun by eot_token: every mixer restarts its state there, so no "
            "document sees the one before it (SPECS section 12, docs/data.md); mamba, s6, mamba_lti, mamba2, mlp, "
            "moe and attention layers can, s4 and s4d cannot");
    v.field("eot_token", eot_token,
            "the token that begins each document when pack_documents is on; -1 = the data's own: shards record it "
            "(prepare --eot), else 50256 (GPT-2's end-of-text) unless byte-level; text and synthetic data have "
            "none",
            ge(-1));
  }
  bool operator==(const DataSection&) const = default;
};

struct OptimSection {
  std::string name = "adamw";
  double lr = 1e-3;
  std::vector<double> betas = {0.9, 0.95};
  double eps = 1e-8;
  double weight_decay = 0.1;
  double momentum = 0.9;
  double grad_clip = 1.0;
  double ssm_lr = 0.0;

  template <class V>
  void visit(V& v) {
    v.field("name", name, "optimizer", one_of({"adamw", "sgd"}));
    v.field("lr", lr, "peak learning rate (the schedule scales it)", gt(0));
    v.field("betas", betas, "adamw: (beta1, beta2)", ge(0).lt(1).size(2));
    v.field("eps", eps, "adamw: denominator epsilon", gt(0));
    v.field("weight_decay", weight_decay,
            "decoupled weight decay of the weight matrices; biases, norms and SSM parameters get none", ge(0));
    v.field("momentum", momentum, "sgd: momentum", ge(0).lt(1));
    v.field("grad_clip", grad_clip, "clip the global gradient norm to this; 0 = off", ge(0));
    v.field("ssm_lr", ssm_lr,
            "learning rate of the ssm-tagged parameters (s4/s4d SSMs, h3's diagonal SSM, hyena's filters); "
            "0 = model.s4.lr",
            ge(0));
  }
  bool operator==(const OptimSection&) const = default;
};

struct ScheduleSection {
  std::string kind = "cosine";
  int64_t warmup_steps = -1;
  double warmup_fraction = 0.01;
  double min_lr = 1e-5;
  double decay_fraction = 0.2;

  template <class V>
  void visit(V& v) {
    v.field("kind", kind,
            "shape after the linear warmup: constant, cosine or linear decay to min_lr, or warmup-stable-decay",
            one_of({"constant", "cosine", "linear", "wsd"}));
    v.field("warmup_steps", warmup_steps, "linear warmup length in steps; -1 = round(warmup_fraction * total steps)",
            ge(-1));
    v.field("warmup_fraction", warmup_fraction, "warmup length as a share of the total steps", ge(0).le(1));
    v.field("min_lr", min_lr, "learning rate at the end of the decay; must not exceed optim.lr", ge(0));
    v.field("decay_fraction", decay_fraction, "wsd: share of the total steps spent decaying to min_lr", ge(0).le(1));
  }
  bool operator==(const ScheduleSection&) const = default;
};

struct BudgetSection {
  int64_t tokens = 0;
  double flops = 0;
  double tokens_per_param = 20.0;
  int64_t steps = 0;
  std::string params = "non_embedding";

  template <class V>
  void visit(V& v) {
    v.field("tokens", tokens, "training tokens D (rounded up to whole steps); 0 = from flops, else tokens_per_param * N",
            ge(0));
    v.field("flops", flops,
            "training compute C = 6 N D: when > 0 (and tokens, steps are 0), D = C / (6 N), so a sweep over model sizes "
            "at fixed flops gives IsoFLOP profiles",
            ge(0));
    v.field("tokens_per_param", tokens_per_param, "D / N when tokens, flops and steps are 0 (Chinchilla: 20)", gt(0));
    v.field("steps", steps, "optimizer steps; when > 0 it wins over tokens and tokens_per_param", ge(0));
    v.field("params", params, "which parameter count is N (MoE models: active)",
            one_of({"total", "non_embedding", "active"}));
  }
  bool operator==(const BudgetSection&) const = default;
};

struct TrainSection {
  int64_t batch_size = 8;
  int64_t seq_len = 256;
  int64_t grad_accum = 1;
  std::string precision = "fp32";
  std::string device = "cpu";
  int64_t seed = 1234;
  int64_t log_every = 10;
  int64_t eval_every = 100;
  int64_t eval_batches = 4;
  int64_t checkpoint_every = 0;
  int64_t keep_last = 3;
  int64_t max_nonfinite = 5;
  int64_t sample_tokens = 64;
  int64_t threads = 0;
  int64_t profile_steps = 0;
  std::string recompute = "none";
  bool fused_head = true;
  bool tf32 = false;
  bool tensorboard = false;
  bool plot = true;

  template <class V>
  void visit(V& v) {
    Rule device_rule;
    device_rule.check = device_problem;
    device_rule.form = "`cpu`, `cuda`, `cuda:N`";
    v.field("batch_size", batch_size, "sequences per micro-batch", ge(1));
    v.field("seq_len", seq_len, "tokens per training sequence", ge(1));
    v.field("grad_accum", grad_accum,
            "micro-batches per optimizer step (tokens per step = batch_size * seq_len * grad_accum)", ge(1));
    v.field("precision", precision, "fp32, or bf16 activations and GEMMs with fp32 master weights",
            one_of({"fp32", "bf16"}));
    v.field("device", device, "where to train; cuda = cuda:0", device_rule);
    v.field("seed", seed, "seed of initialisation, data order, dropout and sampling", ge(0));
    v.field("log_every", log_every, "steps between log lines and metrics records", ge(1));
    v.field("eval_every", eval_every, "steps between evaluations; 0 = only at the end", ge(0));
    v.field("eval_batches", eval_batches, "batches per evaluation", ge(1));
    v.field("checkpoint_every", checkpoint_every, "steps between checkpoints; 0 = only at the end", ge(0));
    v.field("keep_last", keep_last, "periodic checkpoints kept (the final one always is); 0 = keep all", ge(0));
    v.field("max_nonfinite", max_nonfinite,
            "stop after this many consecutive steps with a non-finite loss or gradient (each is skipped)", ge(0));
    v.field("sample_tokens", sample_tokens, "tokens of sample text generated at each evaluation; 0 = none", ge(0));
    v.field("threads", threads, "CPU threads (OpenMP); 0 = all cores", ge(0));
    v.field("profile_steps", profile_steps,
            "steps to profile after 2 warm-up steps: a Chrome trace in the run directory's profile.json and a "
            "per-op table in the log (docs/training.md); 0 = off",
            ge(0));
    v.field("recompute", recompute,
            "activation recomputation: keep every activation, or keep only each block's input (block) or each "
            "mixer's input (mixer) and recompute the rest in the backward: less memory for one more forward "
            "(docs/perf_train.md)",
            one_of({"none", "mixer", "block"}));
    v.field("fused_head", fused_head,
            "loss through the fused head + cross-entropy over row blocks (never the full logits); false computes "
            "the full f32 logits first (slower, more memory; kept for comparison)");
    v.field("tf32", tf32,
            "f32 GEMMs on CUDA on TF32 tensor cores (fp32 accumulation, 10-bit mantissa products); off = full "
            "fp32, as the CPU; bf16 precision runs its GEMMs in bf16 either way");
    v.field("tensorboard", tensorboard,
            "also write every metrics record as TensorBoard scalars (train/loss, train/lr, train/grad_norm, "
            "train/tokens_per_s, val/loss, val/bpb, MoE usage, ...) to events.out.tfevents.* in the run directory");
    v.field("plot", plot,
            "at the end of the run, draw its loss curves, learning rate and throughput into plot.svg in the run "
            "directory (ssmtrain plot; docs/training.md)");
  }
  bool operator==(const TrainSection&) const = default;
};

// Data parallelism under mpirun (docs/distributed.md). Ignored by a world of one.
struct DistSection {
  bool overlap = true;
  double bucket_mb = 25.0;
  std::string grad_dtype = "f32";
  int64_t zero = 0;
  double timeout_s = 600.0;

  template <class V>
  void visit(V& v) {
    v.field("overlap", overlap,
            "gradients all-reduced in buckets while the backward still runs; false = one all-reduce per parameter "
            "after the whole backward (kept for comparison)");
    v.field("bucket_mb", bucket_mb,
            "size of a gradient bucket in MB of f32 gradients (parameters in reverse registration order); a "
            "parameter larger than this has a bucket of its own",
            gt(0).le(4096));
    v.field("grad_dtype", grad_dtype,
            "dtype of the communicated gradients (overlap or zero: 1); bf16 halves the bytes and rounds each "
            "gradient and each partial sum to bf16",
            one_of({"f32", "bf16"}));
    v.field("zero", zero,
            "0: every rank keeps the whole optimizer state; 1: each rank keeps the AdamW state of its shard of the "
            "flat parameters (ZeRO-1): reduce-scatter the gradients, update the shard, all-gather the parameters",
            ge(0).le(1));
    v.field("timeout_s", timeout_s,
            "a rank that waits this long for the others (a collective that does not complete) ends the job with a "
            "message naming the wait; must exceed the longest evaluation or checkpoint save of the main rank",
            gt(0));
  }
  bool operator==(const DistSection&) const = default;
};

struct RunSection {
  std::string name;
  std::string dir;

  template <class V>
  void visit(V& v) {
    v.field("name", name, "run name; empty = the config file's name without extension");
    v.field("dir", dir, "run directory (config, logs, metrics, checkpoints); empty = runs/<name>");
  }
  bool operator==(const RunSection&) const = default;
};

struct Config {
  ModelOptions model;  // ssm/model.h: the model's keys and, through the mixer registry, each mixer's
  DataSection data;
  OptimSection optim;
  ScheduleSection schedule;
  BudgetSection budget;
  TrainSection train;
  DistSection dist;
  RunSection run;

  template <class V>
  void visit(V& v) {
    v.section("model", model, "The language model: embedding, a stack of pre-norm residual blocks, final norm, head.");
    v.section("data", data, "Training and validation data.");
    v.section("optim", optim, "Optimizer. Weight decay skips biases, norms and SSM parameters (docs/optim.md).");
    v.section("schedule", schedule, "Learning-rate schedule: linear warmup to optim.lr, then the chosen shape.");
    v.section("budget", budget,
              "How long to train. Precedence: steps, then tokens, then tokens_per_param * N (SPECS section 8).");
    v.section("train", train, "The training loop.");
    v.section("dist", dist, "Data parallelism across processes started by mpirun or srun (docs/distributed.md).");
    v.section("run", run, "Where the run's files go.");
  }
  bool operator==(const Config&) const = default;
};

// Reads a YAML config file and applies `overrides` ("key.path=value", value parsed as YAML,
// e.g. optim.betas=[0.9,0.99]) in order. Every problem is a UserError naming the file and
// line or the override, the key, and what was expected.
Config load_config(const std::string& path, const std::vector<std::string>& overrides = {});

// The same for YAML text; `source_name` is the file name used in messages (and, through
// resolved_run_name, for the default run name). An empty text gives the defaults.
Config parse_config(const std::string& yaml_text, const std::string& source_name,
                    const std::vector<std::string>& overrides = {});

// Range, choice and cross-key checks (load/parse_config run them); UserError naming the key.
void validate(const Config& config);

// Every key with its value, as YAML that parse_config reads back to an equal Config.
std::string to_yaml(const Config& config);

// "key: a vs b" for each key whose values differ (empty when the configs are equal).
std::vector<std::string> config_differences(const Config& a, const Config& b);

// Every key's dotted path (model.d_model, model.moe.every, ...), in declaration order.
std::vector<std::string> config_keys();

// The reference of every key, as kept in docs/config.md (`ssmtrain config --docs`).
std::string config_docs_markdown();

// The values that "0 = auto" and "-1 = auto" keys stand for (the model's own, such as
// model.dt_rank, are resolved by the layers that read them).
double resolved_ssm_lr(const Config& config);  // optim.ssm_lr, else model.s4.lr, else optim.lr
int64_t resolved_warmup_steps(const ScheduleSection& schedule, int64_t total_steps);
int64_t resolved_eval_seq_len(const Config& config);
// run.name, else the stem of the config file name `source_name` (configs/x.yaml -> x).
std::string resolved_run_name(const Config& config, const std::string& source_name);
// run.dir, else runs/<resolved_run_name>.
std::string resolved_run_dir(const Config& config, const std::string& source_name);

}  // namespace ssmtrain
