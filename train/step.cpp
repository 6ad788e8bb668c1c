// train_step: the micro-batch loop, then the step's scalars gathered on the device.
//
// The host's arithmetic of the logged values is kept exactly: the loss sum is the f64 sum
// of the f32 micro-batch losses from zero, left to right (an f64 add per micro-batch on the
// device, the same operations as `sum += double(loss)` on the host); the divisions by
// grad_accum happen on the host when the step is resolved (with several ranks, on the device
// before the ranks' means are summed: the same IEEE division). A sum of f32 values cannot
// overflow in f64, so the sum is finite exactly when every micro-batch loss is.
#include "train/step.h"

#include <cmath>

#include "core/autograd.h"
#include "core/ops.h"
#include "core/profiler.h"
#include "data/batch.h"
#include "train/grad_buckets.h"
#include "train/zero.h"

namespace ssmtrain {

namespace {

// The step's (kStepScalars) f64 values, copied home together: the loss sum, the aux loss
// sum, then the clip status (optim/clip.h ClipStatusEntry).
constexpr int64_t kLossSum = 0, kAuxSum = 1, kClipFirst = 2, kStepScalars = kClipFirst + kClipStatusSize;

// () f64: 0 + x[0] + x[1] + ... in f64, left to right, on `device`.
Tensor sum_f64(const std::vector<Tensor>& xs, Device device) {
  Tensor acc = Tensor::zeros({}, DType::f64, device);
  for (const Tensor& x : xs) acc = add(acc, x.to(DType::f64));
  return acc;
}

}  // namespace

PendingStep::PendingStep(AsyncRead scalars, int64_t grad_accum, bool has_aux, int64_t reduced_world)
    : scalars_(std::move(scalars)), grad_accum_(grad_accum), has_aux_(has_aux), reduced_world_(reduced_world) {
  SSMT_ASSERT(scalars_.defined() && scalars_.numel() == kStepScalars, "PendingStep: expected ", kStepScalars,
              " scalars");
}

bool PendingStep::ready() const { return result_.has_value() || scalars_.ready(); }

const StepResult& PendingStep::resolve() {
  if (result_) return *result_;
  const double n = static_cast<double>(grad_accum_);
  const double loss_sum = scalars_.value(kLossSum);  // the one wait
  StepResult r;
  // Several ranks: loss_sum is already the sum over the ranks of each one's loss_sum / n.
  r.loss = reduced_world_ > 0 ? loss_sum / static_cast<double>(reduced_world_) : loss_sum / n;
  r.finite = std::isfinite(loss_sum);
  r.has_aux = has_aux_;
  r.aux_loss = scalars_.value(kAuxSum) / n;
  double status[kClipStatusSize];
  for (int64_t i = 0; i < kClipStatusSize; ++i) status[i] = scalars_.value(kClipFirst + i);
  r.clip = clip_result_from_status(status);
  r.applied = !r.clip.skip;
  result_ = r;
  return *result_;
}

PendingStep train_step(LanguageModel& model, Optimizer& optimizer, const std::vector<Tensor>& params, Dist& dist,
                       const NextBatch& next_batch, int64_t grad_accum, double grad_clip, bool fused_head,
                       const DataParallelStep& data_parallel) {
  GradBuckets* buckets = data_parallel.buckets;
  SSMT_ASSERT(!data_parallel.zero || (buckets && buckets->sharded()), "train_step: ZeRO needs sharded buckets");
  std::vector<Tensor> losses, aux_losses;
  for (int64_t micro = 0; micro < grad_accum; ++micro) {
    const MicroBatch batch = next_batch();
    Tensor total;
    {
      ProfileScope forward("forward");
      LMLoss out;
      if (fused_head) {
        out = model.forward_loss(batch.ids, batch.targets, kIgnoreIndex, batch.seq_idx);
      } else {
        LMOutput full = model.forward(batch.ids, batch.seq_idx);
        out.loss = cross_entropy(full.logits, batch.targets);
        out.aux_loss = full.aux_loss;
      }
      total = out.loss;
      if (out.aux_loss.defined()) {
        total = add(out.loss, out.aux_loss);
        aux_losses.push_back(out.aux_loss.detach());
      }
      if (grad_accum > 1) total = mul(total, 1.0 / static_cast<double>(grad_accum));
      losses.push_back(out.loss.detach());
    }
    ProfileScope backward_scope("backward");
    // Only the last micro-batch communicates: earlier ones accumulate locally.
    if (buckets && data_parallel.overlap && micro + 1 == grad_accum)
      backward({total}, {Tensor()}, buckets->hook());
    else
      backward(total);
  }
  ProfileScope optimizer_scope("optimizer");
  NoGradGuard no_grad;
  SSMT_CHECK(!losses.empty(), "train_step: grad_accum must be >= 1, got ", grad_accum);
  const Device device = losses.front().device();
  Tensor loss_sum = sum_f64(losses, device), aux_sum = sum_f64(aux_losses, device);
  int64_t reduced_world = 0;
  if (buckets)
    buckets->finish();
  else
    dist.average_gradients(params);
  Tensor must_be_finite = loss_sum;
  if (dist.active()) {
    // Several ranks: each rank's mean loss summed over the ranks on the device, after the
    // gradients' collectives (the same order on every rank), so the host never waits. The
    // sum is non-finite exactly when some rank's loss is (losses are >= 0, never -inf), so
    // every rank feeds the same verdict to the clip.
    Tensor mean = div(loss_sum, Tensor::scalar(static_cast<double>(grad_accum), DType::f64, device)).reshape({1});
    dist.all_reduce_sum_async(mean).wait();
    loss_sum = mean.reshape({});
    must_be_finite = loss_sum;
    reduced_world = dist.world_size();
  }
  DeviceClip clip;
  if (data_parallel.zero) {
    // The shard's update; the run's optimizer keeps only the groups and the learning rate.
    clip = data_parallel.zero->step(optimizer, grad_clip, must_be_finite);
  } else {
    clip = clip_grad_norm_deferred(params, grad_clip, must_be_finite);
    optimizer.step_clipped(clip);
  }
  Tensor scalars = cat({loss_sum.reshape({1}), aux_sum.reshape({1}), clip.status.to(device)}, 0);
  PendingStep pending(AsyncRead(scalars), grad_accum, !aux_losses.empty(), reduced_world);
  model.zero_grad();
  return pending;
}

}  // namespace ssmtrain
