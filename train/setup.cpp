#include "train/setup.h"

#include <omp.h>

#include <cstdio>

#include "core/backend.h"
#include "optim/adamw.h"
#include "optim/param_groups.h"
#include "optim/sgd.h"

namespace ssmtrain {

ModelSpec model_spec(const Config& config) {
  const ModelOptions& m = config.model;
  SSMT_CHECK(m.tie_embeddings, "model.tie_embeddings: false is not supported; the LM head is always tied to the "
                               "embedding (SPECS section 6)");
  SSMT_CHECK(m.dropout == 0.0, "model.dropout: ", m.dropout,
             " is not supported by the SSM mixers (the Mamba recipe trains without dropout); set it to 0");
  ModelSpec s;
  s.model = m;
  s.seq_len = config.train.seq_len;
  s.compute_dtype = config.train.precision == "bf16" ? DType::bf16 : DType::f32;
  s.recompute = config.train.recompute == "block"   ? LMConfig::Recompute::block
                : config.train.recompute == "mixer" ? LMConfig::Recompute::mixer
                                                    : LMConfig::Recompute::none;
  return s;
}

Device train_device(const Config& config) {
  Device d = Device::parse(config.train.device);
  if (d.is_cuda()) {
    SSMT_CHECK(cuda_available(), "train.device: '", config.train.device,
               "' asks for a GPU, but ssmtrain was built without CUDA or no GPU is visible; use train.device=cpu");
  }
  return d;
}

DataSpec data_spec(const Config& config, int rank, int world_size) {
  DataSpec d;
  d.kind = config.data.kind;
  d.path = config.data.path;
  d.val_path = config.data.val_path;
  d.val_fraction = config.data.val_fraction;
  d.task = config.data.task;
  d.task_vocab = config.data.task_vocab;
  d.task_tokens = config.data.task_tokens;
  d.seed = static_cast<uint64_t>(config.train.seed);
  d.rank = rank;
  d.world_size = world_size;
  d.vocab_size = config.model.vocab_size;
  d.val_min_tokens = resolved_eval_seq_len(config) + 1;  // at least one evaluation window per file
  return d;
}

int64_t resolved_eot_token(const Config& config, const Dataset& data) {
  const DataSection& d = config.data;
  if (!d.pack_documents) return -1;
  const int64_t eot = d.eot_token >= 0 ? d.eot_token : data.eot_token();
  SSMT_CHECK(eot >= 0, "data.eot_token: -1 takes the data's own end-of-text token, but ", data.describe(),
             " records none (byte-level shards hold one only when written by `ssmtrain prepare --eot`); set "
             "data.eot_token or data.pack_documents=false");
  SSMT_CHECK(eot < config.model.vocab_size, "data.eot_token: ",
             d.eot_token >= 0 ? std::to_string(eot) : "-1 stands for the data's own token " + std::to_string(eot) + ", which",
             " is outside the vocabulary: model.vocab_size is ", config.model.vocab_size, "; set data.eot_token");
  return eot;
}

void check_pack_documents(const Config& config, const LanguageModel& model) {
  if (!config.data.pack_documents) return;
  const std::vector<std::string> names = layer_mixers(config.model);
  for (int i = 0; i < model.n_layer(); ++i)
    SSMT_CHECK(model.block(i)->mixer()->supports_seq_idx(), "data.pack_documents: layer ", i, " (mixer ",
               i < static_cast<int>(names.size()) ? names[static_cast<size_t>(i)] : std::string("?"),
               ") cannot restart its state where a document begins; use mixers that can (docs/data.md, "
               "\"Packed documents\") or set data.pack_documents=false");
}

std::unique_ptr<Optimizer> make_optimizer(const Config& config, const Module& model) {
  GroupRules rules;
  rules.weight_decay = config.optim.weight_decay;
  rules.ssm_lr = resolved_ssm_lr(config);
  std::vector<ParamGroup> groups = make_param_groups(param_specs(model.named_parameters()), rules);
  if (config.optim.name == "sgd")
    return std::make_unique<SGD>(std::move(groups), config.optim.lr, SGDOptions{.momentum = config.optim.momentum});
  AdamWOptions o;
  o.beta1 = config.optim.betas.at(0);
  o.beta2 = config.optim.betas.at(1);
  o.eps = config.optim.eps;
  return std::make_unique<AdamW>(std::move(groups), config.optim.lr, o);
}

ScheduleConfig schedule_config(const Config& config, int64_t total_steps) {
  ScheduleConfig s;
  s.kind = schedule_kind_from_name(config.schedule.kind);
  s.peak_lr = config.optim.lr;
  s.total_steps = total_steps;
  s.warmup_steps = resolved_warmup_steps(config.schedule, total_steps);
  s.min_lr = config.schedule.min_lr;
  s.decay_fraction = config.schedule.decay_fraction;
  validate(s);
  return s;
}

ParamCounts param_counts(const ModelSpec& spec, const LanguageModel& model) {
  auto [per_token, experts] = moe_routing(spec);
  ParameterCounts c = model.parameter_counts(per_token, experts);
  ParamCounts p;
  p.total = c.total;
  p.non_embedding = c.non_embedding;
  p.active = c.active;
  return p;
}

BudgetSpec budget_spec(const Config& config) {
  BudgetSpec b;
  b.tokens = config.budget.tokens;
  b.flops = config.budget.flops;
  b.tokens_per_param = config.budget.tokens_per_param;
  b.steps = config.budget.steps;
  b.params = config.budget.params;
  return b;
}

int64_t tokens_per_step(const Config& config, int world_size) {
  return config.train.batch_size * config.train.seq_len * config.train.grad_accum * world_size;
}

void apply_compute_settings(const Config& config) {
  if (config.train.threads > 0) {
    // More threads than processors only oversubscribes them (and very many exhaust the
    // stacks OpenMP gives each one): bound by the processors, and say so.
    const int procs = omp_get_num_procs();
    int64_t threads = config.train.threads;
    if (threads > procs) {
      std::fprintf(stderr, "warning: train.threads = %lld is more than the %d processors; using %d\n",
                   static_cast<long long>(threads), procs, procs);
      threads = procs;
    }
    omp_set_num_threads(static_cast<int>(threads));
  }
  set_allow_tf32(config.train.tf32);
}

}  // namespace ssmtrain
