// One optimizer step of a language model, shared by the trainer and `ssmtrain-bench train`
// so that the benchmark times exactly what a run does: forward through the fused head and
// loss, backward, over `grad_accum` micro-batches; gradient averaging over ranks; global-norm
// clipping; the optimizer update (skipped when the loss or the gradient is not finite).
//
// On one CUDA device a step never waits for the device: the batch copies are staged
// (cuda::memcpy_h2d), the loss sums, the clip and the skip decision stay on the device
// (clip_grad_norm_deferred, AdamW::step_clipped), and the scalars come home in one
// asynchronous copy. train_step returns as soon as everything is queued; the caller reads
// the result when it needs it (PendingStep::resolve), normally one step later. With
// several ranks the loss and its finiteness are combined on the host (MPI), so each step
// reads the loss back once; the gradient norm and the update stay on the device.
#pragma once

#include <functional>
#include <optional>
#include <utility>
#include <vector>

#include "core/async_read.h"
#include "nn/lm.h"
#include "optim/clip.h"
#include "optim/optimizer.h"
#include "train/dist.h"

namespace ssmtrain {

class GradBuckets;
class ZeroOptimizer;

// How a step communicates under data parallelism (train/grad_buckets.h, train/zero.h).
// Empty: Dist::average_gradients after the whole backward, then the full optimizer.
struct DataParallelStep {
  GradBuckets* buckets = nullptr;  // the bucketed path
  bool overlap = true;             // start buckets from the last micro-batch's backward
  ZeroOptimizer* zero = nullptr;   // dist.zero 1 (needs sharded buckets)
};

struct StepResult {
  double loss = 0;      // mean loss over micro-batches and ranks
  double aux_loss = 0;  // mean auxiliary (MoE) loss over micro-batches on this rank; 0 when none
  bool has_aux = false;
  bool finite = true;    // loss finite on every rank
  bool applied = false;  // the optimizer stepped (loss and gradient norm finite)
  ClipResult clip;
};

// The scalars of a launched step, on their way to the host.
class PendingStep {
 public:
  // Made by train_step. scalars: the copy of the step's (kStepScalars) f64 values (step.cpp);
  // reduced_world > 0: their loss entry is the sum over that many ranks of each rank's mean
  // loss (reduced on the device); 0: this rank's loss sum over its micro-batches.
  PendingStep(AsyncRead scalars, int64_t grad_accum, bool has_aux, int64_t reduced_world = 0);
  // Whether they have arrived (never waits).
  bool ready() const;
  // Waits for this step's copy alone (not for later work on the stream) and returns the
  // values; later calls return the same values without waiting.
  const StepResult& resolve();

 private:
  AsyncRead scalars_;
  int64_t grad_accum_ = 1;
  bool has_aux_ = false;
  int64_t reduced_world_ = 0;
  std::optional<StepResult> result_;
};

// One micro-batch on the model's device.
struct MicroBatch {
  Tensor ids;      // (B, L) i64
  Tensor targets;  // (B, L) i64
  Tensor seq_idx;  // (B, L) i32: the document of every position (data.pack_documents), or undefined
  MicroBatch() = default;
  MicroBatch(Tensor ids_, Tensor targets_, Tensor seq_idx_ = Tensor())
      : ids(std::move(ids_)), targets(std::move(targets_)), seq_idx(std::move(seq_idx_)) {}
  // (ids, targets): one document per row.
  MicroBatch(std::pair<Tensor, Tensor> ids_targets)  // NOLINT: implicit, for callers that make pairs
      : ids(std::move(ids_targets.first)), targets(std::move(ids_targets.second)) {}
};

// Returns the next micro-batch.
using NextBatch = std::function<MicroBatch()>;

// params: the optimizer's parameters (optimizer.parameters()). Leaves the gradients zeroed.
// fused_head = false computes the full logits and then cross_entropy (the unfused form, kept
// for comparison in the benchmark).
PendingStep train_step(LanguageModel& model, Optimizer& optimizer, const std::vector<Tensor>& params, Dist& dist,
                       const NextBatch& next_batch, int64_t grad_accum, double grad_clip, bool fused_head = true,
                       const DataParallelStep& data_parallel = {});

}  // namespace ssmtrain
