// The training loop of `ssmtrain train`: budget, schedule, gradient accumulation,
// clipping, the non-finite guard, evaluation with samples, logs, checkpoints and exact
// resume (docs/training.md).
#pragma once

#include <cstdint>
#include <string>

#include "data/dataset.h"
#include "ssm/model.h"
#include "train/config.h"
#include "train/step.h"

namespace ssmtrain {

struct TrainOptions {
  std::string run_dir;        // resolved run directory
  std::string resume;         // "" (fresh run), "auto" (newest valid checkpoint, if any) or a path
  std::string init_from;      // a fresh run starts from this checkpoint's weights ("" = the config's init)
  int64_t max_steps = 0;      // > 0: stop with a checkpoint once this many steps are done
  bool quiet = false;         // nothing on the terminal but errors
  int64_t profile_steps = -1; // >= 0: overrides train.profile_steps (--profile N)
};

// Runs (or resumes) the run described by `config`. Returns the process exit code: 0 when
// the budget is done, max_steps is reached or a stop signal was honoured (a checkpoint is
// saved in each case); 1 when the non-finite guard stops the run. Bad input throws UserError.
int run_training(const Config& config, const TrainOptions& options);

struct EvalResult {
  double loss = 0;            // mean NLL (nats) over the target positions
  double bits_per_byte = -1;  // byte-level data only
  double accuracy = -1;       // share of target positions whose argmax is the target
  int64_t targets = 0;
};

// Mean loss and accuracy over `batches` batches of `data` from its start (it is rewound
// first). The model is evaluated in eval mode without a tape. eot_token >= 0: packed
// documents, each begun by that token (resolved_eot_token, train/setup.h).
EvalResult evaluate(LanguageModel& model, Dataset& data, int64_t batches, int64_t batch_size, int64_t seq_len,
                    Device device, int64_t eot_token = -1);

// The (B, L) i64 input and target tensors of a batch on `device`.
std::pair<Tensor, Tensor> batch_tensors(const Batch& batch, Device device);
// The same with, when eot_token >= 0 (packed documents), the document index of every position
// (data/packing.h) as a (B, L) i32 seq_idx on `device`; undefined otherwise.
MicroBatch micro_batch(const Batch& batch, Device device, int64_t eot_token);

}  // namespace ssmtrain
