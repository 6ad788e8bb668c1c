// From a Config to the objects a run is made of: the model spec, the device, the data
// spec, the optimizer with its parameter groups, the schedule and the token budget. The
// trainer and the eval/sample/info commands build their runs through these, so a
// checkpoint's config always rebuilds the model it was saved from.
#pragma once

#include <memory>

#include "data/dataset.h"
#include "optim/optimizer.h"
#include "optim/schedule.h"
#include "ssm/model.h"
#include "train/budget.h"
#include "train/config.h"

namespace ssmtrain {

// UserError (naming the key) for settings the model cannot honour yet.
ModelSpec model_spec(const Config& config);
Device train_device(const Config& config);
DataSpec data_spec(const Config& config, int rank, int world_size);

std::unique_ptr<Optimizer> make_optimizer(const Config& config, const Module& model);
ScheduleConfig schedule_config(const Config& config, int64_t total_steps);

// Total, non-embedding and active (MoE: one expert per MoE layer) parameter counts.
ParamCounts param_counts(const ModelSpec& spec, const LanguageModel& model);
BudgetSpec budget_spec(const Config& config);
// Tokens per optimizer step over all ranks: batch_size * seq_len * grad_accum * world_size.
int64_t tokens_per_step(const Config& config, int world_size);

// Packed documents (data.pack_documents, SPECS section 12). The token that begins each
// document: -1 when packing is off, else data.eot_token or, when that is -1, the data's own
// (Dataset::eot_token); UserError naming data.eot_token when there is none or it is outside
// model.vocab_size.
int64_t resolved_eot_token(const Config& config, const Dataset& data);
// UserError naming data.pack_documents and the layer when packing is on and a layer's mixer
// cannot restart its state at document boundaries (Mixer::supports_seq_idx).
void check_pack_documents(const Config& config, const LanguageModel& model);

// Applies train.threads (0 = all cores) to OpenMP and train.tf32 to the f32 GEMMs on CUDA.
void apply_compute_settings(const Config& config);

}  // namespace ssmtrain
